"""``--dest-inventory``: an S3 Inventory report instead of the ListObjectsV2 listing.

One task per data file of the manifest (CSV, Parquet or ORC), into DEST_INVENTORY
spool files: the bucket's daily report replaces 30,000 listing round trips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from wiseverify.core.filters import Filters
from wiseverify.inventory.jobs import Job, JobContext, Spooled, tally_dest, tally_ingest

if TYPE_CHECKING:
    from distributed import Future

import gzip
import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.s3 import S3Target
from wiseverify.inventory.sources import (
    IngestError,
    _check_md5,
    _MD5Reader,
    _open,
    _read_json,
    _resolve,
    _spool_tables,
)

# --- 2. destination: an S3 Inventory report ---------------------------------------------------


def _norm(name: str) -> str:
    """``LastModifiedDate`` (CSV fileSchema) and ``last_modified_date`` (Parquet) alike."""
    return name.strip().lower().replace("_", "")


def _arn_bucket(value: str | None) -> str | None:
    if not value:
        return None
    return value.rsplit(":", 1)[-1] if value.startswith("arn:") else value


@dataclass
class InventoryFileJob(Job):
    """Read one data file of an S3 Inventory report into destination spool files."""

    url: str
    fmt: str
    columns: list[str]
    md5: str | None
    kind: ClassVar[str] = "inventory"

    def submit(self, ctx: JobContext, n: int) -> Future:
        return ctx.client.submit(ingest_inventory_file, self.url, self.fmt, self.columns,
                                 self.md5, ctx.target, ctx.spool_base("idst", n),
                                 ctx.filters, pure=False, key=ctx.key("inventory", n))

    def tally(self, res: dict, ctx: JobContext, inv: Spooled) -> list[Job]:
        tally_ingest(res, inv)
        tally_dest(res, inv)
        return []


def inventory_plan(manifest: str, target: S3Target) -> tuple[dict, list[tuple]]:
    """The inventory's description and one job per data file, from its manifest.json."""
    doc = _read_json(manifest, target)
    fmt = str(doc.get("fileFormat", "")).upper()
    if fmt not in ("CSV", "PARQUET", "ORC"):
        raise IngestError(f"{manifest}: fileFormat {doc.get('fileFormat')!r} is not CSV, "
                          "Parquet or ORC")
    src = doc.get("sourceBucket")
    if src and src != target.bucket:
        raise IngestError(f"{manifest} is an inventory of bucket {src!r}, not {target.bucket!r}")
    columns: tuple[str, ...] | None = None
    if fmt == "CSV":
        columns = tuple(c.strip() for c in str(doc.get("fileSchema", "")).split(","))
        have = {_norm(c) for c in columns}
        for need in ("Bucket", "Key", "Size"):
            if _norm(need) not in have:
                raise IngestError(f"{manifest}: fileSchema has no {need} field")
    files = doc.get("files")
    if not isinstance(files, list) or not files:
        raise IngestError(f"{manifest} lists no data files")
    dest_bucket = _arn_bucket(doc.get("destinationBucket"))
    jobs = [InventoryFileJob(_resolve(manifest, dest_bucket, f["key"]), fmt, columns,
                             f.get("MD5checksum")) for f in files]
    info = {"dest_inventory": manifest, "inventory_format": fmt,
            "inventory_created_ms": doc.get("creationTimestamp"),
            "inventory_files": len(jobs)}
    return info, jobs


def _inventory_batches(url: str, fmt: str, columns: tuple[str, ...] | None, md5: str | None,
                       target: S3Target) -> Iterator[pa.Table]:
    """Tables with normalised column names, streamed from one inventory data file."""
    with _open(url, target) as raw:
        if fmt == "CSV":
            import pyarrow.csv as pacsv

            tee = _MD5Reader(raw)
            stream = gzip.GzipFile(fileobj=tee) if url.endswith(".gz") else tee
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(column_names=list(columns or ()),
                                               block_size=8 << 20),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in columns or ()}),
            )
            for batch in reader:
                t = pa.Table.from_batches([batch])
                yield t.rename_columns([_norm(c) for c in t.column_names])
            _check_md5(url, md5, tee.drain())
            return
        if md5:  # columnar files are read out of order: hash them in one pass first
            h = hashlib.md5()
            while block := raw.read(8 << 20):
                h.update(block)
            _check_md5(url, md5, h.hexdigest())
            raw.seek(0)
        if fmt == "PARQUET":
            pf = pq.ParquetFile(raw)
            for batch in pf.iter_batches(batch_size=200_000):
                t = pa.Table.from_batches([batch])
                yield t.rename_columns([_norm(c) for c in t.column_names])
        else:
            import pyarrow.orc as orc

            of = orc.ORCFile(raw)
            for i in range(of.nstripes):
                t = pa.Table.from_batches([of.read_stripe(i)])
                yield t.rename_columns([_norm(c) for c in t.column_names])


