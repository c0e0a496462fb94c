"""The inventory stage's jobs: what one Dask task lists, walks, parses or hashes.

Each job is a small dataclass that knows how to submit its task
(:meth:`Job.submit`) and how to count what the task wrote (:meth:`Job.tally`),
which returns the jobs the result calls for: the directories a walk left, the
common prefixes a delimiter listing found, the small files worth hashing while the
listing goes on.  The driver then only keeps a queue of jobs and a
:class:`Spooled` record; no rows ever reach it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from wiseverify.core.filters import Filters, merge_counts
from wiseverify.core.s3 import S3Target
from wiseverify.inventory import s3list as S3LIST
from wiseverify.inventory import walk as WALK

if TYPE_CHECKING:
    from distributed import Client, Future


def walk_batches(pending: list, window: int) -> list[list]:
    """Group a walk task's ``pending`` items into the next tasks' ``rel_dirs``.

    Each name range of a huge directory is a task of its own (it holds up to
    ``split_entries`` lstat calls); directories go in batches sized so that the
    ``window`` tasks in flight share them.
    """
    ranges = [[p] for p in pending if isinstance(p, tuple)]
    dirs = [p for p in pending if not isinstance(p, tuple)]
    step = max(1, min(64, -(-len(dirs) // max(1, window))))
    return ranges + [dirs[j:j + step] for j in range(0, len(dirs), step)]


@dataclass
class JobContext:
    """What every job of one run needs to submit its task."""

    client: Client
    root: str
    target: S3Target
    spool: Path
    run_id: str
    window: int
    walk_budget: int = 50_000
    ops_per_task: float | None = None
    fanout_depth: int = 2
    #: source rows per prehash job; 0: small files are not hashed during the listing
    prehash_rows: int = 0
    head_min_size: int = 4 << 20
    #: more arguments of every walk task (``threads``, ``split_entries``, ``stat_delay_us``:
    #: the walk benchmark's knobs)
    walk_kwargs: dict = field(default_factory=dict)
    #: the run's filter rules (None: every path)
    filters: Filters | None = None

    def spool_base(self, kind: str, n: int) -> str:
        return str(self.spool / f"{kind}-{n:08d}")

    def key(self, kind: str, n: int) -> str:
        return f"{kind}-{n}-{self.run_id}"


@dataclass
class Spooled:
    """What the inventory tasks wrote: spool files ``(path, rows)`` per side, and counts."""

    src: list[tuple[str, int]] = field(default_factory=list)
    dst: list[tuple[str, int]] = field(default_factory=list)
    checksums: list[tuple[str, int]] = field(default_factory=list)
    prehash: list[tuple[str, int]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=lambda: {
        "src_rows": 0, "dst_rows": 0, "markers": 0, "list_requests": 0, "dirs": 0,
        "metadata_ops": 0})
    prehashed_files: int = 0
    prehashed_bytes: int = 0
    list_errors: list[str] = field(default_factory=list)


class Job:
    """One inventory task.  ``speculative`` jobs only fill idle time (see the driver)."""

    kind: ClassVar[str] = ""
    speculative: ClassVar[bool] = False

    def submit(self, ctx: JobContext, n: int) -> Future:
        raise NotImplementedError

    def tally(self, res: dict, ctx: JobContext, inv: Spooled) -> list[Job]:
        raise NotImplementedError


def tally_source(res: dict, ctx: JobContext, inv: Spooled) -> list[Job]:
    """Count source rows spooled by a walk or a listing-file task; small files to prehash."""
    inv.stats["src_rows"] += res["count"]
    inv.stats["dirs"] += res["dirs"]
    merge_counts(inv.stats.setdefault("filtered_src", {}), res.get("filtered"))
    inv.stats["metadata_ops"] += res["ops"]
    more: list[Job] = []
    if res["spool"]:
        inv.src.append((res["spool"], res["count"]))
        step = ctx.prehash_rows
        if step:
            more += [PrehashJob(res["spool"], j, min(step, res["count"] - j))
                     for j in range(0, res["count"], step)]
    return more


def tally_dest(res: dict, inv: Spooled) -> None:
    """Count destination objects spooled by a listing or an S3 Inventory task."""
    if res.get("error"):
        inv.list_errors.append(res["error"])
    inv.stats["dst_rows"] += res["count"]
    inv.stats["markers"] += res["markers"]
    merge_counts(inv.stats.setdefault("filtered_dst", {}), res.get("filtered"))
    inv.stats["list_requests"] += res["requests"]
    if res["spool"]:
        inv.dst.append((res["spool"], res["count"]))


def tally_ingest(res: dict, inv: Spooled) -> None:
    """Add an ingest task's counters (``res["ingest"]``) and extra spool files."""
    totals = inv.stats.setdefault("ingest", {})
    for k, v in res["ingest"].items():
        totals[k] = totals.get(k, 0) + v
    side = {"src": inv.src, "dst": inv.dst, "sum": inv.checksums}[res["side"]]
    side.extend(res.get("spools") or ())


