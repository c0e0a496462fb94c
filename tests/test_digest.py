"""Digest vectors: CRC values, ranged CRC combining, multipart ETags and composites vs the endpoint."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import zlib

import pytest
from awscrt import checksums

from wiseverify import digest as D
from wiseverify.locals3 import put_multipart

MiB = 1 << 20


def test_crc64nvme_check_value():
    assert checksums.crc64nvme(b"123456789") == 0xAE8B14860A799888


def test_crc_s3_encoding():
    # S3 headers carry base64 of the big-endian CRC
    value = checksums.crc32(b"hello")
    assert D.crc_b64("crc32", value) == base64.b64encode(value.to_bytes(4, "big")).decode()
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
    results = [D.hash_source_range(r) for r in ranges]
    random.Random(3).shuffle(results)  # combining must not depend on completion order
    return ranges, D.combine_ranges(results, spec, len(data))


@pytest.mark.parametrize("algo", ["crc32", "crc32c", "crc64nvme"])
def test_range_combined_crc_equals_whole_file_crc(tmp_path, algo):
    path, data = _file(tmp_path, 37 * MiB + 4321)
    ranges, res = _hash_in_ranges(path, data, D.Spec(whole=(algo,)), 8 * MiB)
    assert len(ranges) == 5
    assert res["error"] is None
    assert res["crc"][algo] == D.CRC_FUNCS[algo](data)


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
    assert D.multipart_etag(res["parts"]["md5"]) == etag
    assert res["crc"]["crc64nvme"] == checksums.crc64nvme(data)
    # and a single corrupted byte in the middle part changes it
    bad = bytearray(data)
    bad[part_size + part_size // 2] ^= 1
    parts = [hashlib.md5(bytes(bad[o : o + part_size])).digest() for o in offsets]
    assert D.multipart_etag(parts) != etag


def test_composite_sha256_equals_endpoint(tmp_path, s3, bucket):
    path, data = _file(tmp_path, 2 * 5 * MiB + 99, seed=9)
    client = s3.client(checksums=True)
    put_multipart(client, bucket, "c.bin", data, 5 * MiB, checksum="SHA256")
    stored = client.head_object(Bucket=bucket, Key="c.bin", ChecksumMode="ENABLED")
    offsets = (0, 5 * MiB, 10 * MiB)
    spec = D.Spec(whole=(), parts=("sha256",), part_offsets=offsets)
    _, res = _hash_in_ranges(path, data, spec, 5 * MiB)
    assert D.composite("sha256", res["parts"]["sha256"]) == stored["ChecksumSHA256"].split("-")[0]


def test_single_part_crc64nvme_equals_endpoint(tmp_path, s3, bucket):
    path, data = _file(tmp_path, 3 * MiB + 5, seed=11)
    client = s3.client(checksums=True)
    client.put_object(Bucket=bucket, Key="s.bin", Body=data, ChecksumAlgorithm="CRC64NVME")
    stored = client.head_object(Bucket=bucket, Key="s.bin", ChecksumMode="ENABLED")
    _, res = _hash_in_ranges(path, data, D.Spec(whole=("crc64nvme",)), MiB)
    assert D.crc_b64("crc64nvme", res["crc"]["crc64nvme"]) == stored["ChecksumCRC64NVME"]


def test_changed_file_is_an_error_not_a_digest(tmp_path):
    path, data = _file(tmp_path, 1000)
    st = path.stat()
    item = D.FileItem(idx=0, path=str(path), size=len(data), mtime_ns=st.st_mtime_ns,
                      spec=D.Spec(whole=("md5",)))
    with open(path, "ab") as f:
        f.write(b"more")
    res = D.hash_source_range(D.RangeTask(item, 0, len(data)))
    assert res["error"] and "changed since listing" in res["error"]
    os.unlink(path)
    res = D.hash_source_range(D.RangeTask(item, 0, len(data)))
    assert res["error"] == "cannot open: vanished since listing"


def test_fifo_swapped_in_does_not_hang(tmp_path):
    p = tmp_path / "was_a_file"
    os.mkfifo(p)
    item = D.FileItem(idx=0, path=str(p), size=10, mtime_ns=0, spec=D.Spec(whole=("md5",)))
    res = D.hash_source_range(D.RangeTask(item, 0, 10))
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
