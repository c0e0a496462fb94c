"""Stage 5, report: summary.json, combined.txt, discrepancies.csv and the terminal table.

Everything here streams over the reconciliation partitions one file at a time,
so reporting a 30M-key run needs no more memory than one partition.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from wiseverify.core import schema as S
from wiseverify.core.runio import write_atomic, write_text
from wiseverify.core.units import human_bytes
from wiseverify.report import pieces as P


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
    # thread seconds per step of the partition tasks (plan, settle, write...), summed
    for name, v in (part.get("stage_s") or {}).items():
        steps = totals.setdefault("partition_steps_s", {})
        steps[name] = steps.get(name, 0.0) + v
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


def write_lists(run_dir: str | os.PathLike, summary: dict) -> None:
    """summary.json, combined.txt (rclone sigils), discrepancies.csv and lists/, atomically.

    ``html.write_outputs`` writes these and then the page that reads them.  Each
    partition's share is appended as its finish task rendered it
    (:mod:`wiseverify.report.pieces`); a partition without a usable share is
    rendered here, from its file, in batches and column-wise: at 30 million keys
    a row object per key would cost the driver gigabytes.
    """
    run_dir = Path(run_dir)
    settings = P.ListSettings.of_summary(summary)
    with contextlib.ExitStack() as stack:
        sinks = P.Sinks(run_dir, settings, stack, header=True)
        for f in reconciliation_files(run_dir):
            piece = P.usable_piece(f, settings)
            if piece is not None:
                sinks.append(piece)
                continue
            for b in pq.ParquetFile(f).iter_batches(batch_size=1 << 16, columns=P.COLUMNS):
                sinks.add(b)
    summary["lists"] = sinks.lists_summary()
    rt = sinks.rollup.table()
    write_atomic(rt, run_dir / "rollup.parquet")
    summary["rollup"] = {"file": "rollup.parquet", "depth": settings.depth,
                         "directories": rt.num_rows,
                         "failing": int(pc.sum(pc.equal(rt.column("verdict"), "FAIL")).as_py()
                                        or 0) if rt.num_rows else 0}
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    P.remove_pieces(run_dir)


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
