"""Inventory and partitioning: lstat-only walk with work splitting, strict prefix listing."""

from __future__ import annotations

import os
import unicodedata

import pytest

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.s3 import S3Target
from wiseverify.inventory import jobs as JOBS
from wiseverify.inventory import partition as PARTITION
from wiseverify.inventory import s3list as S3LIST
from wiseverify.inventory import spool as SPOOL
from wiseverify.inventory import stat_threads as STAT_THREADS
from wiseverify.inventory import statx as STATX
from wiseverify.inventory import walk as INV


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
        res = INV.walk_dirs(str(root), batch, str(spool / f"{tasks}.arrow"), budget=10)
        tasks += 1
        if res["spool"]:
            seen += SPOOL.read_spool(res["spool"]).column("key_bytes").to_pylist()
        pending += [[d] for d in res["pending"]]
    assert tasks > 3  # the budget split the walk into several tasks
    assert len(seen) == len(set(seen)) == total


def _walk_all(root, spool, first=(b"",), **kw):
    """Run walk tasks the way the driver does until nothing is pending; returns rows, tasks."""
    pending = [list(first)]
    rows: list[dict] = []
    tasks = []
    while pending:
        batch = pending.pop()
        res = INV.walk_dirs(str(root), batch, str(spool / f"{len(tasks)}.arrow"), **kw)
        tasks.append((batch, res))
        if res["spool"]:
            rows += SPOOL.read_spool(res["spool"]).to_pylist()
        pending += JOBS.walk_batches(res["pending"], 4)
    return rows, tasks


def test_huge_directory_is_split_by_name_range(tmp_path):
    """A directory over split_entries is listed once and its lstat calls shared by tasks."""
    root = tmp_path / "t"
    big = root / "big"
    big.mkdir(parents=True)
    for i in range(250):
        (big / f"n{i:03d}").write_bytes(b"z" * (i % 5))
    (root / "small").mkdir()
    (root / "small" / "one").write_bytes(b"1")
    rows, tasks = _walk_all(root, tmp_path / "spool", split_entries=60)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 251
    range_tasks = [b for b, _ in tasks if isinstance(b[0], tuple)]
    assert len(range_tasks) == 4  # 250 names: 60 walked by the lister, 4 ranges handed out
    # a range task lists nothing and stats only its own names
    for batch, res in tasks:
        if isinstance(batch[0], tuple):
            assert res["dirs"] == 0 and res["ops"] == res["count"] <= 60
    listed = sum(res["dirs"] for _, res in tasks)
    assert listed == 3  # root, big and small: each listed once
    # three readdirs, one lstat per entry (big and small in the root, 250 + 1 below)
    assert sum(res["ops"] for _, res in tasks) == 3 + 2 + 250 + 1


def test_walk_loops_are_compiled():
    """The C loops are built by the install (setup.py); without them the walk runs
    on its ctypes path at about twice the CPU per entry, which CI must not hide."""
    assert INV._FAST is not None, "wiseverify.inventory._fastwalk was not built: no C compiler?"


def test_c_ctypes_and_portable_lstat_give_the_same_rows(tmp_path, monkeypatch):
    root = tmp_path / "t"
    _tree(root)
    os.mkfifo(root / "fifo")
    os.symlink("d0", root / "link")
    os.link(root / "d0" / "f3", root / "hard")
    (root / "caf\u00e9").write_bytes(b"nfc")
    (root / os.fsdecode(b"bad\xff")).write_bytes(b"latin-1")
    fast, _ = _walk_all(root, tmp_path / "s1")
    monkeypatch.setattr(INV, "_FAST", None)
    monkeypatch.setattr(STATX, "_FAST", None)
    via_ctypes, _ = _walk_all(root, tmp_path / "s2")
    monkeypatch.setattr(INV, "_STATX", None)
    slow, _ = _walk_all(root, tmp_path / "s3")

    def by_bytes(rows):
        return sorted(rows, key=lambda r: r["key_bytes"])

    assert by_bytes(fast) == by_bytes(via_ctypes) == by_bytes(slow)
    assert len(fast) >= 8
    by_key = {r["key_bytes"]: r for r in slow}
    st = os.lstat(root / "hard")
    assert by_key[b"hard"]["ino"] == st.st_ino and by_key[b"hard"]["nlink"] == 2
    assert by_key[b"hard"]["dev"] == st.st_dev and by_key[b"hard"]["mtime_ns"] == st.st_mtime_ns
    assert by_key[b"bad\xff"]["key"] == "bad\\xff" and by_key[b"bad\xff"]["name_problem"]
    assert by_key[b"fifo"]["kind"] == S.KIND_FIFO and by_key[b"link"]["kind"] == S.KIND_SYMLINK


