"""The destination side: S3 through s3fs/aiobotocore.

s3fs supplies the session, the standard AWS credential chain and the event
loop; requests go to its aiobotocore client directly so that errors keep their
S3 error codes (s3fs would fold them into OSError) and so that HeadObject can
ask for ChecksumMode and PartNumber.  Every call is read-only: List, Head, Get.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import fsspec.asyn

from wiseverify.core.timestamps import fast_timestamp

_FILESYSTEMS: dict[tuple, Any] = {}
_FILESYSTEMS_LOCK = threading.Lock()
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION",
                   "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")

# --- destination listing -----------------------------------------------------------


def use_fast_timestamps(target: S3Target) -> None:
    """Install :func:`fast_timestamp` on the session's response parser factory.

    The factory creates a parser per response, so this takes effect for the
    clients already made from the session too.  Idempotent and cheap.
    """
    session = getattr(target.filesystem(), "session", None)
    get = getattr(session, "get_component", None)
    if get is None:
        return
    try:
        get("response_parser_factory").set_parser_defaults(timestamp_parser=fast_timestamp)
    except Exception:  # an unexpected botocore layout: keep its default parser
        return

T = TypeVar("T")

_LOADERS: dict[str | None, Any] = {}


def shared_loader(session):
    """One botocore data loader per process, its parsed S3 models kept (``instance_cache``).

    Each session makes its own loader, and a new S3 client then parses the
    service model, the endpoint rules and the partitions again: most of the
    0.17 s of CPU a worker spent on its first client, before its first
    listing request.  The workers' forkserver loads them once before forking
    (:func:`preload_models`); sessions still resolve credentials each their own.
    Keyed by ``session``'s ``data_path`` (``AWS_DATA_PATH``): another search path
    is another loader.
    """
    data_path = session.get_config_variable("data_path")
    loader = _LOADERS.get(data_path)
    if loader is None:
        from botocore.loaders import create_loader

        loader = _LOADERS.setdefault(data_path, create_loader(data_path))
    return loader


def preload_models() -> None:
    """Parse, in :func:`shared_loader`, the models an S3 client loads when it is made."""
    from aiobotocore.session import AioSession

    loader = shared_loader(AioSession())
    loader.load_data_with_path("endpoints")
    loader.load_data("sdk-default-configuration")
    loader.load_data("partitions")
    loader.load_service_model("s3", "service-2")
    loader.load_service_model("s3", "endpoint-rule-set-1")


#: botocore client settings: bounded retries with backoff, bounded connect time,
#: so an unreachable endpoint is an error within seconds, not a hang.
DEFAULT_CLIENT_CONFIG: dict[str, Any] = {
    "retries": {"max_attempts": 6, "mode": "standard"},
    "connect_timeout": 5,
    "read_timeout": 60,
    "max_pool_connections": 64,
}

#: S3 operations that read: every Get*, Head* and List* call, nothing else (no Put, Delete,
#: Copy, Restore, Select).  The tool sends ListObjectsV2, HeadBucket, HeadObject, GetObject.
READ_ONLY_PREFIXES = ("Get", "Head", "List")
_GUARD_ID = "wiseverify-read-only"


class S3ConfigError(Exception):
    """The destination cannot be used at all (bad URL, bucket, credentials, endpoint)."""


class ReadOnlyViolation(RuntimeError):
    """An S3 call that could change the destination was about to be sent."""


def _read_only_guard(model=None, **kwargs) -> None:
    """botocore ``before-call`` handler: the one place read-only is enforced.

    Every call of every client this tool makes (its own, and s3fs' opens and
    listings of report files) passes here before it is signed and sent.
    """
    name = getattr(model, "name", "")
    if not name.startswith(READ_ONLY_PREFIXES):
        raise ReadOnlyViolation(f"wiseverify is read-only: refusing S3 {name}")


def guard_read_only(client) -> None:
    """Register :func:`_read_only_guard` on a botocore/aiobotocore client (once).

    Also swaps botocore's check for an error inside a 200 answer for
    :func:`_handle_200_error`, which decides the same thing without building the
    whole document.
    """
    client.meta.events.register("before-call.s3", _read_only_guard, unique_id=_GUARD_ID)
    try:
        from botocore import handlers
    except ImportError:  # pragma: no cover
        return
    original = getattr(handlers, "_handle_200_error", None)
    if original is not None and getattr(handlers, "_should_handle_200_error", None):
        client.meta.events.unregister("before-parse.s3.*", original)
        client.meta.events.register_first("before-parse.s3.*", _handle_200_error,
                                          unique_id=_GUARD_ID + "-200")


_XML_DECL = re.compile(rb"\s*(?:<\?xml[^>]*\?>)?\s*<([A-Za-z_][\w.:-]*)")


def looks_like_error_body(body: bytes) -> bool:
    """botocore's test for an S3 error sent with status 200, without a parse of the body.

    botocore builds an ElementTree of every S3 answer to see whether its root is
    ``<Error>`` or the XML is cut short (a streamed answer broken off): for a
    1,000-key ListObjectsV2 page that was more CPU than parsing it for its
    contents.  The same two facts are read from the ends of the body: the root
    element's name, and that the document ends by closing it.
    """
    m = _XML_DECL.match(body)
    if m is None:
        return True  # not XML at all: botocore's parser fails on it too
    root = m.group(1)
    if root == b"Error":
        return True
    end = body.rstrip()
    return not (end.endswith(b"</" + root + b">") or end.endswith(b"/>")
                and body.count(b"<", m.start(1)) == 0)


def _handle_200_error(operation_model, response_dict, **kwargs) -> None:
    from botocore import handlers

    if not handlers._should_handle_200_error(operation_model, response_dict):
        return
    if response_dict["status_code"] == 200 and response_dict["body"] and \
            looks_like_error_body(response_dict["body"]):
        response_dict["status_code"] = 500  # retried, as botocore does


@dataclass(frozen=True)
class S3Target:
    """Where the objects are: bucket, key prefix and how to reach the endpoint."""

    bucket: str
    prefix: str = ""  # "" or ends with "/"
    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None

    @classmethod
    def parse(
        cls,
        url: str,
        endpoint_url: str | None = None,
        profile: str | None = None,
        region: str | None = None,
    ) -> S3Target:
        """Parse ``s3://bucket/prefix``; the prefix is a folder (``wise`` means ``wise/``)."""
        if not url.startswith("s3://"):
            raise S3ConfigError(f"destination must be an s3://bucket/prefix URL, got {url!r}")
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise S3ConfigError(f"no bucket in destination URL {url!r}")
        if any(c in bucket for c in " \\?#") or len(bucket) < 3 or len(bucket) > 63:
            raise S3ConfigError(f"{bucket!r} is not a valid S3 bucket name")
        prefix = prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        return cls(bucket, prefix, endpoint_url or None, profile, region)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def fs(self):
        """The process-wide s3fs filesystem for this endpoint (fsspec caches instances).

        Its client is created and guarded (:func:`guard_read_only`) before it is
        handed out, so s3fs' own calls pass the read-only check too.  Not for
        use on s3fs' event loop: coroutines there take :meth:`client`.
        """
        fs = self.filesystem()
        if getattr(fs, "_s3", None) is None:
            fsspec.asyn.sync(fs.loop, self._guarded, fs)
        return fs

    def filesystem(self):
        """The process's s3fs filesystem for this endpoint, its client not ensured (for the loop).

        One per process, not fsspec's one per thread: every instance builds its own
        botocore session and client (about 0.1 s of CPU to load the service model),
        and a worker calls this from its task threads and from the event loop's
        thread alike.  All of them drive the same fsspec event loop, so one
        instance serves them all.
        """
        # the credentials botocore would find in the environment are part of the key, as a
        # changed AWS_* setting (a notebook, a test) must not reuse the old client
        key = (os.getpid(), self.endpoint_url, self.region, self.profile,
               *(os.environ.get(k) for k in _CREDENTIAL_ENV))
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            with _FILESYSTEMS_LOCK:
                fs = _FILESYSTEMS.get(key)
                if fs is None:
                    fs = _FILESYSTEMS[key] = self._new_filesystem()
        return fs

    def _new_filesystem(self):
        import s3fs
        from aiobotocore.session import AioSession

        client_kwargs: dict[str, Any] = {}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        if self.region:
            client_kwargs["region_name"] = self.region
        extra = {"profile": self.profile} if self.profile else {}
        # the session s3fs would make, with the process's shared model loader
        session = AioSession(**extra)
        session.register_component("data_loader", shared_loader(session))
        return s3fs.S3FileSystem(
            client_kwargs=client_kwargs, config_kwargs=DEFAULT_CLIENT_CONFIG,
            skip_instance_cache=True, session=session, **extra
        )

    @staticmethod
    async def _guarded(fs):
        client = await fs.set_session()
        guard_read_only(client)
        return client

    async def client(self):
        return await self._guarded(self.filesystem())

    def run(self, make_coro: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on s3fs' event loop from synchronous (Dask task) code."""
        fs = self.filesystem()

        async def _go():
            return await make_coro()

        return fsspec.asyn.sync(fs.loop, _go)


def error_text(exc: BaseException, op: str = "") -> str:
    """A one-line description of an S3 failure that keeps the S3 error code."""
    from botocore.exceptions import ClientError

    where = f"{op}: " if op else ""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "?")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        msg = err.get("Message") or ""
        return f"{where}HTTP {status} {code}{': ' + msg if msg else ''}".strip()
    return f"{where}{type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> str | None:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code"))
    return None


