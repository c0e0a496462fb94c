"""A source file opened and checked by the digest stage's rules.

Every read of a source file follows the same rules: no atime update where the
file system allows it, never blocking on a FIFO swapped in for the file, and a
regular file of the listed size and mtime both before the read and after it,
so that a file changed meanwhile is an error row, never a digest.  The error
texts are the ones the reconciliation table shows.
"""

from __future__ import annotations

import os
import stat as statmod
from collections.abc import Callable

from wiseverify.core.units import open_noatime
from wiseverify.digest.units import RangeTask


def open_source(path: str) -> int:
    """Open read-only without following a swapped-in FIFO into a hang, without atime if allowed."""
    return open_noatime(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
                        | getattr(os, "O_NOFOLLOW", 0))


def mtime_differs(actual_ns: int, listed_ns: int) -> bool:
    """Whether a file changed since it was listed, judged by mtime.

    A listed time of whole seconds may come from a listing of second resolution
    (``lfs find --printf %T@``), so it is compared to the second.
    """
    if listed_ns % 1_000_000_000 == 0:
        return actual_ns // 1_000_000_000 != listed_ns // 1_000_000_000
    return actual_ns != listed_ns


def with_source(r: RangeTask, body: Callable[[int, RangeTask, dict], dict | None]) -> dict:
    """Open the range's file by the rules, run ``body(fd, r, out)``, check it again after.

    The rules: no atime, never blocking on a FIFO swapped in, a regular file of
    the listed size and mtime before the read and still after it.  ``body``
    returns the digests, or None after setting ``out["error"]``.
    """
    fd, out = open_checked(r)
    if fd is None:
        return out
    try:
        digests = body(fd, r, out)
        if digests is not None and unchanged_after(fd, r, out):
            out.update(digests)
        return out
    except OSError as exc:
        out["error"] = f"read failed: {exc.strerror}"
        return out
    finally:
        os.close(fd)


def open_checked(r: RangeTask) -> tuple[int | None, dict]:
    """The range's result record, and its file opened by the rules (None after an error)."""
    item = r.item
    out: dict = {"idx": item.idx, "offset": r.offset, "length": r.length, "error": None,
                 "bytes": 0}
    try:
        fd = open_source(item.path)
    except OSError as exc:
        reason = "vanished since listing" if exc.errno == 2 else exc.strerror
        out["error"] = f"cannot open: {reason}"
        return None, out
    try:
        st = os.fstat(fd)
        if not statmod.S_ISREG(st.st_mode):
            out["error"] = "no longer a regular file"
        elif st.st_size != item.size or mtime_differs(st.st_mtime_ns, item.mtime_ns):
            out["error"] = (
                f"changed since listing (size {item.size} -> {st.st_size}, "
                f"mtime_ns {item.mtime_ns} -> {st.st_mtime_ns})"
            )
    except OSError as exc:
        out["error"] = f"read failed: {exc.strerror}"
    if out["error"]:
        os.close(fd)
        return None, out
    return fd, out


def unchanged_after(fd: int, r: RangeTask, out: dict) -> bool:
    item = r.item
    st2 = os.fstat(fd)
    if st2.st_size != item.size or mtime_differs(st2.st_mtime_ns, item.mtime_ns):
        out["error"] = (
            f"changed while hashing (size {item.size} -> {st2.st_size}, "
            f"mtime_ns {item.mtime_ns} -> {st2.st_mtime_ns})"
        )
        return False
    return True
