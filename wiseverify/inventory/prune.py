"""Which subdirectories a walk enters: the filter rules' pruning, and Lustre's ``.lustre``.

A Lustre mount's root holds a virtual ``.lustre`` directory (``fid/`` opens any
file by FID): walking it would list the namespace again.  Below the root the
name is an ordinary directory.
"""

from __future__ import annotations

import os

from wiseverify.core.filters import Filters


def walked_subdirs(subdirs: list[bytes], root: str, filters: Filters | None,
            counts: dict) -> list[bytes]:
    """The subdirectories to walk: not pruned by a rule, not Lustre's control directory."""
    out = []
    for d in subdirs:
        if d == b".lustre" and is_lustre_mount_root(root):
            continue
        if filters:
            rule = filters.prune(os.fsdecode(d))
            if rule is not None:
                filters.count_pruned(rule, counts)
                continue
        out.append(d)
    return out


_LUSTRE_ROOTS: dict[str, bool] = {}
MOUNTS = "/proc/self/mounts"


def is_lustre_mount_root(root: str) -> bool:
    """Whether ``root`` is where a Lustre file system is mounted (its ``.lustre`` is virtual)."""
    hit = _LUSTRE_ROOTS.get(root)
    if hit is None:
        hit = False
        try:
            real = os.path.realpath(root)
            with open(MOUNTS, encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) > 2 and parts[2] == "lustre" and \
                            parts[1].replace("\\040", " ") == real:
                        hit = True
                        break
        except OSError:
            pass
        _LUSTRE_ROOTS[root] = hit
    return hit
