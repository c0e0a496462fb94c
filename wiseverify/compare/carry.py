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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from wiseverify.core import schema as S
from wiseverify.core.columns import Decided

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
                    metadata: str = "auto",
                    filters: str | None = None) -> tuple[Path | None, str]:
    """The previous run to reuse evidence from, or None with the reason.

    Evidence is only carried into a run that asks for no more than the previous
    one proved: stored-checksum verdicts never stand in for a readback, and a
    run that HEADs every object for metadata does not reuse one that did not.
    Runs with different filter rules (``filters``: their fingerprint) covered
    different paths, so neither is the other's evidence.
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
    prev_filters = (summary.get("filters") or {}).get("fingerprint")
    if prev_filters != filters:
        return None, (f"{prev} covered other paths (its filter rules differ: "
                      f"{prev_filters or 'none'} against {filters or 'none'})")
    return prev, f"reusing unchanged evidence of run {summary.get('run_id')}"


def previous_partitions(prev: Path) -> int | None:
    try:
        return int(json.loads((prev / "summary.json").read_text())["partitions"])
    except (OSError, ValueError, KeyError):
        return None


#: rows whose previous verdict stands (:data:`EVIDENCE_COLUMNS` in ``columns``)
Carried = Decided


def load_previous(prev: Path, part: int, keys: pa.Array) -> pa.Table:
    """Previous rows for ``keys``: the columns :func:`carry_over` compares and carries.

    The same partition's file when the layout is the same, else the keys looked up
    in the whole previous table.  Rows whose verdict cannot be carried are left
    in (:func:`carry_over` passes them over): filtering them out copied every
    column of the partition to drop a handful of rows.
    """
    f = prev / "reconciliation" / f"part-{part:05d}.parquet"
    cols = ["key", *{a for a, _ in SOURCE_FACTS}, *{a for a, _ in OBJECT_FACTS},
            *EVIDENCE_COLUMNS]
    cols = list(dict.fromkeys(cols))
    if f.is_file():
        return ds.dataset(f).to_table(columns=cols)
    return ds.dataset(prev / "reconciliation").to_table(
        columns=cols, filter=ds.field("key").isin(keys))


def _carriable(prev: pa.Table):
    """Previous rows whose verdict may be carried: content evidence, named."""
    return pc.fill_null(pc.and_(
        pc.is_in(prev.column("status"), value_set=pa.array(CARRIED_STATUSES)),
        pc.is_valid(prev.column("verified_by"))), False)


def carry_over(mt, rows: np.ndarray, prev: pa.Table, allowed: np.ndarray | None = None
               ) -> Carried | None:
    """The open rows at ``rows`` whose two sides are unchanged since ``prev`` was written.

    A join on the key and a comparison of every fact, column by column: an
    incremental dry run of 30 million keys carries nearly all of them, so no row
    may cost a Python object.  A fact missing on either side is a change.  The key
    must also be the object's name byte for byte (a Unicode-equivalent pair is
    decided afresh).  ``allowed``: rows whose verdict may be carried at all (per
    position; a verdict that did not compare metadata is not carried where it must
    be compared, see ``metadata_checked``).
    """
    n = len(mt)
    if not len(rows) or not prev.num_rows:
        return None
    sel = pa.array(rows, pa.int64())
    keys = mt.column("key").take(sel)  # one row per key
    # each previous key looked up among the open keys: one hash table, of the open keys
    found = pc.index_in(prev.column("key"), value_set=keys)
    at_prev = np.flatnonzero(pc.is_valid(found).to_numpy(zero_copy_only=False))
    if not len(at_prev):
        return None
    at_open = pc.drop_null(found).to_numpy(zero_copy_only=False).astype(np.int64)
    if np.bincount(at_open, minlength=len(keys)).max() > 1:
        # a previous table holding an open key twice (not one this version writes):
        # joined, and one of its pairings stands, as before
        return _carry_joined(mt, sel, prev, allowed)
    # one previous row per open key: only the facts compared and only the carried rows'
    # evidence taken (a join materialised every column of both sides first: 0.15 s of
    # 0.2 per 125,000 rows)
    pos = np.asarray(rows, np.int64)[at_open]
    here, there = pa.array(pos, pa.int64()), pa.array(at_prev, pa.int64())
    # the key must also be the object's name byte for byte (the lookup matched the key)
    same = pc.and_(_carriable(prev).take(there),
                   pc.equal(mt.column("dst_rel").take(here), prev.column("key").take(there)))
    for a, b in SOURCE_FACTS + OBJECT_FACTS:
        same = pc.and_(same, pc.equal(mt.column(a).take(here), prev.column(b).take(there)))
    return _carried(n, pos, at_prev, same, prev, allowed)


def _carried(n: int, pos: np.ndarray, at_prev: np.ndarray, same, prev: pa.Table,
             allowed: np.ndarray | None) -> Carried | None:
    """Rows at ``pos`` (of the matched partition) paired with ``prev`` rows ``at_prev``,
    carried where every fact is ``same`` (and metadata allows)."""
    ok = pc.fill_null(same, False).to_numpy(zero_copy_only=False)
    if allowed is not None:
        checked = pc.fill_null(prev.column("metadata_checked").take(pa.array(at_prev)), False)
        ok &= allowed[pos] | checked.to_numpy(zero_copy_only=False)
    if not ok.any():
        return None
    mask = np.zeros(n, bool)
    mask[pos[ok]] = True
    at = np.zeros(n, np.int64)
    at[pos[ok]] = at_prev[ok]
    take = pa.array(at, mask=~mask)  # null index: null value
    return Carried(mask, {c: prev.column(c).take(take) for c in EVIDENCE_COLUMNS})


def _carry_joined(mt, sel: pa.Array, prev: pa.Table, allowed: np.ndarray | None
                  ) -> Carried | None:
    facts = {mine for mine, _ in SOURCE_FACTS + OBJECT_FACTS}
    prev = prev.filter(_carriable(prev))
    prev = prev.append_column("_at", pa.array(np.arange(prev.num_rows, dtype=np.int64)))
    mine = pa.table({"key": mt.column("key").take(sel), "_pos": sel,
                     "_rel": mt.column("dst_rel").take(sel),
                     **{f"_m_{c}": mt.column(c).take(sel) for c in facts}})
    j = mine.join(prev.select(["key", "_at", *{b for _, b in SOURCE_FACTS + OBJECT_FACTS}]),
                  keys="key", join_type="inner")
    if not j.num_rows:
        return None
    same = pc.equal(j.column("_rel"), j.column("key"))
    for a, b in SOURCE_FACTS + OBJECT_FACTS:
        same = pc.and_(same, pc.equal(j.column(f"_m_{a}"), j.column(b)))
    return _carried(len(mt), j.column("_pos").to_numpy(), j.column("_at").to_numpy(), same,
                    prev.drop_columns(["_at"]), allowed)
