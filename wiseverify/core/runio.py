"""Run-directory IO: files appear whole or not at all.

Every stage writes into a run directory that other processes read while the run
goes on (the driver, `wiseverify report`, a resumed run), so nothing is ever
written in place: a temp name in the same directory, then ``os.replace``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp name next to ``path`` to write to; renamed onto ``path`` when the block ends.

    The temp name is unique, so two processes writing the same file (a retried task
    and the original) never write into each other's temp file; on an error the temp
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file whole or not at all (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file whole or not at all (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_atomic(table: pa.Table, path: str | os.PathLike,
                 use_dictionary: bool | list[str] = True,
                 write_statistics: bool | list[str] = True) -> None:
    """Write a Parquet file under a temp name and rename it, so readers never see half a file.

    ``use_dictionary`` may name the low-cardinality columns: dictionary-encoding
    attempts on unique keys cost more than the rest of the write.  The other
    integer columns (sizes, times, inode numbers) are then DELTA_BINARY_PACKED,
    which every current Parquet reader decodes: it writes in half the time of
    plain + zstd, reads faster and is smaller.  zstd level 1, as for the
    reconciliation output: higher levels gain nothing on keys.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoding = None
    if isinstance(use_dictionary, list):
        encoding = {f.name: "DELTA_BINARY_PACKED" for f in table.schema
                    if pa.types.is_integer(f.type) and f.type.bit_width >= 32
                    and f.name not in use_dictionary} or None
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=1,
                       use_dictionary=use_dictionary, write_statistics=write_statistics,
                       column_encoding=encoding)
