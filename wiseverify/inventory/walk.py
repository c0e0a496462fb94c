"""The source walk: batches of directories per Dask task, getdents and statx, depth first.

A task walks a *batch* of directories with getdents + ``lstat`` (statx; never
``open`` on an entry) until it has seen ``budget`` entries; whatever subdirectories
are left go back to the driver, which fans them out as new tasks.  Small trees cost
a handful of tasks, a 30M-file tree spreads over the cluster, and the driver only
ever holds directory names and counts.  Each task writes its rows to a spool file
(:mod:`.spool`); :mod:`.partition` later cuts them into hash partitions.
"""

from __future__ import annotations

import os
import stat as statmod
import threading
import time
from itertools import repeat

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wiseverify.core.filters import Filters
from wiseverify.inventory.prune import walked_subdirs
from wiseverify.inventory.spool import RateLimiter, _entry_row, _spill_ranges, write_spool
from wiseverify.inventory.stat_threads import (
    PROBE,
    STAT_CHUNK,
    StatThreads,
)
from wiseverify.inventory.statx import (
    _AT_FLAGS,
    _REC,
    _STATX,
    _STATX_DTYPE,
    _STATX_NEED,
    _head,
    _list_blob,
    _Listed,
    _open_dir,
    _voluntary_switches,
    fill_records,
    records_table,
)

try:  # the C loops of the walk (setup.py builds them where a compiler is found)
    from wiseverify.inventory import _fastwalk as _FAST
except ImportError:
    _FAST = None


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
# (:mod:`.stat_threads` makes that choice.)
#
# A huge directory (more names than ``split_entries``) is split by name range:
# the task that lists it writes the sorted names beyond its own share to small
# files next to its spool file and hands those ranges back to the driver, which
# sends each to its own task.  Names are listed once; each name is stat'ed once.

#: test hook, off by default: simulated metadata-server latency in microseconds,
#: slept before every metadata operation of a walk (directory listing and stat),
#: so the benchmark can show how the walk scales against a slow MDS on a local disk
STAT_DELAY_ENV = "WISEVERIFY_SIM_STAT_DELAY_US"
#: entry budget of the first walk task (the one started at the root), so the
#: rest of the tree reaches the other workers within milliseconds
FIRST_BUDGET = 4_000
#: a walk task returns after about this long, handing its remaining directories
#: back, so that against a slow server no task runs alone for minutes at the end
#: of the walk and a retried task repeats little.  Not shorter: each task costs
#: a scheduler round trip and a spool file (measured: 0.1-0.4 s slices made the
#: 500,000-entry benchmark walk slower than 50,000-entry budgets alone)
WALK_TASK_SECONDS = 2.0


class _Walk:
    """Columns of one walk task, and the metadata calls that fill them."""

    def __init__(self, root: str, prefix: str, ops_per_second: float | None,
                 threads: int | None, delay_us: float | None, expect: int = 0):

        self.np = np
        self.dtype = np.dtype(_STATX_DTYPE)
        self.broot = os.fsencode(root)
        self.prefix = prefix
        self.limiter = RateLimiter(ops_per_second) if ops_per_second else None
        if delay_us is None:
            delay_us = float(os.environ.get(STAT_DELAY_ENV) or 0)
        self.delay = delay_us / 1e6
        self.statx = _STATX
        self.st = StatThreads(root, self.delay, threads)
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
            fill_records(recs, got)
        return fails

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

        opened = list(self.st.map(one, items)) if self.st.pool and len(items) > 1 \
            else [one(i) for i in items]
        return [((item[0] if isinstance(item, tuple) else item), *got)
                for item, got in zip(items, opened, strict=True) if got is not None]

    def _stat_job(self, d: _Listed, first: int) -> list[tuple[int, str]]:
        """Stat one directory's names: probing while undecided, then pooled or in line."""
        n = len(d.starts)
        st = self.st
        if st.pool is None and st.decided:
            return self._stat_into(d, 0, n, first)
        fails: list[tuple[int, str]] = []
        j = 0
        while j < n and st.pool is None:
            # small probes first: against a slow server every sequential call is a wait
            hi = min(n, j + (PROBE if st.stat_n < STAT_CHUNK else STAT_CHUNK))
            t0, w0 = time.perf_counter(), _voluntary_switches()
            fails += self._stat_into(d, j, hi, first + j)
            st.observe(hi - j, time.perf_counter() - t0, _voluntary_switches() - w0)
            j = hi
        if j < n:
            for got in self.st.map(
                    lambda s: self._stat_into(d, s, min(n, s + STAT_CHUNK), first + s),
                    range(j, n, STAT_CHUNK)):
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
            if self.st.pool is not None:
                pieces = [(d, j, min(len(d.starts), j + STAT_CHUNK), first + j)
                          for d, first in zip(listed, firsts, strict=True)
                          for j in range(0, len(d.starts), STAT_CHUNK)]
                for got in self.st.map(lambda p: self._stat_into(*p), pieces):
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
                        fill_records(recs, [(i, os.lstat(d.name(i - first), dir_fd=d.fd))])
                    except OSError as exc:
                        fails.append((i, f"lstat failed: {exc.strerror}"))
                    break
        return fails

    def close(self) -> None:
        self.st.close()

    def table(self) -> tuple[pa.Table, int]:
        """The task's rows (directories themselves excluded) and their total size."""
        return records_table(self.blobs, self.buf[:self.used * _REC].view(self.dtype),
                             self.bad, self.prefix, self.extra)


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
    filters: Filters | None = None,
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
    cache, ``stat_threads.AUTO_WALK_THREADS`` once calls wait on a server.
    ``stat_delay_us`` (default: the :data:`STAT_DELAY_ENV` variable) is the
    slow-metadata-server test hook.

    ``filters`` (:mod:`wiseverify.core.filters`) prune the directories they leave
    out entirely (never listed) and drop the entries they exclude;
    ``"filtered"`` counts both per rule.  A ``.lustre`` directory at the root
    of a Lustre mount (its control directory, with ``fid/``) is never walked.
    """
    counts: dict = {}
    with _ONE_WALK_PER_PROCESS:
        split = split_entries or max(1000, budget // 4)
        w = _Walk(root, prefix, metadata_ops_per_second, threads, stat_delay_us,
                  expect=min(budget + split, 1 << 20))
        if w.st.threads > 1:
            w.st.start(w.st.threads)
        stack = list(reversed(rel_dirs))
        ranges: list[tuple] = []
        deadline = time.monotonic() + max_seconds if max_seconds else float("inf")
        try:
            while stack and w.count < budget and not ranges and time.monotonic() < deadline:
                # one directory per round, or one per thread once there is a pool
                batch = [stack.pop() for _ in range(min(len(stack), w.st.threads))]
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
                    stack.extend(reversed(walked_subdirs(sub, root, filters, counts)))
        finally:
            w.close()
        table, nbytes = w.table()
        if filters:
            table = filters.keep(table, counts=counts)
            nbytes = pc.sum(table.column("size")).as_py() or 0 if table.num_rows else 0
        if table.num_rows:
            write_spool(table, spool_path)
        return {"count": table.num_rows, "pending": ranges + list(reversed(stack)),
                "dirs": w.dirs, "ops": w.ops, "bytes": nbytes, "threads": w.st.threads,
                "spool": spool_path if table.num_rows else None, "filtered": counts}
