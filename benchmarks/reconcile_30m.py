"""Match + reconcile of a 30-million-file namespace, against DuckDB's FULL OUTER JOIN.

What it generates (streaming, one chunk of rows at a time, in worker processes):
two inventories in the tool's own schemas, written exactly where and how the
inventory stage leaves them - ``RUN/inventory/{src,dst}/part=NNNNN/cNNNNN.parquet``,
hash-partitioned by ``keys.partition_of(nkey)``, one file per partition per
chunk of ``--chunk`` rows (what ``inventory.compact`` writes for each group of
1M spooled rows).  The partition count is the one ``verify()`` picks:
``ceil(rows / 250,000)``.

The namespace models the cutover case (a Snowball import, synced afterwards):

* about 0.1% of the source files are missing from the destination, 0.05% of the
  objects have no source file, 0.02% differ in size, 0.02% in content; a few
  symbolic links (SKIPPED) and NFC/NFD name twins (NAME_MISMATCH);
* files below 8 MiB are single-part objects whose listed ETag is the MD5;
  30% of those below ``--head-min-size`` were synced later and list
  ``ChecksumAlgorithm=CRC64NVME`` (the ETag still decides there, without a
  HeadObject; above it the tool would HEAD for the stored checksum);
* files from 8 MiB are multipart objects (``<hex>-N``), covered by an S3 Batch
  Operations compute-checksum report (``inventory/checksums/``, the
  ``CHECKSUM_REPORT`` schema) holding their CRC64NVME - the content differences
  are report values that differ from the source's.

Content evidence without reading a byte, the way the tool consumes it:

* source digests: the prehash table (``inventory/prehash/part=NNNNN``: nkey,
  key_bytes, size, mtime_ns, md5, crc64nvme), the format ``inventory.prehash.prehash_job``
  writes and ``digest.smallfiles.known_digests`` serves to the digest units.  Here it
  holds every source file, as if each had been hashed while the destination was
  listed (the real run prehashes files below ``--head-min-size`` only);
* destination: the listed ETag (single part) or the report's CRC64NVME
  (multipart).

An MD5-ETag content difference is deliberately not generated: the tool then
sends one HeadObject to rule out SSE-KMS (whose ETag is not an MD5), which is a
request, not a listing comparison.  The run goes to a local S3 endpoint with an
empty bucket, so any request the tool did send would be counted and would turn
its row into DEST_ERROR; the source root is an empty directory, so any file the
tool did open would be a SOURCE_ERROR.  Both must stay at zero.

Then, in the same run:

1. ours: ``run.tasks.partition_job`` for every partition on a LocalCluster of
   ``--workers`` processes, submitted through ``run.inventory_stage.submit_windowed``
   exactly as ``verify()`` does (match, evidence, digest units, reconcile,
   write ``reconciliation/part-NNNNN.parquet``);
2. DuckDB (each query in its own subprocess, ``--duckdb-threads`` threads, default = cores):
   the FULL OUTER JOIN of the same two Parquet inventories on ``key``, with
   the listing verdicts (missing / extra / size) and the joined columns written
   to one Parquet file - the ratio the target is set on; then, unless
   ``--skip-same-output``, a second query that writes what the tool writes: all
   30 reconciliation columns, with content decided by joining the prehash
   table (source digests) and the checksum report, ETag MD5 for single-part
   objects (``ratio_same_output``).

Printed: walls, per-stage seconds summed over partitions, the peak RSS of every
process (driver, each worker, DuckDB), the status counts against the expected
ones.  Last line: ``RESULT reconcile_30m ours=<s> duckdb=<s> ratio=<r> peak_rss_gb=<g>
duckdb_same_output=<s> ratio_same_output=<r>``
where peak_rss_gb is the largest of the tool's processes (driver and workers).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.inventory import partition as INV

MiB = 1 << 20
#: aws cli / boto3 default multipart threshold and part size
MULTIPART = 8 * MiB
ROWS_PER_PARTITION = 250_000  # VerifyConfig.rows_per_partition
SPLIT_MIN_ROWS = 5_000  # pipeline.SPLIT_MIN_ROWS
BUCKET = "wise-bench"
PREFIX = "migrated/"
REPORT = "s3://wise-reports/job-3f9c/results/0000.csv"

# row classes and their share of the key space
MATCH, MISSING, EXTRA, SIZE, CONTENT, SYMLINK, NAMEPAIR = range(7)
SHARES = {MISSING: 0.001, EXTRA: 0.0005, SIZE: 0.0002, CONTENT: 0.0002, SYMLINK: 0.00002,
          NAMEPAIR: 0.00001}
EXPECTED = {MATCH: S.MATCH, MISSING: S.MISSING_IN_DEST, EXTRA: S.EXTRA_IN_DEST,
            SIZE: S.SIZE_MISMATCH, CONTENT: S.CONTENT_MISMATCH, SYMLINK: S.SKIPPED,
            NAMEPAIR: S.NAME_MISMATCH}


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- generation -------------------------------------------------------------------------


def _hex(raw: np.ndarray) -> pa.Array:
    """Lower-case hex strings of the rows of an (n, k) uint8 array, without a Python loop."""
    n, k = raw.shape
    lut = np.frombuffer(b"0123456789abcdef", np.uint8)
    out = np.empty((n, 2 * k), np.uint8)
    out[:, 0::2] = lut[raw >> 4]
    out[:, 1::2] = lut[raw & 15]
    offsets = np.arange(0, 2 * k * n + 1, 2 * k, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(out.tobytes())])


def _padded(values: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(pa.array(values).cast(pa.string()), width=width, padding="0")


def _keys(idx: np.ndarray) -> pa.Array:
    """Lustre-like project paths, about 60 bytes each, unique per index."""
    return pc.binary_join_element_wise(
        "proj", _padded(idx % 37, 2), "/study", _padded((idx // 37) % 500, 3),
        "/batch", _padded((idx // 18_500) % 2_000, 4), "/obs_", _padded(idx, 10), ".sas7bdat",
        "",
    )


def _b64_crc(values: np.ndarray) -> list[str]:
    return [base64.b64encode(int(v).to_bytes(8, "big")).decode() for v in values]


def _partition_and_write(table: pa.Table, base: Path, nparts: int, tag: str) -> None:
    """One file per partition, as ``inventory.compact`` writes them (repeats dropped, zstd 1)."""
    parts = K.partition_of(table.column("nkey").to_numpy(zero_copy_only=False), nparts)
    order = np.argsort(parts, kind="stable")
    table = INV.drop_repeats(table).take(pa.array(order))
    parts = parts[order]
    bounds = np.searchsorted(parts, np.arange(nparts + 1))
    for p in range(nparts):
        lo, hi = int(bounds[p]), int(bounds[p + 1])
        if hi > lo:
            INV.write_partition_file(table.slice(lo, hi - lo),
                                     base / f"part={p:05d}" / f"{tag}.parquet")


def generate_chunk(inv: str, chunk: int, lo: int, hi: int, nparts: int, seed: int,
                   head_min_size: int) -> dict:
    """Rows ``[lo, hi)`` of both inventories, the prehash table and the checksum report."""
    rng = np.random.default_rng([seed, chunk])
    n = hi - lo
    idx = np.arange(lo, hi, dtype=np.int64)
    u = rng.random(n)
    cls = np.full(n, MATCH, np.int8)
    edge = 0.0
    for c, share in SHARES.items():
        cls[(u >= edge) & (u < edge + share)] = c
        edge += share
    size = np.minimum(np.exp(rng.normal(11.5, 2.5, n)), 50e9).astype(np.int64)
    size[cls == CONTENT] = np.maximum(size[cls == CONTENT], MULTIPART + 12_345)
    size[(cls == NAMEPAIR) | (cls == SYMLINK)] %= 4096
    multipart = size >= MULTIPART
    mtime = 1_600_000_000_000_000_000 + rng.integers(0, 10**17, n)
    md5 = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    crc = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)

    keys = _keys(idx)
    nfd = np.flatnonzero(cls == NAMEPAIR)
    src_keys = dst_keys = keys
    if len(nfd):  # NFD "cafe\u0301" in the source, NFC "caf\u00e9" in the bucket
        k = keys.to_pylist()
        d = list(k)
        for i in nfd:
            k[i] = k[i].replace("/obs_", "/cafe\u0301_")
            d[i] = unicodedata.normalize("NFC", k[i])
        src_keys, dst_keys = pa.array(k, pa.string()), pa.array(d, pa.string())
    nkeys = dst_keys  # the NFC form of every key

    # --- source: every class but EXTRA
    sm = cls != EXTRA
    kind = np.where(cls == SYMLINK, S.KIND_SYMLINK, S.KIND_FILE)
    src = pa.table({
        "key": src_keys,
        "key_bytes": src_keys.cast(pa.binary()),
        "nkey": nkeys,
        "kind": pa.array(kind, pa.string()),
        "size": size,
        "mtime_ns": mtime,
        "ctime_ns": mtime,
        "ino": pa.array(idx.astype(np.uint64) + 1_000_000, pa.uint64()),
        "dev": pa.array(np.full(n, 64_768, np.uint64), pa.uint64()),
        "nlink": np.ones(n, np.int64),
        "uid": 10_000 + (idx % 50),
        "gid": np.full(n, 5_000, np.int64),
        "mode": np.where(cls == SYMLINK, 0o120777, 0o100644).astype(np.int64),
        "blocks": (size + 511) // 512,
        "name_problem": pa.nulls(n, pa.string()),
        "error": pa.nulls(n, pa.string()),
    }, schema=S.SOURCE_INVENTORY).filter(pa.array(sm))

    # --- prehash: the source files' digests
    pm = sm & (cls != SYMLINK)
    md5_bin = pa.Array.from_buffers(pa.binary(16), n, [None, pa.py_buffer(md5.tobytes())])
    pre = pa.table({
        "nkey": nkeys, "key_bytes": src_keys.cast(pa.binary()), "size": size, "mtime_ns": mtime,
        "md5": md5_bin, "crc64nvme": pa.array(crc, pa.uint64()),
    }, schema=S.PREHASH).filter(pa.array(pm))

    # --- destination: every class but MISSING and SYMLINK
    dm = (cls != MISSING) & (cls != SYMLINK)
    dsize = size + np.where(cls == SIZE, 1 + (idx % 1000), 0)
    nparts_obj = np.maximum(1, -(-size // MULTIPART))
    etag_md5 = _hex(md5)
    etag_mp = pc.binary_join_element_wise(
        _hex(rng.integers(0, 256, (n, 16), dtype=np.uint8)), pa.array(nparts_obj).cast(pa.string()),
        "-")
    etag = pc.if_else(pa.array(multipart), etag_mp, etag_md5)
    synced = (rng.random(n) < 0.3) & (size < head_min_size)
    dst = pa.table({
        "key": dst_keys,
        "nkey": nkeys,
        "size": dsize,
        "etag": etag,
        "last_modified_ns": np.full(n, 1_700_000_000_000_000_000, np.int64) + idx,
        "storage_class": pa.array(np.where(multipart, "INTELLIGENT_TIERING", "STANDARD")),
        "checksum_algorithm": pc.if_else(pa.array(synced), "CRC64NVME",
                                         pa.nulls(n, pa.string())),
        "checksum_type": pc.if_else(pa.array(synced), "FULL_OBJECT", pa.nulls(n, pa.string())),
    }, schema=S.DEST_INVENTORY).filter(pa.array(dm))

    # --- compute-checksum report for the multipart objects
    rm = np.flatnonzero(dm & multipart)
    rcrc = crc[rm].copy()
    bad = cls[rm] == CONTENT
    rcrc[bad] ^= np.uint64(0x5A5A)
    nr = len(rm)
    rep = pa.table({
        "key": dst_keys.take(pa.array(rm)),
        "nkey": nkeys.take(pa.array(rm)),
        "version_id": pa.nulls(nr, pa.string()),
        "algorithm": pa.array(["CRC64NVME"] * nr, pa.string()),
        "checksum_type": pa.array(["FULL_OBJECT"] * nr, pa.string()),
        "checksum": pa.array(_b64_crc(rcrc), pa.string()),
        "checksum_parts": pa.nulls(nr, pa.int32()),
        "etag": etag.take(pa.array(rm)),
        "task_status": pa.array(["succeeded"] * nr, pa.string()),
        "error": pa.nulls(nr, pa.string()),
        "report": pa.array([REPORT] * nr, pa.string()),
    }, schema=S.CHECKSUM_REPORT)

    base = Path(inv)
    tag = f"c{chunk:05d}"
    for name, table in (("src", src), ("dst", dst), ("prehash", pre), ("checksums", rep)):
        _partition_and_write(table, base / name, nparts, tag)
    expected = {EXPECTED[c]: int((cls == c).sum()) for c in EXPECTED}
    return {"expected": expected, "src": src.num_rows, "dst": dst.num_rows,
            "report": nr, "bytes": int(size[sm].sum())}


def generate(inv: Path, rows: int, nparts: int, chunk: int, procs: int, seed: int,
             head_min_size: int) -> dict:
    """Both inventories, chunk by chunk in ``procs`` processes (each holds one chunk)."""
    expected: dict[str, int] = {}
    totals = {"src": 0, "dst": 0, "report": 0, "bytes": 0}
    bounds = [(c, lo, min(rows, lo + chunk)) for c, lo in enumerate(range(0, rows, chunk))]
    with ProcessPoolExecutor(procs) as pool:
        futs = [pool.submit(generate_chunk, str(inv), c, lo, hi, nparts, seed, head_min_size)
                for c, lo, hi in bounds]
        report_rows = []
        for f in futs:
            res = f.result()
            for k, v in res["expected"].items():
                expected[k] = expected.get(k, 0) + v
            for k in totals:
                totals[k] += res[k]
            report_rows.append(res["report"])
    regroup(inv / "checksums", report_rows, chunk)
    return {"expected": expected, **totals, "files": len(bounds) * nparts}


def regroup(side: Path, rows_per_chunk: list[int], group_rows: int) -> None:
    """One file per compaction group, as the pipeline leaves a side much smaller than the source.

    The pipeline compacts each side in groups of ``group_rows`` spooled rows
    (``run.inventory_stage.groups``), so the checksum report (a few percent of the keys)
    ends up in one or two files per partition, not one per source chunk.
    """
    from wiseverify.run.inventory_stage import groups as spool_groups

    groups = spool_groups([(f"c{c:05d}", n) for c, n in enumerate(rows_per_chunk)], group_rows)
    for part in sorted(side.glob("part=*")):
        for g, names in enumerate(groups):
            files = [part / f"{name}.parquet" for name in names]
            tables = [pq.read_table(f) for f in files if f.exists()]
            for f in files:
                f.unlink(missing_ok=True)
            if tables:
                INV.write_partition_file(pa.concat_tables(tables), part / f"g{g:05d}.parquet")


# --- ours -------------------------------------------------------------------------------------


def _worker_peak() -> dict:
    import psutil

    cpu = psutil.Process().cpu_times()
    return {"peak": peak_rss_bytes(), "rss": psutil.Process().memory_info().rss,
            "pid": os.getpid(), "cpu": cpu.user + cpu.system}


def run_ours(run_dir: Path, root: Path, endpoint: str, nparts: int, workers: int,
             threads: int, head_min_size: int) -> dict:
    """Partitions through ``run.tasks.partition_job`` on a local cluster, as verify() does."""
    from wiseverify.core.s3 import S3Target
    from wiseverify.deploy.cluster import open_client
    from wiseverify.reconcile import plan as R
    from wiseverify.report import summary as REP
    from wiseverify.run import inventory_stage as P
    from wiseverify.run import tasks as TASKS

    target = S3Target(BUCKET, PREFIX, endpoint)
    t_start = time.monotonic()
    with open_client(workers=workers, threads_per_worker=threads) as client:
        client.wait_for_workers(workers)
        started = time.monotonic() - t_start
        info = client.scheduler_info(n_workers=-1)["workers"]
        nthreads = sum(w.get("nthreads", 1) for w in info.values()) or 1
        # the generated destination has no endpoint to sample for POSIX metadata: the
        # stage measured is the reconcile of listings, prehash and checksum report
        ctx = R.Context(root=str(root), target=target, run_dir=str(run_dir),
                        run_id="bench-30m", head_min_size=head_min_size, metadata="off")
        ctx = replace(ctx, min_units=4 * nthreads)
        prehash_dir = str(run_dir / "inventory" / "prehash")
        totals = REP.empty_totals()
        stages: dict[str, float] = {}
        pending = list(range(nparts - 1, -1, -1))

        def submit(p):
            return client.submit(TASKS.partition_job, ctx, p, None, prehash_dir, pure=False,
                                 key=f"partition-{p}-bench")

        def on_part(res):
            REP.add_totals(totals, res)
            for k, v in (res.get("stage_s") or {}).items():
                stages[k] = stages.get(k, 0.0) + v

        before = client.run(_worker_peak)
        t0 = time.monotonic()
        P.submit_windowed(client, pending, submit, max(2, min(nparts, nthreads)),
                           lambda key, res: on_part(res))
        wall = time.monotonic() - t0
        peaks = client.run(_worker_peak)
    cpu = sum(w["cpu"] - before[a]["cpu"] for a, w in peaks.items() if a in before)
    return {"wall": wall, "cluster_start": started, "totals": totals, "stages": stages,
            "workers": peaks, "cpu": cpu}


# --- DuckDB -------------------------------------------------------------------------------------

DUCKDB_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import duckdb
    inv, out, threads, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    con = duckdb.connect()
    con.execute(f"SET threads={threads}")
    con.execute("SET preserve_insertion_order=false")
    con.execute("SET enable_progress_bar=false")
    src = f"read_parquet('{inv}/src/*/*.parquet', hive_partitioning=false)"
    dst = f"read_parquet('{inv}/dst/*/*.parquet', hive_partitioning=false)"

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    if mode == "plain":
        c0, t0 = cpu(), time.monotonic()
        con.execute(f'''
        COPY (
          SELECT coalesce(s.key, d.key) AS key, coalesce(s.key_bytes, encode(s.key)) AS key_bytes,
            d.key AS dst_key,
            CASE WHEN d.key IS NULL THEN 'MISSING_IN_DEST'
                 WHEN s.key IS NULL THEN 'EXTRA_IN_DEST'
                 WHEN s.size <> d.size THEN 'SIZE_MISMATCH' END AS status,
            s.kind AS src_kind, s.size AS src_size, d.size AS dst_size,
            s.mtime_ns AS src_mtime_ns, s.ctime_ns AS src_ctime_ns, s.ino AS src_ino,
            s.uid AS src_uid, s.gid AS src_gid, s.mode AS src_mode, d.etag AS dst_etag,
            d.last_modified_ns AS dst_last_modified_ns, d.storage_class AS dst_storage_class,
            d.checksum_algorithm AS dst_checksum_algorithm
          FROM {src} s FULL OUTER JOIN {dst} d ON s.key = d.key
        ) TO '{out}' (FORMAT parquet, COMPRESSION zstd)''')
        wall, used = time.monotonic() - t0, cpu() - c0
        c0, t0 = cpu(), time.monotonic()
        con.execute(f'''
          SELECT count(*), count(s.key), count(d.key), count(*) FILTER (WHERE s.size <> d.size)
          FROM {src} s FULL OUTER JOIN {dst} d ON s.key = d.key''').fetchall()
        join_wall, join_cpu = time.monotonic() - t0, cpu() - c0
        res = {"wall": wall, "cpu": used, "join_wall": join_wall, "join_cpu": join_cpu,
               "counts": dict(con.execute(
                   f"SELECT coalesce(status, 'other'), count(*) FROM read_parquet('{out}') "
                   "GROUP BY 1").fetchall())}
    else:
        # the tool's whole table: every reconciliation column, content decided by the
        # prehashed digests against the listed ETag (single part) or the checksum report
        pre = f"read_parquet('{inv}/prehash/*/*.parquet', hive_partitioning=false)"
        rep = f"read_parquet('{inv}/checksums/*/*.parquet', hive_partitioning=false)"
        src_h = src.replace("hive_partitioning=false", "hive_partitioning=true")
        c0, t0 = cpu(), time.monotonic()
        con.execute(f'''
        COPY (
          WITH j AS (
            SELECT s.*, d.key AS d_key, d.size AS d_size, d.etag, d.last_modified_ns,
              d.storage_class, d.checksum_algorithm AS d_algo, s.part AS s_part,
              coalesce(s.key_bytes, encode(s.key)) AS kb,
              lower(hex(p.md5)) AS md5_hex, lower(printf('%016x', p.crc64nvme)) AS crc_hex,
              to_base64(unhex(printf('%016x', p.crc64nvme))) AS crc_b64, r.checksum, r.report
            FROM {src_h} s FULL OUTER JOIN {dst} d ON s.key = d.key
            LEFT JOIN {pre} p ON p.key_bytes = coalesce(s.key_bytes, encode(s.key))
              AND p.size = s.size AND p.mtime_ns = s.mtime_ns
            LEFT JOIN (SELECT * FROM {rep} WHERE error IS NULL AND algorithm = 'CRC64NVME') r
              ON r.key = d.key),
          v AS (
            SELECT *, CASE
              WHEN kind <> 'file' THEN 'SKIPPED'
              WHEN d_key IS NULL THEN 'MISSING_IN_DEST'
              WHEN key IS NULL THEN 'EXTRA_IN_DEST'
              WHEN size <> d_size THEN 'SIZE_MISMATCH'
              WHEN checksum IS NOT NULL AND crc_b64 IS NOT NULL THEN
                CASE WHEN checksum = crc_b64 THEN 'MATCH' ELSE 'CONTENT_MISMATCH' END
              WHEN lower(etag) = md5_hex THEN 'MATCH' END AS status,
              checksum IS NOT NULL AND crc_b64 IS NOT NULL AS by_report
            FROM j)
          SELECT coalesce(key, d_key) AS key, coalesce(kb, encode(d_key)) AS key_bytes,
            'data/' || d_key AS dst_key, status,
            CASE WHEN status IN ('MATCH', 'CONTENT_MISMATCH') THEN
              CASE WHEN by_report THEN 'crc64nvme' ELSE 'etag-md5' END END AS verified_by,
            CASE status WHEN 'MISSING_IN_DEST' THEN 'no object under this key'
              WHEN 'EXTRA_IN_DEST' THEN 'object has no source file'
              WHEN 'SKIPPED' THEN 'symbolic link, not followed'
                || CASE WHEN d_key IS NOT NULL THEN ', an object exists under this key' ELSE '' END
              WHEN 'SIZE_MISMATCH' THEN 'source ' || size || ' bytes, destination ' || d_size
                || ' bytes'
              WHEN 'CONTENT_MISMATCH' THEN 'crc64nvme: source ' || crc_b64 || ' != destination '
                || checksum || ' (' || report || ')'
              WHEN 'MATCH' THEN CASE WHEN by_report THEN 'CRC64NVME from S3 Batch Operations '
                || 'compute-checksum report ' || report END END AS detail,
            kind AS src_kind, size AS src_size, d_size AS dst_size, mtime_ns AS src_mtime_ns,
            ctime_ns AS src_ctime_ns, ino AS src_ino, uid AS src_uid, gid AS src_gid,
            mode AS src_mode, etag AS dst_etag, last_modified_ns AS dst_last_modified_ns,
            storage_class AS dst_storage_class,
            CASE WHEN status IN ('MATCH', 'CONTENT_MISMATCH') THEN
              CASE WHEN etag LIKE '%-%' THEN CAST(split_part(etag, '-', 2) AS INTEGER)
                   ELSE 1 END END AS dst_parts,
            CAST(NULL AS BIGINT) AS dst_part_size,
            CASE WHEN by_report THEN 'crc64nvme' ELSE d_algo END AS dst_checksum_algorithm,
            CASE WHEN by_report THEN 'FULL_OBJECT' END AS dst_checksum_type,
            CASE WHEN status IN ('MATCH', 'CONTENT_MISMATCH') THEN
              CASE WHEN by_report THEN checksum ELSE md5_hex END END AS dst_checksum,
            CASE WHEN status IN ('MATCH', 'CONTENT_MISMATCH') THEN
              CASE WHEN by_report THEN crc_b64 ELSE md5_hex END END AS src_digest,
            CASE WHEN status IN ('MATCH', 'CONTENT_MISMATCH') THEN crc_hex END
              AS src_crc64nvme,
            false AS metadata_checked,
            CASE WHEN status IN ('MATCH', 'CONTENT_MISMATCH') THEN size END AS bytes_read_src,
            CAST(NULL AS BIGINT) AS bytes_read_dst, CAST(s_part AS INTEGER) AS partition,
            'duckdb' AS evidence_run
          FROM v
        ) TO '{out}' (FORMAT parquet, COMPRESSION zstd)''')
        res = {"wall": time.monotonic() - t0, "cpu": cpu() - c0, "counts": dict(con.execute(
            f"SELECT coalesce(status, 'other'), count(*) FROM read_parquet('{out}') GROUP BY 1"
        ).fetchall())}
    print(json.dumps({**res, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""")


