"""Stage 1, inventory: list both sides as Dask tasks and write them hash-partitioned.

Design
------
* Source: a task walks a *batch* of directories with getdents + ``lstat``
  (statx; never ``open`` on an entry), depth first, until it has seen ``budget``
  entries; whatever subdirectories are left go back to the driver, which fans them out as new
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
import sys
import threading
import time
import uuid
from datetime import datetime
from email.utils import parsedate_to_datetime
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import keys as K
from . import schema as S
from .s3 import S3Target, error_text, strip_etag
from .units import open_noatime

# --- small helpers ------------------------------------------------------------


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
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    encoding = None
    if isinstance(use_dictionary, list):
        encoding = {f.name: "DELTA_BINARY_PACKED" for f in table.schema
                    if pa.types.is_integer(f.type) and f.type.bit_width >= 32
                    and f.name not in use_dictionary} or None
    pq.write_table(table, tmp, compression="zstd", compression_level=1,
                   use_dictionary=use_dictionary, write_statistics=write_statistics,
                   column_encoding=encoding)
    os.replace(tmp, path)


#: columns of the inventory tables whose values repeat from row to row
#: (dictionary-encoded in partition files; every other column is close to unique)
REPEATING_COLUMNS = ("kind", "nlink", "uid", "gid", "mode", "name_problem", "error",
                     "storage_class", "checksum_algorithm", "checksum_type", "version_id",
                     "algorithm", "checksum_parts", "task_status", "report")


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


def write_spool(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a walk task's rows as an Arrow IPC file (LZ4), under a temp name.

    A spool file lives only until :func:`compact` partitions it, so it is
    written for speed: 0.15-0.3 us per row against 0.6 us for Parquet with zstd,
    about a seventh of the walk's CPU per entry.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(
            sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as w:
        w.write_table(table)
    os.replace(tmp, path)


def read_spool(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """A spool file: Arrow IPC from the walk, Parquet from the other stages (by magic)."""
    with open(path, "rb") as f:
        ipc = f.read(6) == b"ARROW1"
    if ipc:
        with pa.OSFile(str(path), "rb") as f:
            table = pa.ipc.open_file(f).read_all()
        return table.select(columns) if columns else table
    return pq.read_table(path, columns=columns)


# --- source walk ----------------------------------------------------------------
#
# A walk task lists a directory once (open + getdents, counted as one metadata
# operation) and stats every name relative to the open directory (no path
# resolution per entry).  Names stay in one bytes blob per directory
# (``rel/name`` + NUL each) from the listing to the Arrow key column, and
# statx(2) writes straight into one growing buffer of ``struct statx`` records,
# so the stat columns come out as NumPy views: no Python object per entry.  The
# listing and stat loops are C (``_fastwalk.c``, one call per directory, GIL
# released); without the compiled module they are os.listdir and statx through
# ctypes, and os.lstat fills the same records where statx is missing or a file
# system leaves out a field.  On a page-cached tree this keeps the walk's CPU
# per entry within about 1.5x of GNU find's, so two worker processes outrun it.
#
# Against a real Lustre MDS each stat is a round trip of 0.1-2 ms and a single
# thread would spend nearly all its time waiting.  A task therefore measures its
# stat latency and, once calls are slow, spreads the names of the directories it
# holds over a thread pool (ctypes and os.lstat release the GIL).
# ``--max-metadata-ops`` stays a hard cap: every operation takes a token first.
#
# A huge directory (more names than ``split_entries``) is split by name range:
# the task that lists it writes the sorted names beyond its own share to small
# files next to its spool file and hands those ranges back to the driver, which
# sends each to its own task.  Names are listed once; each name is stat'ed once.

#: test hook, off by default: simulated metadata-server latency in microseconds,
#: slept before every metadata operation of a walk (directory listing and stat),
#: so the benchmark can show how the walk scales against a slow MDS on a local disk
STAT_DELAY_ENV = "WISEVERIFY_SIM_STAT_DELAY_US"
#: threads per walk task once its stat calls are seen to wait on the server
AUTO_WALK_THREADS = 16
#: mean stat time above which a task switches to threads: a page-cached stat
#: costs 1-10 us of CPU, a metadata-server round trip 100 us or more
SLOW_STAT_S = 50e-6
#: entry budget of the first walk task (the one started at the root), so the
#: rest of the tree reaches the other workers within milliseconds
FIRST_BUDGET = 4_000
#: a walk task returns after about this long, handing its remaining directories
#: back, so that against a slow server no task runs alone for minutes at the end
#: of the walk and a retried task repeats little.  Not shorter: each task costs
#: a scheduler round trip and a spool file (measured: 0.1-0.4 s slices made the
#: 500,000-entry benchmark walk slower than 50,000-entry budgets alone)
WALK_TASK_SECONDS = 2.0
#: how long a worker process reuses a task's choice of threads for the same root
_AUTO_TTL_S = 30.0
_auto_choice: dict[tuple[str, float], tuple[int, float]] = {}
#: calls per probe while a task measures whether its stat calls wait
_PROBE = 8
#: names per stat batch handed to one thread of the pool (and per probe while a
#: task has not yet decided between one thread and a pool)
_STAT_CHUNK = 64

_KINDS = (S.KIND_ERROR, S.KIND_FIFO, S.KIND_CHAR, S.KIND_ERROR, S.KIND_DIR, S.KIND_ERROR,
          S.KIND_BLOCK, S.KIND_ERROR, S.KIND_FILE, S.KIND_ERROR, S.KIND_SYMLINK,
          S.KIND_ERROR, S.KIND_SOCKET, S.KIND_ERROR, S.KIND_ERROR, S.KIND_ERROR)  # by S_IFMT >> 12
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(
    os, "O_CLOEXEC", 0)
#: True when str names round-trip to the file system's bytes through UTF-8
_UTF8_FS = sys.getfilesystemencoding().lower().replace("-", "") == "utf8"

#: ``struct statx`` (Linux uapi, the same layout on every architecture)
_STATX_DTYPE = [
    ("mask", "=u4"), ("blksize", "=u4"), ("attributes", "=u8"), ("nlink", "=u4"),
    ("uid", "=u4"), ("gid", "=u4"), ("mode", "=u2"), ("_spare0", "=u2"), ("ino", "=u8"),
    ("size", "=u8"), ("blocks", "=u8"), ("attributes_mask", "=u8"),
    ("atime_s", "=i8"), ("atime_ns", "=u4"), ("_r1", "=i4"),
    ("btime_s", "=i8"), ("btime_ns", "=u4"), ("_r2", "=i4"),
    ("ctime_s", "=i8"), ("ctime_ns", "=u4"), ("_r3", "=i4"),
    ("mtime_s", "=i8"), ("mtime_ns", "=u4"), ("_r4", "=i4"),
    ("rdev_major", "=u4"), ("rdev_minor", "=u4"), ("dev_major", "=u4"), ("dev_minor", "=u4"),
    ("_rest", "V112"),
]
_REC = 256
#: STATX_TYPE|MODE|NLINK|UID|GID|MTIME|CTIME|INO|SIZE|BLOCKS: what a row needs
_STATX_NEED = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400
_AT_FLAGS = 0x100 | 0x800  # AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT: exactly lstat


def _load_statx():
    """libc's statx through ctypes, or None (not Linux, glibc < 2.28, kernel < 4.11)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        # errno is not kept: a failed call is repeated with os.lstat for its error text
        fn = ctypes.CDLL(None).statx
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint,
                       ctypes.c_void_p]
        fn.restype = ctypes.c_int
        import numpy as np

        probe = np.zeros(_REC + 2, np.uint8)
        name = probe[_REC:]
        name[0] = ord("/")
        if fn(-100, name.ctypes.data, _AT_FLAGS, _STATX_NEED, probe.ctypes.data) != 0:
            return None  # ENOSYS under an old kernel or a seccomp filter (-100: AT_FDCWD)
        return fn
    except (AttributeError, OSError):
        return None


