"""Lustre HSM: never open a *released* file (reading it would trigger a restore from tape).

Only files whose allocated blocks cannot hold their size are asked about: a
released file keeps its size but has no data on the OSTs, so a fully
allocated file cannot be released and costs no ``lfs`` call.  ``lfs hsm_state``
takes many paths per call; its lines look like::

    /lustre/proj/a.sas7bdat: (0x0000000d) released exists archived, archive_id:1
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pyarrow as pa
import pyarrow.compute as pc

_LINE = re.compile(rb"^(?P<path>.*): \((?P<flags>0x[0-9a-fA-F]+)\)(?P<states>[^,]*)")
BATCH = 256


def lfs_path() -> str | None:
    return shutil.which("lfs")


def may_be_released(size: pa.Array, blocks: pa.Array) -> pa.Array:
    """Per row: the file's blocks cannot hold its data (released, or sparse).

    False where the size is 0 or a fact is missing.  Column-wise: the prehash of
    small files and the partition's HSM check both ask it of every row.
    """
    return pc.fill_null(pc.and_(pc.greater(size, 0), pc.less(pc.multiply(blocks, 512), size)),
                        False)


def released(paths: list[bytes], lfs: str | None = None, timeout: float = 120) -> dict[bytes, str]:
    """``{path: reason}`` for the paths that are HSM-released (or whose state is unknown).

    A path whose state cannot be read is reported too: when in doubt, do not open.
    """
    lfs = lfs or lfs_path()
    if not lfs or not paths:
        return {}
    out: dict[bytes, str] = {}
    for i in range(0, len(paths), BATCH):
        batch = paths[i : i + BATCH]
        try:
            proc = subprocess.run([os.fsencode(lfs), b"hsm_state", *batch], capture_output=True,
                                  timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            for p in batch:
                out[p] = f"HSM state unknown (lfs hsm_state failed: {exc}); not opened"
            continue
        seen: set[bytes] = set()
        for line in proc.stdout.splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            path = m.group("path")
            seen.add(path)
            states = m.group("states").split()
            if b"released" in states:
                out[path] = "HSM released (data on tape); not opened to avoid a restore"
        for p in batch:
            if p not in seen and proc.returncode != 0:
                err = proc.stderr.decode(errors="replace").strip().splitlines()
                why = err[-1] if err else f"exit {proc.returncode}"
                out[p] = f"HSM state unknown ({why}); not opened"
    return out
