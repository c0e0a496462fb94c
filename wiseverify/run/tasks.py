"""The bodies of the per-partition Dask tasks: plan, digest and reconcile one partition.

They run on the workers; the driver sees only their counts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import threading
from collections.abc import Iterator

from wiseverify.core import arrowmem
from wiseverify.core.runio import write_bytes
from wiseverify.digest import smallfiles as SMALL
from wiseverify.reconcile import checkpoint as CHECKPOINT
from wiseverify.reconcile import finish as FINISH
from wiseverify.reconcile import plan as R
from wiseverify.reconcile import settle as SETTLE
from wiseverify.report import progress as PROG

#: the prehashed digests of one partition as settle reads them, cached per process
_prehashed = functools.lru_cache(maxsize=2)(SETTLE.known_table)


def _known_for(prehash_dir: str, root: str, part: int, unit) -> dict:
    """The prehashed digests of a unit's whole files, by absolute path.

    Only the unit's: with most files settled column by column from the prehash,
    the units left are a few files each, and a dict of the whole partition
    (250,000 entries) cost more than all of their hashing.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    broot = os.fsencode(root) + b"/"
    rel = [r.item.path[len(broot):] for r in unit.ranges
           if r.offset == 0 and r.item.path.startswith(broot)]
    if not rel:
        return {}
    t = _prehashed(prehash_dir, part)
    if t is None:
        return {}
    t = t.filter(pc.is_in(t.column("key_bytes"), value_set=pa.array(rel, pa.binary())))
    t = t.to_pydict()
    return {broot + kb: (size, mtime, md5, crc)  # the last entry of a path wins
            for kb, size, mtime, md5, crc in zip(t["key_bytes"], t["size"], t["mtime_ns"],
                                                 t["md5"], t["crc64nvme"], strict=True)}


@functools.lru_cache(maxsize=2)
def _load_units(path: str, version: tuple[int, int, int]) -> list:
    with open(path, "rb") as f:
        return pickle.load(f)


def _units(path: str) -> list:
    """A partition's digest units, as its partition task wrote them (cached per process,
    by the file's identity: a resumed run writes the file again)."""
    st = os.stat(path)
    return _load_units(path, (st.st_ino, st.st_size, st.st_mtime_ns))


def _unit_job(ctx: R.Context, units_file: str, topic: str | None, part: int, i: int,
              prehash_dir: str | None = None) -> dict:
    """One digest unit; publishes its files and bytes for the driver's progress line.

    The unit is read from the partition's units file, not passed as an argument: a
    task's arguments stay in the scheduler (in the driver's process on a local
    cluster) until the run ends, and a unit holds an object per file.
    """
    unit = _units(units_file)[i]
    known = _known_for(prehash_dir, ctx.root, part, unit) if prehash_dir else None
    with SMALL.known_digests(known):
        res = CHECKPOINT.run_unit_checkpointed(ctx, unit, part, i)
    PROG.unit_done(topic, files=sum(1 for r in unit.ranges if r.offset == 0),
                   nbytes=unit.nbytes)
    return res


def partition_job(ctx: R.Context, part: int, topic: str | None = None,
                   prehash_dir: str | None = None) -> dict:
    """One partition end to end, fanning its digest units out to the whole cluster.

    The task secedes from its worker's thread pool while the units run, so
    partition tasks never starve the digest units of threads.
    """
    with partition_slot():
        return _partition(ctx, part, topic, prehash_dir)


#: partitions in memory at once per worker process, against its threads (``partition_slot``)
THREADS_PER_PARTITION = 2
_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()


@contextlib.contextmanager
def partition_slot() -> Iterator[None]:
    """Hold one of this process's partition slots: one per two threads, at least one.

    A partition task's tables (both listings, the join, the output) are a few
    hundred MB at 250,000 keys, and at the default two threads a process ran two
    at once: its peak was the sum of two tasks' peaks.  Most of a task is
    GIL-bound Python and pandas, so the second one mostly waited for the first.
    A task waiting for a slot has seceded from the thread pool, so the digest
    units of the partition that holds it keep every thread.
    """
    global _slots
    from distributed import get_worker, rejoin, secede

    with _slots_lock:
        if _slots is None:
            try:
                nthreads = get_worker().state.nthreads
            except ValueError:  # not in a worker (a test calling the task directly)
                nthreads = 1
            _slots = threading.BoundedSemaphore(max(1, nthreads // THREADS_PER_PARTITION))
    if not _slots.acquire(blocking=False):
        secede()
        try:
            _slots.acquire()
        finally:
            rejoin()
    try:
        yield
    finally:
        _slots.release()


def _partition(ctx: R.Context, part: int, topic: str | None, prehash_dir: str | None) -> dict:
    from distributed import get_client, rejoin, secede

    plan = R.plan_partition(ctx, part, prehash_dir)
    units = plan["units"]
    PROG.unit_done(topic, plan_files=sum(1 for u in units for r in u.ranges if r.offset == 0),
                   plan_bytes=sum(u.nbytes for u in units))
    if not units:
        return _finished(FINISH.finish_partition(ctx, plan), plan)
    units_file = CHECKPOINT.checkpoint_dir(ctx, part) / "_units.pkl"
    units_file.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(units_file, pickle.dumps(units, protocol=pickle.HIGHEST_PROTOCOL))
    client = get_client()
    futs = [
        client.submit(_unit_job, ctx, str(units_file), topic, part, i, prehash_dir, pure=False,
                      key=f"digest-p{part}-u{i}-{ctx.run_id}")
        for i in range(len(units))
    ]
    secede()
    try:
        results = client.gather(futs)
    finally:
        rejoin()
    return _finished(FINISH.finish_partition(ctx, plan, *results), plan)


def _finished(counts: dict, plan: dict) -> dict:
    """A partition's counts, once its tables are freed and their memory handed back."""
    plan.clear()  # the matched partition, frame and settled columns: the task's bulk
    arrowmem.release()
    return counts
