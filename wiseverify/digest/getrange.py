"""Ranged GETs for readback without botocore's per-request pipeline.

A readback of many small objects is bound by client CPU, not by bytes: each
``client.get_object`` runs parameter validation, endpoint rules, user-agent
assembly, event hooks, SigV4 signing and response parsing: about 3 ms of CPU
per GET, more than the HTTP exchange and the hashing of a 100 KB object
together (about 2 ms against a local endpoint).
:class:`RangeGetter` resolves what is constant for a bucket once (its URL, the
signing region, the credentials, the SigV4 signing key of the day) and then
sends each GET as a locally signed request on the client's own aiohttp
session, so TLS settings, timeouts and the connection pool stay the client's.
Through a proxy, or where that session is out of reach, the request goes
through the client's HTTP layer (``http_session.send``) instead, which costs
about 0.4 ms more per request: it looks the proxy up in the environment each
time and wraps the response for botocore.

It only serves the plain success: a 200/206 answer of exactly the range asked
for, whose full-object checksum (if the endpoint sends one) matches, as
botocore would have checked it.  Anything else (an error status, a reset
connection, a short body, a checksum it cannot or does not confirm) returns
``None`` and the caller repeats the range through botocore, which then applies
its retries and backoff, its redirects and clock-skew handling, and raises the
exception whose text the report shows.  So error rows read exactly as before,
and no signature ever reaches an error text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

from wiseverify.core.checksums import CRC_FUNCS, crc_bytes

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

#: refresh frozen credentials this often, so refreshable (role, SSO) ones never go stale
CREDENTIALS_TTL = 60.0

#: after this many fallbacks in a row without a success, stop trying the fast path
#: (e.g. a bucket in another region, which only botocore's redirect handling reaches)
MAX_FALLBACK_STREAK = 8

READ_CHUNK = 1 << 20

_META = "x-amz-meta-"


class _Crc:
    """A running CRC of :data:`~wiseverify.core.checksums.CRC_FUNCS` with hashlib's update/digest."""

    def __init__(self, algo: str) -> None:
        self.algo, self.v = algo, 0

    def update(self, b) -> None:
        self.v = CRC_FUNCS[self.algo](b, self.v)

    def digest(self) -> bytes:
        return crc_bytes(self.algo, self.v)


#: response checksums confirmed here, in botocore's priority order; a response with
#: any other one (xxhash, sha512, ...) goes through botocore
RESPONSE_CHECKSUMS: dict[str, Callable[[], Any]] = {
    "crc64nvme": partial(_Crc, "crc64nvme"),
    "crc32c": partial(_Crc, "crc32c"),
    "crc32": partial(_Crc, "crc32"),
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}


