"""Requests in flight for a burst of HEADs: as many as raise the answer rate, no more."""

from __future__ import annotations

import asyncio
import random

import pytest

from wiseverify.core import bursts as B
from wiseverify.core.bursts import Window, burst_window, gather_limited
from wiseverify.core.s3 import S3Target


def _drive(window: Window, rate_at, answers: int) -> list[int]:
    """Feed ``answers`` answers at ``rate_at(size, i)`` per second; the size at each answer."""
    now, sizes = 0.0, []
    window.start(now)
    for i in range(answers):
        now += 1.0 / rate_at(window.size, i)
        sizes.append(window.size)
        window.answer(now)
    return sizes


def test_one_server_keeps_the_starting_window():
    w = Window(32)
    sizes = _drive(w, lambda size, i: 500.0, 5000)  # one server: 500 answers/s whatever queues
    assert max(sizes) <= 2 * Window.START  # a doubling tried now and then, and undone
    assert sizes.count(Window.START) > 0.9 * len(sizes)
    assert w.size == Window.START


def test_a_scaling_endpoint_opens_to_the_limit():
    w = Window(32)
    sizes = _drive(w, lambda size, i: 50.0 * size, 300)  # each request 20 ms, none queued
    assert w.size == 32 and sizes.index(32) < 120


def test_a_scaling_endpoint_with_jittery_latency_opens_to_the_limit():
    """Latencies spread as a real network's (log-normal): the rounds are long enough."""
    for seed in range(20):
        rng = random.Random(seed)
        w = Window(32)
        sizes = _drive(w, lambda size, i, rng=rng: 50.0 * size / rng.lognormvariate(0, 0.6), 600)
        assert sizes[-1] == 32, seed


def test_an_endpoint_that_scales_to_eight():
    w = Window(64)
    _drive(w, lambda size, i: 100.0 * min(size, 8), 1000)
    assert w.size == 8


def test_a_busy_moment_is_probed_again():
    """Slow for the first answers (the window stays at 4), then scaling: it opens later."""
    w = Window(32)
    sizes = _drive(w, lambda size, i: 500.0 if i < 600 else 50.0 * size, 1500)
    assert max(sizes[200:600]) <= 2 * Window.START
    assert sizes.count(Window.START) > 0.8 * 600
    assert w.size == 32


def _served(server_capacity: int | None, instant_share: float, n: int, limit: int = 32):
    """A burst through the windowed gather against a simulated endpoint; its most in flight.

    ``server_capacity`` requests are served at once (None: any number, as Amazon
    S3), each in 4 ms; ``instant_share`` of the items need no request at all.
    """
    rng = random.Random(5)
    instant = [rng.random() < instant_share for _ in range(n)]
    inflight = peak = 0

    async def main():
        gate = asyncio.Semaphore(server_capacity) if server_capacity else None

        async def fn(i):
            nonlocal inflight, peak
            if instant[i]:
                return i
            inflight += 1
            peak = max(peak, inflight)
            try:
                if gate is None:
                    await asyncio.sleep(0.004)
                else:
                    async with gate:
                        await asyncio.sleep(0.004)
            finally:
                inflight -= 1
            return i

        url = "http://198.51.100.7:9000"
        B._SETTLED.pop(url, None)
        try:
            return await gather_limited(range(n), fn, limit,
                                        endpoint=S3Target("b", endpoint_url=url))
        finally:
            B._SETTLED.pop(url, None)

    assert asyncio.run(main()) == list(range(n))
    return peak


def test_windowed_gather_opens_for_a_scaling_endpoint_among_rows_needing_no_request():
    assert _served(None, 0.4, 3000) == 32


def test_windowed_gather_stays_small_for_one_server():
    assert _served(1, 0.4, 1000) <= 2 * Window.START


def test_a_limit_below_the_start_is_the_window():
    w = Window(2)
    assert _drive(w, lambda size, i: 50.0 * size, 50) == [2] * 50


def test_amazon_s3_gets_every_request_at_once_and_others_start_where_they_settled():
    assert burst_window(S3Target("b"), 32) is None
    for url in ("https://s3.us-east-1.amazonaws.com",
                "https://bucket.vpce-0a1b.s3.us-east-1.vpce.amazonaws.com",
                "https://s3.cn-north-1.amazonaws.com.cn"):
        assert burst_window(S3Target("b", endpoint_url=url), 32) is None, url
    url = "http://192.0.2.10:8080"
    B._SETTLED.pop(url, None)
    assert burst_window(S3Target("b", endpoint_url=url), 32).size == Window.START

    async def fn(i):
        await asyncio.sleep(0)
        return i

    asyncio.run(gather_limited(range(10), fn, 32, endpoint=S3Target("b", endpoint_url=url)))
    assert B._SETTLED[url] == Window.START
    B._SETTLED[url] = 16
    assert burst_window(S3Target("b", endpoint_url=url), 32).size == 16
    assert burst_window(S3Target("b", endpoint_url=url), 8).size == 8
    B._SETTLED.pop(url)


@pytest.mark.parametrize("url", [None, "http://127.0.0.1:9"])
def test_gather_keeps_order_and_the_bound(url):
    inflight, seen = 0, []

    async def fn(i):
        nonlocal inflight
        inflight += 1
        seen.append(inflight)
        await asyncio.sleep(0.001 * (i % 3))
        inflight -= 1
        return i * 2

    target = S3Target("b", endpoint_url=url)
    out = asyncio.run(gather_limited(range(300), fn, 16, endpoint=target))
    assert out == [i * 2 for i in range(300)]
    assert max(seen) <= 16
    B._SETTLED.pop(url, None)


def test_windowed_gather_raises_and_cancels_the_rest():
    cancelled = []

    async def fn(i):
        try:
            if i == 5:
                raise ValueError("boom")
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async def main():
        with pytest.raises(ValueError, match="boom"):
            await gather_limited(range(50), fn, 8,
                                 endpoint=S3Target("b", endpoint_url="http://127.0.0.1:9"))
        await asyncio.sleep(0)  # the cancelled ones run their handlers; asyncio.run has not
        return list(cancelled)

    assert asyncio.run(main())  # cancelled by the gather itself, not by asyncio.run's exit
    B._SETTLED.pop("http://127.0.0.1:9", None)
