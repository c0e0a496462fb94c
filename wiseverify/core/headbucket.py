"""The preflight's HeadBucket, signed here when the request is plain.

Kept apart from :mod:`wiseverify.core.sigv4` (whose signer it uses): that module
is the hot paths' requests, this one a single request at start-up.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from wiseverify.core.sigv4 import Signer, host_header

#: what botocore would read instead of the environment's keys, or route the request through
_NOT_PLAIN_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "HTTP_PROXY", "HTTPS_PROXY",
                  "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


def head_bucket_answered(target: Any, timeout: float = 5.0) -> bool:
    """Whether a locally signed HeadBucket on ``target``'s explicit endpoint is answered 200.

    The preflight's check through botocore builds a session and a client
    first: about 0.35 s of CPU, on the path of every run before any work may
    start.  When the request is plain (an ``--endpoint-url``, the keys in the
    environment, no profile and no proxy), the same HeadBucket is signed here
    and sent path-style with the standard library.  Only a 200 is taken: any
    other outcome (a refusal, a redirect, a timeout, an endpoint that wants
    virtual-hosted addressing) returns False and the caller asks botocore,
    whose answer and message stand, so no refusal reads differently.
    Plain HTTP only: over TLS, which certificates to trust is botocore's
    setting (its bundle, ``AWS_CA_BUNDLE``), and it is asked.
    """
    import http.client
    import os

    env = os.environ
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    url = target.endpoint_url
    if (not url or target.profile or not key or not secret
            or any(env.get(name) for name in _NOT_PLAIN_ENV)):
        return False
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.path.strip("/"):
        return False  # an endpoint with a path of its own: how to address it is botocore's
    region = target.region or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    path = f"/{quote(target.bucket, safe='')}"
    signer = Signer(key, secret, env.get("AWS_SESSION_TOKEN") or None, region)
    headers = signer.headers(host_header(url), path, {}, method="HEAD")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("HEAD", path, headers=headers)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        conn.close()
