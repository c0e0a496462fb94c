"""Arrow's memory pool in the worker processes: one that gives freed memory back.

A partition task holds its two listings, the join and the output table for a
second or two, then frees them; a worker process runs one after another, two
at a time at the default two threads.  pyarrow's default pool (mimalloc)
keeps what a task freed: alone in a process, a 250,000-key partition of small
files grew it by 165 MB for 55 MB of decoded listing and five partitions in a
row peaked at 639 MB; with jemalloc the same five peaked at 453-505 MB and the
process fell back between them (``benchmarks/scale_e2e.py`` measures the
whole run).

Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` once, when a process loads it, and
``pyarrow.set_memory_pool`` reaches only the allocations made from Python,
not the dataset scanner, the join or the Parquet writer.  So the choice is
made in the environment the worker processes start with (the forkserver of
the local cluster, nanny-spawned workers, SLURM jobs, which inherit the
submitting environment), before any of them imports pyarrow.  Only where the
installed pyarrow is a manylinux wheel, which is built with jemalloc:
naming a pool the build lacks makes Arrow print a warning in every process.
An operator's own ``ARROW_DEFAULT_MEMORY_POOL`` is left alone.
"""

from __future__ import annotations

import importlib.metadata
import os

VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def _wheel_has_jemalloc() -> bool:
    try:
        wheel = importlib.metadata.distribution("pyarrow").read_text("WHEEL") or ""
    except importlib.metadata.PackageNotFoundError:
        return False
    return any(line.startswith("Tag:") and "manylinux" in line for line in wheel.splitlines())


#: glibc's own trim threshold for the workers, dask's ``distributed.nanny.pre-spawn-environ``
#: default: the nanny sets it in its own environment just before it starts a worker, which
#: reaches a spawned worker but not one forked from a forkserver started earlier
TRIM = ("MALLOC_TRIM_THRESHOLD_", "65536")


def for_workers() -> str | None:
    """Name jemalloc as the pool of worker processes started from now on; returns the choice.

    Also sets glibc's trim threshold (:data:`TRIM`), for the memory pandas and
    NumPy free.  Cheap (reads the wheel's tag, imports nothing) and idempotent:
    called before the first worker process, forkserver or job is started.
    """
    os.environ.setdefault(*TRIM)
    if VARIABLE not in os.environ and _wheel_has_jemalloc():
        os.environ[VARIABLE] = "jemalloc"
    return os.environ.get(VARIABLE)


def release() -> None:
    """Hand the pool's cached free memory back to the system (after a partition)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
