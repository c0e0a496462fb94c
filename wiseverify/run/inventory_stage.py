"""Stage 1 driven: inventory jobs submitted in a window until none is left.

The driver holds a queue of jobs (:mod:`wiseverify.inventory.jobs`) and a
:class:`~wiseverify.inventory.jobs.Spooled` record, never rows: each task writes its
rows to a spool file and its result names the jobs it calls for next.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from pathlib import Path

from wiseverify.core.s3 import S3Target
from wiseverify.inventory.jobs import Job, JobContext, ListJob, Spooled, WalkJob
from wiseverify.report import progress as PROG


def submit_windowed(client, pending: list, submit: Callable, window: int,
                    on_result: Callable, speculative: list | None = None,
                    spec_window: int = 0) -> None:
    """Keep at most ``window`` tasks in flight; ``on_result`` may add more to ``pending``.

    ``speculative`` jobs (which ``on_result`` may also add to) take at most
    ``spec_window`` threads while main jobs are in flight, so that they never
    hold back the walk and the listing, and the whole ``window`` once the main
    work is done: they are work a later stage would do anyway, done early.
    """
    from distributed import as_completed

    ac = as_completed()
    inflight = 0
    spec_keys: set[str] = set()
    speculative = speculative if speculative is not None else []

    def fill():
        nonlocal inflight
        while pending and inflight < window:
            ac.add(submit(pending.pop()))
            inflight += 1
        limit = spec_window if inflight else window
        while speculative and len(spec_keys) < limit:
            fut = submit(speculative.pop())
            spec_keys.add(fut.key)
            ac.add(fut)

    fill()
    for fut in ac:
        if fut.key in spec_keys:
            spec_keys.discard(fut.key)
        else:
            inflight -= 1
        on_result(fut.key, fut.result())
        fut.release()
        fill()


#: spool rows per compaction task: at most this many (what one task holds in memory) ...
COMPACT_ROWS_MAX = 500_000
#: ... and at least this many, else a task per thread of the cluster
COMPACT_ROWS_MIN = 50_000


def compaction_rows(rows: int, nthreads: int) -> int:
    """Rows per compaction task: one side's rows shared by every thread, within bounds.

    With a fixed million rows, a million-file run compacted each side in one
    task (the partition stage was 6.6 s of a 1M-file run, on 3 of 4 threads) and
    that task was the worker's memory peak (1.3 GB).  More groups mean more
    files per partition (one per group), so the bound stays at half a million.
    """
    return int(min(COMPACT_ROWS_MAX, max(COMPACT_ROWS_MIN, math.ceil(rows / max(1, nthreads)))))


def groups(spools: list[tuple[str, int]], max_rows: int) -> list[list[str]]:
    """Spool files in groups of at most ``max_rows`` rows: one compaction task each."""
    out: list[list[str]] = []
    cur: list[str] = []
    rows = 0
    for path, n in spools:
        if cur and rows + n > max_rows:
            out.append(cur)
            cur, rows = [], 0
        cur.append(path)
        rows += n
    if cur:
        out.append(cur)
    return out


def inventory_window(workers: dict) -> int:
    """Walk and listing tasks kept in flight: twice the cluster's threads, so the next
    task is queued on a worker before the last one returns."""
    return max(2, 2 * (sum(w.get("nthreads", 1) for w in workers.values()) or 1))


def walk_ops_per_task(max_metadata_ops: float | None, window: int, workers: int) -> float | None:
    """Each walk task's share of ``--max-metadata-ops``.

    Walk tasks of one worker process take turns (``walk.walk_dirs``), so at most
    one per worker process walks at a time, however many the window holds:
    sharing the cap among those gives the metadata server the whole rate that
    was asked for, and never more.
    """
    if not max_metadata_ops:
        return None
    return max_metadata_ops / max(1, min(window, workers))


def run_jobs(ctx: JobContext, jobs: list[Job], inv: Spooled | None = None,
             spec_window: int = 0, on_result: Callable[[Job, dict], None] | None = None
             ) -> Spooled:
    """Run ``jobs`` and every job their results call for; returns what was spooled.

    Speculative jobs (prehashing) use at most ``spec_window`` threads while main
    jobs run, and every thread after the last one returned.
    """
    inv = inv if inv is not None else Spooled()
    main = [j for j in jobs if not j.speculative]
    spec = [j for j in jobs if j.speculative]
    seq = iter(range(1 << 62))
    by_key: dict[str, Job] = {}

    def submit(job: Job):
        fut = job.submit(ctx, next(seq))
        by_key[fut.key] = job
        return fut

    def done(key: str, res: dict) -> None:
        job = by_key.pop(key)
        for nxt in job.tally(res, ctx, inv):
            (spec if nxt.speculative else main).append(nxt)
        if on_result is not None:
            on_result(job, res)

    submit_windowed(ctx.client, main, submit, ctx.window, done, spec, spec_window)
    return inv


def inventory(ctx: JobContext, jobs: list[Job], inv: Spooled, nthreads: int,
              prog: PROG.Progress) -> Spooled:
    """Stage 1 of ``verify()``: both sides at once, with live counts."""

    def show(job: Job, res: dict) -> None:
        if not job.speculative:
            st = inv.stats
            prog.update(files=res["count"], nbytes=res.get("bytes", 0),
                        note=f"source {st['src_rows']:,}, destination {st['dst_rows']:,}")

    prog.stage("inventory", unit="entries")
    # half the threads may prehash: listings have left the thread pool (jobs._list_task)
    run_jobs(ctx, jobs, inv, max(1, nthreads // 2), show)
    prog.end_stage()
    if inv.list_errors:
        raise RuntimeError("destination listing failed: " + "; ".join(inv.list_errors[:3]))
    return inv


def _context(client, root: str, target: S3Target, spool_dir: str, window: int | None,
             **kw) -> JobContext:
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    Path(spool_dir).mkdir(parents=True, exist_ok=True)
    return JobContext(client, root, target, Path(spool_dir), uuid.uuid4().hex[:8],
                      window or inventory_window(workers), **kw)


def walk_source(client, root: str, spool_dir: str, prefix: str = "", budget: int = 50_000,
                max_metadata_ops: float | None = None, window: int | None = None,
                **walk_kwargs) -> dict:
    """The source walk of ``verify()`` on its own: walk tasks over ``client``'s cluster.

    Why it exists: the walk is the stage a Lustre MDS limits, and it must be
    measurable and tunable without a destination.  Same jobs, same window, same
    per-task share of ``max_metadata_ops``; returns the counts and the spool files
    ``[(path, rows)]``.  ``walk_kwargs`` go to ``walk.walk_dirs`` (``threads``,
    ``split_entries``, ``stat_delay_us``).
    """
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    window = window or inventory_window(workers)
    ctx = _context(client, root, S3Target("", prefix), spool_dir, window,
                   walk_budget=budget,
                   ops_per_task=walk_ops_per_task(max_metadata_ops, window, len(workers)),
                   walk_kwargs=walk_kwargs)
    out = {"count": 0, "dirs": 0, "ops": 0, "bytes": 0, "tasks": 0, "max_threads": 0}

    def count(job: Job, res: dict) -> None:
        for k in ("count", "dirs", "ops", "bytes"):
            out[k] += res[k]
        out["tasks"] += 1
        out["max_threads"] = max(out["max_threads"], res.get("threads", 1))

    inv = run_jobs(ctx, [WalkJob([b""])], on_result=count)
    return {**out, "spools": inv.src}


def list_dest(client, target: S3Target, spool_dir: str, fanout_depth: int = 2,
              window: int | None = None) -> dict:
    """The destination listing of ``verify()`` on its own: listing tasks on the cluster.

    Why it exists: listing 30 million objects is a stage of its own in the
    capacity plan, and it must be measurable against other listers without a
    source tree.  Same jobs, same fan-out by common prefixes, same bound on the
    listings in flight (``window``, default twice the cluster's threads).
    """
    ctx = _context(client, "", target, spool_dir, window, fanout_depth=fanout_depth)
    out = {"tasks": 0, "max_depth": 0}

    def count(job: Job, res: dict) -> None:
        out["tasks"] += 1
        out["max_depth"] = max(out["max_depth"], job.depth)

    inv = run_jobs(ctx, [ListJob("", 0, fanout_depth > 0)], on_result=count)
    st = inv.stats
    return {**out, "count": st["dst_rows"], "markers": st["markers"],
            "requests": st["list_requests"], "spools": inv.dst, "errors": inv.list_errors}
