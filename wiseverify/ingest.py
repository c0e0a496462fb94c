"""Ingest instead of listing: listing files and S3 reports stand in for the walk, the
ListObjectsV2 listing and the HEADs.

Why: at 30 million files the walk costs an ``lstat`` per file on an MDS shared by
thousands of users, the destination listing costs 30,000 ListObjectsV2 round trips,
and every object with a stored checksum costs a HEAD.  Sites usually have these facts
already: a policy scan writes an ``lfs find`` listing every night, S3 Inventory
delivers the bucket's object list every day, and an S3 Batch Operations
*compute checksum* job makes S3 hash every object at rest.  Three inputs replace
three stages:

* ``--source-listing FILE``: ``lfs find``/GNU ``find`` ``-printf`` output, parsed by
  Dask tasks on byte ranges of the file (split on record separators) into the same
  SOURCE_INVENTORY spool files the walk writes.
* ``--dest-inventory MANIFEST``: an S3 Inventory report (``manifest.json`` with
  ``fileSchema`` and ``files``; CSV, Parquet or ORC), one task per data file, into
  DEST_INVENTORY spool files.
* ``--checksum-report REPORT``: a compute-checksum completion report, into
  ``inventory/checksums/part=NNNNN/`` with the partitioning of the inventories, so
  the planning of a partition reads only its own slice; an object with a usable
  entry gets its evidence from the report: no HEAD and no byte read from S3.

Everything the driver touches is small (a manifest, the first MiB of a listing);
rows only exist inside tasks and in Parquet.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import keys as K
from . import schema as S
from .inventory import read_partition, write_atomic
from .s3 import S3Target, strip_etag

if TYPE_CHECKING:
    from distributed import Client, Future

    from .config import VerifyConfig

#: the -printf directives of a listing when --listing-format is not given
DEFAULT_LISTING_FORMAT = "%s %T@ %U %G %m %y %b %p"
#: bytes of listing per parse task (about 120,000 records of ~130 bytes)
LISTING_CHUNK = 16 << 20
#: rows per spool file written by one inventory or report task (bounds compaction memory)
ROWS_PER_SPOOL = 500_000
#: job kinds the pipeline hands to :func:`submit`
JOBS = ("lsrc", "idst", "csum")
#: algorithms whose report values the digest stage can reproduce from the source


class IngestError(Exception):
    """An input file cannot be used as given (reported as a configuration error)."""


# --- reading local paths and s3:// URLs alike -------------------------------------------


def _open(url: str, target: S3Target | None):
    """A binary file object for a local path or an ``s3://bucket/key`` URL.

    S3 URLs go through the destination's s3fs filesystem, so reports kept in
    another bucket are read with the same endpoint and credentials as the objects.
    """
    if url.startswith("s3://"):
        if target is None:
            raise IngestError(f"{url}: an s3:// input needs the destination's S3 settings")
        return target.fs().open(url[len("s3://"):], "rb")
    return open(url, "rb")


def _read_bytes(url: str, target: S3Target | None) -> bytes:
    try:
        with _open(url, target) as f:
            return f.read()
    except (OSError, ValueError) as exc:
        raise IngestError(f"cannot read {url}: {exc}") from None


def _must_exist(url: str, target: S3Target | None) -> None:
    """Fail now, with the path in the message, rather than in a task later."""
    try:
        ok = target.fs().isfile(url[len("s3://"):]) if url.startswith("s3://") and target \
            else os.path.isfile(url)
    except (OSError, ValueError) as exc:
        raise IngestError(f"cannot read {url}: {exc}") from None
    if not ok:
        raise IngestError(f"{url} does not exist or is not a file")


def _read_json(url: str, target: S3Target | None) -> dict:
    try:
        doc = json.loads(_read_bytes(url, target))
    except ValueError as exc:
        raise IngestError(f"{url} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise IngestError(f"{url} is not a JSON object")
    return doc


def _resolve(manifest_url: str, bucket: str | None, key: str) -> str:
    """Where a file named by a manifest lives.

    On S3 it is ``s3://bucket/key``.  For a local copy of a report the
    manifest's own directory tree is searched: the key's suffix under any
    ancestor of the manifest (a mirrored bucket), then ``data/`` beside it.
    """
    if manifest_url.startswith("s3://"):
        if not bucket:
            bucket = manifest_url[len("s3://"):].split("/", 1)[0]
        return f"s3://{bucket}/{key}"
    base = Path(manifest_url).absolute().parent
    parts = PurePosixPath(key).parts
    for anc in (base, *base.parents):
        for i in range(len(parts)):
            cand = anc.joinpath(*parts[i:])
            if cand.is_file():
                return str(cand)
    name = parts[-1] if parts else key
    for cand in (base / "data" / name, base.parent / "data" / name):
        if cand.is_file():
            return str(cand)
    raise IngestError(f"{key!r}, named by {manifest_url}, is not found next to it")


class _MD5Reader(io.RawIOBase):
    """Passes a file through while hashing it, so a report file is checked in one read."""

    def __init__(self, f):
        self._f = f
        self.md5 = hashlib.md5()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        self.md5.update(data)
        return n

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.md5.hexdigest()


def _check_md5(url: str, want: str | None, got: str) -> None:
    if want and want.lower() != got:
        raise IngestError(f"{url}: MD5 {got} differs from the manifest's {want.lower()}; "
                          "the file is damaged or was replaced")


def _spool_tables(tables: Iterator[pa.Table], schema: pa.Schema, base: str) -> list[tuple]:
    """Write row batches as spool files of at most ROWS_PER_SPOOL rows each."""
    out: list[tuple[str, int]] = []
    pending: list[pa.Table] = []
    rows = 0

    def flush():
        nonlocal pending, rows
        if rows:
            path = f"{base}-{len(out):03d}.parquet"
            write_atomic(pa.concat_tables(pending).cast(schema), path)
            out.append((path, rows))
        pending, rows = [], 0

    for t in tables:
        if t.num_rows:
            pending.append(t)
            rows += t.num_rows
            if rows >= ROWS_PER_SPOOL:
                flush()
    flush()
    return out


# --- 1. source: an lfs find / find -printf listing -------------------------------------------

_TYPES = {b"f": S.KIND_FILE, b"d": S.KIND_DIR, b"l": S.KIND_SYMLINK, b"p": S.KIND_FIFO,
          b"s": S.KIND_SOCKET, b"c": S.KIND_CHAR, b"b": S.KIND_BLOCK, b"?": S.KIND_ERROR}
_TYPE_BITS = {S.KIND_FILE: 0o100000, S.KIND_DIR: 0o040000, S.KIND_SYMLINK: 0o120000,
              S.KIND_FIFO: 0o010000, S.KIND_SOCKET: 0o140000, S.KIND_CHAR: 0o020000,
              S.KIND_BLOCK: 0o060000, S.KIND_ERROR: 0}
_OCTAL = frozenset(b"01234567")


def _int(raw: bytes) -> int | None:
    return int(raw) if raw.isdigit() else None


def _octal(raw: bytes) -> int | None:
    return int(raw, 8) if raw and _OCTAL.issuperset(raw) else None


def _time_ns(raw: bytes) -> int | None:
    """``%T@``: GNU find prints ``1700000000.1234567890``, lfs find whole seconds."""
    neg = raw.startswith(b"-")
    sec, dot, frac = (raw[1:] if neg else raw).partition(b".")
    if not sec.isdigit() or (dot and not frac.isdigit()):
        return None
    ns = int(sec) * 1_000_000_000 + (int(frac[:9].ljust(9, b"0")) if frac else 0)
    return -ns if neg else ns


def _type(raw: bytes) -> str | None:
    return _TYPES.get(raw)


#: directive -> (field name, converter)
DIRECTIVES: dict[str, tuple[str, Any]] = {
    "%s": ("size", _int), "%T@": ("mtime_ns", _time_ns), "%C@": ("ctime_ns", _time_ns),
    "%U": ("uid", _int), "%G": ("gid", _int), "%m": ("perm", _octal), "%y": ("kind", _type),
    "%b": ("blocks", _int), "%i": ("ino", _int), "%n": ("nlink", _int), "%p": ("path", None),
}
#: without these the match and metadata stages would compare against nothing
REQUIRED = ("%s", "%T@", "%U", "%G", "%m", "%p")


def parse_format(fmt: str | None) -> tuple[str, ...]:
    """The directives of a listing format, checked: space-separated, ``%p`` last.

    The path goes last because it is the only field that may contain spaces;
    everything before it splits on single spaces.  A trailing ``\\n``/``\\0``
    (as typed for find) is accepted and ignored: the separator is detected.
    """
    text = (fmt or DEFAULT_LISTING_FORMAT).strip()
    for tail in ("\\n", "\\0", "\n", "\0"):
        text = text.removesuffix(tail)
    items = text.split(" ")
    unknown = [d for d in items if d not in DIRECTIVES]
    if unknown:
        raise IngestError(f"listing format {text!r}: unsupported {', '.join(unknown)} "
                          f"(supported: {' '.join(DIRECTIVES)}, separated by single spaces)")
    missing = [d for d in REQUIRED if d not in items]
    if missing:
        raise IngestError(f"listing format {text!r} lacks {' '.join(missing)}")
    if items[-1] != "%p" or len(set(items)) != len(items):
        raise IngestError(f"listing format {text!r}: each directive once, %p last (names may "
                          "contain spaces)")
    return tuple(items)


def _parse_record(rec: bytes, names: tuple[str, ...]) -> dict | None:
    """Fields of one record, or None when it is not a record of this format."""
    parts = rec.split(b" ", len(names) - 1)
    if len(parts) != len(names):
        return None
    vals: dict = {"path": parts[-1]}
    for d, raw in zip(names[:-1], parts[:-1], strict=True):
        name, conv = DIRECTIVES[d]
        v = conv(raw)
        if v is None:
            return None
        vals[name] = v
    return vals


def _relative(path: bytes, broot: bytes) -> bytes | None:
    """The path relative to the source root: ``ROOT/a/b`` or ``./a/b``; None if outside."""
    base = broot.rstrip(b"/")
    if path in (broot, base, base + b"/", b".", b"./"):
        return b""
    for p in (base + b"/", b"./"):
        if path.startswith(p):
            return path[len(p):].lstrip(b"/")
    return None


def detect_separator(listing: str) -> bytes:
    """NUL when the first MiB holds one (find ``-printf ...\\0``), else newline."""
    with open(listing, "rb") as f:
        head = f.read(1 << 20)
    return b"\0" if b"\0" in head else b"\n"


def _records(f, pos: int, sep: bytes, block: int = 4 << 20) -> Iterator[tuple[int, bytes]]:
    """``(offset, record)`` for every separator-terminated record from ``pos`` on."""
    f.seek(pos)
    buf, base = b"", pos
    while True:
        chunk = f.read(block)
        if not chunk:
            if buf:
                yield base, buf
            return
        buf += chunk
        i = 0
        while (j := buf.find(sep, i)) >= 0:
            yield base + i, buf[i:j]
            i = j + 1
        buf, base = buf[i:], base + i


class _SourceRows:
    """Column lists of SOURCE_INVENTORY, filled one listing record at a time."""

    def __init__(self, broot: bytes, prefix: str, has_blocks: bool):
        self.broot, self.prefix, self.has_blocks = broot, prefix, has_blocks
        self.cols: dict[str, list] = {f.name: [] for f in S.SOURCE_INVENTORY}
        self.stats = {"listing_records": 0, "listing_outside": 0, "listing_unparsed": 0,
                      "listing_multiline": 0, "dirs": 0, "bytes": 0}

    def _append(self, rel: bytes, **fields) -> None:
        key = K.display_key(rel)
        row = {"key": key, "key_bytes": rel, "nkey": K.nfc(key),
               "name_problem": K.name_problem(rel, self.prefix), **fields}
        for name, col in self.cols.items():
            col.append(row.get(name))

    def record(self, vals: dict, multiline: bool = False) -> None:
        self.stats["listing_records"] += 1
        rel = _relative(vals["path"], self.broot)
        if rel is None:
            self.stats["listing_outside"] += 1
            return
        kind = vals.get("kind", S.KIND_FILE)
        if kind == S.KIND_DIR:  # like the walk: directories are not rows
            self.stats["dirs"] += 1
            return
        if not rel:
            return
        self.stats["listing_multiline"] += multiline
        size = vals["size"]
        blocks = vals.get("blocks")
        if not self.has_blocks and kind == S.KIND_FILE and size > 0:
            # unknown allocation: 0 makes the HSM check ask about the file before opening it
            blocks = 0
        self.stats["bytes"] += size
        self._append(
            rel, kind=kind, size=size, mtime_ns=vals["mtime_ns"], ctime_ns=vals.get("ctime_ns"),
            ino=vals.get("ino"), nlink=vals.get("nlink"), uid=vals["uid"], gid=vals["gid"],
            mode=_TYPE_BITS[kind] | vals["perm"], blocks=blocks,
            error="the listing tool could not tell the file type" if kind == S.KIND_ERROR
            else None)

    def unparsed(self, offset: int, rec: bytes, fmt: str) -> None:
        """A record that is not in the format is a SOURCE_ERROR row, never dropped."""
        self.stats["listing_unparsed"] += 1
        at = rec.find(self.broot.rstrip(b"/") + b"/")
        rel = _relative(rec[at:], self.broot) if at >= 0 else None
        rel = rel or rec[:300] or b"<empty record>"
        self._append(rel, kind=S.KIND_ERROR,
                     error=f"listing record at byte {offset} is not in the format {fmt!r}")

    def table(self) -> pa.Table:
        return pa.table(self.cols, schema=S.SOURCE_INVENTORY)


def parse_listing_range(listing: str, root: str, start: int, end: int, fmt: str | None,
                        sep: bytes, prefix: str, spool: str) -> dict:
    """Parse the records that *start* in ``[start, end)`` of a listing; spool them.

    A record belongs to the range holding its first byte: a task skips the
    partial record it starts in and reads past ``end`` to finish its last one,
    so ranges cut anywhere still give every record exactly once.  In a
    newline-separated listing a line that is not a record continues the name
    of the record before it (a name containing a newline), on both sides of a
    range boundary alike.
    """
    names = parse_format(fmt)
    shown = " ".join(names)
    rows = _SourceRows(os.fsencode(root), prefix, "%b" in names)
    with open(listing, "rb") as f:
        it = _records(f, max(0, start - 1), sep)
        if start > 0:
            next(it, None)  # the rest of a record owned by the range before
        if sep == b"\0":
            for off, rec in it:
                if off >= end:
                    break
                if not rec:
                    continue
                vals = _parse_record(rec, names)
                if vals is None:
                    rows.unparsed(off, rec, shown)
                else:
                    rows.record(vals)
        else:
            cur: dict | None = None
            lines = 0
            for off, rec in it:
                vals = _parse_record(rec, names)
                if vals is None:
                    if cur is not None:
                        cur["path"] += b"\n" + rec
                        lines += 1
                    elif start == 0 and off < end and rec:
                        rows.unparsed(off, rec, shown)
                    continue  # else: the tail of the range before's last record
                if off >= end:
                    break
                if cur is not None:
                    rows.record(cur, lines > 0)
                cur, lines = vals, 0
            if cur is not None:
                rows.record(cur, lines > 0)
    table = rows.table()
    if table.num_rows:
        write_atomic(table, spool)
    st = rows.stats
    return {"side": "src", "count": table.num_rows, "pending": [], "dirs": st.pop("dirs"),
            "ops": 0, "spool": spool if table.num_rows else None, "bytes": st.pop("bytes"),
            "ingest": st}


def listing_jobs(listing: str, fmt: str | None, chunk: int = LISTING_CHUNK) -> list[tuple]:
    """One parse job per ``chunk`` bytes of the listing (the driver reads nothing more)."""
    listing = os.path.abspath(listing)  # workers may run elsewhere, in another directory
    size = os.path.getsize(listing)
    sep = detect_separator(listing)
    return [("lsrc", listing, s, min(s + chunk, size), fmt, sep)
            for s in range(0, size, chunk)]


def check_listing(listing: str, root: str, fmt: str | None) -> None:
    """Refuse a listing that cannot be this source's: unreadable, empty, other format or root."""
    names = parse_format(fmt)
    try:
        size = os.path.getsize(listing)
        sep = detect_separator(listing)
        with open(listing, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise IngestError(f"--source-listing {listing}: {exc.strerror or exc}") from None
    if size == 0:
        raise IngestError(f"--source-listing {listing} is empty")
    first = head.split(sep, 1)[0]
    vals = _parse_record(first, names)
    if vals is None:
        raise IngestError(f"--source-listing {listing}: first record {first[:120]!r} is not in "
                          f"the format {' '.join(names)!r} (see --listing-format)")
    if _relative(vals["path"], os.fsencode(root)) is None:
        raise IngestError(f"--source-listing {listing}: paths start like {vals['path'][:80]!r}, "
                          f"not with the source {root!r} (or ./)")


# --- 2. destination: an S3 Inventory report ---------------------------------------------------


def _norm(name: str) -> str:
    """``LastModifiedDate`` (CSV fileSchema) and ``last_modified_date`` (Parquet) alike."""
    return name.strip().lower().replace("_", "")


def _arn_bucket(value: str | None) -> str | None:
    if not value:
        return None
    return value.rsplit(":", 1)[-1] if value.startswith("arn:") else value


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
    jobs = [("idst", _resolve(manifest, dest_bucket, f["key"]), fmt, columns,
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


def _timestamps_ns(col: pa.ChunkedArray | None, n: int) -> list:
    """LastModifiedDate as ns, computed like the listing does (``int(dt.timestamp() * 1e9)``).

    The same float arithmetic as the ListObjectsV2 path, so a run from an
    inventory and a run from a listing agree to the nanosecond.
    """
    if col is None:
        return [None] * n
    if not pa.types.is_timestamp(col.type):
        col = pc.cast(pc.if_else(pc.equal(col, ""), None, col), pa.timestamp("us", "UTC"))
    us = pc.cast(col, pa.timestamp("us", "UTC")).cast(pa.int64())
    valid = pc.is_valid(us).to_numpy(zero_copy_only=False)
    vals = us.fill_null(0).to_numpy().astype(np.float64) / 1e6 * 1e9
    out = vals.astype(np.int64).tolist()
    return [v if ok else None for v, ok in zip(out, valid, strict=True)]


def _truthy(v) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() == "true")


def _dest_table(t: pa.Table, fmt: str, target: S3Target, stats: dict) -> pa.Table:
    """DEST_INVENTORY rows of one inventory batch: this bucket, under the prefix, current."""
    n = t.num_rows

    def col(name: str) -> list:
        return t.column(name).to_pylist() if name in t.column_names else [None] * n

    buckets, raw_keys = col("bucket"), col("key")
    sizes, etags, classes = col("size"), col("etag"), col("storageclass")
    algos, latest, deleted = col("checksumalgorithm"), col("islatest"), col("isdeletemarker")
    lms = _timestamps_ns(t.column("lastmodifieddate") if "lastmodifieddate" in t.column_names
                         else None, n)
    plen = len(target.prefix)
    out: dict[str, list] = {f.name: [] for f in S.DEST_INVENTORY}
    for i in range(n):
        if buckets[i] not in (None, "", target.bucket):
            stats["inventory_other_bucket"] += 1
            continue
        key = raw_keys[i] or ""
        if fmt == "CSV":  # CSV keys are URL-encoded; Parquet and ORC keys are not
            key = unquote_plus(key)
        if not key.startswith(target.prefix):
            stats["inventory_outside_prefix"] += 1
            continue
        if _truthy(deleted[i]) or (latest[i] is not None and latest[i] != ""
                                   and not _truthy(latest[i])):
            stats["inventory_not_current"] += 1
            continue
        size = sizes[i]
        size = int(size) if size not in (None, "") else None
        if key.endswith("/") and not size:
            stats["markers"] += 1
            continue
        rel = key[plen:]
        out["key"].append(rel)
        out["nkey"].append(K.nfc(rel))
        out["size"].append(size)
        out["etag"].append(strip_etag(etags[i]) or None)
        out["last_modified_ns"].append(lms[i])
        out["storage_class"].append(classes[i] or None)
        out["checksum_algorithm"].append(algos[i] or None)
        out["checksum_type"].append(None)  # not in S3 Inventory
        stats["bytes"] += size or 0
    return pa.table(out, schema=S.DEST_INVENTORY)


def ingest_inventory_file(url: str, fmt: str, columns: tuple[str, ...] | None, md5: str | None,
                          target: S3Target, spool_base: str) -> dict:
    """One inventory data file into DEST_INVENTORY spool files (a Dask task)."""
    stats = {"inventory_other_bucket": 0, "inventory_outside_prefix": 0,
             "inventory_not_current": 0, "markers": 0, "bytes": 0}
    res = {"side": "dst", "count": 0, "pending": [], "depth": 0, "requests": 0,
           "spool": None, "spools": [], "error": None}
    try:
        spools = _spool_tables((_dest_table(t, fmt, target, stats)
                                for t in _inventory_batches(url, fmt, columns, md5, target)),
                               S.DEST_INVENTORY, spool_base)
    except Exception as exc:  # the inventory is incomplete: the run must not go on
        res["error"] = f"inventory file {url}: {type(exc).__name__}: {exc}"
        res.update(markers=0, bytes=0, ingest={})
        return res
    res.update(count=sum(n for _, n in spools), spools=spools, markers=stats.pop("markers"),
               bytes=stats.pop("bytes"), ingest=stats)
    return res


# --- 3. evidence: an S3 Batch Operations compute-checksum completion report -----------------


def report_plan(report: str, target: S3Target) -> tuple[dict, list[tuple]]:
    """Jobs for a completion report: its manifest.json (every result file) or one CSV."""
    if not report.lower().endswith(".json"):
        _must_exist(report, target)
        url = report if report.startswith("s3://") else os.path.abspath(report)
        return {"checksum_report": report, "checksum_report_files": 1}, [("csum", url, None)]
    doc = _read_json(report, target)
    if not str(doc.get("Format", "")).startswith("Report_CSV"):
        raise IngestError(f"{report}: Format {doc.get('Format')!r} is not a Batch Operations "
                          "CSV completion report")
    results = doc.get("Results") or []
    jobs = [("csum", _resolve(report, r.get("Bucket"), r["Key"]), r.get("MD5Checksum"))
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


# --- driver glue: what verify() calls ---------------------------------------------------------


def check(cfg: VerifyConfig, root: str, target: S3Target) -> None:
    """Validate the ingest options before any task runs (IngestError -> exit code 2)."""
    if getattr(cfg, "source_listing", None):
        check_listing(cfg.source_listing, root, cfg.listing_format)
    elif getattr(cfg, "listing_format", None):
        raise IngestError("--listing-format describes a --source-listing; none was given")
    if getattr(cfg, "dest_inventory", None):
        inventory_plan(cfg.dest_inventory, target)
    if getattr(cfg, "checksum_report", None):
        if cfg.mode == "readback":
            raise IngestError("--checksum-report is evidence for --mode stored; readback reads "
                              "every object back instead")
        report_plan(cfg.checksum_report, target)


def replace_jobs(cfg: VerifyConfig, root: str, target: S3Target, jobs: list[tuple],
                 stats: dict) -> list[tuple]:
    """The inventory stage's first jobs, with ingest jobs in place of walk or listing.

    ``jobs`` are the usual ``("src", ...)`` walk and ``("dst", ...)`` listing jobs;
    a listing file replaces the first, an inventory report the second, and a
    checksum report adds its own.  What was ingested is noted in ``stats``.
    """
    info: dict = {}
    out = list(jobs)
    if getattr(cfg, "source_listing", None):
        out = [j for j in out if j[0] != "src"]
        out += listing_jobs(cfg.source_listing, cfg.listing_format)
        st = os.stat(cfg.source_listing)
        info.update(source_listing=cfg.source_listing,
                    listing_format=" ".join(parse_format(cfg.listing_format)),
                    listing_bytes=st.st_size, listing_mtime_ns=st.st_mtime_ns)
    if getattr(cfg, "dest_inventory", None):
        out = [j for j in out if j[0] != "dst"]
        inv, more = inventory_plan(cfg.dest_inventory, target)
        info.update(inv)
        out += more
    if getattr(cfg, "checksum_report", None):
        rep, more = report_plan(cfg.checksum_report, target)
        info.update(rep)
        out += more
    if info:
        stats.setdefault("ingest", {}).update(info)
    return out


def submit(client: Client, job: tuple, spool_base: str, root: str, target: S3Target,
           key: str) -> Future:
    """Submit one ingest job as a Dask task."""
    kind = job[0]
    if kind == "lsrc":
        _, listing, start, end, fmt, sep = job
        return client.submit(parse_listing_range, listing, root, start, end, fmt, sep,
                             target.prefix, spool_base + ".parquet", pure=False, key=key)
    if kind == "idst":
        _, url, fmt, columns, md5 = job
        return client.submit(ingest_inventory_file, url, fmt, columns, md5, target, spool_base,
                             pure=False, key=key)
    _, url, md5 = job
    return client.submit(ingest_report_file, url, md5, target, spool_base, pure=False, key=key)


def tally(res: dict, stats: dict, src_spools: list, dst_spools: list,
          sum_spools: list) -> bool:
    """Count an ingest task's result; True when the caller has nothing more to do with it."""
    if "ingest" not in res:
        return False
    totals = stats.setdefault("ingest", {})
    for k, v in res["ingest"].items():
        totals[k] = totals.get(k, 0) + v
    lists = {"src": src_spools, "dst": dst_spools, "sum": sum_spools}
    lists[res["side"]].extend(res.get("spools") or ())
    return res["side"] == "sum"
