"""Stage 5, report: summary.json, combined.txt, discrepancies.csv and the terminal table.

Everything here streams over the reconciliation partitions one file at a time,
so reporting a 30M-key run needs no more memory than one partition.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wiseverify.core import schema as S
from wiseverify.core.runio import atomic_path, write_atomic, write_text
from wiseverify.core.units import human_bytes

DISCREPANCY_COLUMNS = ["status", "key", "dst_key", "detail", "verified_by", "src_size",
                       "dst_size", "src_mtime_ns", "dst_etag", "dst_checksum", "src_digest"]


def empty_totals() -> dict:
    return {"counts": {}, "bytes": {}, "verified_by": {}, "causes": {}, "bytes_read_src": 0,
            "bytes_read_dst": 0, "rows": 0, "requests": 0, "partitions": 0,
            "metadata_objects": 0, "metadata_compared": 0}


def add_totals(totals: dict, part: dict) -> None:
    for k in ("counts", "bytes", "verified_by", "causes"):
        for name, v in part.get(k, {}).items():
            totals.setdefault(k, {})[name] = totals[k].get(name, 0) + v
    for name, v in (part.get("storage_classes") or {}).items():
        c = totals.setdefault("storage_classes", {}).setdefault(name, {"objects": 0, "bytes": 0})
        c["objects"] += v["objects"]
        c["bytes"] += v["bytes"]
    for k in ("bytes_read_src", "bytes_read_dst", "rows", "requests", "carried", "units",
              "units_reused", "metadata_objects", "metadata_compared"):
        totals[k] = totals.get(k, 0) + part.get(k, 0)
    totals["partitions"] += 1


def metadata_summary(totals: dict, setting: str, sample: dict) -> dict:
    """What was checked of the stored POSIX metadata, for summary.json and the report.

    ``sample`` is the run's ``metascope.Decision.counts()`` (all zero and empty
    when nothing was sampled).
    """
    objects, compared = totals["metadata_objects"], totals["metadata_compared"]
    return {"setting": setting, "objects": objects, "compared": compared,
            "not_compared": objects - compared, **sample}


def metadata_line(md: dict | None) -> str | None:
    """``metadata: compared on X of Y objects``, and why not on the rest where it is known."""
    if not md:
        return None
    line = f"metadata: compared on {md['compared']:,} of {md['objects']:,} objects"
    if md.get("setting") == "off":
        return line + " (--metadata off)"
    without = md.get("sampled_without_metadata", 0)
    if without and not md.get("prefixes_with_metadata"):
        line += (f"; the destination carries no POSIX metadata on the {md['sampled']:,} "
                 "objects sampled")
    elif without:
        line += (f"; no POSIX metadata on {without:,} of {md['sampled']:,} sampled objects, in "
                 + ", ".join(repr(p) for p in md["prefixes_without_metadata"][:5]))
    return line


def verdict(counts: dict) -> str:
    """PASS only when every key is MATCH or SKIPPED."""
    bad = sum(v for k, v in counts.items() if k not in S.CLEAN_STATUSES)
    return "PASS" if bad == 0 else "FAIL"


def alarms(summary: dict) -> int:
    """Discrepancies whose cause is corruption, not a stale copy (``source-older-than-copy``,
    ``stored-checksum-wrong``)."""
    return sum(n for c, n in (summary.get("causes") or {}).items() if c in S.ALARM_CAUSES)


def exit_code(summary: dict, fail_on: str = "any") -> int:
    """1 for any discrepancy; with ``fail_on="corruption"`` only for an alarm cause.

    A scheduled dry run during the weeks of sync sees thousands of stale copies;
    ``--fail-on corruption`` lets it page someone only for the rare real one.
    """
    if fail_on == "corruption":
        return 1 if alarms(summary) else 0
    return 0 if summary["verdict"] == "PASS" else 1


def build_summary(*, run_id: str, root: str, dest: str, mode: str, metadata: str,
                  metadata_sample: dict, totals: dict,
                  started: datetime, finished: datetime, nparts: int, stats: dict,
                  workers: list, hostname: str, timings: dict) -> dict:
    counts = {s: totals["counts"].get(s, 0) for s in S.STATUSES}
    nbytes = {s: totals["bytes"].get(s, 0) for s in S.STATUSES}
    discrepancies = sum(v for k, v in counts.items() if k not in S.CLEAN_STATUSES)
    return {
        "run_id": run_id,
        "source": root,
        "destination": dest,
        "mode": mode,
        "verdict": verdict(counts),
        "keys": totals["rows"],
        "discrepancies": discrepancies,
        "counts": counts,
        "bytes": nbytes,
        "verified_by": dict(sorted(totals["verified_by"].items())),
        "content_verified": sum(totals["verified_by"].values()),
        "causes": dict(sorted((totals.get("causes") or {}).items())),
        "storage_classes": dict(sorted((totals.get("storage_classes") or {}).items())),
        "metadata": metadata_summary(totals, metadata, metadata_sample),
        "bytes_read_source": totals["bytes_read_src"],
        "bytes_read_destination": totals["bytes_read_dst"],
        "requests": {"list": stats.get("list_requests", 0), "head_get_plan": totals["requests"]},
        "inventory": {"source_entries": stats.get("src_rows", 0),
                      "source_directories": stats.get("dirs", 0),
                      "destination_objects": stats.get("dst_rows", 0),
                      "folder_markers": stats.get("markers", 0),
                      "metadata_ops": stats.get("metadata_ops", 0)},
        "partitions": nparts,
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "timings": timings,
        "driver_host": hostname,
        "workers": workers,
    }


def reconciliation_files(run_dir: str | os.PathLike) -> list[Path]:
    return sorted((Path(run_dir) / "reconciliation").glob("part-*.parquet"))


#: the remediation lists (``lists/NAME.txt`` and ``lists/NAME.nul``) and their statuses
REMEDIATION_LISTS: dict[str, tuple[str, ...]] = {
    "missing-on-dst": (S.MISSING_IN_DEST,),
    "missing-on-src": (S.EXTRA_IN_DEST,),
    "differ": (S.SIZE_MISMATCH, S.CONTENT_MISMATCH, S.METADATA_MISMATCH, S.NAME_MISMATCH),
    "error": (S.SOURCE_ERROR, S.DEST_ERROR, S.NAME_UNMAPPABLE, S.NOT_FOUND),
    "unverified": (S.UNVERIFIED,),
    "match": (S.MATCH,),  # only with --list-match: as long as the run
}
#: S3 Batch Operations manifest (bucket,key; keys URL-encoded) of the UNVERIFIED objects,
#: for a compute-checksum job whose report goes back in with --checksum-report
BATCH_MANIFEST = "unverified-batch-manifest.csv"


def write_lists(run_dir: str | os.PathLike, summary: dict) -> None:
    """summary.json, combined.txt (rclone sigils), discrepancies.csv and lists/, atomically.

    ``html.write_outputs`` writes these and then the page that reads them.  Read in
    batches and written column-wise: at 30 million keys a row object per key
    would cost the driver gigabytes; only discrepancies become Python rows.
    """
    run_dir = Path(run_dir)
    sig_status = pa.array(list(S.SIGILS), pa.string())
    sig_chars = pa.array(list(S.SIGILS.values()), pa.string())
    clean = pa.array(sorted(S.CLEAN_STATUSES), pa.string())
    with contextlib.ExitStack() as stack, atomic_path(run_dir / "combined.txt") as tmp_comb, \
            atomic_path(run_dir / "discrepancies.csv") as tmp_csv, \
            open(tmp_comb, "wb") as comb, \
            open(tmp_csv, "w", encoding="utf-8", newline="") as disc:
        lists = _RemediationLists(run_dir / "lists", summary, stack)
        rollup = _Rollup(int((summary.get("rollup") or {}).get("depth", DEFAULT_ROLLUP_DEPTH)))
        w = csv.writer(disc)
        w.writerow(DISCREPANCY_COLUMNS)
        for f in reconciliation_files(run_dir):
            for b in pq.ParquetFile(f).iter_batches(batch_size=1 << 16,
                                                    columns=DISCREPANCY_COLUMNS):
                status, key = b.column("status"), b.column("key")
                sig = pc.take(sig_chars, pc.index_in(status, value_set=sig_status))
                # keys with newlines would break the one-key-per-line format
                safe = pc.replace_substring(pc.replace_substring(key, "\n", "\\n"),
                                            "\r", "\\r")
                lines = pc.drop_null(pc.binary_join_element_wise(sig, safe, " "))
                if len(lines):
                    comb.write(_joined(lines, b"\n"))
                bad = b.filter(pc.invert(pc.is_in(status, value_set=clean)))
                for row in bad.to_pylist():
                    w.writerow([row[c] for c in DISCREPANCY_COLUMNS])
            for b in pq.ParquetFile(f).iter_batches(batch_size=1 << 16,
                                                    columns=["status", "key", "key_bytes",
                                                             "dst_key", "src_size", "dst_size"]):
                lists.add(b)
                rollup.add(b)
    summary["lists"] = lists.close()
    rt = rollup.table()
    write_atomic(rt, run_dir / "rollup.parquet")
    summary["rollup"] = {"file": "rollup.parquet", "depth": rollup.depth,
                         "directories": rt.num_rows,
                         "failing": int(pc.sum(pc.equal(rt.column("verdict"), "FAIL")).as_py()
                                        or 0) if rt.num_rows else 0}
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


#: directory depth of ``rollup.parquet`` when the run did not say (``--rollup-depth``)
DEFAULT_ROLLUP_DEPTH = 2


class _Rollup:
    """Keys, bytes and statuses per directory at a depth: what each study owner signs.

    A key's directory is its parent path cut to ``depth`` components (files
    above that depth count under their own parent; ``""`` is the root), so
    every key is in exactly one row and the rows sum to the whole table.
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.rx = f"^((?:[^/]*/){{0,{max(0, depth - 1)}}}[^/]*)/.*$" if depth > 0 else None
        self.acc: dict[tuple[str, str], list[int]] = {}

    def add(self, b: pa.RecordBatch) -> None:
        key = b.column("key")
        parent = pc.if_else(pc.match_substring(key, "/"),
                            pc.replace_substring_regex(key, "/[^/]*$", ""), "")
        if self.rx is None:
            d = pa.array([""] * len(key), pa.string())
        else:
            d = pc.replace_substring_regex(pc.binary_join_element_wise(parent, "/", ""),
                                           self.rx, "\\1")
            d = pc.if_else(pc.equal(parent, ""), "", d)
        size = pc.coalesce(b.column("src_size"), b.column("dst_size"), pa.scalar(0, pa.int64()))
        t = pa.table({"dir": d, "status": b.column("status"), "size": size})
        agg = t.group_by(["dir", "status"]).aggregate([("size", "count"), ("size", "sum")])
        for dd, st, n, nb in zip(*(agg.column(c).to_pylist() for c in
                                   ("dir", "status", "size_count", "size_sum")), strict=True):
            cur = self.acc.setdefault((dd, st), [0, 0])
            cur[0] += n
            cur[1] += nb or 0

    def table(self) -> pa.Table:
        dirs = sorted({d for d, _ in self.acc})
        present = [st for st in S.STATUSES if any(k[1] == st for k in self.acc)]
        cols: dict[str, list] = {"dir": dirs, "keys": [], "bytes": [], "discrepancies": [],
                                 "verdict": []}
        per = {st: [] for st in present}
        for d in dirs:
            n = sum(self.acc.get((d, st), [0, 0])[0] for st in S.STATUSES)
            nb = sum(self.acc.get((d, st), [0, 0])[1] for st in S.STATUSES)
            bad = sum(self.acc.get((d, st), [0, 0])[0] for st in S.STATUSES
                      if st not in S.CLEAN_STATUSES)
            cols["keys"].append(n)
            cols["bytes"].append(nb)
            cols["discrepancies"].append(bad)
            cols["verdict"].append("PASS" if bad == 0 else "FAIL")
            for st in present:
                per[st].append(self.acc.get((d, st), [0, 0])[0])
        out = pa.table({**cols, **{st: pa.array(v, pa.int64()) for st, v in per.items()}})
        return out.cast(pa.schema([pa.field(f.name, pa.int64() if f.name not in
                                            ("dir", "verdict") else pa.string())
                                   for f in out.schema]))


