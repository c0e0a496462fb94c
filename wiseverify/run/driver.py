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
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.parquet as pq

from wiseverify import __version__
from wiseverify.compare import carry as C
from wiseverify.compare import metascope as MS

# the config and its errors, where callers have always found them
from wiseverify.core.config import VerifyConfig, check_limits
from wiseverify.core.errors import ConfigError
from wiseverify.core.s3 import S3Target, preflight
from wiseverify.inventory import ingest as INGEST
from wiseverify.inventory import partition as INV
from wiseverify.inventory import walk as WALK
from wiseverify.reconcile import assemble as ASSEMBLE
from wiseverify.reconcile import checkpoint as CHECKPOINT
from wiseverify.reconcile import plan as R
from wiseverify.report import html as HTML
from wiseverify.report import manifest as AUD
from wiseverify.report import progress as PROG
from wiseverify.report import summary as REP
from wiseverify.run.inventory_stage import (
    PREHASH_ROWS,
    _groups,
    _list_job,
    _prehash_job,
    _submit_windowed,
    inventory_window,
    list_followups,
    submit_walk,
    walk_ops_per_task,
)
from wiseverify.run.tasks import _partition_job

#: below this many keys per worker process a run stays in one partition
SPLIT_MIN_ROWS = 5_000




def resolve_source(source: str) -> str:
    """A local path or file:// URL to an absolute directory path."""
    if "://" in source:
        u = urlparse(source)
        if u.scheme != "file":
            raise ConfigError(
                f"source must be a local path or file:// URL (Lustre is POSIX), got {source!r}"
            )
        if u.netloc not in ("", "localhost"):
            raise ConfigError(f"file:// URL with a host is not supported: {source!r}")
        source = unquote(u.path)
    path = os.path.abspath(source)
    if not os.path.exists(path):
        raise ConfigError(f"source {source!r} does not exist")
    if not os.path.isdir(path):
        raise ConfigError(f"source {source!r} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"source {source!r} is not readable")
    return path


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def _progress(log: Callable[[str], None] | None):
    def say(msg: str) -> None:
        if log is not None:
            log(msg)

    return say


def prepare(cfg: VerifyConfig) -> tuple[str, S3Target]:
    """Validate source and destination before any task is sent (exit 2 on failure).

    Settings are checked before anything touches the network.
    """
    from wiseverify.core.s3 import S3ConfigError

    check_limits(cfg)
    if cfg.mode not in ("stored", "readback"):
        raise ConfigError(f"--mode must be stored or readback, got {cfg.mode!r}")
    if cfg.metadata not in ("auto", "all", "off"):
        raise ConfigError(f"--metadata must be auto, all or off, got {cfg.metadata!r}")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {cfg.out} is a file, not a directory")
    root = resolve_source(cfg.source)
    try:
        target = S3Target.parse(cfg.dest, cfg.endpoint_url, cfg.profile, cfg.region)
        preflight(target)
    except S3ConfigError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.resume:
        if not (out / "run.json").is_file():
            raise ConfigError(f"--resume {cfg.out}: no interrupted run there (no run.json)")
        if (out / "summary.json").exists():
            raise ConfigError(f"--resume {cfg.out}: that run is complete; nothing to resume")
    elif (out / "summary.json").exists() or (out / "reconciliation").exists():
        raise ConfigError(f"{cfg.out} already holds a run; choose a new --out directory")
    if cfg.previous_run and not (Path(cfg.previous_run) / AUD.MANIFEST).is_file():
        raise ConfigError(f"--previous-run {cfg.previous_run} holds no {AUD.MANIFEST}")
    try:
        INGEST.check(cfg, root, target)
    except INGEST.IngestError as exc:
        raise ConfigError(str(exc)) from None
    return root, target


def resume_config(run_dir: Path, cfg: VerifyConfig) -> VerifyConfig:
    """The interrupted run's own settings (its run id included); cluster flags stay as given."""
    saved = json.loads((run_dir / "run.json").read_text())
    known = {f for f in VerifyConfig.__dataclass_fields__}
    conf = {k: v for k, v in saved.get("config", {}).items() if k in known}
    conf.update(out=cfg.out, resume=True, run_id=saved["run_id"],
                endpoint_url=cfg.endpoint_url or conf.get("endpoint_url"), profile=cfg.profile)
    return VerifyConfig(**conf)


def verify(cfg: VerifyConfig, client, log: Callable[[str], None] | None = print,
           progress: PROG.Progress | None = None,
           prepared: tuple[str, S3Target] | None = None) -> dict:
    """Run a whole verification on ``client``'s cluster; returns the summary dict.

    ``progress`` shows live counters per stage (pass its ``log`` method as ``log``
    so messages print above the live line); without it nothing is shown.
    """
    say = _progress(log)
    prog = progress or PROG.Progress(mode="off")
    # the CLI has prepared already (before starting a cluster): its HeadBucket stands
    root, target = prepared or prepare(cfg)
    run_dir = Path(cfg.out).absolute()
    if cfg.resume:
        cfg = resume_config(run_dir, cfg)
    run_id = cfg.run_id or new_run_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    nthreads = sum(w.get("nthreads", 1) for w in workers.values()) or 1
    say(f"run {run_id}: {root} -> {target.url} ({len(workers)} workers, {nthreads} threads, "
        f"mode {cfg.mode})")
    dash = getattr(client, "dashboard_link", None)
    if dash:
        say(f"dashboard: {dash}")
    cfg_record = AUD.redact({k: v for k, v in asdict(cfg).items() if k not in ("profile",)})
    if not cfg.resume:
        (run_dir / "run.json").write_text(json.dumps(
        {"run_id": run_id, "config": cfg_record, "root": root, "dest": target.url,
         "version": __version__, "started": started.isoformat()}, indent=2))
    # incremental: evidence of the previous run of the same source and destination
    prev_dir, prev_note = (None, "--full: everything re-hashed") if cfg.full else \
        C.usable_previous(cfg.previous_run or AUD.find_previous(run_dir, started.isoformat()),
                          root, target.url, cfg.mode, cfg.metadata)
    if prev_dir is not None:
        say(prev_note)
    inv_marker = run_dir / "inventory" / "_complete.json"
    inv_reused = cfg.resume and inv_marker.is_file()
    if cfg.resume and not inv_reused:
        shutil.rmtree(run_dir / "inventory", ignore_errors=True)

    # --- 1. inventory, both sides at once -------------------------------------------
    spool = run_dir / "inventory" / "_spool"
    spool.mkdir(parents=True, exist_ok=True)
    window = inventory_window(workers)
    ops_per_task = walk_ops_per_task(cfg.max_metadata_ops, window, len(workers))
    stats = {"src_rows": 0, "dst_rows": 0, "markers": 0, "list_requests": 0, "dirs": 0,
             "metadata_ops": 0}
    src_spools: list[tuple[str, int]] = []
    dst_spools: list[tuple[str, int]] = []
    sum_spools: list[tuple[str, int]] = []  # --checksum-report entries
    list_errors: list[str] = []
    seq = iter(range(1 << 62))
    # ("dst", rel, depth, fan): fan = list one level with Delimiter='/' and hand the
    # common prefixes back; otherwise one recursive paginated listing of the prefix
    pending: list[tuple] = [] if inv_reused else [
        ("src", [b""]), ("dst", "", 0, cfg.fanout_depth > 0)]
    if not inv_reused:  # a listing file, an S3 Inventory or a checksum report instead
        pending = INGEST.replace_jobs(cfg, root, target, pending, stats)
    # Small source files are hashed while the destination is still being listed: the
    # listing waits on the object store, the walk is long done, and the digests the
    # planner will ask of a small single-part object (its ETag's MD5, plus the
    # CRC64NVME of every pass) do not depend on the listing.  Only when nothing is
    # carried from a previous run, in stored mode, and never past the listing's end.
    use_prehash = (cfg.prehash and cfg.mode == "stored" and prev_dir is None
                   and not cfg.resume and not cfg.max_open_files)
    speculative: list[tuple] = []
    pre_spools: list[tuple[str, int]] = []
    pre = {"files": 0, "bytes": 0}
    stop_flag = spool / "_prehash_stop"
    if inv_reused:
        saved = json.loads(inv_marker.read_text())
        stats.update(saved["stats"])

    def submit(job):
        n = next(seq)
        if job[0] in INGEST.JOBS:
            return INGEST.submit(client, job, str(spool / f"{job[0]}-{n:08d}"), root, target,
                                 key=f"{job[0]}-{n}-{run_id}")
        if job[0] == "pre":
            _, path, start, count = job
            return client.submit(
                _prehash_job, root, path, start, count, str(spool / f"pre-{n:08d}.parquet"),
                cfg.head_min_size, str(stop_flag), pure=False, priority=1,
                key=f"prehash-{n}-{run_id}",
            )
        if job[0] == "src":
            return submit_walk(client, root, job[1], str(spool / f"src-{n:08d}.arrow"),
                               target.prefix, cfg.walk_budget, ops_per_task,
                               key=f"walk-{n}-{run_id}")
        _, rel, depth, fan = job
        return client.submit(
            _list_job, target, rel, depth, fan,
            str(spool / f"dst-{n:08d}.parquet"), pure=False, key=f"list-{n}-{run_id}",
        )

    def on_result(res):
        if INGEST.tally(res, stats, src_spools, dst_spools, sum_spools):
            return
        if res["side"] == "pre":
            pre["files"] += res["files"]
            pre["bytes"] += res["bytes"]
            if res["spool"]:
                pre_spools.append((res["spool"], res["files"]))
            return
        if res["side"] == "src":
            stats["src_rows"] += res["count"]
            stats["dirs"] += res["dirs"]
            stats["metadata_ops"] += res["ops"]
            if res["spool"]:
                src_spools.append((res["spool"], res["count"]))
                if use_prehash:
                    for j in range(0, res["count"], PREHASH_ROWS):
                        speculative.append(("pre", res["spool"], j,
                                            min(PREHASH_ROWS, res["count"] - j)))
            pending.extend(("src", batch) for batch in WALK.walk_batches(res["pending"], window))
        else:
            if res.get("error"):
                list_errors.append(res["error"])
            stats["dst_rows"] += res["count"]
            stats["markers"] += res["markers"]
            stats["list_requests"] += res["requests"]
            if res["spool"]:
                dst_spools.append((res["spool"], res["count"]))
            # Fan out one more level only while the prefixes found so far are fewer than
            # the tasks the cluster runs at once: each listing request costs a round trip
            # (and money on S3), so a thousand folders of twenty objects each are cheaper
            # as a few recursive listings than as a thousand delimiter listings.
            pending.extend(list_followups(res, cfg.fanout_depth, window))

    def on_listed(res):
        on_result(res)
        if res["side"] == "pre":
            return
        prog.update(files=res["count"], nbytes=res.get("bytes", 0),
                    note=f"source {stats['src_rows']:,}, destination {stats['dst_rows']:,}")

    prog.stage("inventory", unit="entries")
    # half the threads may prehash: listings have left the thread pool (see _list_job)
    _submit_windowed(client, pending, submit, window, on_listed, speculative,
                     max(1, nthreads // 2), stop_flag.touch)
    prog.end_stage()
    if list_errors:
        raise RuntimeError("destination listing failed: " + "; ".join(list_errors[:3]))
    t_inv = time.monotonic()
    say(f"inventory: source {stats['src_rows']:,} entries in {stats['dirs']:,} directories, "
        f"destination {stats['dst_rows']:,} objects ({t_inv - t0:.1f} s)"
        + (f"; {pre['files']:,} small files ({pre['bytes'] / 1e9:.2f} GB) hashed meanwhile"
           if pre["files"] else ""))

    # --- 2. hash partitions --------------------------------------------------------------
    rows = max(stats["src_rows"], stats["dst_rows"])
    nparts = cfg.partitions or max(
        1, math.ceil(rows / cfg.rows_per_partition),
        # one partition per worker process once there is enough to share: planning and
        # reconciling a partition is GIL-bound Python/pandas work, so a single partition
        # keeps every process but one idle while it is planned and finished
        min(len(workers), rows // SPLIT_MIN_ROWS),
    )
    if inv_reused:
        nparts = saved["partitions"]
    elif prev_dir is not None and not cfg.partitions:
        # the previous run's layout: each partition then reads one previous file
        nparts = C.previous_partitions(prev_dir) or nparts
    # --metadata auto: the destination's metadata sample is drawn as its listing is compacted
    sample_k = MS.SAMPLE_PER_PREFIX if cfg.metadata == "auto" and cfg.mode == "stored" else 0
    futs, dst_futs = [], []
    for side, spools in (("src", src_spools), ("dst", dst_spools), ("checksums", sum_spools)):
        out_dir = str(run_dir / "inventory" / side)
        for gi, group in enumerate(_groups(spools, 1_000_000)):
            futs.append(client.submit(INV.compact, group, out_dir, nparts, f"c{gi:05d}",
                                      sample_k if side == "dst" else 0,
                                      pure=False, key=f"compact-{side}-{gi}-{run_id}"))
            if side == "dst":
                dst_futs.append(futs[-1])
    prehash_dir = str(run_dir / "inventory" / "prehash") if pre_spools else None
    pre_futs = [client.submit(INV.compact, group, prehash_dir, nparts, f"c{gi:05d}",
                              pure=False, key=f"compact-prehash-{gi}-{run_id}")
                for gi, group in enumerate(_groups(pre_spools, 1_000_000))]
    from distributed import as_completed

    prog.stage("partition", unit="rows", total_files=stats["src_rows"] + stats["dst_rows"])
    for fut in as_completed(futs):
        prog.update(files=fut.result()["rows"])
    client.gather(pre_futs)
    prog.end_stage()
    decision = _metadata_decision(client, cfg, run_dir, target, inv_reused,
                                  [f.result()["sample"] for f in dst_futs], run_id, say)
    shutil.rmtree(spool, ignore_errors=True)
    if not inv_reused:
        tmp_marker = inv_marker.with_name(".complete.json.tmp")
        tmp_marker.write_text(json.dumps({"partitions": nparts, "stats": stats}))
        os.replace(tmp_marker, inv_marker)
    t_part = time.monotonic()
    say(f"partitioned into {nparts} partition(s) ({t_part - t_inv:.1f} s)")

    # --- 3+4. per partition: plan, digest, reconcile -----------------------------------------
    ctx = R.Context.from_config(
        cfg, root=root, target=target, run_dir=str(run_dir), run_id=run_id,
        min_units=4 * nthreads, previous_run=str(prev_dir) if prev_dir is not None else None,
        metadata_decision=decision)
    totals = REP.empty_totals()
    pending_parts = []
    reused_parts = 0
    for p in range(nparts - 1, -1, -1):
        if cfg.resume and ctx.part_path(p).is_file():
            REP.add_totals(totals, ASSEMBLE.summarize(pq.read_table(ctx.part_path(p))))
            reused_parts += 1
        else:
            pending_parts.append(p)
    if cfg.resume:
        say(f"resuming run {run_id}: inventory {'reused' if inv_reused else 'redone'}, "
            f"{reused_parts}/{nparts} partitions already reconciled")

    def submit_part(p):
        return client.submit(_partition_job, ctx, p, topic, prehash_dir, pure=False,
                             key=f"partition-{p}-{run_id}")

    open_intervals: list[tuple[float, float]] = []

    def on_part(res):
        open_intervals.extend(res.pop("open_intervals", ()))
        REP.add_totals(totals, res)
        done = totals["partitions"]
        prog.update(note=f"{done}/{nparts} partitions, {totals['rows']:,} keys reconciled")
        if nparts > 1:
            say(f"partition {done}/{nparts} done: {totals['rows']:,} keys, "
                f"{totals['bytes_read_src'] / 1e9:.2f} GB read")

    # digest units report their bytes as they finish; only when someone watches
    topic = f"wiseverify-progress-{run_id}" if prog.mode != "off" else None
    prog.stage("digest", unit="files")
    unwatch = prog.watch(client, topic) if topic else (lambda: None)
    try:
        _submit_windowed(client, pending_parts, submit_part, max(2, min(nparts, nthreads)),
                         on_part)
    finally:
        unwatch()
        prog.end_stage()
    t_rec = time.monotonic()
    say(f"digest and reconcile: {totals['rows']:,} keys, "
        f"{totals['bytes_read_src'] / 1e9:.2f} GB read from source, "
        f"{totals['bytes_read_dst'] / 1e9:.2f} GB from destination ({t_rec - t_part:.1f} s)")

    finished = datetime.now(UTC)
    summary = REP.build_summary(
        run_id=run_id, root=root, dest=target.url, mode=cfg.mode, metadata=cfg.metadata,
        metadata_sample=(decision or MS.Decision()).counts(), totals=totals,
        started=started, finished=finished, nparts=nparts, stats=stats,
        workers=sorted(workers), hostname=socket.gethostname(),
        timings={"inventory_s": round(t_inv - t0, 3), "partition_s": round(t_part - t_inv, 3),
                 "reconcile_s": round(t_rec - t_part, 3),
                 "total_s": round(time.monotonic() - t0, 3)},
    )
    summary["inventory"].update(prehashed_files=pre["files"], prehashed_bytes=pre["bytes"])
    summary["requests"]["metadata_sample"] = decision.sampled if decision is not None else 0
    if stats.get("ingest"):
        summary["ingest"] = stats["ingest"]
    summary["digest_units"] = {
        "units": totals.get("units", 0),
        "max_concurrent": CHECKPOINT.max_overlap(open_intervals),
        "max_open_files": cfg.max_open_files,
    }
    summary["incremental"] = {
        "previous_run": str(prev_dir) if prev_dir is not None else None,
        "note": prev_note, "carried": totals.get("carried", 0)}
    if cfg.resume:
        summary["resumed"] = {"inventory_reused": inv_reused, "partitions_reused": reused_parts,
                              "units_reused": totals.get("units_reused", 0),
                              "units_computed": totals.get("units", 0)
                              - totals.get("units_reused", 0)}
    HTML.write_outputs(run_dir, summary)
    # the audit record comes last: it hashes every output, report.html included
    manifest = AUD.write_manifest(run_dir, previous=cfg.previous_run,
                                  cluster=AUD.describe_cluster(client))
    say(f"report: {run_dir / 'report.html'}, audit manifest: {manifest}")
    return summary


def _metadata_decision(client, cfg: VerifyConfig, run_dir: Path, target: S3Target,
                       inv_reused: bool, samples: list[dict], run_id: str,
                       say: Callable[[str], None]) -> MS.Decision | None:
    """``--metadata auto``: HEAD the run's sample (one worker task) and decide each prefix.

    Kept in the run directory: a resumed run decides as the interrupted one did.
    """
    if cfg.metadata != "auto" or cfg.mode != "stored":
        return None
    path = run_dir / "inventory" / "metadata_sample.json"
    if inv_reused and path.is_file():
        return MS.Decision.from_json(json.loads(path.read_text()))
    sample = MS.merge_samples(samples)
    decision = client.submit(MS.probe, target, sample, cfg.head_concurrency, pure=False,
                             key=f"metadata-sample-{run_id}").result()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(decision.to_json()))
    os.replace(tmp, path)
    n = {s: sum(1 for v in decision.state.values() if v == s)
         for s in (MS.WITH, MS.WITHOUT, MS.FAILED)}
    say(f"metadata sample: {decision.sampled:,} objects in {len(decision.state):,} top-level "
        f"prefixes; POSIX metadata in {n[MS.WITH]:,}, none in {n[MS.WITHOUT]:,}"
        + (f", not sampled in {n[MS.FAILED]:,}" if n[MS.FAILED] else ""))
    return decision
