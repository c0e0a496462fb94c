"""The system calls under the walk: statx, getdents and the C loops.

Kept apart from the walk's scheduling so that the fallbacks (no statx, no C
extension) can be switched off one at a time in a test, and the walk's policy
read without the ctypes plumbing.
"""

from __future__ import annotations

import os
import sys

import numpy as np

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