def host_header(url: str) -> str:
    """The Host value an HTTP client sends for ``url`` (default ports left out), as SigV4 signs it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class Signer:
    """SigV4 header signing of a body-less GET, the way botocore's S3SigV4Auth signs it.

    The signing key depends only on the secret, the day, the region and the
    service, so it is derived once a day instead of four HMACs per request.
    """

    def __init__(self, access_key: str, secret_key: str, token: str | None, region: str,
                 service: str = "s3"):
        self.access_key = access_key
        self._secret = secret_key
        self.token = token
        self.region = region
        self.service = service
        self._day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:
            k = hmac.new(f"AWS4{self._secret}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, self.service, "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._day, self._key = day, k
        return self._key

    def headers(self, host: str, path: str, extra: dict[str, str],
                amz_date: str | None = None) -> dict[str, str]:
        """Signed headers for ``GET path`` (already percent-encoded) with ``extra`` headers.

        ``amz_date`` (``YYYYMMDDTHHMMSSZ``) defaults to now.
        """
        if amz_date is None:
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = dict(extra)
        out["X-Amz-Date"] = amz_date
        if self.token:
            out["X-Amz-Security-Token"] = self.token
        out["X-Amz-Content-SHA256"] = EMPTY_SHA256
        signed = {k.lower(): " ".join(v.split()) for k, v in out.items()}
        signed["host"] = host
        names = sorted(signed)
        signed_names = ";".join(names)
        canonical = "\n".join((
            "GET", path, "",
            "".join(f"{n}:{signed[n]}\n" for n in names),
            signed_names, EMPTY_SHA256,
        ))
        day = amz_date[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join((
            "AWS4-HMAC-SHA256", amz_date, scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ))
        sig = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        out["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={sig}"
        )
        return out


class RangeGetter:
    """GET byte ranges of one bucket's objects with one locally signed request each."""

    def __init__(self, http: Any, base_url: str, region: str, service: str,
                 credentials: Any, checksum_mode: bool, session: Any = None):
        self._http = http
        self._session = session  # aiohttp.ClientSession, or None to go through http.send
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path
        self.host = host_header(self.base_url)
        self._region = region
        self._service = service
        self._credentials = credentials
        self._checksum_mode = checksum_mode
        self._signer: Signer | None = None
        self._signer_until = 0.0
        self.fallbacks = 0  # consecutive
        self.enabled = True
        self.served = 0  # ranges answered here
        self.repeated = 0  # ranges handed back to botocore

    @classmethod
    async def for_client(cls, client: Any, bucket: str) -> RangeGetter | None:
        """A getter for ``bucket`` through ``client``, or None to keep to botocore.

        None when the client is not a plain SigV4 one (anonymous, SigV4a, S3
        Express) or its layout is not the one this was written against.
        """
        try:
            cfg = client.meta.config
            if cfg.signature_version not in (None, "s3v4", "v4"):  # UNSIGNED included
                return None
            credentials = client._request_signer._credentials
            http = client._endpoint.http_session
            if credentials is None or not hasattr(http, "send"):
                return None
            op = client.meta.service_model.operation_model("GetObject")
            ctx: dict = {}
            url, headers, _props = await client._resolve_endpoint_ruleset(
                op, {"Bucket": bucket, "Key": "k"}, ctx)
            if headers or ctx.get("auth_type") not in (None, "v4"):
                return None
            signing = ctx.get("signing") or {}
            region = signing.get("region") or client.meta.region_name
            service = signing.get("signing_name") or "s3"
            if not region or not url.startswith(("http://", "https://")) or urlsplit(url).query:
                return None
            checksum_mode = getattr(cfg, "response_checksum_validation",
                                    "when_supported") != "when_required"
            session = None
            get_session = getattr(http, "_get_session", None)
            if get_session is not None and http._proxy_config.proxy_url_for(url) is None:
                session = await get_session(None)
            getter = cls(http, url, region, service, credentials, checksum_mode, session)
            await getter._fresh_signer()
            return getter
        except Exception:  # an unexpected botocore/aiobotocore layout
            return None

    async def _fresh_signer(self) -> Signer:
        if self._signer is None or time.monotonic() > self._signer_until:
            fc = await self._credentials.get_frozen_credentials()
            self._signer = Signer(fc.access_key, fc.secret_key, fc.token, self._region,
                                  self._service)
            self._signer_until = time.monotonic() + CREDENTIALS_TTL
        return self._signer

    def url_path(self, key: str) -> str:
        """The encoded request path of ``key``, as botocore serializes ``{Key+}``."""
        return f"{self._base_path}/{quote(key.encode('utf-8'), safe='/~')}"

    def url(self, key: str) -> str:
        """The URL botocore would send a GetObject of ``key`` to."""
        return self._origin + self.url_path(key)

    def _fallback(self) -> None:
        self.repeated += 1
        self.fallbacks += 1
        if self.fallbacks >= MAX_FALLBACK_STREAK:
            self.enabled = False

    async def get(self, key: str, start: int, length: int,
                  feed: Callable[[memoryview], None]) -> dict[str, str] | None:
        """GET ``length`` bytes of ``key`` from ``start``, feeding them to ``feed`` in order.

        Returns the object's user metadata on success, None when the caller
        must repeat the range through botocore (``feed`` may have seen part of
        the range by then).
        """
        from botocore.awsrequest import AWSPreparedRequest
        from yarl import URL

        if not self.enabled:
            return None
        raw = None
        ok = False
        try:
            signer = await self._fresh_signer()
            path = self.url_path(key)
            extra = {"Range": f"bytes={start}-{start + length - 1}"}
            if self._checksum_mode:
                extra["x-amz-checksum-mode"] = "ENABLED"
            headers = signer.headers(self.host, path, extra)
            if self._session is not None:
                headers["Accept-Encoding"] = "identity"  # as aiobotocore asks
                raw = await self._session.get(URL(self._origin + path, encoded=True),
                                              headers=headers)
                status = raw.status
                # lower-cased names, as botocore sees them
                rh = {k.decode("utf-8").lower(): v.decode("utf-8") for k, v in raw.raw_headers}
            else:
                resp = await self._http.send(
                    AWSPreparedRequest("GET", self._origin + path, headers, None, True))
                raw, status, rh = resp.raw, resp.status_code, resp.headers
            if status not in (200, 206):
                self._fallback()
                return None
            checks = []
            meta: dict[str, str] = {}
            for name, value in rh.items():
                if name.startswith(_META):
                    meta[name[len(_META):]] = value
                elif name.startswith("x-amz-checksum-") and name != "x-amz-checksum-type" \
                        and "-" not in value:
                    make = RESPONSE_CHECKSUMS.get(name[len("x-amz-checksum-"):])
                    if make is None:
                        self._fallback()
                        return None
                    checks.append((make(), value))
            got = 0
            content = raw.content
            while True:
                chunk = await content.read(READ_CHUNK)
                if not chunk:
                    break
                mv = memoryview(chunk)
                feed(mv)
                for c, _ in checks:
                    c.update(mv)
                got += len(chunk)
            if got != length or any(c.digest() != base64.b64decode(v) for c, v in checks):
                self._fallback()
                return None
            self.fallbacks = 0
            self.served += 1
            ok = True
            return meta
        except Exception:  # reset, timeout, anything: botocore repeats it and reports
            self._fallback()
            return None
        finally:
            if raw is not None:
                # a connection with unread bytes must not go back to the pool
                raw.release() if ok else raw.close()