def _timestamps_ns(col: pa.ChunkedArray | None, n: int) -> pa.Array:
    """LastModifiedDate as ns, computed like the listing does (``int(dt.timestamp() * 1e9)``).

    The same float arithmetic as the ListObjectsV2 path, so a run from an
    inventory and a run from a listing agree to the nanosecond.
    """
    if col is None:
        return pa.nulls(n, pa.int64())
    if not pa.types.is_timestamp(col.type):
        col = pc.cast(pc.if_else(pc.equal(col, ""), None, col), pa.timestamp("us", "UTC"))
    us = pc.cast(col, pa.timestamp("us", "UTC")).cast(pa.int64())
    valid = pc.is_valid(us).to_numpy(zero_copy_only=False)
    vals = (us.fill_null(0).to_numpy().astype(np.float64) / 1e6 * 1e9).astype(np.int64)
    return pa.array(vals, pa.int64(), mask=~valid)


def _truthy(col) -> pa.Array:
    """``true`` as a bool column or as text (any case, spaces around); null is false."""
    if pa.types.is_boolean(col.type):
        return pc.fill_null(col, False)
    text = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(col, pa.string())))
    return pc.fill_null(pc.equal(text, "true"), False)


def _empty_null(col) -> pa.Array:
    col = pc.cast(col, pa.string())
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)


def _unquote_keys(keys: pa.Array) -> pa.Array:
    """``urllib.parse.unquote_plus`` of every key, column-wise where it can be.

    '+' is a space and ``%2F`` a slash; a key with any other escape goes through
    ``unquote_plus`` itself, so every key decodes exactly as before.  Plain
    substring replacement, and only of what occurs: a regular expression over
    every key was most of the time an inventory file took to read.
    """
    def has(arr: pa.Array, what: str) -> bool:
        return bool(pc.any(pc.match_substring(arr, what)).as_py())

    k = pc.replace_substring(keys, "+", " ") if has(keys, "+") else keys
    if has(k, "%2F"):
        k = pc.replace_substring(k, "%2F", "/")
    if has(k, "%2f"):
        k = pc.replace_substring(k, "%2f", "/")
    other = pc.fill_null(pc.match_substring(k, "%"), False).to_numpy(zero_copy_only=False)
    if other.any():
        at = np.flatnonzero(other)
        raw = keys.take(pa.array(at)).to_pylist()
        k = pc.replace_with_mask(k, pa.array(other),
                                 pa.array([unquote_plus(x) for x in raw], pa.string()))
    return k


