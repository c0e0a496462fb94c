"""Digest units run, fingerprinted and checkpointed, under the open-files lease.

A unit's results are kept in the run directory under a fingerprint of its inputs,
so ``--resume`` recomputes only the units an interrupted run did not finish, and
``--max-open-files`` is one cluster-wide semaphore.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

from wiseverify.core.runio import write_bytes
from wiseverify.digest import execute as EXECUTE
from wiseverify.digest import units as D
from wiseverify.reconcile.plan import Context


def run_unit(ctx: Context, units: list[D.Unit], i: int) -> dict:
    """Digest work unit ``i`` of a partition (a Dask task of its own)."""
    target = ctx.target if ctx.mode == "readback" else None
    return EXECUTE.run_unit(units[i], target, ctx.get_concurrency)


def unit_fingerprint(unit: D.Unit) -> str:
    """Identifies a unit's exact work: a checkpoint is reused only for the same ranges."""
    h = hashlib.sha256()
    for r in unit.ranges:
        it = r.item
        h.update(repr((it.path, it.size, it.mtime_ns, it.dst_key, it.spec.whole, it.spec.parts,
                       it.spec.part_offsets, r.offset, r.length)).encode())
    return h.hexdigest()[:24]


@contextlib.contextmanager
def open_files_lease(ctx: Context) -> Iterator[None]:
    """Hold one of ``max_open_files`` cluster-wide leases while a unit reads the source.

    A unit has at most one source file open at a time, so capping the units that
    read at once caps the open files (and the OST/MDS load) across the cluster.
    The lease lives on the Dask scheduler (``distributed.Semaphore``).
    """
    if not ctx.max_open_files:
        yield
        return
    from distributed import Semaphore

    sem = Semaphore(max_leases=ctx.max_open_files, name=f"wiseverify-open-{ctx.run_id}")
    with sem:
        yield


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at the same instant (a sweep over start/end events)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals],
                    key=lambda e: (e[0], e[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def checkpoint_dir(ctx: Context, part: int) -> Path:
    return Path(ctx.run_dir) / "digest" / f"p{part:05d}"


def run_unit_checkpointed(ctx: Context, unit: D.Unit, part: int, i: int) -> dict:
    """Run a unit, or load its result saved by an interrupted run (``--resume``).

    Each finished unit is saved under ``digest/`` (temp name, then rename), so a
    killed run redoes only the units that were in flight.
    """
    path = checkpoint_dir(ctx, part) / f"u{i:06d}-{unit_fingerprint(unit)}.pkl"
    if path.is_file():
        try:
            res = pickle.loads(path.read_bytes())
            res["reused"] = True
            return res
        except Exception:  # a damaged checkpoint is recomputed
            path.unlink(missing_ok=True)
    target = ctx.target if ctx.mode == "readback" else None
    with open_files_lease(ctx):
        t0 = time.time()
        res = EXECUTE.run_unit(unit, target, ctx.get_concurrency)
        res["open_interval"] = (t0, time.time())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL))
    res["reused"] = False
    return res
