"""An HTTP proxy in front of the moto endpoint that records requests and injects faults.

It lets tests show behaviour the local endpoint cannot produce by itself:
AWS-style non-MD5 ETags of SSE-KMS objects, per-key 403s, 5xx/SlowDown
answers, connection resets, slow responses - and it records every request so
a test can prove the tool only ever reads.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error>"
)


@dataclass
class Faults:
    deny_keys: tuple[str, ...] = ()  # substring of the object key -> 403 on HEAD/GET
    etags: dict[str, str] = field(default_factory=dict)  # key substring -> ETag to report
    error_rate: float = 0.0  # share of requests answered 500/503 SlowDown
    reset_rate: float = 0.0  # share of connections closed without an answer
    slow_rate: float = 0.0  # share of responses delayed by slow_seconds
    slow_seconds: float = 0.5
    seed: int = 1
    # deterministic variants: every Nth request (0 = off), so a short run still sees faults
    error_every: int = 0
    reset_every: int = 0
    slow_every: int = 0


class S3Proxy:
    def __init__(self, upstream: str, faults: Faults | None = None):
        self.upstream = urlsplit(upstream)
        self.faults = faults or Faults()
        self.requests: list[tuple[str, str]] = []  # (method, path?query)
        self.headers: list[dict[str, str]] = []  # each request's headers, in the same order
        self.injected = {"error": 0, "reset": 0, "slow": 0, "deny": 0}
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                proxy._serve(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _roll(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((h.command, h.path))
            self.headers.append(dict(h.headers.items()))
            n = len(self.requests)
        path = unquote(urlsplit(h.path).path)
        f = self.faults
        if h.command in ("HEAD", "GET") and any(k in path for k in f.deny_keys):
            with self._lock:
                self.injected["deny"] += 1
            return self._error(h, 403, "AccessDenied", "Access Denied")
        if self._roll(f.reset_rate) or (f.reset_every and n % f.reset_every == 0):
            with self._lock:
                self.injected["reset"] += 1
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00"
                                    b"\x00\x00\x00\x00")
            h.close_connection = True
            h.connection.close()
            return None
        if self._roll(f.error_rate) or (f.error_every and n % f.error_every == 0):
            with self._lock:
                self.injected["error"] += 1
            if self._roll(0.5):
                return self._error(h, 503, "SlowDown", "Please reduce your request rate.")
            return self._error(h, 500, "InternalError", "We encountered an internal error.")
        if self._roll(f.slow_rate) or (f.slow_every and n % f.slow_every == 0):
            with self._lock:
                self.injected["slow"] += 1
            time.sleep(f.slow_seconds)
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in h.headers.items() if k.lower() != "host"}
        headers["Host"] = self.upstream.netloc
        conn.request(h.command, h.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        out_headers = [(k, v) for k, v in resp.getheaders()
                       if k.lower() not in ("transfer-encoding", "connection", "content-length")]
        if f.etags:
            data, out_headers = self._rewrite_etags(path, data, out_headers)
        h.send_response(resp.status, resp.reason)
        for k, v in out_headers:
            h.send_header(k, v)
        if h.command == "HEAD":
            h.send_header("Content-Length", resp.getheader("Content-Length") or "0")
        else:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
        conn.close()
        return None

    def _rewrite_etags(self, path: str, data: bytes, headers: list) -> tuple[bytes, list]:
        for sub, etag in self.faults.etags.items():
            if sub in path:
                headers = [(k, f'"{etag}"' if k.lower() == "etag" else v) for k, v in headers]
            if b"<ListBucketResult" in data[:400]:
                text = data.decode()
                pat = re.compile(
                    r"(<Key>[^<]*" + re.escape(sub) + r"[^<]*</Key>.*?<ETag>)([^<]*)(</ETag>)",
                    re.S,
                )
                text = pat.sub(lambda m, e=etag: m.group(1) + f"&quot;{e}&quot;" + m.group(3),
                               text)
                data = text.encode()
        return data, headers

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = ERROR_XML.format(code=code, message=message).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", "0" if h.command == "HEAD" else str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def mutating(self) -> list[tuple[str, str]]:
        """Requests that could change the bucket (anything but GET/HEAD)."""
        return [(m, p) for m, p in self.requests if m not in ("GET", "HEAD")]
