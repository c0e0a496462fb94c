"""Requests in flight for a burst of HEADs: as many as raise the answer rate, no more."""

from __future__ import annotations

import asyncio

import pytest

from wiseverify.core.s3 import Window, gather_limited


def _drive(window: Window, rate_at, answers: int) -> list[int]:
    """Feed ``answers`` answers at ``rate_at(size)`` per second; the sizes seen, one per answer."""
    now, sizes = 0.0, []
    window.start(now)
    for i in range(answers):
        now += 1.0 / rate_at(window.size, i)
        sizes.append(window.size)
        window.answer(now)
    return sizes


def test_one_server_keeps_the_starting_window():
    w = Window(32)
    sizes = _drive(w, lambda size, i: 500.0, 2000)  # one server: 500 answers/s whatever queues
    assert max(sizes) <= 2 * Window.START  # a doubling tried now and then, and undone
    assert sizes.count(Window.START) > 0.95 * len(sizes)
    assert w.size == Window.START


def test_a_scaling_endpoint_opens_to_the_limit():
    w = Window(32)
    sizes = _drive(w, lambda size, i: 50.0 * size, 200)  # each request 20 ms, none queued
    assert w.size == 32 and sizes.index(32) < 40


def test_an_endpoint_that_scales_to_eight():
    w = Window(64)
    _drive(w, lambda size, i: 100.0 * min(size, 8), 400)
    assert w.size == 8


def test_a_busy_moment_is_probed_again():
    """Slow for the first answers (the window stays at 4), then scaling: it opens later."""
    w = Window(32)
    sizes = _drive(w, lambda size, i: 500.0 if i < 300 else 50.0 * size, 1000)
    assert max(sizes[100:300]) == Window.START
    assert w.size == 32


def test_a_limit_below_the_start_is_the_window():
    w = Window(2)
    assert _drive(w, lambda size, i: 50.0 * size, 50) == [2] * 50


def test_windowed_gather_keeps_order_and_the_bound():
    inflight, seen = 0, []

    async def fn(i):
        nonlocal inflight
        inflight += 1
        seen.append(inflight)
        await asyncio.sleep(0.001 * (i % 3))
        inflight -= 1
        return i * 2

    out = asyncio.run(gather_limited(range(300), fn, 16, adaptive=True))
    assert out == [i * 2 for i in range(300)]
    assert max(seen) <= 16


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

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(gather_limited(range(50), fn, 8, adaptive=True))
    assert cancelled


def test_answers_that_needed_no_request_do_not_stop_the_growth():
    """Rows whose evidence needs no HEAD finish at once; they are not a rate to beat."""
    w = Window(32)
    sizes = _drive(w, lambda size, i: 1e7 if i % 50 < 20 else 50.0 * size, 400)
    assert w.size == 32 and sizes.index(32) < 150
