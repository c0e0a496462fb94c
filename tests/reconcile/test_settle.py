"""Bulk decisions give the rows the per-row path gives, column for column.

One partition holds every case the listings, an ETag, a checksum report and a
prehash table can produce: equal and different content, digests that no
longer describe the file, objects that need a HeadObject, reports that do not
apply, Unicode twins, missing/extra/size/special rows.  It is reconciled twice
on a real S3 endpoint (moto) and real files - once as the tool runs, once with
bulk settling switched off so every candidate takes the per-row path - and the
two reconciliation tables must be identical.  The columnar match is also
compared with the pandas merge it replaced.
"""

from __future__ import annotations

import base64
import hashlib
import os
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from awscrt import checksums as crt

from wiseverify.compare import match as M
from wiseverify.core import columns as COLUMNS
from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.s3 import S3Target
from wiseverify.digest import smallfiles as SMALL
from wiseverify.inventory import partition as INVPART
from wiseverify.reconcile import assemble as ASSEMBLE
from wiseverify.reconcile import checkpoint as CHECKPOINT
from wiseverify.reconcile import finish as FINISH
from wiseverify.reconcile import plan as R
from wiseverify.reconcile import settle as SETTLE
from wiseverify.run.tasks import _known_for, _prehashed

MiB = 1 << 20
MTIME = 1_700_000_000_123_456_789


def _reference_match(src: pa.Table, dst: pa.Table) -> pd.DataFrame:
    """The pandas outer merge :func:`match.match_partition` used to be (kept as the oracle)."""

    def frame(table, cols, prefix, extra):
        df = table.select(["key", "nkey", *extra, *cols]).to_pandas(types_mapper=pd.ArrowDtype)
        return df.rename(columns={c: prefix + c for c in cols})

    s = frame(src, M.SRC_COLS, "src_", ["key_bytes"])
    d = frame(dst, M.DST_COLS, "dst_", [])
    d["dst_rel"] = d["key"]
    m = s.merge(d.rename(columns={"nkey": "dst_nkey"}), on="key", how="outer", indicator=True)
    m["nkey"] = m["nkey"].where(m["nkey"].notna(), m["dst_nkey"])
    m = m.drop(columns=["dst_nkey"])
    m["name_pair"] = False
    left = m[(m["_merge"] == "left_only") & m["src_kind"].eq(S.KIND_FILE).fillna(False)]
    right = m[m["_merge"] == "right_only"]
    if len(left) and len(right):
        rfirst = right.reset_index().drop_duplicates("nkey").set_index("nkey")
        rfirst = rfirst[rfirst.index.notna()]
        hits = left[left["nkey"].isin(rfirst.index)]
        if len(hits):
            lfirst = hits.reset_index().drop_duplicates("nkey")
            used_right = []
            for _, lrow in lfirst.iterrows():
                r = rfirst.loc[lrow["nkey"]]
                li = lrow["index"]
                for c in ["dst_rel", *("dst_" + x for x in M.DST_COLS)]:
                    m.at[li, c] = r[c]
                m.at[li, "_merge"] = "both"
                m.at[li, "name_pair"] = True
                used_right.append(r["index"])
            m = m.drop(index=used_right)
    m["status"] = pd.Series(pd.NA, index=m.index, dtype="string")
    m["detail"] = pd.Series(pd.NA, index=m.index, dtype="string")
    m = m.reset_index(drop=True)

    def put(mask, status, detail):
        mask = mask.fillna(False).astype(bool) & m["status"].isna()
        m.loc[mask, "status"] = status
        m.loc[mask, "detail"] = detail[mask] if isinstance(detail, pd.Series) else detail

    in_src = m["_merge"].isin(["left_only", "both"])
    in_dst = m["_merge"].isin(["right_only", "both"])
    has_obj = pd.Series([M.HAS_OBJECT if x else "" for x in in_dst], index=m.index)
    put(in_src & m["src_error"].notna(), S.SOURCE_ERROR, m["src_error"].astype("string"))
    for kind, reason in M.SKIP_REASONS.items():
        put(in_src & m["src_kind"].eq(kind), S.SKIPPED, reason + has_obj)
    put(in_src & m["src_name_problem"].notna(), S.NAME_UNMAPPABLE,
        m["src_name_problem"].astype("string"))
    put(in_src & ~in_dst, S.MISSING_IN_DEST, "no object under this key")
    put(in_dst & ~in_src, S.EXTRA_IN_DEST, "object has no source file")
    put(in_src & in_dst & (m["src_size"] != m["dst_size"]), S.SIZE_MISMATCH,
        "source " + m["src_size"].astype("string") + " bytes, destination "
        + m["dst_size"].astype("string") + " bytes")
    return m.drop(columns=["_merge"])


