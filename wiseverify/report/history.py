"""Run history and deltas: what still differs, and is it shrinking?

``runs_index(root)`` lists the completed runs under an output root (newest
last) from their summary.json files and writes ``runs.json`` beside them.
``diff(run_a, run_b)`` joins the two reconciliation tables on key (one
partition file at a time would do for equal layouts; the join goes through
pyarrow, so 30M keys are two columns of strings, not Python objects) and
reports status transitions, keys added and removed, and readiness.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from wiseverify.core import schema as S
from wiseverify.core.runio import write_text

#: statuses that mean bytes still have to be copied
TO_SYNC = (S.MISSING_IN_DEST, S.SIZE_MISMATCH, S.CONTENT_MISMATCH)
#: a transition from MATCH to any of these is a regression and must stand out
REGRESSIONS = (S.CONTENT_MISMATCH, S.SIZE_MISMATCH, S.MISSING_IN_DEST, S.METADATA_MISMATCH,
               S.DEST_ERROR, S.SOURCE_ERROR, S.UNVERIFIED)


def runs_index(root: str | os.PathLike, write: bool = True) -> list[dict]:
    """Completed runs under ``root``, oldest first; also written to ``root/runs.json``."""
    root = Path(root)
    runs = []
    for sfile in sorted(root.glob("*/summary.json")):
        try:
            s = json.loads(sfile.read_text())
        except (OSError, ValueError):
            continue
        runs.append({
            "run_id": s.get("run_id"), "dir": str(sfile.parent), "started": s.get("started"),
            "finished": s.get("finished"), "verdict": s.get("verdict"), "keys": s.get("keys"),
            "discrepancies": s.get("discrepancies"), "counts": s.get("counts", {}),
            "bytes_to_sync": sum(s.get("bytes", {}).get(k, 0) for k in TO_SYNC),
            "carried": (s.get("incremental") or {}).get("carried", 0),
            # a run of --slice K/N or with filter rules covered only part of the keys
            "slice": ((s.get("filters") or {}).get("slice") or {}) and
            f"{s['filters']['slice']['k']}/{s['filters']['slice']['n']}",
            "filters": [r["rule"] for r in (s.get("filters") or {}).get("rules", [])],
        })
    runs.sort(key=lambda r: r["started"] or "")
    if write and runs:
        write_text(root / "runs.json", json.dumps(runs, indent=2) + "\n")
    return runs


def _table(run_dir: Path) -> pa.Table:
    """key, status (with its cause, e.g. ``CONTENT_MISMATCH (source-changed-after-copy)``)
    and sizes: a stale copy moving to MATCH as the sync catches up reads as such."""
    d = ds.dataset(run_dir / "reconciliation")
    names = set(d.schema.names)
    t = d.to_table(columns=["key", "status", "src_size", "dst_size"]
                   + (["cause"] if "cause" in names else []))
    if "cause" in t.column_names:
        cause = t.column("cause")
        label = pc.if_else(pc.is_valid(cause), pc.binary_join_element_wise(
            t.column("status"), " (", cause, ")", ""), t.column("status"))
        t = t.set_column(1, "status", label).drop_columns(["cause"])
    return t


def diff(run_a: str | os.PathLike, run_b: str | os.PathLike) -> dict:
    """Status transitions and readiness between two runs (A older, B newer)."""
    a, b = Path(run_a), Path(run_b)
    for r in (a, b):
        if not (r / "reconciliation").is_dir():
            raise FileNotFoundError(f"{r} is not a run directory (no reconciliation/)")
    ta = _table(a).rename_columns(["key", "status_a", "src_size_a", "dst_size_a"])
    tb = _table(b).rename_columns(["key", "status_b", "src_size_b", "dst_size_b"])
    j = ta.join(tb, "key", join_type="full outer")
    sa = pc.fill_null(j["status_a"], "(absent)")
    sb = pc.fill_null(j["status_b"], "(absent)")
    pairs = pa.table({"from": sa, "to": sb}).group_by(["from", "to"]).aggregate(
        [("from", "count")])
    transitions = sorted(
        ({"from": f, "to": t, "keys": n} for f, t, n in
         zip(pairs["from"].to_pylist(), pairs["to"].to_pylist(), pairs["from_count"].to_pylist(),
             strict=True)),
        key=lambda d: (-d["keys"], d["from"], d["to"]))
    changed = pc.not_equal(sa, sb)
    delta = j.filter(changed).select(["key", "status_a", "status_b"])
    base_b = pc.replace_substring_regex(sb, r" \(.*\)$", "")  # the status without its cause
    regress = pc.and_(pc.equal(sa, S.MATCH), pc.is_in(base_b, pa.array(REGRESSIONS)))
    sum_b = json.loads((b / "summary.json").read_text()) if (b / "summary.json").is_file() else {}
    sum_a = json.loads((a / "summary.json").read_text()) if (a / "summary.json").is_file() else {}
    rules_a = [r["rule"] for r in (sum_a.get("filters") or {}).get("rules", [])]
    rules_b = [r["rule"] for r in (sum_b.get("filters") or {}).get("rules", [])]
    counts_b = sum_b.get("counts", {})
    bytes_b = sum_b.get("bytes", {})
    return {
        "run_a": str(a), "run_b": str(b),
        "transitions": transitions,
        "added": int(pc.sum(pc.is_null(j["status_a"])).as_py() or 0),
        "removed": int(pc.sum(pc.is_null(j["status_b"])).as_py() or 0),
        "changed": delta.num_rows,
        "regressions": j.filter(regress)["key"].to_pylist()[:1000],
        "regression_count": int(pc.sum(regress).as_py() or 0),
        "readiness": {
            "discrepancies_left": sum(v for k, v in counts_b.items()
                                      if k not in S.CLEAN_STATUSES),
            "bytes_to_sync": sum(bytes_b.get(k, 0) for k in TO_SYNC),
            "verdict": sum_b.get("verdict"),
        },
        # runs with other filter rules covered other paths: keys added or removed may be
        # the rules, not the data
        "filters": {"a": rules_a, "b": rules_b, "same": rules_a == rules_b},
        "_delta": delta,
    }


def write_diff(result: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """diff.json (everything but the per-key list) and diff.parquet (keys whose status moved)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(result["_delta"], out / "diff.parquet")
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    (out / "diff.json").write_text(json.dumps(public, indent=2) + "\n")
    return out / "diff.json", out / "diff.parquet"


