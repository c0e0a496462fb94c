"""Locally signed HeadObject: botocore's output fields, botocore's errors."""

from __future__ import annotations

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
