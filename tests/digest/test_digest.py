"""Digest vectors: CRC values, ranged CRC combining, multipart ETags and composites vs the endpoint."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import zlib

import pytest
from awscrt import checksums

from wiseverify.core import checksums as CHECKSUMS
from wiseverify.demo.locals3 import put_multipart
from wiseverify.digest import execute as EXECUTE
from wiseverify.digest import hashing as HASHING
from wiseverify.digest import units as D

MiB = 1 << 20


def test_crc64nvme_check_value():
    assert checksums.crc64nvme(b"123456789") == 0xAE8B14860A799888


def test_crc_s3_encoding():
    # S3 headers carry base64 of the big-endian CRC
    value = checksums.crc32(b"hello")
    assert CHECKSUMS.crc_b64("crc32", value) == base64.b64encode(value.to_bytes(4, "big")).decode()
    assert zlib.crc32(b"hello") == value


def _file(tmp_path, size, seed=1):
    data = random.Random(seed).randbytes(size)
    p = tmp_path / f"f{size}"
    p.write_bytes(data)
    return p, data


def _hash_in_ranges(path, data, spec, range_bytes):
    st = path.stat()
    item = D.FileItem(idx=0, path=str(path), size=len(data), mtime_ns=st.st_mtime_ns, spec=spec)
    ranges = D.split_file(item, range_bytes)
    results = [HASHING.hash_source_range(r) for r in ranges]
    random.Random(3).shuffle(results)  # combining must not depend on completion order
    return ranges, HASHING.combine_ranges(results, spec, len(data))


@pytest.mark.parametrize("algo", ["crc32", "crc32c", "crc64nvme"])
def test_range_combined_crc_equals_whole_file_crc(tmp_path, algo):
    path, data = _file(tmp_path, 37 * MiB + 4321)
    ranges, res = _hash_in_ranges(path, data, D.Spec(whole=(algo,)), 8 * MiB)
    assert len(ranges) == 5
    assert res["error"] is None
    assert res["crc"][algo] == CHECKSUMS.CRC_FUNCS[algo](data)


@pytest.mark.parametrize("part_size", [5 * MiB, 8 * MiB])
def test_rebuilt_multipart_etag_equals_endpoint(tmp_path, s3, bucket, part_size):
    path, data = _file(tmp_path, 3 * part_size + 777, seed=part_size)
    etag = put_multipart(s3.client(), bucket, "obj.bin", data, part_size)
    head = s3.client().head_object(Bucket=bucket, Key="obj.bin", PartNumber=1)
    assert head["PartsCount"] == 4 and head["ContentLength"] == part_size
    offsets = tuple(range(0, len(data), part_size))
    spec = D.Spec(whole=("crc64nvme",), parts=("md5",), part_offsets=offsets)
    # ranges smaller than a part still cut only at part boundaries
    ranges, res = _hash_in_ranges(path, data, spec, part_size)
    assert all(r.offset % part_size == 0 for r in ranges)
    assert CHECKSUMS.multipart_etag(res["parts"]["md5"]) == etag
    assert res["crc"]["crc64nvme"] == checksums.crc64nvme(data)
    # and a single corrupted byte in the middle part changes it
    bad = bytearray(data)
    bad[part_size + part_size // 2] ^= 1
    parts = [hashlib.md5(bytes(bad[o : o + part_size])).digest() for o in offsets]
    assert CHECKSUMS.multipart_etag(parts) != etag


@pytest.mark.parametrize("part_size", [5 * MiB, 8 * MiB])
@pytest.mark.parametrize("kernel", ["avx2x2", "avx2", "scalar", "hashlib"])
def test_parts_in_lanes_give_the_endpoints_etag(tmp_path, s3, bucket, part_size, kernel,
                                                monkeypatch):
    """Every part of a range its own MD5 stream, side by side in lanes; CRCs folded per part."""
    from wiseverify.core import md5lanes

    monkeypatch.setenv(md5lanes.ENV_KERNEL, kernel)
    assert md5lanes.kernel() == kernel  # this machine runs every one of these
    path, data = _file(tmp_path, 19 * part_size + 4097, seed=part_size + 1)
    etag = put_multipart(s3.client(), bucket, f"lanes-{kernel}.bin", data, part_size)
    offsets = tuple(range(0, len(data), part_size))
    spec = D.Spec(whole=("crc64nvme",), parts=("md5", "crc32c"), part_offsets=offsets)
    # one range of all 20 parts (more than a lane group), and ranges of 3 parts
    for range_bytes in (len(data), 3 * part_size):
        ranges, res = _hash_in_ranges(path, data, spec, range_bytes)
        assert res["error"] is None and res["bytes"] == len(data)
        assert CHECKSUMS.multipart_etag(res["parts"]["md5"]) == etag
        assert res["crc"]["crc64nvme"] == checksums.crc64nvme(data)
        assert res["parts"]["crc32c"] == [checksums.crc32c(data[o:o + part_size])
                                          for o in offsets]


def test_small_files_batched_in_lanes_keep_every_rule(tmp_path, monkeypatch):
    """run_unit's batch of small files: same digests and the same error rows as one by one."""
    from wiseverify.core import md5lanes

    monkeypatch.setenv(md5lanes.ENV_KERNEL, "avx2x2")
    rnd = random.Random(4)
    items, datas = [], []
    for i in range(300):
        data = rnd.randbytes(rnd.choice([0, 1, 63, 64, 65, 1000, 70_000]))
        p = tmp_path / f"s{i}"
        p.write_bytes(data)
        spec = D.Spec(whole=("md5", "crc64nvme") if i % 2 else ("md5", "sha256"))
        items.append(D.FileItem(idx=i, path=str(p), size=len(data),
                                mtime_ns=p.stat().st_mtime_ns, spec=spec))
        datas.append(data)
    (tmp_path / "s7").unlink()  # vanished
    os.truncate(tmp_path / "s9", 0)  # changed since listing
    items[9] = D.FileItem(idx=9, path=items[9].path, size=len(datas[9]) or 1,
                          mtime_ns=items[9].mtime_ns, spec=items[9].spec)
    ranges = [D.RangeTask(it, 0, it.size) for it in items]
    got = HASHING.hash_source_ranges(ranges)
    monkeypatch.setenv(md5lanes.ENV_KERNEL, "hashlib")
    assert got == [HASHING.hash_source_range(r) for r in ranges]
    assert got[7]["error"] == "cannot open: vanished since listing"
    assert got[9]["error"].startswith("changed since listing")
    for i in (1, 2, 299):
        assert got[i]["hash"]["md5"] == hashlib.md5(datas[i]).digest()