_STATX = _load_statx()


_calls = 0


def _voluntary_switches() -> int:
    """Times this thread blocked so far (Linux).

    Without a per-thread count it counts calls instead, so that every slow
    call is taken for a wait.
    """
    global _calls
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    except (ImportError, AttributeError, OSError):
        _calls += 1 << 20
        return _calls


try:  # the C loops of the walk (setup.py builds them where a compiler is found)
    from . import _fastwalk as _FAST
except ImportError:
    _FAST = None


def _head(rel: bytes) -> bytes:
    """What precedes a name in the keys of directory ``rel``: ``rel/``, nothing at the root."""
    return rel + b"/" if rel else b""


def _list_blob(fd: int, prefix: bytes) -> bytes:
    """An open directory's names as one blob: ``prefix + name + NUL`` per entry."""
    if _FAST is not None:
        return _FAST.list_dir(fd, prefix)
    return b"".join([prefix + os.fsencode(n) + b"\0" for n in os.listdir(fd)])


class _Listed:
    """One listed directory (or name range): its open descriptor and its key blob.

    Keys are ``rel/name`` as bytes, each NUL-terminated, in listing order; the
    name relative to the descriptor starts ``skip`` bytes into each key.
    """

    __slots__ = ("rel", "fd", "blob", "skip", "starts", "ends")

    def __init__(self, rel: bytes, fd: int, blob: bytes):
        import numpy as np

        self.rel, self.fd, self.blob = rel, fd, blob
        self.skip = len(_head(rel))
        self.ends = np.flatnonzero(np.frombuffer(blob, np.uint8) == 0)
        self.starts = np.empty_like(self.ends)
        self.starts[:1] = 0
        self.starts[1:] = self.ends[:-1] + 1

    def key(self, i: int) -> bytes:
        return self.blob[self.starts[i]:self.ends[i]]

    def name(self, i: int) -> bytes:
        return self.blob[self.starts[i] + self.skip:self.ends[i]]


