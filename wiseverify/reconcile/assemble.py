"""The partition's reconciliation table: built from whole columns and per-row results, written.

:func:`assemble` puts together, in key order, the rows the listings decided
and the rows ``settle`` decided in bulk (both as Arrow columns) with the
per-row results of ``reconcile.finish_partition`` (:func:`rows_table`);
:func:`write_output` writes it atomically and :func:`summarize` counts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from wiseverify.compare.match import Matched
from wiseverify.core import schema as S
from wiseverify.core.runio import write_atomic
from wiseverify.reconcile import settle as SETTLE

if TYPE_CHECKING:
    from wiseverify.reconcile.plan import Context


#: reconciliation columns whose values repeat: Parquet dictionaries pay off only there.
#: Keys, ETags and digests are unique per row; trying a dictionary on them first
#: cost a third of the partition's write.
DICTIONARY_COLUMNS = ("status", "verified_by", "detail", "src_kind", "src_uid", "src_gid",
                      "src_mode", "dst_storage_class", "dst_parts", "dst_checksum_algorithm",
                      "dst_checksum_type", "metadata_checked", "partition", "evidence_run")


def write_output(table: pa.Table, path: Path) -> None:
    """Write one partition's reconciliation table atomically (temp name, then rename).

    zstd level 1: keys and digests do not shrink further at higher levels (the
    same 27 MB per 250,000 rows), and level 1 takes a third less time.
    Min/max statistics only for the repeating columns: those let a reader skip
    a partition with nothing but MATCH rows; on keys, digests and times (one
    row group per partition, hash-partitioned) they prune nothing and cost 10%
    of the write.
    """
    write_atomic(table, path, use_dictionary=list(DICTIONARY_COLUMNS),
                 write_statistics=list(DICTIONARY_COLUMNS))


#: the reconciliation columns copied as they are from the matched partition
MATCHED_COLUMNS = ("src_kind", "src_size", "dst_size", "src_mtime_ns", "src_ctime_ns", "src_ino",
                   "src_uid", "src_gid", "src_mode", "dst_etag", "dst_last_modified_ns",
                   "dst_storage_class")


def _col(m: pd.DataFrame, name: str) -> list:
    if name not in m:
        return [None] * len(m)
    s = m[name]
    return s.astype(object).where(s.notna(), None).tolist()


def rows_table(ctx: Context, part: int, m: pd.DataFrame, status: list, detail: list,
              out: dict) -> pa.Table:
    n = len(m)
    dst_rel = _col(m, "dst_rel")
    key_bytes = _col(m, "key_bytes")
    keys = _col(m, "key")
    cols = {
        "key": keys,
        "key_bytes": [kb if kb is not None else k.encode() for kb, k in
                      zip(key_bytes, keys, strict=True)],
        "dst_key": [ctx.target.prefix + d if d is not None else None for d in dst_rel],
        "status": status,
        "verified_by": out["verified_by"],
        "detail": detail,
        **{c: _col(m, c) for c in MATCHED_COLUMNS},
        "dst_parts": out["dst_parts"],
        "dst_part_size": out["dst_part_size"],
        "dst_checksum_algorithm": [
            a or b for a, b in zip(out["dst_checksum_algorithm"],
                                   _col(m, "dst_checksum_algorithm"), strict=True)
        ],
        "dst_checksum_type": out["dst_checksum_type"],
        "dst_checksum": out["dst_checksum"],
        "src_digest": out["src_digest"],
        "src_crc64nvme": out["src_crc64nvme"],
        "metadata_checked": out["metadata_checked"],
        "bytes_read_src": out["bytes_read_src"],
        "bytes_read_dst": out["bytes_read_dst"],
        "partition": [part] * n,
        "evidence_run": out["evidence_run"],
        "dst_file_mtime_ns": out.get("dst_file_mtime_ns") or [None] * n,
        "cause": [None] * n,
        "readback_sample": [None] * n,
    }
    return pa.table(cols, schema=S.RECONCILIATION)


def _np_bool(arr) -> np.ndarray:
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def assemble(ctx: Context, plan: dict, rows: pa.Table) -> pa.Table:
    """The partition's table in key order: its column-decided rows and the per-row ``rows``.

    ``rows`` (from :func:`rows_table`) are the frame's rows, which sit at
    ``plan["positions"]`` of the matched partition; every other row was
    decided by the listings or settled in bulk, and is built here from whole
    columns.
    """
    mt: Matched | None = plan.get("matched")
    if mt is None:
        return rows.sort_by("key")
    n = len(mt)
    positions = plan["positions"]
    settled: SETTLE.Settled | None = plan.get("settled")
    if settled is not None:
        sv = settled.columns
    else:
        sv = {c: pa.nulls(n, typ) for c, typ in SETTLE.COLUMNS.items()}
    # settled verdicts, and the listing's at the (few) rows it decided: each row has at
    # most one of the two, and only the listing's rows go through Python objects
    status, detail, verified_by = sv["status"], sv["detail"], sv["verified_by"]
    decided = np.flatnonzero(~mt.open)  # Matched.decide sets a status and closes the row
    if len(decided):
        at = pa.array(~mt.open)
        status = pc.replace_with_mask(status, at,
                                      pa.array(mt.status[decided].tolist(), pa.string()))
        detail = pc.replace_with_mask(detail, at,
                                      pa.array(mt.detail[decided].tolist(), pa.string()))

    # Unicode-equivalent pairs decided here are reported as such, content result kept
    in_rows = np.zeros(n, bool)
    in_rows[positions] = True
    pairs = np.flatnonzero(mt.name_pair & ~in_rows)
    if len(pairs):
        at = pa.array(pairs)
        new_status = np.full(n, None, object)
        new_detail = np.full(n, None, object)
        for i, rel, st, det, by in zip(pairs, mt.column("dst_rel").take(at).to_pylist(),
                                       status.take(at).to_pylist(), detail.take(at).to_pylist(),
                                       verified_by.take(at).to_pylist(), strict=True):
            content = {
                S.MATCH: f"content matches ({by})",
                S.METADATA_MISMATCH: f"content matches ({by}), {det}",
            }.get(st, f"{st}: {det}")
            new_detail[i] = (f"destination holds this file as {rel!r} (Unicode normalization "
                             f"differs, byte-wise a different key); {content}")
            new_status[i] = S.NAME_MISMATCH
        status = pc.coalesce(pa.array(new_status, pa.string()), status)
        detail = pc.coalesce(pa.array(new_detail, pa.string()), detail)
    bad = _np_bool(pc.and_(pc.equal(status, S.MATCH), pc.is_null(verified_by))) & ~in_rows
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(f"MATCH without evidence for {mt.column('key')[i].as_py()!r}")
    key = mt.column("key")
    cols = {
        "key": key,
        "key_bytes": pc.coalesce(mt.column("key_bytes"), pc.cast(key, pa.binary())),
        "dst_key": pc.binary_join_element_wise(ctx.target.prefix, mt.column("dst_rel"), ""),
        "status": status,
        "verified_by": verified_by,
        "detail": detail,
        **{c: mt.column(c) for c in MATCHED_COLUMNS},
        "dst_parts": sv["dst_parts"],
        "dst_part_size": pa.nulls(n, pa.int64()),
        "dst_checksum_algorithm": pc.coalesce(sv["dst_checksum_algorithm"],
                                              mt.column("dst_checksum_algorithm")),
        "dst_checksum_type": sv["dst_checksum_type"],
        "dst_checksum": sv["dst_checksum"],
        "src_digest": sv["src_digest"],
        "src_crc64nvme": sv["src_crc64nvme"],
        "metadata_checked": pa.array(np.zeros(n, bool)),
        "bytes_read_src": sv["bytes_read_src"],
        "bytes_read_dst": pa.nulls(n, pa.int64()),
        "partition": pa.array(np.full(n, plan["part"], np.int32)),
        "evidence_run": pa.array([ctx.run_id], pa.string()).take(pa.array(np.zeros(n, np.int64))),
        "dst_file_mtime_ns": pa.nulls(n, pa.int64()),
        "cause": pa.nulls(n, pa.string()),
        "readback_sample": pa.nulls(n, pa.string()),
    }
    carried = plan.get("carried")
    if carried is not None:  # unchanged on both sides since the previous run: its evidence
        at = pa.array(carried.mask)
        for c, v in carried.columns.items():
            cols[c] = pc.if_else(at, v, cols[c])
        cols["bytes_read_src"] = pc.if_else(at, pa.scalar(0, pa.int64()), cols["bytes_read_src"])
    table = pa.table(cols, schema=S.RECONCILIATION)
    if not rows.num_rows:
        return table
    return place_rows(table, rows, positions)


#: columns :func:`rows_table` takes unchanged from the frame, itself rows of the
#: partition's ``Matched``: the whole-column table already holds them at every position
LISTING_COLUMNS = frozenset(("key", "key_bytes", "dst_key", *MATCHED_COLUMNS))


def place_rows(table: pa.Table, rows: pa.Table, positions: np.ndarray) -> pa.Table:
    """``table`` with the per-row results ``rows`` (in ``positions`` order) at ``positions``.

    Only the result columns are rebuilt, one at a time: the listing columns are
    already right, and a take of the whole concatenated table copied every
    column of the partition at once (98 MB of 250,000 small files, the partition
    task's peak, for a frame of one row).
    """
    positions = np.asarray(positions, np.int64)
    if len(positions) > 1 and not (np.diff(positions) > 0).all():
        order = np.argsort(positions, kind="stable")
        positions, rows = positions[order], rows.take(pa.array(order))
    at = np.zeros(table.num_rows, bool)
    at[positions] = True
    mask = pa.array(at)
    cols = [col if name in LISTING_COLUMNS
            else pc.replace_with_mask(col.combine_chunks(), mask, rows.column(name).combine_chunks())
            for name, col in zip(table.column_names, table.columns, strict=True)]
    return pa.Table.from_arrays(cols, schema=table.schema)


def summarize(table: pa.Table) -> dict:
    """Counts and bytes per status and evidence kind of one reconciliation table."""
    size = pc.coalesce(table.column("src_size"), table.column("dst_size"), pa.scalar(0, pa.int64()))
    by_status = pa.table({"status": table.column("status"), "size": size}).group_by(
        "status").aggregate([("size", "sum"), ("size", "count")])
    counts, nbytes = {}, {}
    for r in by_status.to_pylist():
        if r["status"] is not None:
            counts[r["status"]] = int(r["size_count"])
            nbytes[r["status"]] = int(r["size_sum"] or 0)
    causes = {r["values"]: int(r["counts"]) for r in
              pc.value_counts(table.column("cause")).to_pylist() if r["values"] is not None} \
        if "cause" in table.column_names else {}
    classes = {}
    present = pc.is_valid(table.column("dst_size"))
    if pc.any(present).as_py():
        sc = pc.fill_null(table.column("dst_storage_class").filter(present), "STANDARD")
        agg = pa.table({"c": sc, "b": table.column("dst_size").filter(present)}).group_by(
            "c").aggregate([("b", "count"), ("b", "sum")])
        classes = {r["c"]: {"objects": int(r["b_count"]), "bytes": int(r["b_sum"] or 0)}
                   for r in agg.to_pylist()}
    evid = {r["values"]: int(r["counts"]) for r in sorted(
        pc.value_counts(table.column("verified_by")).to_pylist(), key=lambda r: -r["counts"])
        if r["values"] is not None}

    def total(col: str) -> int:
        return int(pc.sum(table.column(col)).as_py() or 0)

    both = pc.and_(pc.is_valid(table.column("src_size")), pc.is_valid(table.column("dst_size")))
    return {
        "counts": counts,
        "bytes": nbytes,
        "verified_by": evid,
        "causes": causes,
        "storage_classes": classes,
        "bytes_read_src": total("bytes_read_src"),
        "bytes_read_dst": total("bytes_read_dst"),
        "rows": table.num_rows,
        # objects present on both sides, and those whose stored POSIX metadata was compared
        "metadata_objects": int(pc.sum(pc.cast(both, pa.int64())).as_py() or 0),
        "metadata_compared": int(pc.sum(pc.cast(table.column("metadata_checked"),
                                                pa.int64())).as_py() or 0),
    }