def test_large_single_part_files_side_by_side_in_lanes(tmp_path, monkeypatch):
    """Single-part files above the buffer size: one stream each, paired across files."""
    from wiseverify.core import md5lanes

    rnd = random.Random(8)
    ranges, datas = [], []
    for i in range(40):  # more than one batch of files in lanes
        data = rnd.randbytes(MiB + rnd.randint(1, 3 * MiB))
        p = tmp_path / f"b{i}"
        p.write_bytes(data)
        spec = D.Spec(whole=("md5", "crc64nvme") if i % 3 else ("md5", "sha256", "crc32c"))
        item = D.FileItem(idx=i, path=str(p), size=len(data), mtime_ns=p.stat().st_mtime_ns,
                          spec=spec)
        ranges.append(D.RangeTask(item, 0, len(data)))
        datas.append(data)
    (tmp_path / "b3").unlink()
    os.truncate(tmp_path / "b5", MiB)  # shorter than listed
    monkeypatch.setenv(md5lanes.ENV_KERNEL, "avx2x2")
    got = HASHING.hash_source_ranges(ranges)
    monkeypatch.setenv(md5lanes.ENV_KERNEL, "hashlib")
    assert got == HASHING.hash_source_ranges(ranges)
    assert got[3]["error"] == "cannot open: vanished since listing"
    assert got[5]["error"].startswith("changed since listing")
    assert got[0]["hash"]["md5"] == hashlib.md5(datas[0]).digest()
    assert got[1]["crc"]["crc64nvme"] == checksums.crc64nvme(datas[1])
    assert got[0]["hash"]["sha256"] == hashlib.sha256(datas[0]).digest()