def test_threaded_walk_with_simulated_slow_server_loses_nothing(tmp_path):
    """The slow-metadata-server hook and the lstat thread pool; the cap still counts every op."""
    root = tmp_path / "t"
    total = _tree(root)
    rows, tasks = _walk_all(root, tmp_path / "spool", threads=4, stat_delay_us=200,
                            metadata_ops_per_second=5000)
    assert len(rows) == len({r["key"] for r in rows}) == total
    assert all(res["threads"] == 4 for _, res in tasks)
    dirs = 1 + 6 * 2  # root, d*, d*/deeper
    assert sum(res["ops"] for _, res in tasks) == dirs + total + 6 * 2


def test_auto_threads_start_when_lstat_waits(tmp_path, monkeypatch):
    root = tmp_path / "t"
    _tree(root, ndirs=2, nfiles=40)
    monkeypatch.setenv(INV.STAT_DELAY_ENV, "300")  # the documented test hook
    res = INV.walk_dirs(str(root), [b""], str(tmp_path / "a.arrow"))
    assert res["threads"] == STAT_THREADS.AUTO_WALK_THREADS
    monkeypatch.delenv(INV.STAT_DELAY_ENV)
    res = INV.walk_dirs(str(root), [b""], str(tmp_path / "b.arrow"))
    assert res["threads"] == 1


