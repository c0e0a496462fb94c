"""The verification run: drives the stages over a Dask cluster.

The driver (this module) only holds directory names, spool file names, futures
and counts.  Rows live in Parquet under the run directory and in worker memory,
one partition at a time:

    inventory (walk / list tasks -> spool) -> compact (hash partitions)
      -> per partition: plan (match + evidence) -> digest units -> finish (write)
      -> report (summary.json, combined.txt, discrepancies.csv)

The run directory must be on storage every worker can reach (the shared file
system on an HPC cluster).
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from wiseverify import __version__
from wiseverify.compare import carry as C
from wiseverify.compare import metascope as MS
from wiseverify.core import filters as FILTERS
from wiseverify.core.config import VerifyConfig
from wiseverify.core.errors import ConfigError
from wiseverify.core.filters import Filters
from wiseverify.core.runio import write_text
from wiseverify.core.s3 import S3Target
from wiseverify.inventory import ingest as INGEST
from wiseverify.inventory import partition as INV
from wiseverify.inventory.jobs import JobContext, ListJob, Spooled, WalkJob
from wiseverify.reconcile import assemble as ASSEMBLE
from wiseverify.reconcile import checkpoint as CHECKPOINT
from wiseverify.reconcile import plan as R
from wiseverify.report import html as HTML
from wiseverify.report import manifest as AUD
from wiseverify.report import progress as PROG
from wiseverify.report import summary as REP
from wiseverify.run import inventory_stage as INVSTAGE
from wiseverify.run.metadata_probe import MetadataProbe
from wiseverify.run.prepare import new_run_id, prepare, resume_config
from wiseverify.run.sample_stage import sample_stage
from wiseverify.run.tasks import partition_job

#: below this many keys per worker process a run stays in one partition
SPLIT_MIN_ROWS = 5_000
#: source rows per prehash job: each job costs the driver (its scheduler, the futures)
#: about 8 ms of CPU whatever its size, and at 2,000 rows a million-file run made the
#: driver a third of a core busy during the inventory; at 8,000 a job of cold files
#: still takes well under a second, so the last ones leave no long tail
PREHASH_ROWS = 8_000


def _progress(log: Callable[[str], None] | None):
    def say(msg: str) -> None:
        if log is not None:
            log(msg)

    return say


@dataclass
class Run:
    """One run being driven: its settings, where it writes and the cluster it has."""

    cfg: VerifyConfig
    client: Any
    root: str
    target: S3Target
    run_dir: Path
    run_id: str
    workers: dict
    nthreads: int
    say: Callable[[str], None]
    prog: PROG.Progress
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    t0: float = field(default_factory=time.monotonic)
    #: the previous run whose evidence is carried (incremental), and why or why not
    prev_dir: Path | None = None
    prev_note: str = ""
    #: --resume found the inventory complete: it is not listed again
    inv_reused: bool = False
    times: dict = field(default_factory=dict)
    #: what the caller spent before the run: preflight, cluster start
    setup: dict = field(default_factory=dict)
    #: which paths the run covers (--include/--exclude/--filter-from)
    filters: Filters = field(default_factory=Filters)

    @property
    def inv_marker(self) -> Path:
        return self.run_dir / "inventory" / "_complete.json"

    def lap(self, name: str) -> float:
        """Seconds since the previous lap (or the start), recorded under ``name``."""
        now = time.monotonic()
        self.times[name] = now - (self.t0 + sum(self.times.values()))
        return self.times[name]


@dataclass
class Partitioned:
    """Stage 2's result: how many hash partitions, and what goes with them."""

    nparts: int
    prehash_dir: str | None
    decision: MS.Decision | None


def verify(cfg: VerifyConfig, client, log: Callable[[str], None] | None = print,
           progress: PROG.Progress | None = None,
           prepared: tuple[str, S3Target] | None = None,
           setup_timings: dict[str, float] | None = None) -> dict:
    """Run a whole verification on ``client``'s cluster; returns the summary dict.

    ``progress`` shows live counters per stage (pass its ``log`` method as ``log``
    so messages print above the live line); without it nothing is shown.
    ``prepared`` is what :func:`prepare` returned, when the caller checked the
    settings before starting a cluster; ``setup_timings`` what that and the cluster's
    start cost (``preflight_s``, ``cluster_start_s``), kept in the summary's timings.
    """
    run = start(cfg, client, log, progress, prepared)
    run.setup = dict(setup_timings or {})
    inv = inventory_stage(run)
    parts = partition_stage(run, inv)
    totals = reconcile_stage(run, parts)
    sample = sample_stage(run, parts, totals)
    return write_outputs(run, inv, parts, totals, sample)