def test_composite_sha256_equals_endpoint(tmp_path, s3, bucket):
    path, data = _file(tmp_path, 2 * 5 * MiB + 99, seed=9)
    client = s3.client(checksums=True)
    put_multipart(client, bucket, "c.bin", data, 5 * MiB, checksum="SHA256")
    stored = client.head_object(Bucket=bucket, Key="c.bin", ChecksumMode="ENABLED")
    offsets = (0, 5 * MiB, 10 * MiB)
    spec = D.Spec(whole=(), parts=("sha256",), part_offsets=offsets)
    _, res = _hash_in_ranges(path, data, spec, 5 * MiB)
    assert CHECKSUMS.composite("sha256", res["parts"]["sha256"]) == stored["ChecksumSHA256"].split("-")[0]


def test_single_part_crc64nvme_equals_endpoint(tmp_path, s3, bucket):
    path, data = _file(tmp_path, 3 * MiB + 5, seed=11)
    client = s3.client(checksums=True)
    client.put_object(Bucket=bucket, Key="s.bin", Body=data, ChecksumAlgorithm="CRC64NVME")
    stored = client.head_object(Bucket=bucket, Key="s.bin", ChecksumMode="ENABLED")
    _, res = _hash_in_ranges(path, data, D.Spec(whole=("crc64nvme",)), MiB)
    assert CHECKSUMS.crc_b64("crc64nvme", res["crc"]["crc64nvme"]) == stored["ChecksumCRC64NVME"]


def test_changed_file_is_an_error_not_a_digest(tmp_path):
    path, data = _file(tmp_path, 1000)
    st = path.stat()
    item = D.FileItem(idx=0, path=str(path), size=len(data), mtime_ns=st.st_mtime_ns,
                      spec=D.Spec(whole=("md5",)))
    with open(path, "ab") as f:
        f.write(b"more")
    res = HASHING.hash_source_range(D.RangeTask(item, 0, len(data)))
    assert res["error"] and "changed since listing" in res["error"]
    os.unlink(path)
    res = HASHING.hash_source_range(D.RangeTask(item, 0, len(data)))
    assert res["error"] == "cannot open: vanished since listing"


def test_fifo_swapped_in_does_not_hang(tmp_path):
    p = tmp_path / "was_a_file"
    os.mkfifo(p)
    item = D.FileItem(idx=0, path=str(p), size=10, mtime_ns=0, spec=D.Spec(whole=("md5",)))
    res = HASHING.hash_source_range(D.RangeTask(item, 0, 10))
    assert res["error"] == "no longer a regular file"


def test_units_pack_small_files_and_split_large_ones():
    spec = D.Spec(whole=("crc64nvme",))
    items = [D.FileItem(i, f"/x/{i}", 1000, 0, spec) for i in range(50)]
    items.append(D.FileItem(99, "/x/big", 100 * MiB, 0, spec))
    units = D.make_units(items, unit_bytes=64 * MiB, unit_files=20, range_bytes=32 * MiB)
    covered = sum(r.length for u in units for r in u.ranges)
    assert covered == 50 * 1000 + 100 * MiB
    assert max(len(u.ranges) for u in units) <= 20
    big = [r for u in units for r in u.ranges if r.item.idx == 99]
    assert len(big) == 4 and big[0].offset == 0
    # MD5 cannot be combined: such a file stays in one range
    md5 = D.FileItem(7, "/x/m", 100 * MiB, 0, D.Spec(whole=("md5",)))
    assert len(D.split_file(md5, 8 * MiB)) == 1


def _mp(size, offsets):
    spec = D.Spec(whole=("crc64nvme",), parts=("md5",), part_offsets=tuple(offsets))
    return D.FileItem(1, "/x/mp", size, 0, spec)


def _contiguous(ranges, item):
    bounds = set(item.spec.part_offsets)
    assert ranges[0].offset == 0 and sum(r.length for r in ranges) == item.size
    assert all(a.offset + a.length == b.offset for a, b in zip(ranges, ranges[1:], strict=False))
    assert all(r.offset in bounds for r in ranges)