@dataclass
class WalkJob(Job):
    """Walk a batch of source directories (or name ranges of a huge one)."""

    dirs: list
    kind: ClassVar[str] = "walk"

    def submit(self, ctx: JobContext, n: int) -> Future:
        # the task that starts at the root returns after a few thousand entries with
        # the rest of the tree pending, so every worker walks within milliseconds
        budget = ctx.walk_budget
        if list(self.dirs) == [b""]:
            budget = min(budget, WALK.FIRST_BUDGET)
        return ctx.client.submit(WALK.walk_dirs, ctx.root, self.dirs,
                                 ctx.spool_base("src", n) + ".arrow", ctx.target.prefix, budget,
                                 ctx.ops_per_task, pure=False, key=ctx.key("walk", n),
                                 filters=ctx.filters, **ctx.walk_kwargs)

    def tally(self, res: dict, ctx: JobContext, inv: Spooled) -> list[Job]:
        more = tally_source(res, ctx, inv)
        return more + [WalkJob(b) for b in walk_batches(res["pending"], ctx.window)]


def _list_task(target: S3Target, rel: str, delimiter: bool, spool: str,
               filters: Filters | None = None) -> dict:
    # A listing mostly waits on the object store: leave the worker's thread pool so
    # CPU work (the walk, prehashing small files) is not queued behind it.  The
    # driver's window still bounds how many listings are in flight.
    with contextlib.suppress(ValueError):  # not running as a Dask task
        from distributed import secede

        secede()
    res = S3LIST.list_prefix(target, rel, delimiter, spool, filters)
    if not delimiter:
        res["pending"] = []
    return res


@dataclass
class ListJob(Job):
    """List the destination under one relative prefix: one level (``fan``) or all of it."""

    rel: str = ""
    depth: int = 0
    fan: bool = True
    kind: ClassVar[str] = "list"

    def submit(self, ctx: JobContext, n: int) -> Future:
        return ctx.client.submit(_list_task, ctx.target, self.rel, self.fan,
                                 ctx.spool_base("dst", n) + ".parquet", ctx.filters,
                                 pure=False, key=ctx.key("list", n))

    def tally(self, res: dict, ctx: JobContext, inv: Spooled) -> list[Job]:
        tally_dest(res, inv)
        return self.followups(res["pending"], ctx.fanout_depth, ctx.window)

    def followups(self, prefixes: list[str], fanout_depth: int, window: int) -> list[Job]:
        """Fan out one more level only while the prefixes found at once are fewer than the
        tasks in flight: each listing request costs a round trip (and money on S3), so a
        thousand folders of twenty objects are cheaper as a few recursive listings."""
        depth = self.depth + 1
        fan = depth < fanout_depth and len(prefixes) < window
        return [ListJob(rel, depth, fan) for rel in prefixes]


@dataclass
class PrehashJob(Job):
    """Hash the small files among ``count`` rows of a source spool (see inventory.prehash)."""

    spool: str
    start: int
    count: int
    kind: ClassVar[str] = "prehash"
    speculative: ClassVar[bool] = True

    def submit(self, ctx: JobContext, n: int) -> Future:
        from wiseverify.inventory.prehash import prehash_job

        return ctx.client.submit(prehash_job, ctx.root, self.spool, self.start, self.count,
                                 ctx.spool_base("pre", n) + ".parquet", ctx.head_min_size,
                                 pure=False, priority=1,
                                 key=ctx.key("prehash", n))

    def tally(self, res: dict, ctx: JobContext, inv: Spooled) -> list[Job]:
        inv.prehashed_files += res["files"]
        inv.prehashed_bytes += res["bytes"]
        if res["spool"]:
            inv.prehash.append((res["spool"], res["files"]))
        return []
