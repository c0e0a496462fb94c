"""Reading the files a site hands over instead of a walk or a listing.

A listing file, an S3 Inventory manifest or a checksum report may sit on a local
path or under ``s3://``, gzipped or not, with an MD5 given by the manifest: the
three ingest paths open, check and spool them the same way, here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pyarrow as pa

from wiseverify.core.runio import write_atomic
from wiseverify.core.s3 import S3Target

#: rows per spool file written by one inventory or report task (bounds compaction memory).
#: A spool file is never split between compaction tasks: at 500,000 a million-object
#: inventory was compacted by two tasks while the source side had a task per thread
ROWS_PER_SPOOL = 100_000
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
