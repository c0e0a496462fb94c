"""The system calls under the walk: statx, getdents and the C loops.

Kept apart from the walk's scheduling so that the fallbacks (no statx, no C
extension) can be switched off one at a time in a test, and the walk's policy
read without the ctypes plumbing.
"""

from __future__ import annotations

import os
import stat as statmod
import sys

import numpy as np
import pyarrow as pa

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.units import open_noatime

try:  # the C loops of the walk (setup.py builds them where a compiler is found)
    from wiseverify.inventory import _fastwalk as _FAST
except ImportError:
    _FAST = None

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


def records_table(blobs: list[bytes], recs, bad: list[int], prefix: str,
                  extra: list[dict]) -> tuple[pa.Table, int]:
    """SOURCE_INVENTORY rows from a walk task's listing blobs and statx records.

    Column-wise, without a Python object per entry: the keys come straight from
    the NUL-separated listing blobs, the numbers from the records.  Directories
    are left out (they are walked, not verified); ``bad`` are records whose stat
    failed (their rows are in ``extra``).
    """
    import pyarrow.compute as pc

    # every key of the task from the listing blobs, without a Python object per key
    raw = np.frombuffer(b"".join(blobs), np.uint8)
    ends = np.flatnonzero(raw == 0)
    offsets = np.zeros(len(ends) + 1, np.int64)
    offsets[1:] = ends + 1
    offsets[1:] -= np.arange(1, len(ends) + 1)  # less the NULs before each end
    key_bytes = pa.Array.from_buffers(pa.large_binary(), len(ends),
                                      [None, pa.py_buffer(offsets),
                                       pa.py_buffer(raw[raw != 0])])
    keep = (recs["mode"] & 0o170000) != statmod.S_IFDIR
    if bad:
        keep[bad] = False
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
        plen = len(prefix.encode())
        long_ix = np.flatnonzero(pc.binary_length(key_bytes).to_numpy() + plen
                                 > K.MAX_KEY_BYTES)
        if len(long_ix):
            probs: list = [None] * n
            for i in long_ix.tolist():
                probs[i] = K.name_problem(key_bytes[i].as_py(), prefix)
            problem = pa.array(probs, pa.string())
        else:
            problem = pa.nulls(n, pa.string())
    except (UnicodeError, pa.ArrowInvalid):  # a name that is not UTF-8: row by row
        keys_raw = key_bytes.to_pylist()
        key = pa.array([K.display_key(b) for b in keys_raw], pa.string())
        problem = pa.array([K.name_problem(b, prefix) for b in keys_raw], pa.string())
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
    if extra:
        table = pa.concat_tables([table, S.from_rows(extra, S.SOURCE_INVENTORY)])
    return table, int(size.sum())


def fill_records(recs, got: list[tuple[int, os.stat_result]]) -> None:
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
