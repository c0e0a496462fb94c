"""A worker process holds one partition in memory per two of its threads.

Real worker processes (``LocalCluster(processes=True)``): tasks that take a
partition slot record when they held it; at two threads their intervals never
overlap, at four two run at once; a task waiting for a slot has seceded, so the
other threads still run work.
"""

from __future__ import annotations

import time

import pytest


def _held(seconds: float) -> tuple[float, float]:
    from wiseverify.run.tasks import partition_slot

    with partition_slot():
        t0 = time.monotonic()
        time.sleep(seconds)
        return t0, time.monotonic()


def _quick() -> float:
    time.sleep(0.1)
    return time.monotonic()


def _warm() -> None:
    import wiseverify.run.tasks  # noqa: F401  (the first import takes a second)


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    from wiseverify.reconcile.checkpoint import max_overlap

    return max_overlap(intervals)


@pytest.mark.parametrize(("threads", "slots"), [(2, 1), (4, 2)])
def test_partitions_held_at_once_per_process(threads, slots):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=threads, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(_warm)
        futs = [client.submit(_held, 1.0, pure=False) for _ in range(threads)]
        time.sleep(0.3)
        # the tasks waiting for a slot gave their threads back: other work runs meanwhile,
        # and is done before the last of them gets its slot
        quick = client.submit(_quick, pure=False).result(timeout=60)
        intervals = client.gather(futs)
    assert _most_at_once(intervals) == slots
    assert len(intervals) == threads
    assert quick < max(start for start, _ in intervals)
