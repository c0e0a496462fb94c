"""What every benchmark script does the same way: its work directory, load, and ending.

A figure is only worth quoting beside the machine's load when it was taken, so
every step prints it; the ``RESULT`` lines come last, after the clean-up, so
they are the script's final output whatever it printed on the way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def load() -> str:
    """The load averages, for a progress line."""
    a, b, c = os.getloadavg()
    return f"load {a:.2f} {b:.2f} {c:.2f}"


def load_kv() -> str:
    """The load averages as one ``key=value`` field of a ``RESULT`` line."""
    return "load=" + "/".join(f"{x:.2f}" for x in os.getloadavg())


def make_workdir(prefix: str, workdir: str | None) -> Path:
    """A fresh directory under ``workdir`` (created if needed), or under the temp dir."""
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))


def clean_up(base: Path, keep: bool) -> None:
    """Remove the work directory unless ``--keep`` asked to leave it."""
    if keep:
        print(f"\nkept {base}")
    else:
        with contextlib.suppress(OSError):
            shutil.rmtree(base)


def print_results(lines: list[str]) -> int:
    """The final load, then the ``RESULT`` lines; the script's exit status."""
    print(f"\n({load()})")
    for line in lines:
        print(line, flush=True)
    return 0
