"""``--checksum-report``: an S3 Batch Operations compute-checksum report as evidence.

Partitioned like the inventories, so the planning of a partition reads only its own
slice; an object with a usable entry needs no HEAD and no byte read from S3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from wiseverify.inventory.jobs import Job, JobContext, Spooled, tally_ingest

if TYPE_CHECKING:
    from distributed import Future

import base64
import csv
import gzip
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.s3 import S3Target, strip_etag
from wiseverify.inventory.partition import read_partition
from wiseverify.inventory.sources import (
    IngestError,
    _check_md5,
    _MD5Reader,
    _must_exist,
    _open,
    _read_json,
    _resolve,
    _spool_tables,
)

# --- 3. evidence: an S3 Batch Operations compute-checksum completion report -----------------


@dataclass
class ReportFileJob(Job):
    """Read one result CSV of a compute-checksum report into checksum spool files."""

    url: str
    md5: str | None
    kind: ClassVar[str] = "checksums"

    def submit(self, ctx: JobContext, n: int) -> Future:
        return ctx.client.submit(ingest_report_file, self.url, self.md5, ctx.target,
                                 ctx.spool_base("csum", n), pure=False,
                                 key=ctx.key("checksums", n))

    def tally(self, res: dict, ctx: JobContext, inv: Spooled) -> list[Job]:
        tally_ingest(res, inv)
        return []


def report_plan(report: str, target: S3Target) -> tuple[dict, list[tuple]]:
    """Jobs for a completion report: its manifest.json (every result file) or one CSV."""
    if not report.lower().endswith(".json"):
        _must_exist(report, target)
        url = report if report.startswith("s3://") else os.path.abspath(report)
        return {"checksum_report": report, "checksum_report_files": 1}, [ReportFileJob(url, None)]
    doc = _read_json(report, target)
    if not str(doc.get("Format", "")).startswith("Report_CSV"):
        raise IngestError(f"{report}: Format {doc.get('Format')!r} is not a Batch Operations "
                          "CSV completion report")
    results = doc.get("Results") or []
    jobs = [ReportFileJob(_resolve(report, r.get("Bucket"), r["Key"]), r.get("MD5Checksum"))
            for r in results if r.get("Key")]
    if not jobs:
        raise IngestError(f"{report} lists no result files")
    return ({"checksum_report": report, "checksum_report_files": len(jobs),
             "checksum_report_created": doc.get("ReportCreationDate")}, jobs)


def _pick(d: dict, *names: str):
    for n in names:
        v = d.get(n)
        if v not in (None, ""):
            return v
    return None


def _report_rows(rows: Iterator[list[str]], target: S3Target, report: str,
                 stats: dict) -> Iterator[pa.Table]:
    """CHECKSUM_REPORT rows from the CSV rows of one result file, in batches."""
    cols: dict[str, list] = {f.name: [] for f in S.CHECKSUM_REPORT}
    name = report.rsplit("/", 1)[-1]
    for rec in rows:
        if len(rec) < 7 or rec[0] == "Bucket":  # blank line or a header
            continue
        bucket, key, version, status, f4, f5, message = rec[:7]
        # the schema names ErrorCode before HTTPStatusCode; rows seen have them either way
        http, err = (f4, f5) if f4.strip().isdigit() else (f5, f4)
        key = unquote_plus(key)
        if bucket != target.bucket or not key.startswith(target.prefix) or key.endswith("/"):
            stats["checksum_outside"] += 1
            continue
        rel = key[len(target.prefix):]
        row = {"key": rel, "nkey": K.nfc(rel), "version_id": version or None,
               "task_status": status, "report": name}
        if status.lower() == "succeeded":
            try:
                msg = json.loads(message)
            except ValueError:
                msg = None
            if not isinstance(msg, dict):
                msg = {}
            value = _pick(msg, "checksum_base64", "checksumBase64", "ChecksumBase64")
            hexval = _pick(msg, "checksum_hex", "checksumHex", "ChecksumHex")
            if value is None and hexval:
                try:
                    value = base64.b64encode(bytes.fromhex(hexval.split("-")[0])).decode()
                except ValueError:
                    value = None
            algo = _pick(msg, "checksumAlgorithm", "checksum_algorithm", "ChecksumAlgorithm")
            ctype = _pick(msg, "checksumType", "checksum_type", "ChecksumType")
            value, _, nparts = (value or "").partition("-")
            row.update(algorithm=str(algo).upper() if algo else None,
                       checksum_type=str(ctype).upper() if ctype else None,
                       checksum=value or None,
                       checksum_parts=int(nparts) if nparts.isdigit() else None,
                       etag=strip_etag(_pick(msg, "etag", "ETag", "eTag")) or None)
            if not (value and algo):
                row["error"] = f"no checksum in the result message: {message[:200]}"
        else:
            row["error"] = f"{status} {err} (HTTP {http}): {message}"[:500]
        stats["checksum_failed" if row.get("error") else "checksum_entries"] += 1
        for c, lst in cols.items():
            lst.append(row.get(c))
        if len(cols["key"]) >= 100_000:
            yield pa.table(cols, schema=S.CHECKSUM_REPORT)
            cols = {f.name: [] for f in S.CHECKSUM_REPORT}
    yield pa.table(cols, schema=S.CHECKSUM_REPORT)


def ingest_report_file(url: str, md5: str | None, target: S3Target, spool_base: str) -> dict:
    """One completion-report CSV into CHECKSUM_REPORT spool files (a Dask task)."""
    stats = {"checksum_entries": 0, "checksum_failed": 0, "checksum_outside": 0}
    with _open(url, target) as raw:
        tee = _MD5Reader(raw)
        stream = gzip.GzipFile(fileobj=tee) if url.endswith(".gz") else tee
        text = io.TextIOWrapper(io.BufferedReader(stream) if stream is tee else stream,
                                encoding="utf-8", errors="surrogateescape", newline="")
        spools = _spool_tables(_report_rows(csv.reader(text), target, url, stats),
                               S.CHECKSUM_REPORT, spool_base)
        _check_md5(url, md5, tee.drain())
    return {"side": "sum", "count": sum(n for _, n in spools), "spool": None,
            "spools": spools, "bytes": 0, "ingest": stats}


def attach_checksums(run_dir: str, part: int, rows: list[dict]) -> int:
    """Put the report entries of a partition's candidates into their rows.

    Reads ``inventory/checksums/part=NNNNN`` only: the report was partitioned
    like the inventories.  Returns how many rows got entries.
    """
    if not rows:
        return 0
    t = read_partition(str(Path(run_dir) / "inventory" / "checksums"), part, S.CHECKSUM_REPORT)
    wanted = pa.array(sorted({r["dst_rel"] for r in rows if r.get("dst_rel")}), pa.string())
    by_key: dict[str, list[dict]] = defaultdict(list)
    for e in t.filter(pc.is_in(t.column("key"), value_set=wanted)).to_pylist():
        if e["error"] is None:
            by_key[e["key"]].append(e)
    hits = 0
    for r in rows:
        entries = by_key.get(r.get("dst_rel") or "")
        if entries:
            r["report_checksums"] = entries
            hits += 1
    return hits
