"""POSIX metadata under the default ``--metadata auto``, and irregular multipart layouts.

Real moto endpoint behind the recording proxy, real Dask cluster: the proxy's
request log shows which objects were HEADed, and how.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from wiseverify.compare.metascope import SAMPLE_PER_PREFIX
from wiseverify.core import schema as S
from wiseverify.demo.locals3 import posix_metadata, put_multipart
from wiseverify.report.summary import format_table, result_line

from ..conftest import read_table
from ..s3proxy import S3Proxy

MiB = 1 << 20
IRREGULAR = [6 * MiB, 5 * MiB, 7 * MiB, 1 * MiB]


def _verify(dask_client, root: Path, dest: str, out: Path, endpoint: str, **kw):
    from wiseverify.core.config import VerifyConfig
    from wiseverify.run.driver import verify

    cfg = VerifyConfig(source=str(root), dest=dest, out=str(out), endpoint_url=endpoint, **kw)
    return verify(cfg, dask_client, log=None), read_table(out)


def _heads(proxy: S3Proxy, bucket: str) -> list[tuple[str, str]]:
    """(key, query) of every HeadObject the run sent (HeadBucket excluded)."""
    out = []
    for method, path in proxy.requests:
        if method != "HEAD":
            continue
        p, _, q = path.partition("?")
        key = p.lstrip("/").removeprefix(bucket).lstrip("/")
        if key:
            out.append((key, q))
    return out


def _small_tree(root: Path, client, bucket: str, prefix: str, sub: str, n: int,
                with_metadata: bool, rng: random.Random) -> list[str]:
    keys = []
    for i in range(n):
        rel = f"{sub}/d{i % 3}/f{i:03d}.txt"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(0, 2000)))
        meta = posix_metadata(p.lstat()) if with_metadata else {}
        client.put_object(Bucket=bucket, Key=prefix + rel, Body=p.read_bytes(), Metadata=meta)
        keys.append(rel)
    return keys


def _put_wrong(client, bucket: str, key: str, root: Path, rel: str, **change) -> None:
    """Upload ``rel`` again with one stored POSIX field wrong."""
    p = root / rel
    meta = posix_metadata(p.lstat()) | change
    client.put_object(Bucket=bucket, Key=key, Body=p.read_bytes(), Metadata=meta)


def test_datasync_tree_wrong_metadata_is_caught_by_default(s3, bucket, tmp_path, dask_client):
    """Every object carries file-*: a wrong mtime, mode or owner on a small object is
    METADATA_MISMATCH under the default flags, naming the field; the rest compared MATCH."""
    rng = random.Random(11)
    root = tmp_path / "src"
    c = s3.client(checksums=False)
    keys = _small_tree(root, c, bucket, "ds/", "study1", 90, True, rng)
    st = (root / keys[5]).lstat()
    _put_wrong(c, bucket, "ds/" + keys[5], root, keys[5],
               **{"file-mtime": f"{st.st_mtime_ns + 7_000_000_000}ns"})
    _put_wrong(c, bucket, "ds/" + keys[17], root, keys[17], **{"file-permissions": "0100600"})
    _put_wrong(c, bucket, "ds/" + keys[42], root, keys[42], **{"file-owner": "4242"})
    with S3Proxy(s3.url) as proxy:
        summary, table = _verify(dask_client, root, f"s3://{bucket}/ds/", tmp_path / "r",
                                 proxy.url)
    for k, field in ((keys[5], "mtime"), (keys[17], "mode"), (keys[42], "uid")):
        assert table[k]["status"] == S.METADATA_MISMATCH, table[k]
        assert table[k]["detail"].startswith(f"content equal; metadata differs: {field} ")
    others = [table[k] for k in keys if k not in (keys[5], keys[17], keys[42])]
    assert all(r["status"] == S.MATCH and r["metadata_checked"] for r in others)
    md = summary["metadata"]
    assert md["objects"] == md["compared"] == 90 and md["not_compared"] == 0
    assert md["prefixes_with_metadata"] == ["study1/"]
    assert "metadata: compared on 90 of 90 objects" in format_table(summary)
    assert " metadata=90/90 " in result_line(summary, str(tmp_path / "r"))
    # every object HEADed by the plan; the run's sample HEADed 32 of them before
    heads = [k for k, _ in _heads(proxy, bucket)]
    assert set(heads) == {"ds/" + k for k in keys}
    assert len(heads) == 90 + SAMPLE_PER_PREFIX == 90 + md["sampled"]
    assert proxy.mutating() == []


def test_snowball_tree_costs_only_the_sample(s3, bucket, tmp_path, dask_client):
    """No user metadata anywhere: small single-part objects get no HEAD beyond the sample,
    and the run says the destination carries no POSIX metadata on the objects sampled."""
    rng = random.Random(12)
    root = tmp_path / "src"
    c = s3.client(checksums=False)
    keys = _small_tree(root, c, bucket, "sb/", "a", 150, False, rng)
    keys += _small_tree(root, c, bucket, "sb/", "b", 20, False, rng)
    for rel in ("top1.txt", "top2.txt"):  # keys at the root of the prefix: a group of their own
        (root / rel).write_bytes(b"x" * 10)
        c.put_object(Bucket=bucket, Key="sb/" + rel, Body=b"x" * 10)
        keys.append(rel)
    with S3Proxy(s3.url) as proxy:
        summary, table = _verify(dask_client, root, f"s3://{bucket}/sb/", tmp_path / "r",
                                 proxy.url, partitions=3)
    assert all(table[k]["status"] == S.MATCH for k in keys)
    assert not any(table[k]["metadata_checked"] for k in keys)
    heads = _heads(proxy, bucket)
    by_group = {g: sum(1 for k, _ in heads if re.match(rf"sb/{g}", k)) for g in ("a/", "b/")}
    # one sample for the run (3 partitions): a/ 32 of 150, b/ and the root in full
    assert by_group == {"a/": SAMPLE_PER_PREFIX, "b/": 20}
    assert len(heads) == SAMPLE_PER_PREFIX + 20 + 2
    md = summary["metadata"]
    assert md["sampled"] == md["sampled_without_metadata"] == len(heads)
    assert md["compared"] == 0 and md["objects"] == len(keys)
    assert md["prefixes_with_metadata"] == []
    assert md["prefixes_without_metadata"] == ["", "a/", "b/"]
    line = f"the destination carries no POSIX metadata on the {len(heads)} objects sampled"
    assert line in format_table(summary)
    html = (tmp_path / "r" / "report.html").read_text()
    assert f"compared on 0 of {len(keys)} objects" in html and line in html


def test_mixed_destination_both_halves_right(s3, bucket, tmp_path, dask_client):
    """A DataSync-copied prefix next to a Snowball-imported one, in every partition."""
    rng = random.Random(13)
    root = tmp_path / "src"
    c = s3.client(checksums=False)
    ds_keys = _small_tree(root, c, bucket, "mx/", "datasync", 80, True, rng)
    sb_keys = _small_tree(root, c, bucket, "mx/", "snowball", 200, False, rng)
    st = (root / ds_keys[3]).lstat()
    _put_wrong(c, bucket, "mx/" + ds_keys[3], root, ds_keys[3],
               **{"file-mtime": f"{st.st_mtime_ns - 10**9}ns"})
    with S3Proxy(s3.url) as proxy:
        summary, table = _verify(dask_client, root, f"s3://{bucket}/mx/", tmp_path / "r",
                                 proxy.url, partitions=2)
    assert table[ds_keys[3]]["status"] == S.METADATA_MISMATCH
    assert all(table[k]["status"] == S.MATCH and table[k]["metadata_checked"]
               for k in ds_keys[4:])
    assert all(table[k]["status"] == S.MATCH and not table[k]["metadata_checked"]
               for k in sb_keys)
    heads = _heads(proxy, bucket)
    sb_heads = [k for k, _ in heads if k.startswith("mx/snowball/")]
    assert len(sb_heads) == SAMPLE_PER_PREFIX  # one sample for the run, not one per partition
    ds_heads = [k for k, _ in heads if k.startswith("mx/datasync/")]
    assert set(ds_heads) == {"mx/" + k for k in ds_keys}
    assert len(ds_heads) == 80 + SAMPLE_PER_PREFIX
    md = summary["metadata"]
    assert md["compared"] == 80 and md["objects"] == 280
    assert md["prefixes_with_metadata"] == ["datasync/"]
    assert md["prefixes_without_metadata"] == ["snowball/"]


def test_incremental_off_then_default_rechecks_metadata(s3, bucket, tmp_path, dask_client):
    """A verdict from a run that did not compare metadata is not carried into one that must."""
    rng = random.Random(14)
    root = tmp_path / "src"
    c = s3.client(checksums=False)
    keys = _small_tree(root, c, bucket, "inc/", "s", 30, True, rng)
    st = (root / keys[7]).lstat()
    _put_wrong(c, bucket, "inc/" + keys[7], root, keys[7],
               **{"file-mtime": f"{st.st_mtime_ns + 5 * 10**9}ns"})
    dest = f"s3://{bucket}/inc/"
    first, t1 = _verify(dask_client, root, dest, tmp_path / "runs" / "r1", s3.url,
                        metadata="off")
    assert t1[keys[7]]["status"] == S.MATCH and not t1[keys[7]]["metadata_checked"]
    assert first["metadata"]["compared"] == 0
    second, t2 = _verify(dask_client, root, dest, tmp_path / "runs" / "r2", s3.url,
                         previous_run=str(tmp_path / "runs" / "r1"))
    assert second["incremental"]["carried"] == 0
    assert t2[keys[7]]["status"] == S.METADATA_MISMATCH
    assert second["metadata"]["compared"] == 30
    # a third default run carries the verdicts that did compare metadata
    third, t3 = _verify(dask_client, root, dest, tmp_path / "runs" / "r3", s3.url,
                        previous_run=str(tmp_path / "runs" / "r2"))
    assert third["incremental"]["carried"] == 30
    assert t3[keys[7]]["status"] == S.METADATA_MISMATCH
    assert all(r["metadata_checked"] for r in t3.values())


@pytest.fixture
def layouts(s3, bucket, tmp_path):
    """Intact and flipped objects in the 6, 5, 7, 1 MiB layout, ETag-only and SHA256
    composite, and a regular 5 MiB-part object; returns (root, expected statuses)."""
    rng = random.Random(15)
    root = tmp_path / "src"
    root.mkdir()
    plain = s3.client(checksums=False)
    crc = s3.client(checksums=True)
    expect = {}
    for name, client, algo in (("etag", plain, None), ("sha", crc, "SHA256")):
        for flipped in (False, True):
            data = rng.randbytes(sum(IRREGULAR))
            key = f"{name}_{'flip' if flipped else 'ok'}.bin"
            (root / key).write_bytes(data)
            stored = bytearray(data)
            if flipped:
                stored[6 * MiB + 5 * MiB + 12345] ^= 0x01  # inside the third part
            put_multipart(client, bucket, "ly/" + key, bytes(stored), IRREGULAR, checksum=algo)
            expect[key] = S.CONTENT_MISMATCH if flipped else S.MATCH
    data = rng.randbytes(13 * MiB + 7)
    (root / "regular.bin").write_bytes(data)
    put_multipart(plain, bucket, "ly/regular.bin", data, 5 * MiB)
    expect["regular.bin"] = S.MATCH
    return root, expect


def test_irregular_part_layouts(layouts, s3, bucket, tmp_path, dask_client):
    root, expect = layouts
    with S3Proxy(s3.url) as proxy:
        summary, table = _verify(dask_client, root, f"s3://{bucket}/ly/", tmp_path / "r",
                                 proxy.url)
    assert {k: table[k]["status"] for k in expect} == expect
    for name, kind in (("etag", "etag-multipart"), ("sha", "sha256-composite")):
        ok, flip = table[f"{name}_ok.bin"], table[f"{name}_flip.bin"]
        assert ok["verified_by"] == kind and flip["verified_by"] == kind
        assert ok["dst_parts"] == 4 and ok["dst_part_size"] is None
        assert ok["detail"] == "parts 6291456 + 5242880 + 7340032 + 1048576 (HeadObject of " \
                               "every part)"
        assert "part layout 6291456 + 5242880 + 7340032 + 1048576 from HeadObject of every " \
               "part, source hashed again with it" in flip["detail"]
        # the intact object was hashed twice (assumed layout, then the true one)
        assert ok["bytes_read_src"] == 2 * sum(IRREGULAR)
    assert table["regular.bin"]["dst_part_size"] == 5 * MiB
    assert table["regular.bin"]["detail"] is None
    # per-part HEADs (PartNumber 2..N) only for the objects that did not match at first
    part_heads = {k.removeprefix("ly/") for k, q in _heads(proxy, bucket)
                  if re.search(r"partNumber=[2-9]", q)}
    assert part_heads == {"etag_ok.bin", "etag_flip.bin", "sha_ok.bin", "sha_flip.bin"}
    assert summary["counts"][S.CONTENT_MISMATCH] == 2
    assert proxy.mutating() == []


def test_prefix_whose_sample_cannot_be_headed_is_dest_error(s3, bucket, tmp_path, dask_client):
    """HEAD denied on a whole prefix: its rows are DEST_ERROR naming the cause, no MATCH on
    the ETag alone, and no HEAD beyond the sample; the other prefix is unaffected."""
    from ..s3proxy import Faults

    rng = random.Random(16)
    root = tmp_path / "src"
    c = s3.client(checksums=False)
    denied = _small_tree(root, c, bucket, "dn/", "denied", 50, True, rng)
    fine = _small_tree(root, c, bucket, "dn/", "fine", 10, True, rng)
    with S3Proxy(s3.url, Faults(deny_keys=("/denied/",))) as proxy:
        summary, table = _verify(dask_client, root, f"s3://{bucket}/dn/", tmp_path / "r",
                                 proxy.url, partitions=1)
    for k in denied:
        assert table[k]["status"] == S.DEST_ERROR
        assert table[k]["detail"].startswith(
            f"POSIX metadata could not be sampled: HeadObject failed on all {SAMPLE_PER_PREFIX} "
            "sampled objects under 'denied/' (")
        assert "--metadata off waives the comparison" in table[k]["detail"]
    assert all(table[k]["status"] == S.MATCH and table[k]["metadata_checked"] for k in fine)
    denied_heads = [k for k, _ in _heads(proxy, bucket) if "/denied/" in k]
    assert len(denied_heads) == SAMPLE_PER_PREFIX
    assert summary["metadata"]["sample_errors"] == SAMPLE_PER_PREFIX


def test_bottom_k_sample_merges_across_groups():
    """Each compaction group samples what it holds; merged, that is the union's sample."""
    import numpy as np
    import pyarrow as pa

    from wiseverify.compare.metascope import merge_samples
    from wiseverify.core import keys as K

    keys = [f"p{i % 3}/d/f{i}" for i in range(1000)] + [f"root{i}" for i in range(5)]
    hashes = K.key_hash([K.nfc(k) for k in keys])
    whole = merge_samples([K.sample_by_prefix(pa.array(keys), hashes, 8)], 8)
    parts = [K.sample_by_prefix(pa.array(keys[i::4]), hashes[i::4], 8) for i in range(4)]
    assert merge_samples(parts, 8) == whole
    assert sorted(whole) == ["", "p0/", "p1/", "p2/"]
    assert len(whole["p1/"]) == 8 and sorted(whole[""]) == [f"root{i}" for i in range(5)]
    # the smallest hashes of the prefix, whatever the order the keys came in
    p1 = [k for k in keys if k.startswith("p1/")]
    h1 = K.key_hash(p1)
    assert whole["p1/"] == [p1[i] for i in np.argsort(h1, kind="stable")[:8]]
