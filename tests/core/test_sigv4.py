"""Locally signed HeadObject: botocore's output fields, botocore's errors."""

from __future__ import annotations

import os
import subprocess
import sys

from wiseverify.core.s3 import S3Target, error_text
from wiseverify.core.sigv4 import HEAD_FIELDS, head_reader

KEYS = ["plain.bin", "sp ace/\u00fc+%2F~x", "a//b", "q?x#y&z=1", "NFD e\u0301"]


def _heads(target: S3Target, calls: list[tuple[str, int | None, bool]], signed: bool):
    async def go():
        client = await target.client()
        reader = await head_reader(client, target.bucket)
        saved = reader.endpoint
        if not signed:
            reader.endpoint = None
        out = []
        try:
            for key, part, mode in calls:
                try:
                    h = await reader.head(key, part, mode)
                    out.append({k: v for k, v in h.items() if k in FIELDS})
                except Exception as exc:
                    out.append(error_text(exc, "HeadObject"))
        finally:
            reader.endpoint = saved
        return out, (reader.served, reader.repeated)

    return target.run(go)


FIELDS = {name for name, _ in HEAD_FIELDS.values()} | {"Metadata"}


def test_signed_heads_equal_botocore_heads(s3, bucket):
    plain, crc = s3.client(), s3.client(checksums=True)
    for i, key in enumerate(KEYS):
        kw = {"ChecksumAlgorithm": "CRC64NVME"} if i % 2 else {}
        (crc if i % 2 else plain).put_object(
            Bucket=bucket, Key="h/" + key, Body=b"x" * (i + 1), StorageClass="STANDARD_IA",
            Metadata={"file-mtime": f"{i}ns", "file-owner": "1000"}, **kw)
    mp = plain.create_multipart_upload(Bucket=bucket, Key="h/multi", Metadata={"k": "v"})
    parts = []
    for n, size in ((1, 5 << 20), (2, 1234)):
        r = plain.upload_part(Bucket=bucket, Key="h/multi", UploadId=mp["UploadId"],
                              PartNumber=n, Body=b"m" * size)
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    plain.complete_multipart_upload(Bucket=bucket, Key="h/multi", UploadId=mp["UploadId"],
                                    MultipartUpload={"Parts": parts})
    calls = [("h/" + k, None, mode) for k in KEYS for mode in (False, True)]
    calls += [("h/multi", None, True), ("h/multi", 1, True), ("h/multi", 2, False),
              ("h/missing", None, True), ("h/a//b", 1, False)]
    target = S3Target(bucket, "h/", s3.url)
    ref, _ = _heads(target, calls, signed=False)
    got, (served, repeated) = _heads(target, calls, signed=True)
    assert got == ref
    assert served == len(calls) and repeated == 0  # the 404 is botocore's error, not asked twice
    assert ref[1]["Metadata"] == {"file-mtime": "0ns", "file-owner": "1000"}
    assert ref[3]["ChecksumCRC64NVME"] and ref[3]["StorageClass"] == "STANDARD_IA"
    assert ref[-4]["ContentLength"] == 5 << 20 and ref[-4]["PartsCount"] == 2
    assert ref[-2].startswith("HeadObject: HTTP 404")
    assert ref[-1]["ContentLength"] == 3  # PartNumber=1 of a single-part object


def test_one_reader_per_client_and_bucket(s3, bucket):
    target = S3Target(bucket, "", s3.url)

    async def go():
        client = await target.client()
        a = await head_reader(client, bucket)
        b = await head_reader(client, bucket)
        c = await head_reader(client, bucket + "-other")
        return a is b, a is not c, a.endpoint is not None

    assert target.run(go) == (True, True, True)


# --- the preflight's plain HeadBucket --------------------------------------------------


def test_plain_head_bucket_answers_only_a_200(s3, bucket, monkeypatch):
    from wiseverify.core.headbucket import head_bucket_answered

    assert head_bucket_answered(S3Target(bucket, "x/", s3.url))
    assert not head_bucket_answered(S3Target("no-such-bucket-xyz", "", s3.url))
    assert not head_bucket_answered(S3Target(bucket, "", s3.url.replace("http:", "https:")))
    assert not head_bucket_answered(S3Target(bucket, "", None))  # AWS itself: botocore's rules
    assert not head_bucket_answered(S3Target(bucket, "", s3.url + "/s3"))  # a path of its own
    assert not head_bucket_answered(S3Target(bucket, "", s3.url, profile="other"))
    monkeypatch.setenv("AWS_PROFILE", "other")  # a profile's keys may not be the environment's
    assert not head_bucket_answered(S3Target(bucket, "", s3.url))
    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # botocore would use the proxy
    assert not head_bucket_answered(S3Target(bucket, "", s3.url))
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert not head_bucket_answered(S3Target(bucket, "", s3.url))


def test_plain_head_bucket_is_signed_as_botocore_signs(s3, bucket, monkeypatch):
    """Through a proxy that records the request: the Authorization botocore would send."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from wiseverify.core.headbucket import head_bucket_answered

    from ..s3proxy import S3Proxy

    with S3Proxy(s3.url) as proxy:
        assert head_bucket_answered(S3Target(bucket, "", proxy.url))
        (method, path), = proxy.requests
        sent = proxy.headers[-1]
    assert (method, path) == ("HEAD", f"/{bucket}")
    req = AWSRequest("HEAD", f"{proxy.url}/{bucket}", headers={
        "X-Amz-Date": sent["X-Amz-Date"], "X-Amz-Content-SHA256": sent["X-Amz-Content-SHA256"]})
    creds = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    auth = S3SigV4Auth(creds, "s3", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    import datetime

    import botocore.auth

    # botocore signs at the instant the request was signed here
    signed_at = datetime.datetime.strptime(sent["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: signed_at)
    auth.add_auth(req)
    assert sent["Authorization"] == req.headers["Authorization"]


def test_plain_preflight_loads_no_botocore(s3, bucket):
    """The point of the plain request: the preflight's verdict without botocore's start-up."""
    code = ("import sys; from wiseverify.core.s3 import S3Target, preflight; "
            f"preflight(S3Target({bucket!r}, '', {s3.url!r})); "
            "print(sorted(m for m in ('botocore', 'aiobotocore', 's3fs') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