def test_multipart_ranges_fill_the_md5_lanes():
    """A range of a multipart object holds a lane's worth of parts, evenly shared."""
    part = 8 * MiB
    size = 130 * part + 12345
    item = _mp(size, range(0, size, part))
    ranges = D.split_file(item, 50 * MiB, min_parts=16)
    _contiguous(ranges, item)
    counts = [len(HASHING._parts_of(r)) for r in ranges]
    assert len(ranges) == 8 and min(counts) >= 16 and max(counts) - min(counts) <= 1
    # with one lane (hashlib) the range size alone decides: 50 MiB shares of 8 MiB parts
    one = D.split_file(item, 50 * MiB, min_parts=1)
    _contiguous(one, item)
    assert len(one) == 21 and max(r.length for r in one) <= 56 * MiB
    # an object with fewer parts than lanes is one range
    small = _mp(10 * part, range(0, 10 * part, part))
    assert len(D.split_file(small, 32 * MiB, min_parts=16)) == 1


def test_multipart_ranges_of_large_parts_stay_one_per_core():
    """Parts of 1 GiB: filling 16 lanes would make one 16 GiB task; a range per part stays."""
    part = 1 << 30
    item = _mp(20 * part, range(0, 20 * part, part))
    ranges = D.split_file(item, 256 * MiB, min_parts=16)
    _contiguous(ranges, item)
    assert len(ranges) == 20


def test_multipart_ranges_of_an_irregular_layout_are_shared_by_bytes():
    """20 parts of 5 MiB then 20 of 500 MiB: the small ones together, then one large each."""
    offsets = [i * 5 * MiB for i in range(20)] + [100 * MiB + i * 500 * MiB for i in range(20)]
    item = _mp(100 * MiB + 20 * 500 * MiB, offsets)
    ranges = D.split_file(item, 256 * MiB, min_parts=16)
    _contiguous(ranges, item)
    assert max(r.length for r in ranges) <= 600 * MiB
    assert len(HASHING._parts_of(ranges[0])) == 21


# --- readback GETs signed locally (wiseverify.digest.getrange) -----------------------------

HOSTILE_KEYS = ["plain.bin", "sp ace/\u00fc+%2F~x", "a//b", "/lead", "trail/", "emoji \U0001F600",
                "q?x#y&z=1", "semi;colon,comma=eq", "NFD e\u0301"]


