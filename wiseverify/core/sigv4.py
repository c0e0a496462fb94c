"""Locally signed S3 requests for the hot paths: ranged GETs and listing pages.

botocore's per-request pipeline (parameter validation, endpoint rules,
user-agent assembly, event hooks, SigV4 signing, response parsing) costs about
3 ms of CPU per request: more than the HTTP exchange with a local endpoint, and
for a 1,000-key ListObjectsV2 page about 150 us of parsing per key.  At 30
million objects that is CPU-hours spent on bookkeeping.

:class:`SignedEndpoint` resolves what is constant for one bucket once (its URL
through the client's own endpoint rules, the signing region, the credentials,
the SigV4 signing key of the day) and then sends body-less GETs on the client's
own aiohttp session, so TLS settings, timeouts and the connection pool stay
the client's.  Through a proxy, or where that session is out of reach, the
request goes through the client's HTTP layer (``http_session.send``) instead.

The callers (``digest.getrange``, ``inventory.s3list``) only take a plain
success from here; anything else is repeated through botocore, which applies
its retries, redirects and clock-skew handling and raises the exception whose
text the report shows.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import weakref
from typing import Any
from urllib.parse import quote, urlsplit

from wiseverify.core.timestamps import fast_timestamp

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

#: refresh frozen credentials this often, so refreshable (role, SSO) ones never go stale
CREDENTIALS_TTL = 60.0

#: after this many fallbacks in a row without a success, stop trying the signed path
#: (e.g. a bucket in another region, which only botocore's redirect handling reaches)
MAX_FALLBACK_STREAK = 8


def host_header(url: str) -> str:
    """The Host value an HTTP client sends for ``url`` (default ports left out), as SigV4 signs it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def canonical_query(params: dict[str, str]) -> str:
    """A SigV4 canonical query string, which is also the query to send.

    Names and values are percent-encoded except the RFC 3986 unreserved
    characters and sorted by name, as botocore's ``S3SigV4Auth`` signs them.
    """
    enc = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in enc)


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
                amz_date: str | None = None, query: str = "",
                method: str = "GET") -> dict[str, str]:
        """Signed headers for ``method path?query`` (a GET or a HEAD) with ``extra`` headers.

        ``path`` is already percent-encoded, ``query`` is :func:`canonical_query`'s;
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
            method, path, query,
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


class SignedEndpoint:
    """One bucket's base URL, credentials and HTTP session, for locally signed GETs."""

    def __init__(self, http: Any, base_url: str, region: str, service: str,
                 credentials: Any, session: Any = None):
        self._http = http
        self.session = session  # aiohttp.ClientSession, or None to go through http.send
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.base_path = parts.path
        self.host = host_header(self.base_url)
        self._region = region
        self._service = service
        self._credentials = credentials
        self._signer: Signer | None = None
        self._signer_until = 0.0

    @classmethod
    async def for_client(cls, client: Any, operation: str,
                         params: dict[str, Any]) -> SignedEndpoint | None:
        """The endpoint ``client`` would send ``operation`` with ``params`` to, or None.

        None keeps the caller on botocore: a client that is not a plain SigV4
        one (anonymous, SigV4a, S3 Express), endpoint rules that add headers or
        a query, or a client layout this was not written against.
        """
        try:
            cfg = client.meta.config
            if cfg.signature_version not in (None, "s3v4", "v4"):  # UNSIGNED included
                return None
            credentials = client._request_signer._credentials
            http = client._endpoint.http_session
            if credentials is None or not hasattr(http, "send"):
                return None
            op = client.meta.service_model.operation_model(operation)
            ctx: dict = {}
            url, headers, _props = await client._resolve_endpoint_ruleset(op, params, ctx)
            if headers or ctx.get("auth_type") not in (None, "v4"):
                return None
            signing = ctx.get("signing") or {}
            region = signing.get("region") or client.meta.region_name
            service = signing.get("signing_name") or "s3"
            if not region or not url.startswith(("http://", "https://")) or urlsplit(url).query:
                return None
            session = None
            get_session = getattr(http, "_get_session", None)
            if get_session is not None and http._proxy_config.proxy_url_for(url) is None:
                session = await get_session(None)
            endpoint = cls(http, url, region, service, credentials, session)
            await endpoint.signer()
            return endpoint
        except Exception:  # an unexpected botocore/aiobotocore layout
            return None

    async def signer(self) -> Signer:
        if self._signer is None or time.monotonic() > self._signer_until:
            fc = await self._credentials.get_frozen_credentials()
            self._signer = Signer(fc.access_key, fc.secret_key, fc.token, self._region,
                                  self._service)
            self._signer_until = time.monotonic() + CREDENTIALS_TTL
        return self._signer

    async def get(self, path: str, extra: dict[str, str], query: str = "",
                  method: str = "GET") -> tuple[Any, int, dict[str, str], Any]:
        """Send ``GET path?query``: (the raw response to release, status, headers, body stream).

        Header names come back lower-cased (HTTP names are case-insensitive; S3
        lower-cases user metadata names itself).  The caller releases or closes
        the raw response: one with unread bytes must not go back to the pool.
        """
        from yarl import URL

        signer = await self.signer()
        headers = signer.headers(self.host, path, extra, query=query, method=method)
        url = self.origin + path + (f"?{query}" if query else "")
        if self.session is not None:
            headers["Accept-Encoding"] = "identity"  # as aiobotocore asks
            # a redirect goes back to botocore (its region handling), never followed unsigned
            raw = await self.session.request(method, URL(url, encoded=True), headers=headers,
                                             allow_redirects=False)
            rh = {k.decode("utf-8").lower(): v.decode("utf-8") for k, v in raw.raw_headers}
            return raw, raw.status, rh, raw.content
        from botocore.awsrequest import AWSPreparedRequest

        resp = await self._http.send(AWSPreparedRequest(method, url, headers, None, True))
        rh = {k.lower(): v for k, v in resp.headers.items()}
        return resp.raw, resp.status_code, rh, resp.raw.content


