"""Ranged GETs for readback without botocore's per-request pipeline.

A readback of many small objects is bound by client CPU, not by bytes: each
``client.get_object`` runs parameter validation, endpoint rules, user-agent
assembly, event hooks, SigV4 signing and response parsing: about 3 ms of CPU
per GET, more than the HTTP exchange and the hashing of a 100 KB object
together (about 2 ms against a local endpoint).
:class:`RangeGetter` sends each GET as a locally signed request through
:class:`~wiseverify.core.sigv4.SignedEndpoint` (the bucket's URL, region,
credentials and signing key resolved once; the client's own aiohttp session).
Behind a proxy it goes through the client's HTTP layer, which costs about
0.4 ms more per request: it looks the proxy up in the environment each time
and wraps the response for botocore.

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
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import quote

from wiseverify.core.checksums import CRC_FUNCS, crc_bytes
from wiseverify.core.sigv4 import MAX_FALLBACK_STREAK, SignedEndpoint

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


class RangeGetter:
    """GET byte ranges of one bucket's objects with one locally signed request each."""

    def __init__(self, endpoint: SignedEndpoint, checksum_mode: bool):
        self.endpoint = endpoint
        self._checksum_mode = checksum_mode
        self.fallbacks = 0  # consecutive
        self.enabled = True
        self.served = 0  # ranges answered here
        self.repeated = 0  # ranges handed back to botocore

    @classmethod
    async def for_client(cls, client: Any, bucket: str) -> RangeGetter | None:
        """A getter for ``bucket`` through ``client``, or None to keep to botocore."""
        endpoint = await SignedEndpoint.for_client(client, "GetObject",
                                                   {"Bucket": bucket, "Key": "k"})
        if endpoint is None:
            return None
        checksum_mode = getattr(client.meta.config, "response_checksum_validation",
                                "when_supported") != "when_required"
        return cls(endpoint, checksum_mode)

    def url_path(self, key: str) -> str:
        """The encoded request path of ``key``, as botocore serializes ``{Key+}``."""
        return f"{self.endpoint.base_path}/{quote(key.encode('utf-8'), safe='/~')}"

    def url(self, key: str) -> str:
        """The URL botocore would send a GetObject of ``key`` to."""
        return self.endpoint.origin + self.url_path(key)

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
        if not self.enabled:
            return None
        raw = None
        ok = False
        try:
            extra = {"Range": f"bytes={start}-{start + length - 1}"}
            if self._checksum_mode:
                extra["x-amz-checksum-mode"] = "ENABLED"
            raw, status, rh, content = await self.endpoint.get(self.url_path(key), extra)
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
