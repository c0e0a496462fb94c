"""The walk task's choice between one stat thread and a pool, measured on its first calls.

Against a real Lustre MDS each stat is a round trip of 0.1-2 ms and a single
thread would spend nearly all its time waiting; on a page-cached tree a stat is
1-10 us of CPU and threads would only add GIL traffic.  So a walk task
(``walk._Walk``) probes its first calls and starts :data:`AUTO_WALK_THREADS`
threads only once they are seen to wait on a server; the choice is reused by
the next tasks of the same process for the same tree for a while.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

#: threads per walk task once its stat calls are seen to wait on the server
AUTO_WALK_THREADS = 16
#: mean stat time above which a task switches to threads: a page-cached stat
#: costs 1-10 us of CPU, a metadata-server round trip 100 us or more
SLOW_STAT_S = 50e-6
#: how long a worker process reuses a task's choice of threads for the same root
_AUTO_TTL_S = 30.0
_auto_choice: dict[tuple[str, float], tuple[int, float]] = {}
#: calls per probe while a task measures whether its stat calls wait
PROBE = 8
#: names per stat batch handed to one thread of the pool (and per probe while a
#: task has not yet decided between one thread and a pool)
STAT_CHUNK = 64


class StatThreads:
    """One walk task's stat threads: a fixed count, or auto mode's measured choice.

    ``threads=None`` is auto mode: one thread until :meth:`observe` decides.
    """

    def __init__(self, root: str, delay: float, threads: int | None):
        self.auto = threads is None
        self.decided = not self.auto
        self.threads = 1 if threads is None else max(1, threads)
        self.pool: ThreadPoolExecutor | None = None
        self.key = (root, delay)
        self.stat_s = 0.0
        self.stat_n = 0
        self.stat_waits = 0
        if self.auto:  # an earlier task of this process already measured this tree
            known, when = _auto_choice.get(self.key, (0, 0.0))
            if known and time.monotonic() - when < _AUTO_TTL_S:
                self.threads, self.decided = known, True

    def map(self, fn, items):
        assert self.pool is not None
        return self.pool.map(fn, items)

    def start(self, n: int) -> None:
        self.threads = n
        self.decided = True
        if n > 1 and self.pool is None:
            self.pool = ThreadPoolExecutor(n, thread_name_prefix="walk-stat")

    def observe(self, n: int, seconds: float, waits: int) -> None:
        """Auto mode: the first calls of a task choose between one thread and a pool.

        Slow calls alone do not decide it: on a busy machine a page-cached stat
        is slow too, because the thread is preempted, and threads would only add
        GIL traffic.  A call that waits on a server (or a disk) blocks, which the
        kernel counts as a voluntary context switch of the thread.
        """
        self.stat_n += n
        self.stat_s += seconds
        self.stat_waits += waits
        if self.decided or self.stat_n < 8:
            return
        if self.stat_s / self.stat_n > SLOW_STAT_S and self.stat_waits >= self.stat_n // 2:
            self.start(AUTO_WALK_THREADS)
        elif self.stat_n >= 4 * STAT_CHUNK:
            self.decided = True  # served from cache: one thread is cheapest
        if self.decided:
            _auto_choice[self.key] = (self.threads, time.monotonic())

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
