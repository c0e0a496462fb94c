"""Stage 3, digest: small files hashed ahead of the plan, and their digests served later.

While the destination is still being listed, the source side is already known and
the workers are mostly waiting on the object store.  Small files are then hashed
ahead of time with exactly the digests the planner will ask of them: below the
HEAD threshold a single-part object is checked against the MD5 in its listed
ETag, and every source pass also carries a CRC64NVME.  A digest unit later serves
such a file from these results instead of reading it again, so each byte is
still read once; anything else (other digests, parts, partial ranges, a file
whose size or mtime differ from the listing) is read and hashed as usual.

:func:`prehash_files` is the small-file loop (``inventory.prehash`` calls it on
the walk's spools); :func:`known_digests` lets a digest unit serve those files
from its results (:func:`from_known`).
"""

from __future__ import annotations

import contextlib
import os
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from wiseverify.core.checksums import COMBINABLE, CRC_FUNCS
from wiseverify.core.md5lanes import md5_many
from wiseverify.core.units import NOATIME
from wiseverify.digest.source import mtime_differs, open_source
from wiseverify.digest.units import RangeTask, Spec

try:  # the loop's system calls in C, the GIL released for a batch (see _smallread.c)
    from wiseverify.digest import _smallread as _SR
except ImportError:  # pragma: no cover - built without a C compiler
    _SR = None

_local = threading.local()
#: one Python small-file loop at a time per process (the reference path, when the C reads
#: are not built): the loop gives up the GIL at every system call (four per file), so two
#: of them in one process hand it back and forth on every call.  Measured on 80,000
#: cached 1 KiB files: one thread 80,000 files/s at 12.5 us of CPU per file; two threads
#: 48,000 files/s at 29 us; four 27,000 files/s at 56 us.  The worker's other threads
#: wait on this lock instead, asleep.
_LOOP = threading.Lock()

#: the digests hashed ahead of time (evidence.plan_one's spec for an ETag-MD5 object)
PREHASH_SPEC = Spec(whole=("md5", "crc64nvme"))

#: small files whose MD5s are taken together, in lanes: at most this many, or this many
#: bytes, held at once (a few MiB: what was just read is still in the CPU cache)
SMALL_BATCH_FILES = 256
SMALL_BATCH_BYTES = 4 << 20
#: reads in flight per loop (C reads only) while files come from the disk: a cold small
#: file is a round trip to the device, which answers several at once.  From the page cache
#: one reader is cheaper.  Two loops, 200,000 files of 0-2 KiB: cold, 35,000 files/s with
#: one reader each, 56,000 with four; cached, 250,000 with one, 177,000 with four.
READ_THREADS = 4
#: a batch slower than this per file came from the disk (cached: 3-8 us)
COLD_SECONDS_PER_FILE = 15e-6

#: (size, mtime_ns, md5 digest, crc64nvme) of one file, keyed by its absolute path
Known = Mapping[bytes, tuple[int, int, bytes, int]]


@contextlib.contextmanager
def known_digests(known: Known | None) -> Iterator[None]:
    """Let ``hashing.hash_source_range`` in this thread serve whole files from ``known``.

    Scoped to the calling thread and the ``with`` block, so results never leak
    into another run or another unit's thread.
    """
    prev = getattr(_local, "known", None)
    _local.known = known
    try:
        yield
    finally:
        _local.known = prev


def from_known(r: RangeTask) -> dict | None:
    known = getattr(_local, "known", None)
    item = r.item
    if not known or r.offset or r.length != item.size or item.spec.parts:
        return None
    if not set(item.spec.whole) <= set(PREHASH_SPEC.whole):
        return None
    hit = known.get(item.path)
    if hit is None or hit[0] != item.size or hit[1] != item.mtime_ns:
        return None
    values = {"md5": hit[2], "crc64nvme": hit[3]}
    return {"idx": item.idx, "offset": 0, "length": item.size, "error": None,
            "bytes": item.size,  # read once, ahead of time
            "crc": {a: values[a] for a in item.spec.whole if a in COMBINABLE},
            "hash": {a: values[a] for a in item.spec.whole if a not in COMBINABLE},
            "parts": {}}