def _dest_table(t: pa.Table, fmt: str, target: S3Target, stats: dict) -> pa.Table:
    """DEST_INVENTORY rows of one inventory batch: this bucket, under the prefix, current.

    Column by column: an inventory of 30 million objects is read by a few dozen
    tasks, and a Python object per row cost 12 us of each task's time.
    """
    n = t.num_rows
    t = t.combine_chunks()

    def col(name: str, typ: pa.DataType | None = None):
        if name in t.column_names and t.column(name).num_chunks:
            return t.column(name).chunk(0)
        return pa.nulls(n, typ or pa.string())

    bucket = pc.cast(col("bucket"), pa.string())
    other = pc.fill_null(pc.and_(pc.not_equal(bucket, ""), pc.not_equal(bucket, target.bucket)),
                         False)
    key = pc.fill_null(pc.cast(col("key"), pa.string()), "")
    if fmt == "CSV":  # CSV keys are URL-encoded; Parquet and ORC keys are not
        key = _unquote_keys(key)
    inside = pc.starts_with(key, target.prefix) if target.prefix else pa.array(np.ones(n, bool))
    latest = col("islatest")
    latest_set = pc.is_valid(latest) if pa.types.is_boolean(latest.type) else pc.fill_null(
        pc.not_equal(pc.cast(latest, pa.string()), ""), False)
    stale = pc.or_(_truthy(col("isdeletemarker")),
                   pc.and_(latest_set, pc.invert(_truthy(latest))))
    size_col = col("size", pa.int64())
    size = size_col if pa.types.is_integer(size_col.type) else pc.cast(
        _empty_null(size_col), pa.int64())
    marker = pc.and_(pc.ends_with(key, "/"), pc.fill_null(pc.equal(size, 0), True))
    m_other = other.to_numpy(zero_copy_only=False)
    m_out = ~m_other & ~inside.to_numpy(zero_copy_only=False)
    m_stale = ~m_other & ~m_out & stale.to_numpy(zero_copy_only=False)
    m_marker = ~m_other & ~m_out & ~m_stale & marker.to_numpy(zero_copy_only=False)
    keep = ~(m_other | m_out | m_stale | m_marker)
    stats["inventory_other_bucket"] += int(m_other.sum())
    stats["inventory_outside_prefix"] += int(m_out.sum())
    stats["inventory_not_current"] += int(m_stale.sum())
    stats["markers"] += int(m_marker.sum())
    sel = pa.array(keep)
    key = key.filter(sel)
    # every key left starts with the prefix (``inside``): cut it by its length in code points
    rel = pc.utf8_slice_codeunits(key, len(target.prefix)) if target.prefix else key
    ascii_ = pc.string_is_ascii(rel).to_numpy(zero_copy_only=False)
    nkey = rel
    if not ascii_.all():
        at = np.flatnonzero(~ascii_)
        nkey = pc.replace_with_mask(rel, pa.array(~ascii_), pa.array(
            [K.nfc(x) for x in rel.take(pa.array(at)).to_pylist()], pa.string()))
    size = size.filter(sel)
    etag = _empty_null(pc.utf8_trim(pc.utf8_trim_whitespace(
        pc.cast(col("etag"), pa.string())), '"')).filter(sel)
    lms = _timestamps_ns(col("lastmodifieddate") if "lastmodifieddate" in t.column_names
                         else None, n).filter(sel)
    stats["bytes"] += int(pc.sum(size).as_py() or 0)
    k = len(rel)
    out = {"key": rel, "nkey": nkey, "size": size, "etag": etag, "last_modified_ns": lms,
           "storage_class": _empty_null(col("storageclass")).filter(sel),
           "checksum_algorithm": _empty_null(col("checksumalgorithm")).filter(sel),
           "checksum_type": pa.nulls(k, pa.string())}  # not in S3 Inventory
    return pa.table([out[f.name] for f in S.DEST_INVENTORY], schema=S.DEST_INVENTORY)


def ingest_inventory_file(url: str, fmt: str, columns: tuple[str, ...] | None, md5: str | None,
                          target: S3Target, spool_base: str,
                          filters: Filters | None = None) -> dict:
    """One inventory data file into DEST_INVENTORY spool files (a Dask task).

    Objects the ``filters`` exclude are left out (``"filtered"`` counts them).
    """
    counts: dict = {}
    stats = {"inventory_other_bucket": 0, "inventory_outside_prefix": 0,
             "inventory_not_current": 0, "markers": 0, "bytes": 0}
    res = {"side": "dst", "count": 0, "pending": [], "depth": 0, "requests": 0,
           "spool": None, "spools": [], "error": None}
    try:
        tables = (_dest_table(t, fmt, target, stats)
                  for t in _inventory_batches(url, fmt, columns, md5, target))
        if filters:
            tables = (filters.keep(t, counts=counts) for t in tables)
        spools = _spool_tables(tables, S.DEST_INVENTORY, spool_base)
    except Exception as exc:  # the inventory is incomplete: the run must not go on
        res["error"] = f"inventory file {url}: {type(exc).__name__}: {exc}"
        res.update(markers=0, bytes=0, ingest={})
        return res
    excluded_bytes = sum(c["bytes"] for i, c in counts.items() if not filters.rules[i].include) \
        if filters else 0
    res.update(count=sum(n for _, n in spools), spools=spools, markers=stats.pop("markers"),
               bytes=stats.pop("bytes") - excluded_bytes, ingest=stats, filtered=counts)
    return res