class _RemediationLists:
    """``lists/NAME.txt`` (one path per line) and ``lists/NAME.nul`` (NUL-separated).

    The paths are the exact source-relative bytes (``key_bytes``; the key for
    destination-only objects), so each list works as-is with ``rclone copy
    --files-from-raw`` and ``wiseverify verify --files-from``.  A name holding a
    newline cannot be a line: it is only in the ``.nul`` twin (use
    ``--files-from0``), and ``summary.json`` counts it.
    """

    def __init__(self, out: Path, summary: dict, stack: contextlib.ExitStack) -> None:
        self.names = [n for n in REMEDIATION_LISTS
                      if n != "match" or (summary.get("lists") or {}).get("match_requested")]
        self.match_requested = "match" in self.names
        out.mkdir(parents=True, exist_ok=True)
        self.txt, self.nul, self.counts = {}, {}, {}
        def opened(name: str, **kw):  # renamed into place when the stack closes cleanly
            return stack.enter_context(stack.enter_context(atomic_path(out / name)).open(**kw))

        for n in self.names:
            self.txt[n] = opened(f"{n}.txt", mode="wb")
            self.nul[n] = opened(f"{n}.nul", mode="wb")
            self.counts[n] = {"paths": 0, "only_in_nul": 0}
        dest = summary.get("destination") or ""
        self.bucket = dest[len("s3://"):].split("/", 1)[0] if dest.startswith("s3://") else ""
        self.batch = opened(BATCH_MANIFEST, mode="w", encoding="utf-8", newline="")
        self.batch_rows = 0

    def add(self, b: pa.RecordBatch) -> None:
        status = b.column("status")
        kb = b.column("key_bytes")
        path = pc.if_else(pc.is_valid(kb), kb, pc.cast(b.column("key"), pa.binary()))
        for n in self.names:
            sel = pc.is_in(status, value_set=pa.array(REMEDIATION_LISTS[n], pa.string()))
            picked = pc.drop_null(path.filter(sel))
            if not len(picked):
                continue
            self.nul[n].write(_joined(picked, b"\0"))
            multi = pc.or_(pc.match_substring(picked, b"\n"), pc.match_substring(picked, b"\r"))
            one_line = picked.filter(pc.invert(multi))
            if len(one_line):
                self.txt[n].write(_joined(one_line, b"\n"))
            self.counts[n]["paths"] += len(picked)
            self.counts[n]["only_in_nul"] += len(picked) - len(one_line)
        if self.bucket:
            unv = b.filter(pc.equal(status, S.UNVERIFIED))
            for key in unv.column("dst_key").to_pylist():
                if key:
                    self.batch.write(f"{self.bucket},{quote(key, safe='/')}\n")
                    self.batch_rows += 1

    def close(self) -> dict:
        return {"dir": "lists", "match_requested": self.match_requested, **self.counts,
                "batch_manifest": {"file": f"lists/{BATCH_MANIFEST}", "objects": self.batch_rows}}