def start(cfg: VerifyConfig, client, log: Callable[[str], None] | None,
          progress: PROG.Progress | None, prepared: tuple[str, S3Target] | None) -> Run:
    """Check the settings (unless done), open the run directory and find what to reuse."""
    say = _progress(log)
    root, target = prepared or prepare(cfg)
    run_dir = Path(cfg.out).absolute()
    if cfg.resume:
        cfg = resume_config(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    run = Run(cfg, client, root, target, run_dir, cfg.run_id or new_run_id(), workers,
              sum(w.get("nthreads", 1) for w in workers.values()) or 1, say,
              progress or PROG.Progress(mode="off"))
    run.filters = Filters.from_config(cfg)
    say(f"run {run.run_id}: {root} -> {target.url} ({len(workers)} workers, "
        f"{run.nthreads} threads, mode {cfg.mode})")
    if run.filters:
        say(f"filters: {'; '.join(run.filters.describe())}")
    dash = getattr(client, "dashboard_link", None)
    if dash:
        say(f"dashboard: {dash}")
    if not cfg.resume:
        cfg_record = AUD.redact({k: v for k, v in asdict(cfg).items() if k != "profile"})
        write_text(run_dir / "run.json", json.dumps(
            {"run_id": run.run_id, "config": cfg_record, "root": root, "dest": target.url,
             "version": __version__, "started": run.started.isoformat(),
             "filters": run.filters.describe(),
             "filters_fingerprint": run.filters.fingerprint()}, indent=2))
    else:
        saved = json.loads((run_dir / "run.json").read_text()).get("filters_fingerprint")
        if saved != run.filters.fingerprint():
            raise ConfigError(f"--resume {cfg.out}: the filter rules are not those the run "
                              "started with (a --filter-from file changed?); start a new run")
    # incremental: evidence of the previous run of the same source and destination
    if cfg.full:
        run.prev_note = "--full: everything re-hashed"
    else:
        run.prev_dir, run.prev_note = C.usable_previous(
            cfg.previous_run or AUD.find_previous(run_dir, run.started.isoformat()),
            root, target.url, cfg.mode, cfg.metadata, run.filters.fingerprint())
    if run.prev_dir is not None:
        say(run.prev_note)
    run.inv_reused = cfg.resume and run.inv_marker.is_file()
    if cfg.resume and not run.inv_reused:
        shutil.rmtree(run_dir / "inventory", ignore_errors=True)
    return run


def inventory_stage(run: Run) -> Spooled:
    """Stage 1: both sides listed at once into spool files (or the resumed run's counts)."""
    cfg = run.cfg
    spool = run.run_dir / "inventory" / "_spool"
    spool.mkdir(parents=True, exist_ok=True)
    inv = Spooled()
    if run.inv_reused:
        inv.stats.update(json.loads(run.inv_marker.read_text())["stats"])
        run.lap("inventory")
        return inv
    window = INVSTAGE.inventory_window(run.workers)
    # Small source files are hashed in walk order as the walk spools them (see
    # inventory.prehash); only in stored mode, when nothing is carried from a previous
    # run and no --max-open-files lease must be held.
    prehash = (cfg.prehash and cfg.mode == "stored" and run.prev_dir is None
               and not cfg.resume and not cfg.max_open_files)
    ctx = JobContext(
        run.client, run.root, run.target, spool, run.run_id, window,
        walk_budget=cfg.walk_budget,
        ops_per_task=INVSTAGE.walk_ops_per_task(cfg.max_metadata_ops, window, len(run.workers)),
        fanout_depth=cfg.fanout_depth, prehash_rows=PREHASH_ROWS if prehash else 0,
        head_min_size=cfg.head_min_size, filters=run.filters or None)
    # a listing file, an S3 Inventory or a checksum report instead of walk or listing
    jobs = INGEST.replace_jobs(cfg, run.target, [WalkJob([b""]), ListJob("", 0, cfg.fanout_depth > 0)],
                               inv.stats)
    INVSTAGE.inventory(ctx, jobs, inv, run.nthreads, run.prog)
    st = inv.stats
    run.say(f"inventory: source {st['src_rows']:,} entries in {st['dirs']:,} directories, "
            f"destination {st['dst_rows']:,} objects ({run.lap('inventory'):.1f} s)"
            + (f"; {inv.prehashed_files:,} small files ({inv.prehashed_bytes / 1e9:.2f} GB) "
               "hashed meanwhile" if inv.prehashed_files else ""))
    return inv


def partition_count(cfg: VerifyConfig, rows: int, workers: int) -> int:
    """One partition per ``rows_per_partition`` keys, and one per worker process once there
    is enough to share: planning and reconciling a partition is GIL-bound Python/pandas
    work, so a single partition keeps every process but one idle while it is planned."""
    return cfg.partitions or max(1, math.ceil(rows / cfg.rows_per_partition),
                                 min(workers, rows // SPLIT_MIN_ROWS))


def partition_stage(run: Run, inv: Spooled) -> Partitioned:
    """Stage 2: the spool files compacted into hash partitions, both sides alike."""
    cfg, client = run.cfg, run.client
    if run.inv_reused:
        nparts = json.loads(run.inv_marker.read_text())["partitions"]
    else:
        # an incremental run keeps the previous run's layout: each partition then reads
        # one previous file
        prev = (C.previous_partitions(run.prev_dir)
                if run.prev_dir is not None and not cfg.partitions else None)
        nparts = prev or partition_count(cfg, max(inv.stats["src_rows"], inv.stats["dst_rows"]),
                                         len(run.workers))
    # --metadata auto: the destination's metadata sample is drawn as its listing is compacted
    sample_k = MS.SAMPLE_PER_PREFIX if cfg.metadata == "auto" and cfg.mode == "stored" else 0
    inv_dir = run.run_dir / "inventory"
    futs, dst_futs = [], []
    group_rows = INVSTAGE.compaction_rows(max(inv.stats["src_rows"], inv.stats["dst_rows"]), run.nthreads)
    # the destination first: its sample's HEADs start once it is compacted
    for side, spools in (("dst", inv.dst), ("src", inv.src), ("checksums", inv.checksums)):
        for gi, group in enumerate(INVSTAGE.groups(spools, group_rows)):
            futs.append(client.submit(INV.compact, group, str(inv_dir / side), nparts,
                                      f"c{gi:05d}", sample_k if side == "dst" else 0,
                                      pure=False, key=f"compact-{side}-{gi}-{run.run_id}"))
            if side == "dst":
                dst_futs.append(futs[-1])
    prehash_dir = str(inv_dir / "prehash") if inv.prehash else None
    pre_futs = [client.submit(INV.compact, group, prehash_dir, nparts, f"c{gi:05d}",
                              pure=False, key=f"compact-prehash-{gi}-{run.run_id}")
                for gi, group in enumerate(INVSTAGE.groups(inv.prehash, group_rows))]
    from distributed import as_completed

    st = inv.stats
    run.prog.stage("partition", unit="rows", total_files=st["src_rows"] + st["dst_rows"])
    # the metadata sample is HEADed as soon as the destination's side is compacted: its
    # requests then overlap the compaction of the source side and of the prehashes
    probe = None
    left_dst = len(dst_futs)
    for fut in as_completed(futs):
        res = fut.result()
        run.prog.update(files=res["rows"])
        if fut in dst_futs:
            left_dst -= 1
        if probe is None and left_dst == 0:
            probe = MetadataProbe(client, cfg, run.run_dir, run.target, run.inv_reused,
                                   [f.result()["sample"] for f in dst_futs], run.run_id)
    if probe is None:  # nothing was listed on either side
        probe = MetadataProbe(client, cfg, run.run_dir, run.target, run.inv_reused, [],
                               run.run_id)
    client.gather(pre_futs)
    run.prog.end_stage()
    decision = probe.decide(run.say)
    shutil.rmtree(inv_dir / "_spool", ignore_errors=True)
    if not run.inv_reused:
        write_text(run.inv_marker, json.dumps({"partitions": nparts, "stats": st}))
    run.say(f"partitioned into {nparts} partition(s) ({run.lap('partition'):.1f} s)")
    return Partitioned(nparts, prehash_dir, decision)


def reconcile_stage(run: Run, parts: Partitioned) -> dict:
    """Stages 3 and 4, one task per partition: plan, digest and reconcile; returns totals."""
    cfg, client, nparts = run.cfg, run.client, parts.nparts
    ctx = R.Context.from_config(
        cfg, root=run.root, target=run.target, run_dir=str(run.run_dir), run_id=run.run_id,
        min_units=4 * run.nthreads,
        previous_run=str(run.prev_dir) if run.prev_dir is not None else None,
        metadata_decision=parts.decision)
    totals = REP.empty_totals()
    totals["open_intervals"] = []
    pending, reused = [], 0
    for p in range(nparts - 1, -1, -1):
        if cfg.resume and ctx.part_path(p).is_file():
            REP.add_totals(totals, ASSEMBLE.summarize(pq.read_table(ctx.part_path(p))))
            reused += 1
        else:
            pending.append(p)
    totals["partitions_reused"] = reused
    if cfg.resume:
        run.say(f"resuming run {run.run_id}: inventory "
                f"{'reused' if run.inv_reused else 'redone'}, "
                f"{reused}/{nparts} partitions already reconciled")
    # digest units report their bytes as they finish; only when someone watches
    topic = f"wiseverify-progress-{run.run_id}" if run.prog.mode != "off" else None

    def submit(p: int):
        return client.submit(partition_job, ctx, p, topic, parts.prehash_dir, pure=False,
                             key=f"partition-{p}-{run.run_id}")

    def done(key: str, res: dict) -> None:
        totals["open_intervals"].extend(res.pop("open_intervals", ()))
        REP.add_totals(totals, res)
        n = totals["partitions"]
        run.prog.update(note=f"{n}/{nparts} partitions, {totals['rows']:,} keys reconciled")
        if nparts > 1:
            run.say(f"partition {n}/{nparts} done: {totals['rows']:,} keys, "
                    f"{totals['bytes_read_src'] / 1e9:.2f} GB read")

    run.prog.stage("digest", unit="files")
    unwatch = run.prog.watch(client, topic) if topic else (lambda: None)
    try:
        INVSTAGE.submit_windowed(client, pending, submit, max(2, min(nparts, run.nthreads)),
                                 done)
    finally:
        unwatch()
        run.prog.end_stage()
    run.say(f"digest and reconcile: {totals['rows']:,} keys, "
            f"{totals['bytes_read_src'] / 1e9:.2f} GB read from source, "
            f"{totals['bytes_read_dst'] / 1e9:.2f} GB from destination "
            f"({run.lap('reconcile'):.1f} s)")
    return totals


def write_outputs(run: Run, inv: Spooled, parts: Partitioned, totals: dict,
                  sample: dict | None = None) -> dict:
    """summary.json, the lists and report.html, then the audit manifest over all of them."""
    cfg, decision = run.cfg, parts.decision
    intervals = totals.pop("open_intervals")
    reused = totals.pop("partitions_reused")
    summary = REP.build_summary(
        run_id=run.run_id, root=run.root, dest=run.target.url, mode=cfg.mode,
        metadata=cfg.metadata, metadata_sample=(decision or MS.Decision()).counts(),
        totals=totals, started=run.started, finished=datetime.now(UTC), nparts=parts.nparts,
        stats=inv.stats, workers=sorted(run.workers), hostname=socket.gethostname(),
        timings={"inventory_s": round(run.times["inventory"], 3),
                 "partition_s": round(run.times["partition"], 3),
                 "reconcile_s": round(run.times["reconcile"], 3),
                 "total_s": round(time.monotonic() - run.t0, 3), **run.setup,
                 "partition_steps_s": {k: round(v, 3) for k, v in
                                       totals.pop("partition_steps_s", {}).items()}},
    )
    summary["inventory"].update(prehashed_files=inv.prehashed_files,
                                prehashed_bytes=inv.prehashed_bytes)
    summary["requests"]["metadata_sample"] = decision.sampled if decision is not None else 0
    if inv.stats.get("ingest"):
        summary["ingest"] = inv.stats["ingest"]
    filtered = FILTERS.summary(run.filters, FILTERS.merge_counts({}, inv.stats.get("filtered_src")),
                               FILTERS.merge_counts({}, inv.stats.get("filtered_dst")))
    if filtered:
        summary["filters"] = filtered
        if filtered["unused"]:
            run.say(f"filters: no path matched {', '.join(filtered['unused'])} (a typo?)")
    summary["digest_units"] = {
        "units": totals.get("units", 0),
        "max_concurrent": CHECKPOINT.max_overlap(intervals),
        "max_open_files": cfg.max_open_files,
    }
    summary["incremental"] = {
        "previous_run": str(run.prev_dir) if run.prev_dir is not None else None,
        "note": run.prev_note, "carried": totals.get("carried", 0)}
    if cfg.resume:
        summary["resumed"] = {"inventory_reused": run.inv_reused, "partitions_reused": reused,
                              "units_reused": totals.get("units_reused", 0),
                              "units_computed": totals.get("units", 0)
                              - totals.get("units_reused", 0)}
    if sample is not None:
        summary["sample"] = sample
        summary["timings"]["sample_s"] = round(run.times.get("sample", 0.0), 3)
    summary["lists"] = {"match_requested": cfg.list_match}
    summary["rollup"] = {"depth": cfg.rollup_depth}
    t0 = time.monotonic()
    HTML.write_outputs(run.run_dir, summary)
    # the audit record comes last: it hashes every output, report.html included
    manifest = AUD.write_manifest(run.run_dir, previous=cfg.previous_run,
                                  cluster=AUD.describe_cluster(run.client))
    run.say(f"report: {run.run_dir / 'report.html'}, audit manifest: {manifest} "
            f"({time.monotonic() - t0:.1f} s)")
    return summary
