"""MD5 of many independent streams at once, in SIMD lanes where the CPU has them.

Why: the MD5 in an ETag is the only evidence most objects of an old bulk import
carry, and one MD5 stream is a serial chain that no core runs much faster than
1 GB/s.  The digest stage always has many independent streams (the small files
of a unit, the parts of a multipart object), so the C extension
(``_md5mb.c``) hashes 8 or 16 of them at once, one per 32-bit lane of a vector
register.

The kernel is the best one the CPU can run that passed its known answers when
the extension was loaded; ``WISEVERIFY_MD5_KERNEL`` forces one of
``avx512``, ``avx2x2``, ``avx2``, ``scalar`` (the extension's one-lane loop) or
``hashlib`` (no extension at all).  Without the extension, or without vector
lanes, everything goes through ``hashlib``, which is then the faster single
stream.  A single stream always goes through ``hashlib``: it is not faster in
lanes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

try:
    from wiseverify.core import _md5mb as _MB
except ImportError:  # pragma: no cover - built without a C compiler
    _MB = None

ENV_KERNEL = "WISEVERIFY_MD5_KERNEL"
KERNEL_NAMES = ("avx512", "avx2x2", "avx2", "scalar", "hashlib")


class KernelError(ValueError):
    """The forced kernel is unknown or cannot run here."""


def available() -> list[str]:
    """The kernels that can run here, preferred first (``hashlib`` always last)."""
    return ([*_MB.kernels()] if _MB is not None else []) + ["hashlib"]


def kernel() -> str:
    """The kernel in use: the forced one if valid, else the best vector kernel, else hashlib."""
    forced = os.environ.get(ENV_KERNEL, "").strip().lower()
    if forced:
        check_forced(forced)
        return forced
    if _MB is None:
        return "hashlib"
    best = _MB.best_kernel()
    return "hashlib" if best == "scalar" else best


def check_forced(name: str) -> None:
    """Raise :class:`KernelError` with the reason when ``name`` cannot be used here."""
    if name not in KERNEL_NAMES:
        raise KernelError(f"{ENV_KERNEL}={name}: unknown MD5 kernel (one of "
                          f"{', '.join(KERNEL_NAMES)})")
    if name not in available():
        why = ("the C extension wiseverify.core._md5mb is not built" if _MB is None
               else "this CPU lacks it or it failed its known-answer test")
        raise KernelError(f"{ENV_KERNEL}={name}: not available ({why}); available here: "
                          f"{', '.join(available())}")


def lane_count() -> int:
    """Streams hashed at once by :func:`kernel` (1 for hashlib and scalar)."""
    k = kernel()
    if k == "hashlib" or _MB is None:
        return 1
    return int(_MB.all_kernels()[k]["lanes"])


def new_lanes():
    """A fresh ``MD5Lanes`` context on the kernel in use, or None when that is hashlib."""
    k = kernel()
    if k == "hashlib":
        return None
    return _MB.MD5Lanes(k)


def md5_many(buffers: Sequence) -> list[bytes]:
    """The 16-byte MD5 of every buffer (bytes-like), hashed together in lanes."""
    if len(buffers) < 2:
        return [hashlib.md5(b).digest() for b in buffers]
    lanes = new_lanes()
    if lanes is None:
        return [hashlib.md5(b).digest() for b in buffers]
    first = lanes.new(len(buffers))
    lanes.update([(first + i, b) for i, b in enumerate(buffers)], finish=True)
    return [lanes.digest(first + i) for i in range(len(buffers))]