@pytest.mark.parametrize("token", [None, "to/ken+=="])
def test_signer_matches_botocore_sigv4(monkeypatch, token):
    """The locally built Authorization header is botocore's, byte for byte."""
    import datetime
    from urllib.parse import quote

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from botocore.utils import percent_encode_sequence

    from wiseverify.core.sigv4 import Signer, canonical_query, host_header

    now = datetime.datetime(2026, 11, 26, 15, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    creds = Credentials("AKIDEXAMPLE", "se/cret+key", token)
    signer = Signer("AKIDEXAMPLE", "se/cret+key", token, "eu-west-1")
    for origin, base in (("https://bkt.s3.eu-west-1.amazonaws.com", ""),
                         ("http://127.0.0.1:9000", "/bkt"), ("https://s3.example.org:443", "/b"),
                         ("https://[::1]:8443", "/bkt")):
        for key in HOSTILE_KEYS:
            path = f"{base}/{quote(key.encode(), safe='/~')}"
            extra = {"Range": "bytes=5-99", "x-amz-checksum-mode": "ENABLED"}
            req = AWSRequest("GET", origin + path, headers=dict(extra))
            botocore.auth.S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(req)
            ours = signer.headers(host_header(origin + path), path, extra,
                                  amz_date="20261126T150405Z")
            assert ours["Authorization"] == req.headers["Authorization"], (origin, key)
            for h in ("X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token"):
                assert ours.get(h) == req.headers.get(h)
        # a listing page: the query string signed, as botocore encodes and sorts it
        for key in HOSTILE_KEYS:
            params = {"list-type": "2", "prefix": key, "encoding-type": "url",
                      "continuation-token": "1/+x=="}
            query = canonical_query(params)
            assert query == "&".join(sorted(percent_encode_sequence(params).split("&")))
            req = AWSRequest("GET", f"{origin}{base or '/'}?{query}")
            botocore.auth.S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(req)
            ours = signer.headers(host_header(origin), base or "/", {},
                                  amz_date="20261126T150405Z", query=query)
            assert ours["Authorization"] == req.headers["Authorization"], (origin, key)


def _readback(target, bucket, ranges, fast: bool, via_send: bool = False):
    """hash_object_range over ``ranges``, with or without the locally signed path.

    ``via_send`` sends the signed requests through the client's HTTP layer, the
    way taken behind a proxy, instead of straight on its aiohttp session.
    """
    from wiseverify.core.bursts import gather_limited
    from wiseverify.digest.getrange import RangeGetter

    box = {}

    async def go():
        client = await target.client()
        getter = await RangeGetter.for_client(client, bucket) if fast else None
        if getter is not None:
            assert getter.endpoint.session is not None
            if via_send:
                getter.endpoint.session = None
        box["getter"] = getter
        return await gather_limited(
            ranges, lambda r: EXECUTE.hash_object_range(client, bucket, r, getter), 8)

    return target.run(go), box["getter"]


def _readback_fixture(s3, bucket):
    rng = random.Random(3)
    plain, crc = s3.client(), s3.client(checksums=True)
    spec = D.Spec(whole=("md5", "crc64nvme"))
    ranges = []
    for i, key in enumerate(HOSTILE_KEYS):
        data = rng.randbytes(rng.randint(1, 200_000))
        kw = {"ChecksumAlgorithm": "CRC64NVME"} if i % 2 else {}
        (crc if i % 2 else plain).put_object(Bucket=bucket, Key="p/" + key, Body=data,
                                             Metadata={"file-owner": str(i), "Mixed-Case": "V"},
                                             **kw)
        item = D.FileItem(i, "/unused", len(data), 0, spec, "p/" + key)
        ranges.append(D.RangeTask(item, 0, len(data)))
        if len(data) > 10:
            ranges.append(D.RangeTask(item, 7, len(data) - 7))
    missing = D.FileItem(99, "/unused", 10, 0, spec, "p/missing.bin")
    ranges.append(D.RangeTask(missing, 0, 10))
    return ranges


@pytest.mark.parametrize("via_send", [False, True])
def test_locally_signed_gets_equal_botocore_gets(s3, bucket, via_send):
    """Same URL as botocore's for awkward keys, same digests, metadata and error text."""
    from wiseverify.core.s3 import S3Target

    ranges = _readback_fixture(s3, bucket)
    target = S3Target(bucket, "p/", s3.url)
    ref, _ = _readback(target, bucket, ranges, fast=False)
    got, getter = _readback(target, bucket, ranges, fast=True, via_send=via_send)
    assert getter is not None
    assert got == ref
    assert ref[-1]["error"].startswith("GetObject: HTTP 404 NoSuchKey")
    assert all(r["error"] is None for r in ref[:-1])
    assert ref[0]["metadata"] == {"file-owner": "0", "mixed-case": "V"}
    assert getter.served == len(ranges) - 1 and getter.repeated == 1

    sent = []

    async def urls():
        client = await target.client()

        def grab(request, **kw):
            sent.append(request.url)

        client.meta.events.register("before-send.s3.GetObject", grab)
        try:
            for key in HOSTILE_KEYS:
                resp = await client.get_object(Bucket=bucket, Key="p/" + key, Range="bytes=0-0")
                async with resp["Body"] as b:
                    await b.read()
        finally:
            client.meta.events.unregister("before-send.s3.GetObject", grab)

    target.run(urls)
    assert sent == [getter.url("p/" + k) for k in HOSTILE_KEYS]


@pytest.mark.parametrize("via_send", [False, True])
def test_locally_signed_gets_fall_back_on_faults(s3, bucket, via_send):
    """500/503 SlowDown, resets and a 403 on the local path: botocore repeats, same results."""
    from wiseverify.core.s3 import S3Target

    from ..s3proxy import Faults, S3Proxy

    ranges = _readback_fixture(s3, bucket)
    ref, _ = _readback(S3Target(bucket, "p/", s3.url), bucket, ranges, fast=False)
    faults = Faults(deny_keys=("trail/",), error_every=3, reset_every=7)
    with S3Proxy(s3.url, faults) as proxy:
        got, getter = _readback(S3Target(bucket, "p/", proxy.url), bucket, ranges, fast=True,
                                via_send=via_send)
    denied = [i for i, r in enumerate(ranges) if r.item.dst_key == "p/trail/"]
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        if i in denied:
            assert a["error"] == "GetObject: HTTP 403 AccessDenied: Access Denied"
            assert "Signature" not in a["error"]
        else:
            assert a == b
    assert proxy.injected["error"] > 0 and proxy.injected["reset"] > 0
    assert getter.served > 0 and getter.repeated > len(denied)
