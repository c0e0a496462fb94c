"""Incremental runs: carry a previous run's verdict over when neither side changed.

Between the bulk copy and the cutover the same tree is verified again and
again; only what changed should cost reads.  A key's earlier evidence is
reused when the source file and the object are unchanged, judged by the
facts both listings give for free:

* source: size, mtime_ns, ctime_ns (any write or chmod moves it) and inode
  (a replaced file gets a new one);
* object: size, ETag and LastModified (any overwrite changes them) and the
  stored checksum algorithms.

Only verdicts that rest on content evidence are carried (MATCH,
CONTENT_MISMATCH, METADATA_MISMATCH); everything else is decided afresh.
The carried row keeps ``evidence_run``, the run whose bytes were read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from wiseverify.core import schema as S

CARRIED_STATUSES = (S.MATCH, S.CONTENT_MISMATCH, S.METADATA_MISMATCH)
SOURCE_FACTS = (("src_size", "src_size"), ("src_mtime_ns", "src_mtime_ns"),
                ("src_ctime_ns", "src_ctime_ns"), ("src_ino", "src_ino"))
OBJECT_FACTS = (("dst_size", "dst_size"), ("dst_etag", "dst_etag"),
                ("dst_last_modified_ns", "dst_last_modified_ns"))
#: columns copied from the previous row into this run's row
EVIDENCE_COLUMNS = ("status", "verified_by", "detail", "dst_parts", "dst_part_size",
                    "dst_checksum_algorithm", "dst_checksum_type", "dst_checksum",
                    "src_digest", "src_crc64nvme", "metadata_checked", "evidence_run")


def usable_previous(prev_dir: str | Path | None, root: str, dest: str, mode: str = "stored",
                    metadata: str = "auto") -> tuple[Path | None, str]:
    """The previous run to reuse evidence from, or None with the reason.

    Evidence is only carried into a run that asks for no more than the previous
    one proved: stored-checksum verdicts never stand in for a readback, and a
    run that HEADs every object for metadata does not reuse one that did not.
    """
    if prev_dir is None:
        return None, "no previous run"
    prev = Path(prev_dir)
    sfile = prev / "summary.json"
    if not sfile.is_file() or not (prev / "reconciliation").is_dir():
        return None, f"{prev} is not a completed run"
    summary = json.loads(sfile.read_text())
    if summary.get("source") != root or summary.get("destination") != dest:
        return None, f"{prev} verified {summary.get('source')} -> {summary.get('destination')}"
    prev_mode = summary.get("mode", "stored")
    if mode == "readback" and prev_mode != "readback":
        return None, f"{prev} was a {prev_mode} run; a readback run reads everything"
    try:
        prev_meta = json.loads((prev / "run.json").read_text())["config"].get("metadata")
    except (OSError, ValueError, KeyError):
        prev_meta = None
    if metadata == "all" and prev_meta != "all":
        return None, f"{prev} did not check the metadata of every object"
    return prev, f"reusing unchanged evidence of run {summary.get('run_id')}"


def previous_partitions(prev: Path) -> int | None:
    try:
        return int(json.loads((prev / "summary.json").read_text())["partitions"])
    except (OSError, ValueError, KeyError):
        return None


def load_previous(prev: Path, part: int, keys: list[str]) -> dict[str, dict]:
    """Previous rows for ``keys`` (the same partition number when the layout is the same)."""
    f = prev / "reconciliation" / f"part-{part:05d}.parquet"
    cols = ["key", *{a for a, _ in SOURCE_FACTS}, *{a for a, _ in OBJECT_FACTS},
            *EVIDENCE_COLUMNS]
    cols = list(dict.fromkeys(cols))
    if f.is_file():
        table = ds.dataset(f).to_table(columns=cols)
    else:
        table = ds.dataset(prev / "reconciliation").to_table(
            columns=cols, filter=ds.field("key").isin(pa.array(keys, pa.string())))
    return {r["key"]: r for r in table.to_pylist()
            if r["status"] in CARRIED_STATUSES and r["verified_by"] is not None}


def carry_over(m: pd.DataFrame, cand_idx: list[int], prev: dict[str, dict]) -> dict[int, dict]:
    """``{row index: previous row}`` for the candidates whose two sides are unchanged."""
    out: dict[int, dict] = {}
    if not prev:
        return out
    for i in cand_idx:
        key = m.at[i, "key"]
        p = prev.get(key)
        if p is None or m.at[i, "dst_rel"] != key:
            continue
        if all(_eq(m.at[i, mine], p[theirs]) for mine, theirs in SOURCE_FACTS + OBJECT_FACTS):
            out[i] = p
    return out


def _eq(a, b) -> bool:
    if a is None or b is None or (a is pd.NA) or (b is pd.NA):
        return False
    try:
        if pd.isna(a) or pd.isna(b):
            return False
    except (TypeError, ValueError):
        pass
    if isinstance(a, int | float) or isinstance(b, int | float):
        try:
            return int(a) == int(b)
        except (TypeError, ValueError):
            return False
    return str(a) == str(b)
