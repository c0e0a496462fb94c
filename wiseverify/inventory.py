"""Stage 1, inventory: list both sides as Dask tasks and write them hash-partitioned.

Design
------
* Source: a task walks a *batch* of directories with ``os.scandir`` + ``lstat``
  (never ``open``), depth first, until it has seen ``budget`` entries; whatever
  subdirectories are left go back to the driver, which fans them out as new
  tasks.  Small trees cost a handful of tasks, a 30M-file tree spreads over the
  cluster, and the driver only ever holds directory names and counts.
* Destination: ListObjectsV2 under the prefix with ``Delimiter='/'`` for the first
  ``fanout_depth`` levels (each common prefix becomes a task), then one paginated
  recursive listing per prefix.  Zero-byte keys ending in ``/`` are folder markers.
* Each task writes its rows to a spool Parquet file (temp name, then rename);
  :func:`compact` turns spool files into ``inventory/{src,dst}/part=NNNNN/*.parquet``
  by ``partition_of(nfc(key))``, so later stages read one partition at a time.
"""

from __future__ import annotations

import os
import stat as statmod
import threading
import time
import uuid
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import keys as K
from . import schema as S
from .s3 import S3Target, error_text, strip_etag

# --- small helpers ------------------------------------------------------------


def write_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a Parquet file under a temp name and rename it, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


class RateLimiter:
    """A per-process token bucket for metadata operations (a shared Lustre MDS)."""

    def __init__(self, per_second: float | None):
        self.per_second = per_second
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def acquire(self) -> None:
        if not self.per_second:
            return
        with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + 1.0 / self.per_second
        if wait > 0:
            time.sleep(wait)


def _kind(mode: int) -> str:
    if statmod.S_ISREG(mode):
        return S.KIND_FILE
    if statmod.S_ISDIR(mode):
        return S.KIND_DIR
    if statmod.S_ISLNK(mode):
        return S.KIND_SYMLINK
    if statmod.S_ISFIFO(mode):
        return S.KIND_FIFO
    if statmod.S_ISSOCK(mode):
        return S.KIND_SOCKET
    if statmod.S_ISCHR(mode):
        return S.KIND_CHAR
    if statmod.S_ISBLK(mode):
        return S.KIND_BLOCK
    return S.KIND_ERROR


def _entry_row(rel: bytes, st: os.stat_result | None, prefix: str, error: str | None) -> dict:
    key = K.display_key(rel)
    row = {
        "key": key,
        "key_bytes": rel,
        "nkey": K.nfc(key),
        "name_problem": K.name_problem(rel, prefix),
        "error": error,
    }
    if st is not None:
        row.update(
            kind=_kind(st.st_mode),
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            ino=st.st_ino,
            dev=st.st_dev,
            nlink=st.st_nlink,
            uid=st.st_uid,
            gid=st.st_gid,
            mode=st.st_mode,
            blocks=getattr(st, "st_blocks", None),
        )
    else:
        row["kind"] = S.KIND_ERROR
    return row


# --- source walk ----------------------------------------------------------------


def walk_dirs(
    root: str,
    rel_dirs: list[bytes],
    spool_path: str,
    prefix: str = "",
    budget: int = 50_000,
    metadata_ops_per_second: float | None = None,
) -> dict:
    """Walk ``rel_dirs`` (relative to ``root``) with lstat only; spool the entries.

    Returns ``{"count", "pending", "dirs", "ops"}``: ``pending`` are subdirectories
    left for other tasks once ``budget`` entries have been seen.
    """
    limiter = RateLimiter(metadata_ops_per_second)
    broot = os.fsencode(root)
    stack = list(reversed(rel_dirs))
    rows: list[dict] = []
    ndirs = 0
    ops = 0
    while stack and len(rows) < budget:
        rel = stack.pop()
        ndirs += 1
        path = broot + b"/" + rel if rel else broot
        limiter.acquire()
        ops += 1
        try:
            it = os.scandir(path)
        except OSError as exc:
            # an unlistable directory is a row, so nothing below it goes unnoticed
            drow = _entry_row(rel + b"/", None, prefix, f"cannot list directory: {exc.strerror}")
            rows.append(drow)
            continue
        with it:
            children: list[bytes] = []
            while True:
                try:
                    entry = next(it)
                except StopIteration:
                    break
                except OSError as exc:
                    rows.append(
                        _entry_row(rel + b"/", None, prefix,
                                   f"directory listing failed: {exc.strerror}")
                    )
                    break
                crel = rel + b"/" + entry.name if rel else entry.name
                limiter.acquire()
                ops += 1
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    rows.append(_entry_row(crel, None, prefix, f"lstat failed: {exc.strerror}"))
                    continue
                if statmod.S_ISDIR(st.st_mode):
                    children.append(crel)
                else:
                    rows.append(_entry_row(crel, st, prefix, None))
        # depth first, in name order, so task outputs are reproducible
        stack.extend(sorted(children, reverse=True))
    pending = list(reversed(stack))
    table = S.from_rows(rows, S.SOURCE_INVENTORY)
    if table.num_rows:
        write_atomic(table, spool_path)
    return {"count": table.num_rows, "pending": pending, "dirs": ndirs, "ops": ops,
            "spool": spool_path if table.num_rows else None}


# --- destination listing -----------------------------------------------------------


