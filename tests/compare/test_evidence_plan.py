"""The per-row evidence plan (``evidence.plan_one``) on the paths the end-to-end runs rarely take.

Each case uploads real objects to the moto endpoint and plans one row against
them, so the HEADs, PartsCount and part lengths are the endpoint's own.
"""

from __future__ import annotations

import os

from wiseverify.compare import evidence as E
from wiseverify.core.s3 import S3Target
from wiseverify.demo.locals3 import put_multipart

from ..s3proxy import Faults, S3Proxy

MiB = 1 << 20


def _row(key: str, size: int, etag: str, algos: str | None = None) -> dict:
    return {"src_size": size, "dst_rel": key, "dst_etag": etag, "dst_checksum_algorithm": algos}


def _plan(url: str, bucket: str, row: dict, metadata: str = "auto") -> E.Evidence:
    target = S3Target.parse(f"s3://{bucket}/", endpoint_url=url)
    return E.plan_evidence([row], target, "stored", metadata, 4 * MiB)[0]


def test_irregular_layout_found_at_plan_time(s3, bucket):
    """Part 1 smaller than the others: the arithmetic fails, so every part is HEADed."""
    sizes = [5 * MiB, 7 * MiB, 7 * MiB, 2 * MiB]  # 3 x 5 MiB + a tail cannot reach 21 MiB
    etag = put_multipart(s3.client(), bucket, "irr.bin", os.urandom(sum(sizes)), sizes)
    ev = _plan(s3.url, bucket, _row("irr.bin", sum(sizes), etag))
    assert ev.error is None and ev.kind == "etag-multipart"
    assert ev.spec.part_offsets == (0, 5 * MiB, 12 * MiB, 19 * MiB)
    assert ev.parts == 4 and ev.part_size is None and not ev.layout_assumed
    assert ev.layout == "parts 5242880 + 2 x 7340032 + 2097152 (HeadObject of every part)"
    assert ev.requests == 4  # part 1, then parts 2..4


def test_uniform_layout_is_assumed_and_marked(s3, bucket):
    data = os.urandom(13 * MiB + 5)
    etag = put_multipart(s3.client(), bucket, "uni.bin", data, 5 * MiB)
    ev = _plan(s3.url, bucket, _row("uni.bin", len(data), etag))
    assert ev.spec.part_offsets == (0, 5 * MiB, 10 * MiB)
    assert ev.part_size == 5 * MiB and ev.layout_assumed and ev.layout is None
    assert ev.requests == 1


def test_parts_count_disagreeing_with_the_etag_is_dest_error(s3, bucket):
    """The listing's ETag says 5 parts, HeadObject says 4: no layout can be trusted."""
    data = os.urandom(16 * MiB)
    etag = put_multipart(s3.client(), bucket, "pc.bin", data, 5 * MiB)
    wrong = etag.rsplit("-", 1)[0] + "-5"
    ev = _plan(s3.url, bucket, _row("pc.bin", len(data), wrong))
    assert ev.error == "ETag says 5 parts but HeadObject reports PartsCount 4"


def test_part_lengths_disagreeing_with_the_size_is_dest_error(s3, bucket):
    """A listed size the parts do not add up to (an object replaced since the listing)."""
    sizes = [5 * MiB, 7 * MiB, 1 * MiB]
    etag = put_multipart(s3.client(), bucket, "sz.bin", os.urandom(sum(sizes)), sizes)
    listed = sum(sizes) + 3 * MiB  # beyond 3 parts of 5 MiB: the parts are HEADed
    ev = _plan(s3.url, bucket, _row("sz.bin", listed, etag))
    assert ev.error == f"part lengths add up to {sum(sizes)}, object size is {listed}"


def test_ambiguous_multipart_crc32_accepts_either_reading(s3, bucket):
    """A multipart CRC32 whose type HeadObject does not report: FULL_OBJECT or COMPOSITE."""
    data = os.urandom(11 * MiB)
    client = s3.client(checksums=True)
    etag = put_multipart(client, bucket, "c32.bin", data, 5 * MiB, checksum="CRC32")
    head = client.head_object(Bucket=bucket, Key="c32.bin", ChecksumMode="ENABLED")
    assert head.get("ChecksumType") is None  # what makes it ambiguous
    ev = _plan(s3.url, bucket, _row("c32.bin", len(data), etag, "CRC32"))
    assert ev.kind == "crc32-composite" and ev.algo == "crc32"
    assert ev.expected == head["ChecksumCRC32"].split("-")[0]
    # the full-object reading is kept as the alternative, and both digests are computed
    assert ev.alternatives == [("crc32", "crc32", head["ChecksumCRC32"])]
    assert "crc32" in ev.spec.whole and ev.spec.parts == ("crc32",)


def test_failed_head_of_an_object_whose_metadata_is_required_is_dest_error(s3, bucket):
    """Without metadata required the ETag proves a small object; with it, the HEAD must answer."""
    s3.client().put_object(Bucket=bucket, Key="deny/x.txt", Body=b"abc")
    etag = s3.client().head_object(Bucket=bucket, Key="deny/x.txt")["ETag"].strip('"')
    with S3Proxy(s3.url, Faults(deny_keys=("deny/",))) as proxy:
        row = _row("deny/x.txt", 3, etag)
        assert _plan(proxy.url, bucket, row, "auto").kind == "etag-md5"  # no HEAD wanted
        ev = _plan(proxy.url, bucket, row, "all")
    assert ev.error is not None and ev.error.startswith("HeadObject: HTTP 403")


def test_rows_settled_by_the_listing_build_no_client(s3, bucket, monkeypatch):
    """A small single-part object is proven by its listed ETag: no request, and no client
    built for it; a row that needs a HEAD still gets one, made once for the partition."""
    etag = s3.client().put_object(Bucket=bucket, Key="small.txt", Body=b"abc")["ETag"].strip('"')
    made = []
    real = S3Target.client

    async def counting(self):
        made.append(1)
        return await real(self)

    monkeypatch.setattr(S3Target, "client", counting)
    target = S3Target.parse(f"s3://{bucket}/", endpoint_url=s3.url)
    small = [_row("small.txt", 3, etag)] * 3
    evs = E.plan_evidence(small, target, "stored", "off", 4 * MiB)
    assert [e.kind for e in evs] == ["etag-md5"] * 3 and not made
    evs = E.plan_evidence(small, target, "stored", ["all", "all", "off"], 4 * MiB)
    assert [e.requests for e in evs] == [1, 1, 0] and made == [1]
