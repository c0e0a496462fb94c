"""Numbers as people read them, one spelling for the terminal, the log and the page."""

from __future__ import annotations

import os

#: ``O_NOATIME`` where the platform has it (0 elsewhere)
NOATIME = getattr(os, "O_NOATIME", 0)


def human_bytes(n: float) -> str:
    """Decimal SI units (kB, MB, GB, ...): the summary table, progress lines and report agree."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def open_noatime(path: str | bytes, flags: int) -> int:
    """``os.open`` without an atime update where permitted, else a plain open.

    Read-only on the source includes its access times; ``O_NOATIME`` needs
    ownership of the file or CAP_FOWNER, so a verifier run by another user
    falls back to an open that may update atime.
    """
    if NOATIME:
        try:
            return os.open(path, flags | NOATIME)
        except PermissionError:
            pass
    return os.open(path, flags)