def fast_timestamp(text: str):
    """Parse an S3 timestamp without dateutil: ISO 8601 in XML, HTTP-date in headers.

    botocore's default parser goes through dateutil at ~300 us per value, which
    made timestamp parsing the largest client-side cost of listing (one value
    per object: ~2.5 CPU hours for 30M objects) and a visible share of every
    GET (its Last-Modified header); the standard library takes 1-10 us.
    Anything that does not come out zone-aware (epoch numbers, other forms)
    still goes to botocore's parser, so every value is the same instant as before.
    """
    value = None
    try:
        if text[:1].isdigit():
            value = datetime.fromisoformat(text)  # 2026-11-26T11:27:02.000Z
        elif text.endswith(" GMT"):
            value = parsedate_to_datetime(text)  # Wed, 26 Nov 2026 11:27:02 GMT
    except (TypeError, ValueError, IndexError):
        value = None
    if value is None or value.tzinfo is None:
        from botocore.utils import parse_timestamp

        return parse_timestamp(text)
    return value


def use_fast_timestamps(target: S3Target) -> None:
    """Install :func:`fast_timestamp` on the session's response parser factory.

    The factory creates a parser per response, so this takes effect for the
    clients already made from the session too.  Idempotent and cheap.
    """
    session = getattr(target.fs(), "session", None)
    get = getattr(session, "get_component", None)
    if get is None:
        return
    try:
        get("response_parser_factory").set_parser_defaults(timestamp_parser=fast_timestamp)
    except Exception:  # an unexpected botocore layout: keep its default parser
        return


def list_prefix(target: S3Target, rel_prefix: str, delimiter: bool, spool_path: str) -> dict:
    """List objects under ``target.prefix + rel_prefix``; spool them.

    With ``delimiter`` only one level is listed and the common prefixes are
    returned (relative) for the driver to fan out.
    """

    async def _list():
        client = await target.client()
        use_fast_timestamps(target)
        kwargs = {"Bucket": target.bucket, "Prefix": target.prefix + rel_prefix}
        if delimiter:
            kwargs["Delimiter"] = "/"
        rows: list[dict] = []
        prefixes: list[str] = []
        markers = 0
        requests = 0
        token = None
        plen = len(target.prefix)
        while True:
            if token:
                kwargs["ContinuationToken"] = token
            resp = await client.list_objects_v2(**kwargs)
            requests += 1
            for obj in resp.get("Contents", ()):
                full = obj["Key"]
                if not full.startswith(target.prefix):
                    continue
                if full.endswith("/") and obj.get("Size", 0) == 0:
                    markers += 1
                    continue
                rel = full[plen:]
                algos = obj.get("ChecksumAlgorithm") or []
                lm = obj.get("LastModified")
                rows.append(
                    {
                        "key": rel,
                        "nkey": K.nfc(rel),
                        "size": obj.get("Size"),
                        "etag": strip_etag(obj.get("ETag")),
                        "last_modified_ns": int(lm.timestamp() * 1e9) if lm else None,
                        "storage_class": obj.get("StorageClass"),
                        "checksum_algorithm": ",".join(algos) if algos else None,
                        "checksum_type": obj.get("ChecksumType"),
                    }
                )
            for cp in resp.get("CommonPrefixes", ()):
                prefixes.append(cp["Prefix"][plen:])
            if resp.get("IsTruncated"):
                token = resp.get("NextContinuationToken")
                if not token:
                    break
            else:
                break
        return rows, prefixes, markers, requests

    try:
        rows, prefixes, markers, requests = target.run(_list)
    except Exception as exc:
        return {"count": 0, "pending": [], "markers": 0, "requests": 0, "spool": None,
                "error": f"listing {target.prefix + rel_prefix!r} failed: "
                         f"{error_text(exc, 'ListObjectsV2')}"}
    table = S.from_rows(rows, S.DEST_INVENTORY)
    if table.num_rows:
        write_atomic(table, spool_path)
    return {"count": table.num_rows, "pending": prefixes, "markers": markers,
            "requests": requests, "spool": spool_path if table.num_rows else None,
            "error": None}


# --- partitioning ------------------------------------------------------------------


def compact(spool_paths: list[str], out_dir: str, nparts: int, tag: str) -> dict:
    """Hash-partition a group of spool files into ``out_dir/part=NNNNN/<tag>.parquet``."""
    import pyarrow.compute as pc

    tables = [pq.read_table(p) for p in spool_paths]
    if not tables:
        return {"rows": 0}
    table = pa.concat_tables(tables)
    parts = K.partition_of(table.column("nkey").to_numpy(zero_copy_only=False), nparts)
    table = table.append_column("_p", pa.array(parts, pa.int32()))
    table = table.sort_by("_p")
    pcol = table.column("_p")
    counts = pc.value_counts(pcol)
    offset = 0
    for item in sorted(counts.to_pylist(), key=lambda d: d["values"]):
        p, n = item["values"], item["counts"]
        chunk = table.slice(offset, n).drop_columns(["_p"])
        offset += n
        write_atomic(chunk, Path(out_dir) / f"part={p:05d}" / f"{tag}.parquet")
    return {"rows": table.num_rows}


def read_partition(inv_dir: str, part: int, schema: pa.Schema) -> pa.Table:
    """All rows of one partition of one side (empty table when there are none)."""
    d = Path(inv_dir) / f"part={part:05d}"
    files = sorted(d.glob("*.parquet")) if d.is_dir() else []
    if not files:
        return S.empty(schema)
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files])