def preflight(target: S3Target, plain: bool = True) -> None:
    """Fail fast, with one clear sentence, when the destination cannot be used.

    A plain request (see :func:`wiseverify.core.headbucket.head_bucket_answered`)
    answered 200 is the verdict; anything else is asked through botocore.
    ``plain=False``: the caller has sent the plain request already, and it was not.
    """
    from wiseverify.core.headbucket import head_bucket_answered

    where = target.endpoint_url or "AWS S3"
    _probe_endpoint(target.endpoint_url)
    if plain and head_bucket_answered(target):
        return
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    async def _check():
        client = await target.client()
        await client.head_bucket(Bucket=target.bucket)

    try:
        target.run(_check)
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise S3ConfigError(
            f"no usable AWS credentials for {target.url} ({exc}); set AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role"
        ) from None
    except EndpointConnectionError:
        raise S3ConfigError(f"cannot reach the S3 endpoint {where}") from None
    except ClientError as exc:
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise S3ConfigError(f"bucket {target.bucket!r} does not exist at {where}") from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken", "AuthorizationHeaderMalformed"):
            raise S3ConfigError(
                f"the S3 endpoint {where} rejected the credentials ({code})"
            ) from None
        if code in ("403", "AccessDenied", "Forbidden") or status == 403:
            raise S3ConfigError(
                f"access denied to bucket {target.bucket!r} at {where} "
                "(check the credentials and the bucket policy)"
            ) from None
        raise S3ConfigError(f"cannot use {target.url}: {error_text(exc, 'HeadBucket')}") from None
    except Exception as exc:  # DNS failures, TLS errors, bad endpoint URLs
        text = str(exc) or type(exc).__name__
        raise S3ConfigError(f"cannot reach the S3 endpoint {where}: {text}") from None


def _probe_endpoint(endpoint_url: str | None, timeout: float = 5.0) -> None:
    """A refused or silent endpoint fails in seconds, before botocore's retries multiply it."""
    if not endpoint_url:
        return
    import socket

    u = urlsplit(endpoint_url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise S3ConfigError(f"--endpoint-url must be an http(s):// URL, got {endpoint_url!r}")
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise S3ConfigError(f"cannot reach the S3 endpoint {endpoint_url}: {reason}") from None


def strip_etag(etag: str | None) -> str | None:
    if etag is None:
        return None
    return etag.strip().strip('"')