def _open_dir(path: bytes) -> int:
    """Open a directory without following a symlink swapped in for it; no atime if allowed."""
    return open_noatime(path, _DIR_FLAGS)


class _Walk:
    """Columns of one walk task, and the metadata calls that fill them."""

    def __init__(self, root: str, prefix: str, ops_per_second: float | None,
                 threads: int | None, delay_us: float | None, expect: int = 0):
        import numpy as np

        self.np = np
        self.dtype = np.dtype(_STATX_DTYPE)
        self.broot = os.fsencode(root)
        self.prefix = prefix
        self.limiter = RateLimiter(ops_per_second) if ops_per_second else None
        if delay_us is None:
            delay_us = float(os.environ.get(STAT_DELAY_ENV) or 0)
        self.delay = delay_us / 1e6
        self.statx = _STATX
        self.auto = threads is None
        self.decided = not self.auto
        self.threads = 1 if threads is None else max(1, threads)
        self.pool = None
        self.auto_key = (root, self.delay)
        if self.auto:  # an earlier task of this process already measured this tree
            known, when = _auto_choice.get(self.auto_key, (0, 0.0))
            if known and time.monotonic() - when < _AUTO_TTL_S:
                self.threads, self.decided = known, True
        # struct statx records, one per name: room for the expected entries at once
        # (zeroed pages are only mapped when written, so a generous guess is free;
        # growing by doubling copied each record about twice)
        self.buf = np.zeros(expect * _REC, np.uint8)
        self.used = 0  # records filled
        self.blobs: list[bytes] = []  # per directory (or name range): its keys, NUL-ended
        self.bad: list[int] = []  # records whose stat failed (an error row instead)
        self.extra: list[dict] = []  # error rows, built one by one
        self.count = 0  # entries seen
        self.ops = 0
        self.dirs = 0
        self.stat_s = 0.0
        self.stat_n = 0
        self.stat_waits = 0

    # --- metadata calls -----------------------------------------------------------
    def _op(self) -> None:
        """Before every metadata operation: the rate cap, then the test hook's latency."""
        if self.limiter is not None:
            self.limiter.acquire()
        if self.delay:
            time.sleep(self.delay)

    def _stat_into(self, d: _Listed, lo: int, hi: int, first: int) -> list[tuple[int, str]]:
        """Stat names ``lo:hi`` of listed directory ``d`` into records ``first...``.

        Returns the failures ``(record, text)``.
        """
        fails: list[tuple[int, str]] = []
        paced = self.limiter is not None or bool(self.delay)
        n = hi - lo
        recs = self.buf[first * _REC:(first + n) * _REC].view(self.dtype)
        retry: list[int] = list(range(n))
        np = self.np
        if n and _FAST is not None and not paced:
            # the hot loop of the walk: one C call per directory (or chunk), GIL released
            seg = memoryview(d.blob)[int(d.starts[lo]):int(d.ends[hi - 1]) + 1]
            rcs = np.frombuffer(_FAST.stat_names(d.fd, seg, d.skip, recs, _AT_FLAGS,
                                                 _STATX_NEED), np.int32)
            retry = np.flatnonzero(rcs).tolist()
        elif n and self.statx is not None:
            # the names are in the blob already NUL-terminated: no conversion per call
            base = np.frombuffer(d.blob, np.uint8).ctypes.data + d.skip
            name_at = (d.starts[lo:hi] + base).tolist()
            rec_at = range(recs.ctypes.data, recs.ctypes.data + n * _REC, _REC)
            if paced:
                rcs = []
                for na, ra in zip(name_at, rec_at, strict=True):
                    self._op()
                    rcs.append(self.statx(d.fd, na, _AT_FLAGS, _STATX_NEED, ra))
            else:  # no Python bytecode per name
                rcs = list(map(self.statx, repeat(d.fd, n), name_at, repeat(_AT_FLAGS, n),
                               repeat(_STATX_NEED, n), rec_at))
            retry = [i for i, rc in enumerate(rcs) if rc] if any(rcs) else []
        got: list[tuple[int, os.stat_result]] = []
        for i in retry:  # os.lstat: the portable path, and the error text of a failure
            if paced and self.statx is None:
                self._op()
            try:
                got.append((i, os.lstat(d.name(lo + i), dir_fd=d.fd)))
            except OSError as exc:
                fails.append((first + i, f"lstat failed: {exc.strerror}"))
        if got:
            self._fill(recs, got)
        return fails

    @staticmethod
    def _fill(recs, got: list[tuple[int, os.stat_result]]) -> None:
        """statx records from os.lstat results (the portable path), a column at a time."""
        ix = [i for i, _ in got]
        sts = [st for _, st in got]
        recs["mask"][ix] = _STATX_NEED
        for col, attr in (("mode", "st_mode"), ("ino", "st_ino"), ("nlink", "st_nlink"),
                          ("uid", "st_uid"), ("gid", "st_gid"), ("size", "st_size"),
                          ("blocks", "st_blocks")):
            recs[col][ix] = [getattr(st, attr, 0) for st in sts]
        for t in ("mtime", "ctime"):
            ns = [getattr(st, f"st_{t}_ns") for st in sts]
            recs[f"{t}_s"][ix] = [v // 1_000_000_000 for v in ns]
            recs[f"{t}_ns"][ix] = [v % 1_000_000_000 for v in ns]
        recs["dev_major"][ix] = [os.major(st.st_dev) for st in sts]
        recs["dev_minor"][ix] = [os.minor(st.st_dev) for st in sts]

    def _list(self, rel: bytes) -> tuple[int, bytes] | None:
        """Open and read one directory (one metadata operation); None after an error row."""
        self._op()
        self.ops += 1
        self.dirs += 1
        path = self.broot + b"/" + rel if rel else self.broot
        try:
            fd = _open_dir(path)
        except OSError as exc:
            # an unlistable directory is a row, so nothing below it goes unnoticed
            self.extra.append(_entry_row(rel + b"/", None, self.prefix,
                                         f"cannot list directory: {exc.strerror}"))
            return None
        try:
            return fd, _list_blob(fd, _head(rel))
        except OSError as exc:
            os.close(fd)
            self.extra.append(_entry_row(rel + b"/", None, self.prefix,
                                         f"directory listing failed: {exc.strerror}"))
            return None

    def _open_range(self, rel: bytes, names_file: str) -> tuple[int, bytes] | None:
        """A name range of a huge directory that another task listed."""
        with open(names_file, "rb") as f:
            raw = f.read()
        head = _head(rel)
        # names hold no NUL: the separators are exactly the places for the head
        blob = head + raw.replace(b"\0", b"\0" + head) + b"\0" if raw else b""
        path = self.broot + b"/" + rel if rel else self.broot
        try:
            return _open_dir(path), blob
        except OSError as exc:
            self.extra.append(_entry_row(rel + b"/", None, self.prefix,
                                         f"cannot list directory: {exc.strerror}"))
            return None

    def open_all(self, items: list) -> list[tuple[bytes, int, bytes]]:
        """List directories / open name ranges, in the pool when there is one."""
        def one(item):
            return self._open_range(*item) if isinstance(item, tuple) else self._list(item)

        opened = list(self.pool.map(one, items)) if self.pool and len(items) > 1 \
            else [one(i) for i in items]
        return [((item[0] if isinstance(item, tuple) else item), *got)
                for item, got in zip(items, opened, strict=True) if got is not None]

    def start_threads(self, n: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.threads = n
        self.decided = True
        if n > 1 and self.pool is None:
            self.pool = ThreadPoolExecutor(n, thread_name_prefix="walk-stat")

    def _observe(self, n: int, seconds: float, waits: int) -> None:
        """Auto mode: the first calls of a task choose between one thread and a pool.

        Slow calls alone do not decide it: on a busy machine a page-cached stat
        is slow too, because the thread is preempted, and threads would only add
        GIL traffic.  A call that waits on a server (or a disk) blocks, which the
        kernel counts as a voluntary context switch of the thread.
        """
        self.stat_n += n
        self.stat_s += seconds
        self.stat_waits += waits
        if self.decided or self.stat_n < 8:
            return
        if self.stat_s / self.stat_n > SLOW_STAT_S and self.stat_waits >= self.stat_n // 2:
            self.start_threads(AUTO_WALK_THREADS)
        elif self.stat_n >= 4 * _STAT_CHUNK:
            self.decided = True  # served from cache: one thread is cheapest
        if self.decided:
            _auto_choice[self.auto_key] = (self.threads, time.monotonic())

    def _stat_job(self, d: _Listed, first: int) -> list[tuple[int, str]]:
        """Stat one directory's names: probing while undecided, then pooled or in line."""
        n = len(d.starts)
        if self.pool is None and self.decided:
            return self._stat_into(d, 0, n, first)
        fails: list[tuple[int, str]] = []
        j = 0
        while j < n and self.pool is None:
            # small probes first: against a slow server every sequential call is a wait
            hi = min(n, j + (_PROBE if self.stat_n < _STAT_CHUNK else _STAT_CHUNK))
            t0, w0 = time.perf_counter(), _voluntary_switches()
            fails += self._stat_into(d, j, hi, first + j)
            self._observe(hi - j, time.perf_counter() - t0, _voluntary_switches() - w0)
            j = hi
        if j < n:
            for got in self.pool.map(
                    lambda s: self._stat_into(d, s, min(n, s + _STAT_CHUNK), first + s),
                    range(j, n, _STAT_CHUNK)):
                fails += got
        return fails

    def _reserve(self, n: int) -> int:
        """Room for ``n`` more records (only between rounds: threads write into it)."""
        need = (self.used + n) * _REC
        if need > len(self.buf):
            grown = self.np.zeros(max(need, 2 * len(self.buf), 1024 * _REC), self.np.uint8)
            grown[:len(self.buf)] = self.buf
            self.buf = grown
        first = self.used
        self.used += n
        return first

    def stat_dirs(self, jobs: list[tuple[bytes, int, bytes]]) -> list[list[bytes]]:
        """Stat the names of each ``(rel, fd, blob)``; returns each one's subdirectories."""
        listed = [_Listed(rel, fd, blob) for rel, fd, blob in jobs]
        firsts = [self._reserve(len(d.starts)) for d in listed]
        fails: list[tuple[int, str]] = []
        try:
            if self.pool is not None:
                pieces = [(d, j, min(len(d.starts), j + _STAT_CHUNK), first + j)
                          for d, first in zip(listed, firsts, strict=True)
                          for j in range(0, len(d.starts), _STAT_CHUNK)]
                for got in self.pool.map(lambda p: self._stat_into(*p), pieces):
                    fails += got
            else:
                for d, first in zip(listed, firsts, strict=True):
                    fails += self._stat_job(d, first)
            if self.statx is not None or _FAST is not None:
                fails += self._refill_partial(listed, firsts, {i for i, _ in fails})
        finally:
            for d in listed:
                os.close(d.fd)
        n = sum(len(d.starts) for d in listed)
        self.ops += n
        self.count += n
        failed = dict(fails)
        self.bad += failed
        recs = self.buf[:self.used * _REC].view(self.dtype)
        out = []
        for d, first in zip(listed, firsts, strict=True):
            self.blobs.append(d.blob)
            for i, text in fails:
                if first <= i < first + len(d.starts):
                    self.extra.append(_entry_row(d.key(i - first), None, self.prefix, text))
            modes = recs["mode"][first:first + len(d.starts)]
            is_dir = self.np.flatnonzero((modes & 0o170000) == statmod.S_IFDIR).tolist()
            # depth first, in name order, so task outputs are reproducible
            out.append(sorted(d.key(i) for i in is_dir if first + i not in failed))
        return out

    def _refill_partial(self, listed: list[_Listed], firsts: list[int],
                        failed: set[int]) -> list[tuple[int, str]]:
        """Records a file system answered without every field: os.lstat them instead."""
        recs = self.buf[:self.used * _REC].view(self.dtype)
        lo = firsts[0] if firsts else 0
        short = self.np.flatnonzero((recs["mask"][lo:] & _STATX_NEED) != _STATX_NEED) + lo
        fails: list[tuple[int, str]] = []
        for i in short.tolist():
            if i in failed:
                continue
            for d, first in zip(listed, firsts, strict=True):
                if first <= i < first + len(d.starts):
                    try:
                        self._fill(recs, [(i, os.lstat(d.name(i - first), dir_fd=d.fd))])
                    except OSError as exc:
                        fails.append((i, f"lstat failed: {exc.strerror}"))
                    break
        return fails

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def table(self) -> tuple[pa.Table, int]:
        """The task's rows (directories themselves excluded) and their total size."""
        import pyarrow.compute as pc

        np = self.np
        # every key of the task from the listing blobs, without a Python object per key
        raw = np.frombuffer(b"".join(self.blobs), np.uint8)
        ends = np.flatnonzero(raw == 0)
        offsets = np.zeros(len(ends) + 1, np.int64)
        offsets[1:] = ends + 1
        offsets[1:] -= np.arange(1, len(ends) + 1)  # less the NULs before each end
        key_bytes = pa.Array.from_buffers(pa.large_binary(), len(ends),
                                          [None, pa.py_buffer(offsets),
                                           pa.py_buffer(raw[raw != 0])])
        recs = self.buf[:self.used * _REC].view(self.dtype)
        keep = (recs["mode"] & 0o170000) != statmod.S_IFDIR
        if self.bad:
            keep[self.bad] = False
        sel = None if keep.all() else keep
        if sel is not None:
            key_bytes = key_bytes.filter(pa.array(sel))

        def col(name: str):  # one field of the kept records (not whole 256-byte records)
            return recs[name] if sel is None else recs[name][sel]

        key_bytes = key_bytes.cast(pa.binary())
        n = len(key_bytes)
        try:
            if not _UTF8_FS:
                raise UnicodeError
            key = key_bytes.cast(pa.string())  # checks that every key is UTF-8
            # every name is valid UTF-8: only the length can make it unmappable
            plen = len(self.prefix.encode())
            long_ix = np.flatnonzero(pc.binary_length(key_bytes).to_numpy() + plen
                                     > K.MAX_KEY_BYTES)
            if len(long_ix):
                probs: list = [None] * n
                for i in long_ix.tolist():
                    probs[i] = K.name_problem(key_bytes[i].as_py(), self.prefix)
                problem = pa.array(probs, pa.string())
            else:
                problem = pa.nulls(n, pa.string())
        except (UnicodeError, pa.ArrowInvalid):  # a name that is not UTF-8: row by row
            keys_raw = key_bytes.to_pylist()
            key = pa.array([K.display_key(b) for b in keys_raw], pa.string())
            problem = pa.array([K.name_problem(b, self.prefix) for b in keys_raw], pa.string())
        ascii_ = pc.string_is_ascii(key)
        if pc.all(ascii_).as_py() is False:
            mask = pc.invert(ascii_)
            repl = [K.nfc(s) for s in pc.filter(key, mask).to_pylist()]
            nkey = pc.replace_with_mask(key, mask, pa.array(repl, pa.string()))
        else:
            nkey = key
        mode = col("mode").astype(np.int64)
        size = col("size").astype(np.int64)
        major = col("dev_major").astype(np.uint64)
        minor = col("dev_minor").astype(np.uint64)
        dev = (((major & 0xFFF) << 8) | ((major & ~np.uint64(0xFFF)) << 32)  # glibc makedev
               | (minor & 0xFF) | ((minor & ~np.uint64(0xFF)) << 12))
        billion = np.int64(1_000_000_000)
        arrays = {
            "key": key, "key_bytes": key_bytes, "nkey": nkey,
            "kind": pc.take(pa.array(_KINDS, pa.string()), pa.array(mode >> 12, pa.int8())),
            "size": pa.array(size), "mode": pa.array(mode),
            "mtime_ns": pa.array(col("mtime_s") * billion + col("mtime_ns")),
            "ctime_ns": pa.array(col("ctime_s") * billion + col("ctime_ns")),
            "ino": pa.array(col("ino")), "dev": pa.array(dev),
            "nlink": pa.array(col("nlink").astype(np.int64)),
            "uid": pa.array(col("uid").astype(np.int64)),
            "gid": pa.array(col("gid").astype(np.int64)),
            "blocks": pa.array(col("blocks").astype(np.int64)),
            "name_problem": problem, "error": pa.nulls(n, pa.string()),
        }
        table = pa.table([arrays[f.name] for f in S.SOURCE_INVENTORY],
                         schema=S.SOURCE_INVENTORY)
        if self.extra:
            table = pa.concat_tables([table, S.from_rows(self.extra, S.SOURCE_INVENTORY)])
        return table, int(size.sum())


def _spill_ranges(spool_path: str, rel: bytes, names: list[bytes], size: int) -> list[tuple]:
    """Write name ranges of a huge directory next to the spool file: ``(rel, file)`` each."""
    out = []
    base = Path(spool_path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for j in range(0, len(names), size):
        path = base.with_name(f"{base.stem}.names-{j // size:05d}-{uuid.uuid4().hex[:8]}")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"\0".join(names[j:j + size]))
        os.replace(tmp, path)
        out.append((rel, str(path)))
    return out


#: Walk tasks of one worker process take turns.  On a cached tree a task is
#: CPU-bound and two of them in one process only trade the GIL (measured: 10-30%
#: longer walls at 2 threads per worker); against a slow metadata server the
#: concurrency comes from the task's own stat threads (AUTO_WALK_THREADS), not
#: from a second task.  Tasks are short (WALK_TASK_SECONDS), so a task queued
#: behind another waits at most about that long.
_ONE_WALK_PER_PROCESS = threading.Lock()


def walk_dirs(
    root: str,
    rel_dirs: list,
    spool_path: str,
    prefix: str = "",
    budget: int = 50_000,
    metadata_ops_per_second: float | None = None,
    threads: int | None = None,
    split_entries: int | None = None,
    stat_delay_us: float | None = None,
    max_seconds: float | None = WALK_TASK_SECONDS,
) -> dict:
    """Walk ``rel_dirs`` (relative to ``root``) with lstat only; spool the entries.

    Items of ``rel_dirs`` are directories (bytes, relative to ``root``) or name
    ranges ``(rel_dir, names_file)`` of a huge directory that another task
    listed.  Returns ``{"count", "pending", "dirs", "ops", "bytes", "spool",
    "threads"}``: ``pending`` are the items left for other tasks once ``budget``
    entries have been seen (directories, and name ranges when a directory has
    more than ``split_entries`` names; default ``max(1000, budget // 4)``).

    The task also returns after ``max_seconds`` (checked between directories),
    so the walk's tail is spread over the cluster too.

    ``threads=None`` lets the task decide: one thread while lstat answers from
    cache, :data:`AUTO_WALK_THREADS` once calls wait on a server.
    ``stat_delay_us`` (default: the :data:`STAT_DELAY_ENV` variable) is the
    slow-metadata-server test hook.
    """
    with _ONE_WALK_PER_PROCESS:
        split = split_entries or max(1000, budget // 4)
        w = _Walk(root, prefix, metadata_ops_per_second, threads, stat_delay_us,
                  expect=min(budget + split, 1 << 20))
        if w.threads > 1:
            w.start_threads(w.threads)
        stack = list(reversed(rel_dirs))
        ranges: list[tuple] = []
        deadline = time.monotonic() + max_seconds if max_seconds else float("inf")
        try:
            while stack and w.count < budget and not ranges and time.monotonic() < deadline:
                # one directory per round, or one per thread once there is a pool
                batch = [stack.pop() for _ in range(min(len(stack), w.threads))]
                jobs = []
                for rel, fd, blob in w.open_all(batch):
                    if blob.count(b"\0") > split:
                        # list once, hand the other name ranges out, then return early
                        head = _head(rel)
                        names = sorted(k[len(head):] for k in blob.split(b"\0")[:-1])
                        ranges += _spill_ranges(spool_path, rel, names[split:], split)
                        blob = b"".join([head + nm + b"\0" for nm in names[:split]])
                    jobs.append((rel, fd, blob))
                # depth first, in name order, so task outputs are reproducible
                for sub in reversed(w.stat_dirs(jobs)):
                    stack.extend(reversed(sub))
        finally:
            w.close()
        table, nbytes = w.table()
        if table.num_rows:
            write_spool(table, spool_path)
        return {"count": table.num_rows, "pending": ranges + list(reversed(stack)),
                "dirs": w.dirs, "ops": w.ops, "bytes": nbytes, "threads": w.threads,
                "spool": spool_path if table.num_rows else None}


def walk_batches(pending: list, window: int) -> list[list]:
    """Group a walk task's ``pending`` items into the next tasks' ``rel_dirs``.

    Each name range of a huge directory is a task of its own (it holds up to
    ``split_entries`` lstat calls); directories go in batches sized so that the
    ``window`` tasks in flight share them.
    """
    ranges = [[p] for p in pending if isinstance(p, tuple)]
    dirs = [p for p in pending if not isinstance(p, tuple)]
    step = max(1, min(64, -(-len(dirs) // max(1, window))))
    return ranges + [dirs[j:j + step] for j in range(0, len(dirs), step)]


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
    session = getattr(target.filesystem(), "session", None)
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
                "bytes": 0, "error": f"listing {target.prefix + rel_prefix!r} failed: "
                         f"{error_text(exc, 'ListObjectsV2')}"}
    table = S.from_rows(rows, S.DEST_INVENTORY)
    if table.num_rows:
        write_atomic(table, spool_path)
    return {"count": table.num_rows, "pending": prefixes, "markers": markers,
            "requests": requests, "spool": spool_path if table.num_rows else None,
            "bytes": sum(r["size"] or 0 for r in rows), "error": None}


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
        hashes = K.key_hash(table.column("nkey").to_numpy(zero_copy_only=False))
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
                   columns: list[str] | None = None) -> pa.Table:
    """All rows of one partition of one side (empty table when there are none).

    One Arrow dataset over the partition's files (one per compaction group, 30
    at 30 million keys): its scanner decodes them on Arrow's threads, a third
    faster than reading the files one after another, and keeps their order.
    The :data:`REPEATS` columns :func:`compact` left null are the key again.
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
    return table.select(want)
