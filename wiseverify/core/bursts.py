"""Bursts of small requests (HEADs) to one endpoint: how many to keep in flight.

``gather_limited`` runs a coroutine per item with a bound on those in flight;
given the endpoint, one other than Amazon S3 gets only as many at once as raise
its answer rate (:class:`Window`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from wiseverify.core.s3 import S3Target

T = TypeVar("T")


async def gather_limited(
    items: Iterable[Any], fn: Callable[[Any], Awaitable[T]], limit: int = 32,
    endpoint: S3Target | None = None,
) -> list[T]:
    """Run ``fn`` over ``items`` with at most ``limit`` requests in flight, in order.

    With ``endpoint`` (a burst of small requests, HEADs, to it), an endpoint
    other than Amazon S3 gets only as many at once as raise its answer rate
    (:func:`burst_window`).
    """
    window = burst_window(endpoint, limit) if endpoint is not None else None
    if window is not None:
        try:
            return await _gather_windowed(list(items), fn, window)
        finally:
            _SETTLED[endpoint.endpoint_url] = window.best_size
    sem = asyncio.Semaphore(limit)

    async def one(item):
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


#: the window each endpoint settled at in this process's last burst: where the next starts
_SETTLED: dict[str | None, int] = {}
_AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")


def burst_window(target: S3Target, limit: int) -> Window | None:
    """The in-flight window for a burst of requests to ``target``; None for Amazon S3.

    Amazon S3 (no ``--endpoint-url``, or one of its own hosts: a VPC endpoint,
    FIPS, dual-stack) scales out and gets all ``limit`` at once, as before.
    Any other endpoint may be a single server, and is probed (:class:`Window`),
    each burst starting where the previous one to it settled.
    """
    url = target.endpoint_url
    host = (urlsplit(url).hostname or "") if url else ""
    if not url or host.endswith(_AWS_HOSTS):
        return None
    return Window(limit, start=_SETTLED.get(url))


class Window:
    """How many requests of one burst to keep in flight: doubled while it pays.

    Amazon S3 answers 32 HEADs at once about 32 times as fast as one.  A
    single server (a Snowball Edge's S3 adapter, an on-premises gateway, a
    test endpoint) answers them no faster than 4: the other 28 only queue
    there, and a threaded Python server spent a fifth more CPU per request
    switching between them (556 HEADs: 1.23 CPU-s at 32 in flight, 1.0 at 2-8).
    So, as TCP's slow start and BBR's startup probe a link: start at
    :data:`START`, measure the answer rate over each round (as many answers as
    are in flight, at least :data:`ROUND_ANSWERS`; not the first round at a new
    size, which half ran at the old one), double while a round is at
    least :data:`GROWTH` times the best so far, and after :data:`FLAT_ROUNDS`
    rounds without that keep the best window; after :data:`REPROBE_S` seconds
    at it, try doubling again, in case the endpoint was only busy.  Never below
    :data:`START`, never above ``limit``.  Only answers that took at least
    :data:`MIN_ANSWER_S` count: an item answered at once needed no request (a
    row whose evidence is in the listing) and says nothing of the endpoint.
    """

    START = 4
    GROWTH = 1.25
    FLAT_ROUNDS = 2
    ROUND_ANSWERS = 16
    REPROBE_S = 1.0
    MIN_ANSWER_S = 0.0005

    def __init__(self, limit: int, now: float = 0.0, start: int | None = None) -> None:
        self.limit = max(1, limit)
        self.size = min(self.limit, max(self.START, start or self.START))
        self.best_rate = 0.0
        self.best_size = self.size
        self.growing = self.size < self.limit
        self.flat = 0
        self.steady_since = now
        self.round_start = now
        self.answered = 0
        self.ramp = False

    def start(self, now: float) -> None:
        self.round_start = self.steady_since = now

    def answer(self, now: float) -> None:
        """One request answered at ``now``; a round ends after ``size`` answers (or more)."""
        self.answered += 1
        if self.answered < max(self.size, self.ROUND_ANSWERS):
            return
        rate = self.answered / max(now - self.round_start, 1e-6)
        self.round_start, self.answered = now, 0
        if self.ramp:  # the first round at a new size: half its answers were sent before
            self.ramp = False
            return
        if rate >= self.best_rate * self.GROWTH:
            self.best_rate, self.best_size, self.flat = rate, self.size, 0
            if self.growing:
                self._resize(2 * self.size)
            return
        if self.growing or self.size != self.best_size:
            self.flat += 1
            if self.flat >= self.FLAT_ROUNDS:
                self._resize(self.best_size)
                self.growing, self.flat, self.steady_since = False, 0, now
            return
        if now - self.steady_since >= self.REPROBE_S and self.size < self.limit:
            # the rate to beat is this window's now, not a peak from another moment
            self.best_rate = rate
            self._resize(2 * self.size)

    def _resize(self, size: int) -> None:
        self.size = min(self.limit, size)
        self.growing = self.size < self.limit
        self.ramp = True


async def _gather_windowed(items: list, fn: Callable[[Any], Awaitable[T]],
                           window: Window) -> list[T]:
    loop = asyncio.get_running_loop()
    out: list = [None] * len(items)
    running: dict[asyncio.Task, int] = {}
    nxt = 0
    window.start(loop.time())

    async def timed(item):
        t0 = loop.time()
        res = await fn(item)
        return res, loop.time() - t0

    try:
        while nxt < len(items) or running:
            while nxt < len(items) and len(running) < window.size:
                running[asyncio.ensure_future(timed(items[nxt]))] = nxt
                nxt += 1
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            for task in done:
                res, took = task.result()
                out[running.pop(task)] = res
                if took >= window.MIN_ANSWER_S:
                    window.answer(now)
    finally:
        for task in running:
            if task.done():  # finished with the one that failed: its error is read, not raised
                if not task.cancelled():
                    task.exception()
            else:
                task.cancel()
    return out