# --- HeadObject ---------------------------------------------------------------------

_META = "x-amz-meta-"

#: HeadObject response headers, as botocore names and types them in its output
HEAD_FIELDS: dict[str, tuple[str, Any]] = {
    "content-length": ("ContentLength", int),
    "etag": ("ETag", str),
    "last-modified": ("LastModified", fast_timestamp),
    "x-amz-storage-class": ("StorageClass", str),
    "x-amz-mp-parts-count": ("PartsCount", int),
    "x-amz-checksum-type": ("ChecksumType", str),
    "x-amz-checksum-crc64nvme": ("ChecksumCRC64NVME", str),
    "x-amz-checksum-crc32": ("ChecksumCRC32", str),
    "x-amz-checksum-crc32c": ("ChecksumCRC32C", str),
    "x-amz-checksum-sha1": ("ChecksumSHA1", str),
    "x-amz-checksum-sha256": ("ChecksumSHA256", str),
    "x-amz-server-side-encryption": ("ServerSideEncryption", str),
    "x-amz-server-side-encryption-customer-algorithm": ("SSECustomerAlgorithm", str),
    "x-amz-archive-status": ("ArchiveStatus", str),
    "x-amz-restore": ("Restore", str),
    "x-amz-version-id": ("VersionId", str),
}


def head_fields(headers: dict[str, str]) -> dict[str, Any]:
    """A HeadObject answer's headers (lower-cased names) as botocore's output fields."""
    out: dict[str, Any] = {}
    meta: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith(_META):
            meta[name[len(_META):]] = value
            continue
        field = HEAD_FIELDS.get(name)
        if field is not None:
            out[field[0]] = field[1](value)
    out["Metadata"] = meta
    return out