def _crc_b64(data: bytes) -> str:
    return base64.b64encode(crt.crc64nvme(data).to_bytes(8, "big")).decode()


class Partition:
    """Rows of the four inputs of one partition, written where the tool reads them."""

    def __init__(self, root: Path):
        self.root = root
        self.src: list[dict] = []
        self.dst: list[dict] = []
        self.pre: list[dict] = []
        self.rep: list[dict] = []

    def file(self, key: str, data: bytes | None = None, size: int | None = None,
             kind: str = S.KIND_FILE, **extra) -> bytes:
        """A source row; with ``data`` also the file itself (the per-row path may read it)."""
        if data is not None:
            p = self.root / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            os.utime(p, ns=(MTIME, MTIME))
            size = len(data)
        self.src.append({"key": key, "key_bytes": key.encode(), "nkey": K.nfc(key), "kind": kind,
                         "size": size, "mtime_ns": MTIME, "ctime_ns": MTIME, "ino": 7,
                         "dev": 1, "nlink": 1, "uid": 1000, "gid": 1000, "mode": 0o100644,
                         "blocks": ((size or 0) + 511) // 512, **extra})
        return data or b""

    def obj(self, key: str, size: int, etag: str, algos: str | None = None) -> None:
        self.dst.append({"key": key, "nkey": K.nfc(key), "size": size, "etag": etag,
                         "last_modified_ns": MTIME + 1, "storage_class": "STANDARD",
                         "checksum_algorithm": algos,
                         "checksum_type": "FULL_OBJECT" if algos else None})

    def known(self, key: str, data: bytes, size: int | None = None, mtime: int = MTIME) -> None:
        self.pre.append({"nkey": K.nfc(key), "key_bytes": key.encode(),
                         "size": len(data) if size is None else size, "mtime_ns": mtime,
                         "md5": hashlib.md5(data).digest(), "crc64nvme": crt.crc64nvme(data)})

    def report(self, key: str, algorithm: str | None, checksum: str | None, etag: str | None,
               ctype: str | None = "FULL_OBJECT", parts: int | None = None,
               error: str | None = None, report: str | None = "s3://r/job/0.csv") -> None:
        self.rep.append({"key": key, "nkey": K.nfc(key), "version_id": None,
                         "algorithm": algorithm, "checksum_type": ctype, "checksum": checksum,
                         "checksum_parts": parts, "etag": etag, "task_status": "succeeded",
                         "error": error, "report": report})

    def write(self, inv: Path) -> None:
        for name, rows, schema in (("src", self.src, S.SOURCE_INVENTORY),
                                   ("dst", self.dst, S.DEST_INVENTORY),
                                   ("checksums", self.rep, S.CHECKSUM_REPORT)):
            half = len(rows) // 2  # two files per partition, as compact leaves them
            for i, chunk in enumerate((rows[:half], rows[half:])):
                d = inv / name / "part=00000"
                d.mkdir(parents=True, exist_ok=True)
                pq.write_table(S.from_rows(chunk, schema), d / f"c{i:05d}.parquet")
        d = inv / "prehash" / "part=00000"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(S.from_rows(self.pre, S.PREHASH), d / "c00000.parquet")


def _every_case(root: Path) -> Partition:
    p = Partition(root)
    md5 = lambda b: hashlib.md5(b).hexdigest()  # noqa: E731
    # single-part objects decided by the ETag, source digests known
    for i in range(40):
        data = p.file(f"etag/same-{i:03d}.csv", os.urandom(100 + i))
        p.obj(f"etag/same-{i:03d}.csv", len(data), md5(data).upper() if i % 7 == 0 else md5(data))
        p.known(f"etag/same-{i:03d}.csv", data)
    data = p.file("etag/differs.csv", b"source bytes")  # MD5 differs: SSE check (a HEAD)
    p.obj("etag/differs.csv", len(data), md5(b"other bytes!"))
    p.known("etag/differs.csv", data)
    data = p.file("etag/stale-digest.csv", b"rewritten since prehash")  # other mtime: read
    p.obj("etag/stale-digest.csv", len(data), md5(data))
    p.known("etag/stale-digest.csv", data, mtime=MTIME - 10)
    data = p.file("etag/not-prehashed.csv", b"read by a unit")
    p.obj("etag/not-prehashed.csv", len(data), md5(data))
    data = p.file("etag/last-entry-wins.csv", b"current content")
    p.obj("etag/last-entry-wins.csv", len(data), md5(data))
    p.known("etag/last-entry-wins.csv", b"older content!!", size=len(data))
    p.known("etag/last-entry-wins.csv", data)
    data = p.file("etag/empty.csv", b"")
    p.obj("etag/empty.csv", 0, md5(b""))
    p.known("etag/empty.csv", data)
    data = p.file("synced/small.csv", b"small synced object")  # CRC listed, below HEAD size
    p.obj("synced/small.csv", len(data), md5(data), "CRC64NVME")
    p.known("synced/small.csv", data)
    p.file("synced/big.bin", size=5 * MiB)  # CRC listed, above HEAD size: HeadObject
    p.obj("synced/big.bin", 5 * MiB, md5(b"x"), "CRC64NVME")
    p.file("sse/kms.bin", size=10)  # not an MD5, no checksum: UNVERIFIED without a request
    p.obj("sse/kms.bin", 10, "0123456789abcdef0123456789abcdefXY")
    p.file("sse/empty-etag.bin", size=11)
    p.obj("sse/empty-etag.bin", 11, "")
    p.file("sse/kms-with-algo.bin", size=12)  # not an MD5 but a checksum listed: HeadObject
    p.obj("sse/kms-with-algo.bin", 12, "zz", "CRC32")
    p.file("multi/no-report.bin", size=9 * MiB)  # multipart without a report: HeadObject
    p.obj("multi/no-report.bin", 9 * MiB, md5(b"m") + "-2")
    # compute-checksum report entries
    for i, (content, value, etag, algo) in enumerate([
        (b"crc equal", None, "aa-2", "CRC64NVME"),
        (b"crc differs", _crc_b64(b"crc dif"), "bb-3", "CRC64NVME"),
        (b"md5 in report", None, "cc-2", "MD5"),
        (b"sha256 needs a read", None, "dd-2", "SHA256"),
        (b"crc32c needs a read", None, "ee-2", "CRC32C"),
    ]):
        key = f"report/r{i}.bin"
        data = p.file(key, content)
        p.obj(key, len(data), etag)
        p.known(key, data)
        if value is None:
            value = {"CRC64NVME": _crc_b64(data), "MD5": base64.b64encode(
                hashlib.md5(data).digest()).decode(), "SHA256": base64.b64encode(
                hashlib.sha256(data).digest()).decode(), "CRC32C": base64.b64encode(
                crt.crc32c(data).to_bytes(4, "big")).decode()}[algo]
        p.report(key, algo, value, etag)
    data = p.file("report/cheapest-wins.bin", b"two entries")
    p.obj("report/cheapest-wins.bin", len(data), "ff-2")
    p.known("report/cheapest-wins.bin", data)
    p.report("report/cheapest-wins.bin", "SHA256", "bm90IHJlYWQ=", "ff-2")
    p.report("report/cheapest-wins.bin", "crc64nvme", _crc_b64(data), "FF-2", ctype=None,
             report=None)
    data = p.file("report/stale-etag.bin", b"object replaced after the job")
    p.obj("report/stale-etag.bin", len(data), md5(data))
    p.known("report/stale-etag.bin", data)
    p.report("report/stale-etag.bin", "CRC64NVME", _crc_b64(b"old"), "0" * 32)
    data = p.file("report/composite-multipart.bin", b"composite")
    p.obj("report/composite-multipart.bin", len(data), "ab-2")
    p.report("report/composite-multipart.bin", "SHA256", "Y29tcA==", "ab-2", ctype="COMPOSITE",
             parts=2)
    data = p.file("report/failed-entry.bin", b"failed")
    p.obj("report/failed-entry.bin", len(data), md5(data))
    p.known("report/failed-entry.bin", data)
    p.report("report/failed-entry.bin", None, None, md5(data), error="AccessDenied")
    data = p.file("report/odd-etag.bin", b"odd etag parts")
    p.obj("report/odd-etag.bin", len(data), "abc-x")
    p.known("report/odd-etag.bin", data)
    p.report("report/odd-etag.bin", "CRC64NVME", _crc_b64(data), "abc-x")
    # Unicode twins, one settled, one decided by size
    nfd = unicodedata.normalize("NFD", "names/café.txt")
    data = p.file(nfd, b"twin")
    p.obj(unicodedata.normalize("NFC", nfd), len(data), md5(data))
    p.known(nfd, data)
    nfd2 = unicodedata.normalize("NFD", "names/résumé.txt")
    p.file(nfd2, b"twin, other size")
    p.obj(unicodedata.normalize("NFC", nfd2), 3, md5(b"abc"))
    # decided by the listings
    p.file("listing/missing.csv", b"only here")
    p.obj("listing/extra.csv", 5, md5(b"extra"))
    p.file("listing/size.csv", b"1234")
    p.obj("listing/size.csv", 5, md5(b"12345"))
    p.file("listing/link", size=8, kind=S.KIND_SYMLINK)
    p.obj("listing/link", 8, md5(b"linktext"))
    p.file("listing/fifo", size=0, kind=S.KIND_FIFO)
    p.file("listing/unreadable", size=None, kind=S.KIND_ERROR, error="lstat failed: EACCES")
    p.file("listing/bad-name", size=3, name_problem="name is not valid UTF-8")
    p.obj("listing/bad-name", 3, md5(b"abc"))
    return p


def _reconcile(ctx: R.Context, prehash: str, settle: bool, monkeypatch) -> pa.Table:
    with monkeypatch.context() as mp:
        if not settle:
            mp.setattr(SETTLE, "settle", lambda *a, **kw: None)
        plan = R.plan_partition(ctx, 0, prehash)
        results = []
        for i, unit in enumerate(plan["units"]):  # as each digest task serves its unit
            with SMALL.known_digests(_known_for(prehash, ctx.root, 0, unit)):
                results.append(CHECKPOINT.run_unit(ctx, plan["units"], i))
        counts = FINISH.finish_partition(ctx, plan, *results)
    _prehashed.cache_clear()
    return pq.read_table(ctx.part_path(0)), counts, plan


@pytest.mark.parametrize("metadata", ["auto", "off", "all"])
def test_settled_rows_equal_the_per_row_path(s3, bucket, tmp_path, monkeypatch, metadata):
    root = tmp_path / "src"
    root.mkdir()
    case = _every_case(root)
    target = S3Target.parse(f"s3://{bucket}/pfx", endpoint_url=s3.url)
    if metadata == "auto":
        # the metadata sample must find objects to look at: without user metadata, as a
        # Snowball import, so the ETag rows are settled as before
        c = s3.client()
        for row in case.dst:
            c.put_object(Bucket=bucket, Key="pfx/" + row["key"], Body=b"")
    placed = _check_placed_rows(monkeypatch)
    tables = {}
    for settle in (True, False):
        run = tmp_path / f"run-{settle}"
        case.write(run / "inventory")
        ctx = R.Context(root=str(root), target=target, run_dir=str(run), run_id="same-run",
                        metadata=metadata)
        prehash = str(run / "inventory" / "prehash")
        tables[settle], counts, plan = _reconcile(ctx, prehash, settle, monkeypatch)
        if settle and metadata != "all":
            settled = plan["settled"]
            assert settled is not None and settled.count >= 50
    assert tables[True].schema == tables[False].schema == S.RECONCILIATION
    assert placed and max(placed) >= 50  # the per-row path placed its rows, checked each time
    bulk, rows = tables[True].to_pylist(), tables[False].to_pylist()
    assert [r["key"] for r in bulk] == [r["key"] for r in rows]
    for a, b in zip(bulk, rows, strict=True):
        assert a == b, a["key"]
    by_key = {r["key"]: r for r in bulk}
    assert counts["rows"] == len(bulk)
    assert by_key[unicodedata.normalize("NFD", "names/café.txt")]["status"] == S.NAME_MISMATCH
    if metadata == "all":  # every object is HEADed; the bucket is empty
        assert by_key["etag/same-007.csv"]["status"] == S.DEST_ERROR
        return
    assert by_key["etag/same-007.csv"]["verified_by"] == "etag-md5"
    assert by_key["report/r1.bin"]["status"] == S.CONTENT_MISMATCH
    assert by_key["report/cheapest-wins.bin"]["verified_by"] == "crc64nvme"
    assert by_key["sse/kms.bin"]["status"] == S.UNVERIFIED
    assert by_key["etag/differs.csv"]["status"] == S.CONTENT_MISMATCH
    assert by_key["etag/stale-digest.csv"]["status"] == S.MATCH


def _reference_place(table: pa.Table, rows: pa.Table, positions: np.ndarray) -> pa.Table:
    """The whole-table take that ``assemble.place_rows`` replaced (kept as the oracle)."""
    idx = np.arange(table.num_rows)
    idx[positions] = table.num_rows + np.arange(len(positions))
    return pa.concat_tables([table, rows]).take(pa.array(idx))


def _check_placed_rows(monkeypatch) -> list[int]:
    """Every ``place_rows`` of the run checked against the oracle; the row counts placed."""
    placed: list[int] = []
    real = ASSEMBLE.place_rows

    def checked(table, rows, positions):
        got = real(table, rows, positions)
        order = np.argsort(positions, kind="stable")
        want = _reference_place(table, rows.take(pa.array(order)), np.asarray(positions)[order])
        assert got.equals(want)
        placed.append(rows.num_rows)
        return got

    monkeypatch.setattr(ASSEMBLE, "place_rows", checked)
    return placed


def test_placed_rows_in_any_order_and_chunking():
    """Per-row results land at their positions whatever their order; listing columns stay."""
    n = 10
    table = pa.concat_tables([
        S.RECONCILIATION.empty_table(),
        pa.table({f.name: pa.nulls(n, f.type) for f in S.RECONCILIATION}, schema=S.RECONCILIATION),
    ])
    table = table.set_column(0, "key", pa.chunked_array([[f"k{i}" for i in range(4)],
                                                         [f"k{i}" for i in range(4, n)]]))
    positions = np.array([7, 2, 5])
    rows = pa.table({f.name: pa.nulls(3, f.type) for f in S.RECONCILIATION},
                    schema=S.RECONCILIATION)
    rows = rows.set_column(0, "key", pa.array([f"k{p}" for p in positions]))
    rows = rows.set_column(3, "status", pa.array([S.MATCH, S.CONTENT_MISMATCH, S.SOURCE_ERROR]))
    got = ASSEMBLE.place_rows(table, rows, positions)
    assert got.schema == S.RECONCILIATION
    assert got.column("key").to_pylist() == [f"k{i}" for i in range(n)]
    status = got.column("status").to_pylist()
    assert (status[7], status[2], status[5]) == (S.MATCH, S.CONTENT_MISMATCH, S.SOURCE_ERROR)
    assert [s for i, s in enumerate(status) if i not in (2, 5, 7)] == [None] * 7


def test_one_chunk_keeps_rows_and_schema():
    t = pa.concat_tables([pa.table({"a": [1, 2], "b": ["x", None]}),
                          pa.table({"a": [3], "b": ["z"]})])
    assert t.column("a").num_chunks == 2
    one = INVPART.one_chunk(t)
    assert one.schema == t.schema and one.equals(t)
    assert [c.num_chunks for c in one.columns] == [1, 1]


def test_columnar_match_equals_the_pandas_merge(tmp_path):
    case = _every_case(tmp_path)
    src = S.from_rows(case.src, S.SOURCE_INVENTORY)
    dst = S.from_rows(case.dst, S.DEST_INVENTORY)
    # duplicates and Unicode twins on both sides, in no particular order
    src = pa.concat_tables([src, src.slice(3, 2)]).take(pa.array(
        np.random.default_rng(1).permutation(src.num_rows + 2)))
    dst = pa.concat_tables([dst, dst.slice(5, 1)])
    pd.testing.assert_frame_equal(M.match_partition(src, dst), _reference_match(src, dst))
    empty_src, empty_dst = S.empty(S.SOURCE_INVENTORY), S.empty(S.DEST_INVENTORY)
    for a, b in ((src, empty_dst), (empty_src, dst), (empty_src, empty_dst)):
        pd.testing.assert_frame_equal(M.match_partition(a, b), _reference_match(a, b),
                                      check_index_type=False)


def test_encodings_equal_the_standard_library():
    raw = np.random.default_rng(2).integers(0, 256, (500, 16), dtype=np.uint8)
    for width in (1, 2, 3, 8, 16):
        part = raw[:, :width]
        assert COLUMNS.b64_rows(part).to_pylist() == [
            base64.b64encode(r.tobytes()).decode() for r in part]
        assert COLUMNS.hex_rows(part).to_pylist() == [r.tobytes().hex() for r in part]
    crc = raw[:, :8].copy().view(">u8").ravel()
    assert COLUMNS.hex_rows(crc.astype(">u8").view(np.uint8).reshape(-1, 8)).to_pylist() == [
        f"{int(v):016x}" for v in crc]
    assert len(COLUMNS.hex_rows(raw[:0])) == len(COLUMNS.b64_rows(raw[:0])) == 0