def run_duckdb(inv: Path, out: Path, threads: int, mode: str) -> dict:
    """One of DuckDB's two queries (``plain``/``same``) in its own process: its own peak RSS."""
    p = subprocess.run([sys.executable, "-c", DUCKDB_SCRIPT, str(inv), str(out), str(threads),
                        mode], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"duckdb failed:\n{p.stderr[-3000:]}")
    last = p.stdout.strip().splitlines()[-1]
    return json.loads(last[last.index("{"):])


# --- main -------------------------------------------------------------------------------------


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def report_ours(ours: dict, expected: dict, rep: int) -> None:
    """Print one run of ours: wall, CPU, stages, RSS, and the statuses against the truth."""
    t = ours["totals"]
    print(f"ours [{rep + 1}]: {ours['wall']:.2f} s ({ours['cpu']:.1f} CPU s in the workers) for "
          f"{t['rows']:,} keys ({t['rows'] / ours['wall'] / 1e6:.2f} M keys/s; cluster start "
          f"{ours['cluster_start']:.1f} s not counted), {t['requests']} S3 requests, "
          f"{t['bytes_read_src']:,} B attributed to prehashed source digests", flush=True)
    if ours["stages"]:
        print("  stages (task seconds summed over partitions): " + ", ".join(
            f"{k} {v:.2f}" for k, v in ours["stages"].items()))
    for addr, w in sorted(ours["workers"].items()):
        print(f"  worker {w['pid']} {addr}: peak RSS {gb(w['peak'])}")
    counts = t["counts"]
    bad = {k: (counts.get(k, 0), expected.get(k, 0)) for k in set(counts) | set(expected)
           if counts.get(k, 0) != expected.get(k, 0)}
    print("  statuses: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    if bad:
        print(f"  MISMATCH with the generated truth (got, expected): {bad}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=30_000_000,
                    help="keys in the namespace (default 30,000,000; 1,000,000 for a quick check)")
    ap.add_argument("--workdir", help="where to generate (default: a temp dir under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--threads-per-worker", type=int, default=2,
                    help="threads per worker process (default 2, the tool's default)")
    ap.add_argument("--partitions", type=int,
                    help=f"default: ceil(rows / {ROWS_PER_PARTITION:,}), as verify() picks")
    ap.add_argument("--chunk", type=int, default=1_000_000,
                    help="rows per generated file group (compact's group size, default 1M)")
    ap.add_argument("--duckdb-threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--head-min-size", type=int, default=4 * MiB)
    ap.add_argument("--seed", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate both sides this many times; the best of each is compared")
    ap.add_argument("--skip-duckdb", action="store_true")
    ap.add_argument("--skip-same-output", action="store_true",
                    help="skip DuckDB's second query, which writes the tool's whole table")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the inventories already in --workdir (no generation)")
    args = ap.parse_args(argv)

    from wiseverify.demo.locals3 import FAKE_CREDENTIALS, LocalS3

    os.environ.update(FAKE_CREDENTIALS)
    # a SIGTERM still runs the finally blocks: the local S3 endpoint and the data go away
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wv-r30m-"))
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / "run"
    inv = run_dir / "inventory"
    root = work / "source"  # empty: a file the tool opened would be a SOURCE_ERROR
    root.mkdir(exist_ok=True)
    # verify()'s choice: rows_per_partition, and at least one partition per worker process
    nparts = args.partitions or max(1, math.ceil(args.rows / ROWS_PER_PARTITION),
                                    min(args.workers, args.rows // SPLIT_MIN_ROWS))
    free = shutil.disk_usage(work).free
    print(f"workdir {work} ({gb(free)} free), {args.rows:,} keys, {nparts} partitions, "
          f"{os.cpu_count()} cores", flush=True)
    try:
        meta = work / "generated.json"
        if args.reuse and meta.is_file():
            gen = json.loads(meta.read_text())
            print("reusing the generated inventories", flush=True)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            t0 = time.monotonic()
            gen = generate(inv, args.rows, nparts, args.chunk, max(1, os.cpu_count() or 1),
                           args.seed, args.head_min_size)
            gen["seconds"] = time.monotonic() - t0
            meta.write_text(json.dumps(gen))
        size = sum(f.stat().st_size for f in inv.rglob("*.parquet"))
        print(f"generated: source {gen['src']:,} rows, destination {gen['dst']:,} rows, "
              f"report {gen['report']:,} rows, {gen['files']:,} files per inventory side, "
              f"{gb(size)} of Parquet ({gen.get('seconds', 0):.1f} s)", flush=True)

        ours_runs: list[dict] = []
        duck_runs: list[dict] = []
        for rep in range(args.repeat):
            if not args.skip_ours:
                shutil.rmtree(run_dir / "reconciliation", ignore_errors=True)
                with LocalS3(log_path=str(work / "moto.log")) as s3:
                    s3.client().create_bucket(Bucket=BUCKET)
                    ours_runs.append(run_ours(run_dir, root, s3.url, nparts, args.workers,
                                              args.threads_per_worker, args.head_min_size))
                report_ours(ours_runs[-1], gen["expected"], rep)
            if not args.skip_duckdb:
                duck_runs.append(run_duckdb(inv, work / "duckdb.parquet", args.duckdb_threads,
                                            "plain"))
                d = duck_runs[-1]
                d["same"] = None if args.skip_same_output else run_duckdb(
                    inv, work / "duckdb-same.parquet", args.duckdb_threads, "same")
                print(f"duckdb [{rep + 1}]: {d['wall']:.2f} s ({d['cpu']:.1f} CPU s, "
                      f"{args.duckdb_threads} threads) FULL OUTER JOIN written to Parquet; "
                      f"join alone (counts only) {d['join_wall']:.2f} s ({d['join_cpu']:.1f} CPU s)"
                      f"; peak RSS {gb(d['peak'])}; listing verdicts {d['counts']}", flush=True)
                if d["same"]:
                    print(f"duckdb same output [{rep + 1}]: {d['same']['wall']:.2f} s "
                          f"({d['same']['cpu']:.1f} CPU s, peak RSS {gb(d['same']['peak'])}): "
                          f"the tool's 30 columns, content "
                          f"decided from the prehash table and the checksum report; statuses "
                          f"{d['same']['counts']}", flush=True)

        driver = peak_rss_bytes()
        print(f"driver (benchmark, scheduler): peak RSS {gb(driver)}")
        if ours_runs and duck_runs:
            ours = min(r["wall"] for r in ours_runs)
            duck = min(r["wall"] for r in duck_runs)
            peak = max([driver] + [w["peak"] for r in ours_runs for w in r["workers"].values()])
            if args.repeat > 1:
                print(f"best of {args.repeat}: ours {ours:.2f} s, duckdb {duck:.2f} s "
                      f"(join alone {min(r['join_wall'] for r in duck_runs):.2f} s)")
            same = [r["same"]["wall"] for r in duck_runs if r["same"]]
            extra = (f" duckdb_same_output={min(same):.2f} ratio_same_output="
                     f"{ours / min(same):.2f}" if same else "")
            print(f"RESULT reconcile_30m ours={ours:.2f} duckdb={duck:.2f} "
                  f"ratio={ours / duck:.2f} peak_rss_gb={peak / 1e9:.2f}{extra}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