def _joined(values: pa.Array | pa.ChunkedArray, sep: bytes) -> pa.Buffer | bytes:
    """``value + sep`` for every string or binary value, as one buffer: no Python object
    per key (combined.txt and the remediation lists are as long as the run)."""
    if isinstance(values, pa.ChunkedArray):
        values = pa.concat_arrays(values.chunks) if values.num_chunks else \
            pa.array([], values.type)
    if not len(values):
        return b""
    ended = pc.binary_join_element_wise(pc.cast(values, pa.binary()),
                                        pa.scalar(b"", pa.binary()),
                                        pa.scalar(sep, pa.binary())).cast(pa.large_binary())
    _, offsets, data = ended.buffers()
    off = memoryview(offsets).cast("q")
    start = off[ended.offset]
    return data.slice(start, off[ended.offset + len(ended)] - start)


def _line_safe(key: str) -> str:
    return key.replace("\n", "\\n").replace("\r", "\\r")


def format_table(summary: dict) -> str:
    """The short summary printed at the end of a run."""
    lines = [f"{'status':<18} {'keys':>12} {'bytes':>12}"]
    for s in S.STATUSES:
        c = summary["counts"].get(s, 0)
        if c:
            lines.append(f"{s:<18} {c:>12,} {human_bytes(summary['bytes'].get(s, 0)):>12}")
    lines.append(f"{'total':<18} {summary['keys']:>12,}")
    ev = ", ".join(f"{k} {v:,}" for k, v in summary["verified_by"].items()) or "none"
    lines.append(f"content verified: {summary['content_verified']:,} ({ev})")
    if summary.get("causes"):
        lines.append("causes: " + ", ".join(f"{k} {v:,}" for k, v in summary["causes"].items()))
    if summary.get("sample"):
        lines.append(summary["sample"]["statement"])
    md = metadata_line(summary.get("metadata"))
    if md:
        lines.append(md)
    lines.append(
        f"read: source {human_bytes(summary['bytes_read_source'])}, destination "
        f"{human_bytes(summary['bytes_read_destination'])} in {summary['timings']['total_s']:.1f} s"
    )
    lines.append(
        f"verdict: {summary['verdict']} ({summary['discrepancies']:,} discrepancies) "
        f"run {summary['run_id']}"
    )
    return "\n".join(lines)


def result_line(summary: dict, run_dir: str) -> str:
    """One final line for schedulers and log scrapers."""
    md = summary.get("metadata") or {}
    meta = f" metadata={md['compared']}/{md['objects']}" if md else ""
    older = (summary.get("causes") or {}).get(S.CAUSE_OLDER, 0)
    wrong = (summary.get("causes") or {}).get(S.CAUSE_STORED_WRONG, 0)
    return (f"wiseverify {summary['verdict']} run={summary['run_id']} keys={summary['keys']} "
            f"discrepancies={summary['discrepancies']} source_older_than_copy={older}"
            + (f" stored_checksum_wrong={wrong}" if wrong else "")
            + f"{meta} out={run_dir}")