def head_error(status: int, headers: dict[str, str]) -> Exception:
    """The ``ClientError`` botocore raises for a HeadObject answered ``status`` (no body).

    A HEAD error has no body, so botocore takes its code and message from the
    status alone (``RestXMLParser._parse_error_from_http_status``).
    """
    import http.client

    from botocore.exceptions import ClientError

    return ClientError({
        "Error": {"Code": str(status), "Message": http.client.responses.get(status, "")},
        "ResponseMetadata": {"RequestId": headers.get("x-amz-request-id", ""),
                             "HostId": headers.get("x-amz-id-2", ""),
                             "HTTPStatusCode": status, "HTTPHeaders": headers,
                             "RetryAttempts": 0},
    }, "HeadObject")


class HeadReader:
    """HeadObject of one bucket's objects, locally signed; botocore for anything else.

    A HEAD through botocore costs about 2-3 ms of client CPU: with POSIX
    metadata to compare on every object (a DataSync destination), that is a
    HEAD per object, CPU-hours at 30 million.  A 200/206 is read here, and a
    403 or 404 becomes botocore's own exception (:func:`head_error`): botocore
    would neither retry nor redirect those, and asking twice would double the
    requests of a denied prefix.  Every other answer (a redirect, 5xx, a reset)
    is asked again through botocore, which retries and raises what the row reports.
    """

    def __init__(self, client: Any, bucket: str, endpoint: SignedEndpoint | None):
        self.client, self.bucket, self.endpoint = client, bucket, endpoint
        self.fallbacks = 0  # consecutive
        self.served = 0
        self.repeated = 0

    async def head(self, key: str, part_number: int | None = None,
                   checksum_mode: bool = False) -> dict[str, Any]:
        """``client.head_object(Bucket, Key, PartNumber, ChecksumMode)``'s fields, or its error."""
        if self.endpoint is not None:
            got = await self._signed(key, part_number, checksum_mode)
            if got is not None:
                self.fallbacks = 0
                self.served += 1
                if isinstance(got, Exception):
                    raise got
                return got
            self.repeated += 1
            self.fallbacks += 1
            if self.fallbacks >= MAX_FALLBACK_STREAK:
                self.endpoint = None
        kw: dict[str, Any] = {}
        if part_number is not None:
            kw["PartNumber"] = part_number
        if checksum_mode:
            kw["ChecksumMode"] = "ENABLED"
        return await self.client.head_object(Bucket=self.bucket, Key=key, **kw)

    async def _signed(self, key: str, part_number: int | None,
                      checksum_mode: bool) -> dict[str, Any] | Exception | None:
        assert self.endpoint is not None
        path = f"{self.endpoint.base_path}/{quote(key.encode('utf-8'), safe='/~')}"
        query = canonical_query({"partNumber": str(part_number)}) if part_number else ""
        extra = {"x-amz-checksum-mode": "ENABLED"} if checksum_mode else {}
        raw = None
        try:
            raw, status, headers, _content = await self.endpoint.get(path, extra, query, "HEAD")
            if status in (403, 404) and "x-amz-bucket-region" not in headers:
                # botocore neither retries nor redirects these: its error, without asking twice
                return head_error(status, headers)
            if status not in (200, 206):  # 206: a part of a multipart object
                return None
            return head_fields(headers)
        except Exception:  # reset, timeout, an undecodable header: botocore asks again
            return None
        finally:
            if raw is not None:
                raw.release()


_READERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def head_reader(client: Any, bucket: str) -> HeadReader:
    """The client's :class:`HeadReader` for ``bucket``, made once per client and bucket."""
    per_client = _READERS.get(client)
    if per_client is None:
        per_client = _READERS[client] = {}
    reader = per_client.get(bucket)
    if reader is None:
        lock = per_client.setdefault(("lock", bucket), asyncio.Lock())
        async with lock:
            reader = per_client.get(bucket)
            if reader is None:
                endpoint = await SignedEndpoint.for_client(client, "HeadObject",
                                                           {"Bucket": bucket, "Key": "k"})
                reader = per_client[bucket] = HeadReader(client, bucket, endpoint)
    return reader

