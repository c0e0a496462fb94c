"""Hash partitions: spool files turned into ``inventory/{src,dst}/part=NNNNN``.

Every later stage reads one partition at a time, so a partition is the unit of
memory: its rows from both sides, and nothing else.  The partition of a key is
computed from its NFC form (see :mod:`wiseverify.core.keys`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.runio import write_atomic
from wiseverify.inventory.spool import REPEATING_COLUMNS, read_spool

# --- partitioning ------------------------------------------------------------------


#: inventory columns that repeat ``key`` for almost every entry (a UTF-8 name in NFC):
#: a partition file holds them only where they differ, null elsewhere, and
#: :func:`read_partition` fills them back in.  Three copies of every key were
#: half the bytes of a source partition and a third of its read time.
REPEATS = {"key_bytes": pa.binary(), "nkey": pa.string()}


def drop_repeats(table: pa.Table) -> pa.Table:
    """``table`` with each :data:`REPEATS` column null where it equals ``key``."""
    import pyarrow.compute as pc

    if "key" not in table.column_names:
        return table
    for name, typ in REPEATS.items():
        if name in table.column_names:
            col = table.column(name)
            same = pc.fill_null(pc.equal(col, table.column("key").cast(typ)), False)
            table = table.set_column(table.column_names.index(name), name,
                                     pc.if_else(same, pa.scalar(None, typ), col))
    return table


def restore_repeats(table: pa.Table) -> pa.Table:
    """Undo :func:`drop_repeats`: a null :data:`REPEATS` value is the row's ``key``.

    Those columns are never null in an inventory row, so a null can only mean
    "same as the key"; files written before the columns were dropped read
    unchanged.
    """
    import pyarrow.compute as pc

    if "key" not in table.column_names:
        return table
    for name, typ in REPEATS.items():
        if name not in table.column_names:
            continue
        col = table.column(name)
        if not col.null_count:
            continue
        key = table.column("key").cast(typ)  # string to binary: the same buffers
        full = key if col.null_count == len(col) else pc.coalesce(col, key)
        table = table.set_column(table.column_names.index(name), name, full)
    return table


def write_partition_file(table: pa.Table, path: Path) -> None:
    """One compaction group's rows of one partition (repeats already dropped)."""
    write_atomic(table, path,
                 use_dictionary=[c for c in REPEATING_COLUMNS if c in table.column_names])


def compact(spool_paths: list[str], out_dir: str, nparts: int, tag: str,
            sample_k: int = 0) -> dict:
    """Hash-partition a group of spool files into ``out_dir/part=NNNNN/<tag>.parquet``.

    With ``sample_k``, the result also holds the group's ``keys.sample_by_prefix``
    (``sample``): the destination side's metadata sample is drawn here, where
    every key passes once with its hash already computed.
    """
    import pyarrow.compute as pc

    tables = [read_spool(p) for p in spool_paths]
    if not tables:
        return {"rows": 0, "sample": {}}
    table = pa.concat_tables(tables)
    if nparts > 1 or sample_k:
        hashes = K.key_hash(table.column("nkey"))
        parts = K.partition_of(None, nparts, hashes)
    else:
        hashes, parts = None, np.zeros(table.num_rows, np.int32)
    sample = K.sample_by_prefix(table.column("key"), hashes, sample_k) if sample_k else {}
    table = drop_repeats(table).append_column("_p", pa.array(parts, pa.int32()))
    table = table.sort_by("_p")
    pcol = table.column("_p")
    counts = pc.value_counts(pcol)
    offset = 0
    for item in sorted(counts.to_pylist(), key=lambda d: d["values"]):
        p, n = item["values"], item["counts"]
        chunk = table.slice(offset, n).drop_columns(["_p"])
        offset += n
        write_partition_file(chunk, Path(out_dir) / f"part={p:05d}" / f"{tag}.parquet")
    return {"rows": table.num_rows, "sample": sample}


def read_partition(inv_dir: str, part: int, schema: pa.Schema,
                   columns: list[str] | None = None, contiguous: bool = False) -> pa.Table:
    """All rows of one partition of one side (empty table when there are none).

    One Arrow dataset over the partition's files (one per compaction group, 30
    at 30 million keys): its scanner decodes them on Arrow's threads, a third
    faster than reading the files one after another, and keeps their order.
    The :data:`REPEATS` columns :func:`compact` left null are the key again.
    ``contiguous``: one chunk per column (:func:`one_chunk`), for a caller that takes
    rows by index.
    """
    import pyarrow.dataset as ds

    d = Path(inv_dir) / f"part={part:05d}"
    files = sorted(str(f) for f in d.glob("*.parquet")) if d.is_dir() else []
    if not files:
        return S.empty(schema).select(columns or schema.names)
    want = columns or schema.names
    # a column of REPEATS is filled back in from the key, so the key is read with it
    read = want + (["key"] if "key" not in want and "key" in schema.names
                   and any(c in REPEATS for c in want) else [])
    table = restore_repeats(ds.dataset(files, schema=schema, format="parquet").to_table(read))
    table = table.select(want)
    return one_chunk(table) if contiguous else table


def one_chunk(table: pa.Table) -> pa.Table:
    """``table`` with each column in one chunk, combined a column at a time.

    ``Table.combine_chunks`` holds the chunked and the combined copy of every
    column at once: 72 MB on top of the 72 MB read for a 250,000-key partition,
    the largest step of its task's peak.  Here each chunked column is dropped as
    soon as its copy is made.
    """
    schema, cols = table.schema, []
    while table.num_columns:
        cols.append(table.column(0).combine_chunks())
        table = table.remove_column(0)
    return pa.Table.from_arrays(cols, schema=schema)