def format_diff(result: dict, limit: int = 20) -> str:
    lines = []
    f = result.get("filters") or {}
    if f and not f.get("same"):
        lines.append("NOTE: the runs had different filter rules, so they covered different "
                     "paths:")
        lines.append(f"  A: {'; '.join(f['a']) or '(none)'}")
        lines.append(f"  B: {'; '.join(f['b']) or '(none)'}")
    lines.append(f"{'from':<18} {'to':<18} {'keys':>10}")
    for t in result["transitions"]:
        mark = "  <-- REGRESSION" if t["from"] == S.MATCH and \
            t["to"].split(" (")[0] in REGRESSIONS else ""
        lines.append(f"{t['from']:<18} {t['to']:<18} {t['keys']:>10,}{mark}")
    lines.append(f"keys added {result['added']:,}, removed {result['removed']:,}, "
                 f"status changed {result['changed']:,}")
    if result["regression_count"]:
        lines.append(f"REGRESSIONS: {result['regression_count']:,} keys went from MATCH to a "
                     "discrepancy:")
        lines += [f"  {k}" for k in result["regressions"][:limit]]
    r = result["readiness"]
    lines.append(f"readiness: {r['discrepancies_left']:,} discrepancies left, "
                 f"{r['bytes_to_sync']:,} bytes still to sync (verdict {r['verdict']})")
    return "\n".join(lines)