def prehash_files(files: Iterable[tuple[bytes, int, int]],
                  stop: Callable[[], bool] | None = None,
                  native: bool | None = None) -> list[tuple[bytes, int, int, bytes, int]]:
    """Hash ``(path, size, mtime_ns)`` whole files with :data:`PREHASH_SPEC`, until ``stop()``.

    Returns ``(path, size, mtime_ns, md5, crc64nvme)`` for the files read
    cleanly; a file that fails or changed is left out, for the digest stage to
    read again and report.

    The small-file loop of the tool, so it is written for the cost per file: the
    same rules as ``hashing.hash_source_range`` (no atime, a FIFO swapped in is never
    waited on, size and mtime checked before and after the read, one read per
    byte), with one ``pread`` of the whole file and no object per file.  The
    MD5s of a batch of files are taken together, in SIMD lanes.

    ``native`` (default: when built) makes each batch's system calls in
    ``_smallread.c`` with the GIL released; ``False`` is the Python reference
    loop, which the tests hold it to.  80,000 files of 0-2 KiB on this machine:
    from the page cache, 7 us of CPU per file and 253,000 files/s in two threads
    (the Python loop: 8-10 us and 100,000 files/s, one thread at a time); cold,
    36,000 files/s in four threads against 13,000.
    """
    if native is None:
        native = _SR is not None
    if native:
        return _prehash(files, stop, _NativeReader())
    with _LOOP:
        return _prehash(files, stop, _read_python)


def _prehash(files: Iterable[tuple[bytes, int, int]], stop: Callable[[], bool] | None,
             read: Callable[[list[tuple[bytes, int, int]]], list[bytes | None]]
             ) -> list[tuple[bytes, int, int, bytes, int]]:
    """Batches of files read by ``read`` (None: not read cleanly), then hashed together."""
    out: list = []
    crc = CRC_FUNCS["crc64nvme"]
    batch: list[tuple[bytes, int, int]] = []
    held = 0

    def run() -> None:
        good = [(f, d) for f, d in zip(batch, read(batch), strict=True) if d is not None]
        for ((path, size, mtime_ns), data), digest in zip(good, md5_many([d for _, d in good]),
                                                          strict=True):
            out.append((path, size, mtime_ns, digest, crc(data)))
        batch.clear()

    for n, f in enumerate(files):
        if stop is not None and n % 32 == 0 and stop():
            break
        batch.append(f)
        held += f[1]
        if len(batch) >= SMALL_BATCH_FILES or held >= SMALL_BATCH_BYTES:
            run()
            held = 0
    if batch:
        run()
    return out


class _NativeReader:
    """One loop's ``_smallread`` calls, the GIL released for each batch: the worker's other
    threads, and a second loop, run meanwhile, so no lock.  Several readers per batch
    until a batch shows the files are cached."""

    def __init__(self) -> None:
        self.readers = READ_THREADS

    def __call__(self, batch: list[tuple[bytes, int, int]]) -> list[bytes | None]:
        t0 = time.perf_counter()
        datas = _SR.read_files([f[0] for f in batch], [f[1] for f in batch],
                               [f[2] for f in batch], bool(NOATIME), self.readers)
        cold = time.perf_counter() - t0 > COLD_SECONDS_PER_FILE * len(batch)
        self.readers = READ_THREADS if cold else 1
        return datas


def _read_python(batch: list[tuple[bytes, int, int]]) -> list[bytes | None]:
    """The reference reads: what ``_smallread.read_files`` does, one system call at a time."""
    return [_read_one(path, size, mtime_ns) for path, size, mtime_ns in batch]


def _read_one(path: bytes, size: int, mtime_ns: int) -> bytes | None:
    try:
        fd = open_source(path)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not statmod.S_ISREG(st.st_mode) or st.st_size != size or (
                st.st_mtime_ns != mtime_ns and mtime_differs(st.st_mtime_ns, mtime_ns)):
            return None
        data = os.pread(fd, size, 0) if size else b""
        if len(data) != size:
            return None
        st = os.fstat(fd)
        if st.st_size != size or (st.st_mtime_ns != mtime_ns
                                  and mtime_differs(st.st_mtime_ns, mtime_ns)):
            return None
        return data
    except OSError:
        return None
    finally:
        os.close(fd)