def test_walk_never_opens_special_files(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    os.mkfifo(root / "fifo")  # opening it would block forever
    os.symlink("/nonexistent", root / "dangling")
    res = INV.walk_dirs(str(root), [b""], str(tmp_path / "s.arrow"))
    rows = {r["key"]: r for r in SPOOL.read_spool(res["spool"]).to_pylist()}
    assert rows["fifo"]["kind"] == S.KIND_FIFO
    assert rows["dangling"]["kind"] == S.KIND_SYMLINK


def test_metadata_rate_cap_is_honoured(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    for i in range(30):
        (root / f"f{i}").write_bytes(b"")
    import time

    t0 = time.monotonic()
    res = INV.walk_dirs(str(root), [b""], str(tmp_path / "s.arrow"),
                        metadata_ops_per_second=100)
    elapsed = time.monotonic() - t0
    assert res["ops"] == 31  # one readdir + 30 lstat
    # 31 operations at 100/s cannot finish in less than 0.3 s
    assert elapsed >= 0.29


def test_records_a_file_system_leaves_short_are_filled_by_lstat(tmp_path, monkeypatch):
    """statx answers without every field (some file systems do): os.lstat fills them in."""
    root = tmp_path / "t"
    total = _tree(root, ndirs=2, nfiles=3)
    ref = SPOOL.read_spool(INV.walk_dirs(str(root), [b""], str(tmp_path / "a.arrow"))["spool"])
    stat_into = INV._Walk._stat_into

    def short(self, d, lo, hi, first):
        fails = stat_into(self, d, lo, hi, first)
        recs = self.buf[first * STATX._REC:(first + hi - lo) * STATX._REC].view(self.dtype)
        recs["mask"] = 0  # as if the file system had answered none of the fields asked
        return fails

    monkeypatch.setattr(INV._Walk, "_stat_into", short)
    res = INV.walk_dirs(str(root), [b""], str(tmp_path / "b.arrow"))
    got = SPOOL.read_spool(res["spool"])
    assert res["count"] == total
    cols = ["key", "size", "mtime_ns", "ino", "kind"]
    assert got.select(cols).sort_by("key").equals(ref.select(cols).sort_by("key"))


def test_listing_is_strictly_under_the_prefix(s3, bucket, tmp_path):
    c = s3.client()
    for key in ("wise/a", "wise/sub/b", "wise-old/c", "wiser", "wise/dir/", "wise/"):
        c.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else b"1")
    target = S3Target.parse(f"s3://{bucket}/wise", endpoint_url=s3.url)
    res = S3LIST.list_prefix(target, "", False, str(tmp_path / "l.parquet"))
    keys = sorted(SPOOL.read_spool(res["spool"]).column("key").to_pylist())
    assert keys == ["a", "sub/b"]
    assert res["markers"] == 2
    res = S3LIST.list_prefix(target, "", True, str(tmp_path / "l2.parquet"))
    assert res["pending"] == ["dir/", "sub/"]


LISTING_KEYS = ["plain.bin", "sp ace/\u00fc+%2F~x", "a//b", "/lead", "q?x#y&z=1",
                "semi;colon,comma=eq", "plus+sign", "pct%20x", "NFD e\u0301", "emoji \U0001F600",
                "amp&lt;not-an-entity", "deep/er/still/k"]


def _pages(target, prefix, delimiter, lean: bool):
    """Every page under ``prefix``: through the locally signed path, or botocore's."""

    async def go():
        client = await target.client()
        lister = await S3LIST.PageLister.for_client(client, target.bucket)
        if not lean:
            lister.endpoint = None
        out, token = [], None
        while True:
            page = await lister.page(prefix, delimiter, token)
            out.append(page)
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return out, lister

    return target.run(go)


def _fields(page: dict) -> dict:
    keep = ("Key", "Size", "ETag", "LastModified", "StorageClass", "ChecksumAlgorithm",
            "ChecksumType")
    return {"Contents": [{k: o[k] for k in keep if k in o} for o in page.get("Contents", ())],
            "CommonPrefixes": [{"Prefix": p["Prefix"]} for p in page.get("CommonPrefixes", ())],
            "IsTruncated": page.get("IsTruncated"),
            "NextContinuationToken": page.get("NextContinuationToken")}


def test_locally_signed_listing_pages_equal_botocore_pages(s3, bucket):
    """Same keys (url-decoded as botocore does), sizes, ETags, times, checksums and
    continuation tokens as botocore's parser, over 1,000-key pages and awkward keys."""
    plain, crc = s3.client(), s3.client(checksums=True)
    for i, key in enumerate(LISTING_KEYS):
        kw = {"ChecksumAlgorithm": "CRC64NVME"} if i % 2 else {}
        (crc if i % 2 else plain).put_object(Bucket=bucket, Key="p/" + key, Body=b"x" * i,
                                             StorageClass="STANDARD_IA" if i % 3 else "STANDARD",
                                             **kw)
    for i in range(1_005):
        plain.put_object(Bucket=bucket, Key=f"p/many/{i:05d}", Body=b"")
    target = S3Target(bucket, "p/", s3.url)
    for prefix, delimiter in (("p/", None), ("p/", "/"), ("p/sp ace/", None), ("p/zz", None)):
        ref, boto = _pages(target, prefix, delimiter, lean=False)
        got, lister = _pages(target, prefix, delimiter, lean=True)
        assert [_fields(p) for p in got] == [_fields(p) for p in ref], (prefix, delimiter)
        assert lister.lean == len(got) and lister.botocore == 0 and boto.lean == 0
    assert len(ref) == 1 and len(_pages(target, "p/", None, lean=True)[0]) == 2
    keys = {o["Key"] for p in _pages(target, "p/", None, True)[0] for o in p["Contents"]}
    assert keys == {"p/" + k for k in LISTING_KEYS} | {f"p/many/{i:05d}" for i in range(1_005)}


def test_a_refused_listing_page_is_asked_again_through_botocore(s3, tmp_path):
    """A missing bucket: the signed page is refused, botocore's error is the row's text."""
    target = S3Target.parse("s3://no-such-bucket-here/wise", endpoint_url=s3.url)
    res = S3LIST.list_prefix(target, "", False, str(tmp_path / "l.parquet"))
    assert res["error"] == ("listing 'wise/' failed: ListObjectsV2: HTTP 404 NoSuchBucket: "
                            "The specified bucket does not exist")


def test_unicode_twins_share_a_partition():
    nfc = unicodedata.normalize("NFC", "caf\u00e9/r\u00e9sum\u00e9.txt")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    parts = K.partition_of([K.nfc(nfc), K.nfc(nfd)], 97)
    assert parts[0] == parts[1]


def test_partition_files_store_the_key_once_and_read_back_whole(tmp_path):
    """compact keeps key_bytes/nkey only where they differ from key; reading restores them."""
    root = tmp_path / "t"
    (root / "plain").mkdir(parents=True)
    names = [b"plain/a.txt", b"plain/b.txt", "caf\u00e9-nfc.txt".encode(),
             unicodedata.normalize("NFD", "caf\u00e9-nfd.txt").encode(), b"caf\xe9-latin1.txt"]
    for n in names:
        (root / os.fsdecode(n)).write_bytes(b"x")
    res = INV.walk_dirs(str(root), [b""], str(tmp_path / "spool.arrow"))
    spooled = SPOOL.read_spool(res["spool"]).sort_by("key")
    PARTITION.compact([res["spool"]], str(tmp_path / "inv"), 1, "c0")
    files = list((tmp_path / "inv" / "part=00000").glob("*.parquet"))
    import pyarrow.parquet as pq

    stored = pq.read_table(files[0]).to_pydict()
    kept = {k: (kb, nk) for k, kb, nk in zip(stored["key"], stored["key_bytes"], stored["nkey"],
                                             strict=True)}
    assert kept["plain/a.txt"] == (None, None)  # the same bytes three times: stored once
    assert kept["caf\u00e9-nfc.txt"] == (None, None)
    nfd = unicodedata.normalize("NFD", "caf\u00e9-nfd.txt")
    assert kept[nfd] == (None, "caf\u00e9-nfd.txt")  # its NFC form differs
    assert kept["caf\\xe9-latin1.txt"] == (b"caf\xe9-latin1.txt", None)  # its bytes differ
    back = PARTITION.read_partition(str(tmp_path / "inv"), 0, S.SOURCE_INVENTORY).sort_by("key")
    assert back.equals(spooled.select(S.SOURCE_INVENTORY.names))
    sub = PARTITION.read_partition(str(tmp_path / "inv"), 0, S.SOURCE_INVENTORY, ["key_bytes", "size"])
    assert sub.column_names == ["key_bytes", "size"]
    assert sorted(sub.column("key_bytes").to_pylist()) == sorted(names)


def test_key_sort_is_compiled():
    """setup.py builds the match stage's C key sort; CI must not hide its absence."""
    assert K._SORT is not None, "wiseverify.core._fastkeys was not built: no C compiler?"


def test_key_sort_gives_pyarrows_order(monkeypatch):
    """Byte order, a prefix before its extensions, equal keys in row order - on keys
    built to hit every branch: NUL bytes, words cut at 8 bytes, long shared
    prefixes, duplicates, empty keys, and sliced arrays."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(7)
    words = [b"", b"a", b"a\x00", b"a\x00\x00", b"ab", b"abcdefg", b"abcdefgh", b"abcdefgh\x00",
             b"abcdefghi", b"\xff", b"\xff\xff", b"z" * 1200, "caf\u00e9".encode()]
    vals = [words[i] for i in rng.integers(0, len(words), 3000)]
    vals += [b"dir/" * int(rng.integers(1, 40)) + bytes(rng.integers(0, 256, 12, np.uint8))[
        :int(rng.integers(0, 12))] for _ in range(6000)]
    binary = pa.array(vals, pa.binary())
    text = pa.array([v.decode("utf-8", "replace") for v in vals], pa.string())
    cases = [binary, binary.slice(11, 5000), text, pa.chunked_array([text[:100], text[100:]]),
             pa.array([], pa.string())]
    # without the C module both sides below would be pyarrow's sort: it must be built
    assert K._SORT is not None, "wiseverify.core._fastkeys is not built"
    for keys in cases:
        want = pc.sort_indices(keys).to_numpy()
        assert np.array_equal(K.sort_order(keys).to_numpy(), want)
    monkeypatch.setattr(K, "_SORT", None)  # the pyarrow path gives the same
    assert np.array_equal(K.sort_order(binary).to_numpy(), pc.sort_indices(binary).to_numpy())


def test_key_hash_is_pandas_hash_array_bit_for_bit():
    """The partition of a key must not change between versions: an incremental run reads
    the previous run's partition of each key.  The C hash of Arrow columns equals
    pandas' hash_array on every length class (0..70 bytes, 1,500), multi-byte UTF-8,
    binary names, slices and chunked columns; a column with nulls goes to pandas."""
    import random

    import numpy as np
    import pandas as pd
    import pyarrow as pa

    assert K._SORT is not None, "wiseverify.core._fastkeys is not built"
    rnd = random.Random(3)
    alphabet = "abcXYZ/._-0123 \u00e9\u00fc\u00df\u6f22\u5b57\U0001f600\u0301"
    keys = ["", "a" * 1500] + ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 70)))
                               for _ in range(5000)]
    want = pd.util.hash_array(np.asarray(keys, dtype=object), categorize=False)
    text = pa.array(keys, pa.string())
    assert np.array_equal(K.key_hash(text), want)
    assert np.array_equal(K.key_hash(text.slice(17, 900)), want[17:917])
    assert np.array_equal(K.key_hash(pa.chunked_array([text[:10], text[10:]])), want)
    raw = [k.encode() + b"\xff" for k in keys[:300]]
    assert np.array_equal(K.key_hash(pa.array(raw, pa.binary())),
                          pd.util.hash_array(np.asarray(raw, dtype=object), categorize=False))
    assert np.array_equal(K.key_hash(keys), want)  # a list: pandas itself
    with_null = pa.array(["a", None, "b"], pa.string())
    assert np.array_equal(K.key_hash(with_null),
                          pd.util.hash_array(np.array(["a", None, "b"], dtype=object),
                                             categorize=False))
    # a fixed value: a change of pandas' hash would move every key's partition too
    assert int(K.key_hash(pa.array(["dir/file.txt"]))[0]) == 3912245430469589822
    assert int(K.key_hash(["dir/file.txt"])[0]) == 3912245430469589822


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


def test_metadata_cap_is_shared_by_the_walk_tasks_that_run(dask_client, tmp_path):
    """Walk tasks of a worker process take turns, so the cap is shared among the
    worker processes, not among every task the window holds: the whole cluster
    stays under ``--max-metadata-ops`` and is not held to a fraction of it."""
    import time

    from wiseverify.run.inventory_stage import walk_ops_per_task, walk_source

    assert walk_ops_per_task(None, 8, 2) is None
    assert walk_ops_per_task(2000, 8, 2) == 1000  # 2 processes walk at once, not 8 tasks
    assert walk_ops_per_task(2000, 2, 16) == 1000  # nor more tasks than the window holds
    root = tmp_path / "t"
    for d in range(6):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(40):
            (root / f"d{d}" / f"f{i}").write_bytes(b"")
    t0 = time.monotonic()
    res = walk_source(dask_client, str(root), str(tmp_path / "spool"), budget=40,
                      max_metadata_ops=300)
    elapsed = time.monotonic() - t0
    assert res["count"] == 240 and res["ops"] == 7 + 6 + 240  # readdirs, then an lstat each
    # at most 300 operations a second over the whole cluster (one per task may start at once)
    assert elapsed >= (res["ops"] - res["tasks"]) / 300


@pytest.mark.parametrize("loops", ["c", "ctypes", "portable"])
def test_a_name_gone_between_listing_and_lstat_is_an_error_row(tmp_path, monkeypatch, loops):
    """A file deleted after getdents and before its lstat: a row saying so, never a gap."""
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "d" / "stays").write_bytes(b"1")
    listed = STATX._list_blob

    def listing_then_delete(fd, prefix):
        return listed(fd, prefix) + prefix + b"gone\0"  # listed, then removed

    monkeypatch.setattr(INV, "_list_blob", listing_then_delete)
    if loops != "c":
        monkeypatch.setattr(INV, "_FAST", None)
        monkeypatch.setattr(STATX, "_FAST", None)
    if loops == "portable":
        monkeypatch.setattr(INV, "_STATX", None)
    rows, _ = _walk_all(root, tmp_path / "spool")
    by_key = {r["key"]: r for r in rows}
    assert by_key["d/stays"]["kind"] == S.KIND_FILE and by_key["d/stays"]["size"] == 1
    assert by_key["d/gone"]["kind"] == S.KIND_ERROR
    assert by_key["d/gone"]["error"] == "lstat failed: No such file or directory"
    assert by_key["gone"]["error"] == "lstat failed: No such file or directory"  # at the root
