"""Inventory and partitioning: lstat-only walk with work splitting, strict prefix listing."""

from __future__ import annotations

import os
import unicodedata

import pyarrow.parquet as pq

from wiseverify import inventory as INV
from wiseverify import keys as K
from wiseverify import schema as S
from wiseverify.s3 import S3Target


def _tree(root, ndirs=6, nfiles=7):
    for d in range(ndirs):
        sub = root / f"d{d}" / "deeper"
        sub.mkdir(parents=True)
        for f in range(nfiles):
            (root / f"d{d}" / f"f{f}").write_bytes(b"x" * f)
            (sub / f"g{f}").write_bytes(b"y")
    return ndirs * nfiles * 2


def test_walk_splits_work_and_loses_nothing(tmp_path):
    root = tmp_path / "t"
    total = _tree(root)
    spool = tmp_path / "spool"
    pending = [[b""]]
    seen: list[bytes] = []
    tasks = 0
    while pending:
        batch = pending.pop()
        res = INV.walk_dirs(str(root), batch, str(spool / f"{tasks}.parquet"), budget=10)
        tasks += 1
        if res["spool"]:
            seen += pq.read_table(res["spool"]).column("key_bytes").to_pylist()
        pending += [[d] for d in res["pending"]]
    assert tasks > 3  # the budget split the walk into several tasks
    assert len(seen) == len(set(seen)) == total


def test_walk_never_opens_special_files(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    os.mkfifo(root / "fifo")  # opening it would block forever
    os.symlink("/nonexistent", root / "dangling")
    res = INV.walk_dirs(str(root), [b""], str(tmp_path / "s.parquet"))
    rows = {r["key"]: r for r in pq.read_table(res["spool"]).to_pylist()}
    assert rows["fifo"]["kind"] == S.KIND_FIFO
    assert rows["dangling"]["kind"] == S.KIND_SYMLINK


def test_metadata_rate_cap_is_honoured(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    for i in range(30):
        (root / f"f{i}").write_bytes(b"")
    import time

    t0 = time.monotonic()
    res = INV.walk_dirs(str(root), [b""], str(tmp_path / "s.parquet"),
                        metadata_ops_per_second=100)
    elapsed = time.monotonic() - t0
    assert res["ops"] == 31  # one readdir + 30 lstat
    # 31 operations at 100/s cannot finish in less than 0.3 s
    assert elapsed >= 0.29


def test_listing_is_strictly_under_the_prefix(s3, bucket, tmp_path):
    c = s3.client()
    for key in ("wise/a", "wise/sub/b", "wise-old/c", "wiser", "wise/dir/", "wise/"):
        c.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else b"1")
    target = S3Target.parse(f"s3://{bucket}/wise", endpoint_url=s3.url)
    res = INV.list_prefix(target, "", False, str(tmp_path / "l.parquet"))
    keys = sorted(pq.read_table(res["spool"]).column("key").to_pylist())
    assert keys == ["a", "sub/b"]
    assert res["markers"] == 2
    res = INV.list_prefix(target, "", True, str(tmp_path / "l2.parquet"))
    assert res["pending"] == ["dir/", "sub/"]


def test_unicode_twins_share_a_partition():
    nfc = unicodedata.normalize("NFC", "caf\u00e9/r\u00e9sum\u00e9.txt")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    parts = K.partition_of([K.nfc(nfc), K.nfc(nfd)], 97)
    assert parts[0] == parts[1]


def test_key_names():
    assert K.name_problem(b"ok/name.txt") is None
    assert "UTF-8" in K.name_problem(b"caf\xe9")
    assert "1024" in K.name_problem(b"a" * 1020, "pre/x/")
    assert K.display_key(b"caf\xe9.txt") == "caf\\xe9.txt"


def test_partition_count_does_not_change_the_table(run_verify, s3, bucket, tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    c = s3.client()
    for i in range(40):
        data = os.urandom(i)
        (root / f"f{i:02d}").write_bytes(data)
        if i % 7:
            c.put_object(Bucket=bucket, Key=f"p/f{i:02d}", Body=data)
    c.put_object(Bucket=bucket, Key="p/extra", Body=b"e")
    s1, t1 = run_verify(root, f"s3://{bucket}/p")
    s5, t5 = run_verify(root, f"s3://{bucket}/p", partitions=5, full=True)
    assert s5["partitions"] == 5
    strip = {"partition", "evidence_run"}
    assert {k: {c: v for c, v in r.items() if c not in strip} for k, r in t1.items()} == {
        k: {c: v for c, v in r.items() if c not in strip} for k, r in t5.items()
    }
    assert s1["counts"]["MISSING_IN_DEST"] == 6 and s1["counts"]["EXTRA_IN_DEST"] == 1
