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

import contextlib
import functools
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

from . import __version__
from . import audit as AUD
from . import carry as C
from . import digest as D
from . import htmlreport as HTML
from . import ingest as INGEST
from . import inventory as INV
from . import metascope as MS
from . import progress as PROG
from . import reconcile as R
from . import report as REP

# the config and its errors, where callers have always found them
from .config import LOWER_LIMITS, VerifyConfig, check_limits  # noqa: F401, I001
from .errors import ConfigError  # noqa: F401
from .s3 import S3Target, preflight

#: below this many keys per worker process a run stays in one partition
SPLIT_MIN_ROWS = 5_000
#: source inventory rows per listing-time prehash task (see _prehash_job)
PREHASH_ROWS = 1_000




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


def _submit_windowed(client, pending: list, submit, window: int, on_result,
                     speculative: list | None = None, spec_window: int = 0,
                     on_main_done: Callable[[], None] | None = None) -> None:
    """Keep at most ``window`` tasks in flight; ``on_result`` may add more to ``pending``.

    ``speculative`` jobs (which ``on_result`` may also add to) run at most
    ``spec_window`` at a time and only while main jobs are still in flight: once
    the main work is done, ``on_main_done`` is called, the speculative jobs not
    yet started are dropped and the running ones are awaited.
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
        while speculative and inflight and len(spec_keys) < spec_window:
            fut = submit(speculative.pop())
            spec_keys.add(fut.key)
            ac.add(fut)

    fill()
    for fut in ac:
        if fut.key in spec_keys:
            spec_keys.discard(fut.key)
        else:
            inflight -= 1
        on_result(fut.result())
        fut.release()
        fill()
        if not inflight and not pending and speculative is not None:
            if on_main_done is not None:
                on_main_done()
                on_main_done = None
            speculative.clear()


def prepare(cfg: VerifyConfig) -> tuple[str, S3Target]:
    """Validate source and destination before any task is sent (exit 2 on failure).

    Settings are checked before anything touches the network.
    """
    from .s3 import S3ConfigError

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
            pending.extend(("src", batch) for batch in INV.walk_batches(res["pending"], window))
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
            REP.add_totals(totals, R.summarize(pq.read_table(ctx.part_path(p))))
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
        "max_concurrent": R.max_overlap(open_intervals),
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


def _groups(spools: list[tuple[str, int]], max_rows: int) -> list[list[str]]:
    groups: list[list[str]] = []
    cur: list[str] = []
    rows = 0
    for path, n in spools:
        if cur and rows + n > max_rows:
            groups.append(cur)
            cur, rows = [], 0
        cur.append(path)
        rows += n
    if cur:
        groups.append(cur)
    return groups


def _list_job(target: S3Target, rel: str, depth: int, delimiter: bool, spool: str) -> dict:
    # A listing mostly waits on the object store: leave the worker's thread pool so
    # CPU work (the walk, prehashing small files) is not queued behind it.  The
    # driver's window still bounds how many listings are in flight.
    with contextlib.suppress(ValueError):  # not running as a Dask task
        from distributed import secede

        secede()
    res = INV.list_prefix(target, rel, delimiter, spool)
    res["side"] = "dst"
    res["depth"] = depth
    if not delimiter:
        res["pending"] = []
    return res


def _walk_job(*args, **kwargs) -> dict:
    res = INV.walk_dirs(*args, **kwargs)
    res["side"] = "src"
    return res


def inventory_window(workers: dict) -> int:
    """Walk and listing tasks kept in flight: twice the cluster's threads, so the next
    task is queued on a worker before the last one returns."""
    return max(2, 2 * (sum(w.get("nthreads", 1) for w in workers.values()) or 1))


def walk_ops_per_task(max_metadata_ops: float | None, window: int, workers: int) -> float | None:
    """Each walk task's share of ``--max-metadata-ops``.

    Walk tasks of one worker process take turns (``inventory.walk_dirs``), so
    at most one per worker process walks at a time, however many the window
    holds: sharing the cap among those gives the metadata server the whole
    rate that was asked for, and never more.
    """
    if not max_metadata_ops:
        return None
    return max_metadata_ops / max(1, min(window, workers))


def submit_walk(client, root: str, rel_dirs: list, spool_file: str, prefix: str, budget: int,
                ops_per_task: float | None, key: str, **walk_kwargs):
    """Submit one source walk task (:func:`inventory.walk_dirs`) and return its future.

    The task that starts at the root gets a small budget: it returns after a few
    thousand entries with the rest of the tree as pending directories, so every
    worker is walking within milliseconds instead of waiting for the first
    ``budget`` entries.
    """
    if list(rel_dirs) == [b""]:
        budget = min(budget, INV.FIRST_BUDGET)
    return client.submit(_walk_job, root, rel_dirs, spool_file, prefix, budget, ops_per_task,
                         pure=False, key=key, **walk_kwargs)


def walk_source(client, root: str, spool_dir: str, prefix: str = "", budget: int = 50_000,
                max_metadata_ops: float | None = None, window: int | None = None,
                **walk_kwargs) -> dict:
    """The source walk of :func:`verify` on its own: walk tasks over ``client``'s cluster.

    Why it exists: the walk is the stage a Lustre MDS limits, and it must be
    measurable and tunable without a destination.  It drives the same tasks
    the same way (:func:`submit_walk`, :func:`inventory.walk_batches`, the
    same window and per-task share of ``max_metadata_ops``) and returns the
    counts and the spool files ``[(path, rows)]``.  ``walk_kwargs`` go to
    :func:`inventory.walk_dirs` (``threads``, ``split_entries``, ``stat_delay_us``).
    """
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if window is None:
        window = inventory_window(workers)
    ops_per_task = walk_ops_per_task(max_metadata_ops, window, len(workers))
    Path(spool_dir).mkdir(parents=True, exist_ok=True)
    out: dict = {"count": 0, "dirs": 0, "ops": 0, "bytes": 0, "tasks": 0, "spools": [],
                 "max_threads": 0}
    pending: list[tuple] = [("src", [b""])]
    seq = iter(range(1 << 62))
    tag = uuid.uuid4().hex[:8]

    def submit(job):
        n = next(seq)
        return submit_walk(client, root, job[1], os.path.join(spool_dir, f"src-{n:08d}.arrow"),
                           prefix, budget, ops_per_task, key=f"walk-{n}-{tag}", **walk_kwargs)

    def on_result(res):
        for k in ("count", "dirs", "ops", "bytes"):
            out[k] += res[k]
        out["tasks"] += 1
        out["max_threads"] = max(out["max_threads"], res.get("threads", 1))
        if res["spool"]:
            out["spools"].append((res["spool"], res["count"]))
        pending.extend(("src", batch) for batch in INV.walk_batches(res["pending"], window))

    _submit_windowed(client, pending, submit, window, on_result)
    return out


def list_followups(res: dict, fanout_depth: int, window: int) -> list[tuple]:
    """The listing jobs ``("dst", rel, depth, fan)`` for the common prefixes a listing found.

    A prefix is listed one level at a time (``fan``) only while it is shallower
    than ``fanout_depth`` and the prefixes found at once are fewer than the
    ``window`` of tasks in flight; otherwise it gets one recursive listing.
    """
    prefixes = res["pending"]
    depth = res["depth"] + 1
    fan = depth < fanout_depth and len(prefixes) < window
    return [("dst", rel, depth, fan) for rel in prefixes]


def list_dest(client, target: S3Target, spool_dir: str, fanout_depth: int = 2,
              window: int | None = None) -> dict:
    """The destination listing of :func:`verify` on its own: listing tasks on the cluster.

    Why it exists: listing 30 million objects is a stage of its own in the
    capacity plan, and it must be measurable against other listers without a
    source tree.  Same tasks, same fan-out by common prefixes
    (:func:`list_followups`), same bound on the listings in flight (``window``,
    default twice the cluster's threads).  Returns counts and spool files.
    """
    if window is None:
        window = inventory_window(client.scheduler_info(n_workers=-1).get("workers", {}))
    Path(spool_dir).mkdir(parents=True, exist_ok=True)
    out: dict = {"count": 0, "markers": 0, "requests": 0, "tasks": 0, "spools": [],
                 "errors": [], "max_depth": 0}
    pending: list[tuple] = [("dst", "", 0, fanout_depth > 0)]
    seq = iter(range(1 << 62))
    tag = uuid.uuid4().hex[:8]

    def submit(job):
        n = next(seq)
        _, rel, depth, fan = job
        return client.submit(_list_job, target, rel, depth, fan,
                             os.path.join(spool_dir, f"dst-{n:08d}.parquet"), pure=False,
                             key=f"list-{n}-{tag}")

    def on_result(res):
        out["tasks"] += 1
        for k in ("count", "markers", "requests"):
            out[k] += res[k]
        out["max_depth"] = max(out["max_depth"], res["depth"])
        if res.get("error"):
            out["errors"].append(res["error"])
        if res["spool"]:
            out["spools"].append((res["spool"], res["count"]))
        pending.extend(list_followups(res, fanout_depth, window))

    _submit_windowed(client, pending, submit, window, on_result)
    return out


def _prehash_job(root: str, spool: str, start: int, count: int, out: str, max_size: int,
                 stop_flag: str) -> dict:
    """:func:`_prehash_spool`, whose failure only means the digest stage reads the files."""
    try:
        return _prehash_spool(root, spool, start, count, out, max_size, stop_flag)
    except Exception:  # speculative work never fails the run
        return {"side": "pre", "files": 0, "bytes": 0, "spool": None}


def _prehash_spool(root: str, spool: str, start: int, count: int, out: str, max_size: int,
                   stop_flag: str) -> dict:
    """Hash the small regular files among ``count`` source rows of a walk spool.

    Speculative work that only fills the time the destination listing takes: it
    stops as soon as ``stop_flag`` exists.  The rows that may be HSM-released
    (fewer blocks than bytes) are left alone, as is anything the match stage
    will not hash (links, special files, unmappable names, listing errors).
    """
    import pyarrow as pa

    from . import hsm
    from . import schema as S

    cols = ["key_bytes", "nkey", "kind", "size", "mtime_ns", "blocks", "error", "name_problem"]
    rows = INV.read_spool(spool, columns=cols).slice(start, count).to_pylist()
    broot = os.fsencode(root)
    keep = [r for r in rows
            if r["kind"] == S.KIND_FILE and r["error"] is None and r["name_problem"] is None
            and 0 <= r["size"] < max_size and not hsm.may_be_released(r["size"], r["blocks"])]
    by_path = {broot + b"/" + r["key_bytes"]: r for r in keep}
    done = D.prehash_files(((p, r["size"], r["mtime_ns"]) for p, r in by_path.items()),
                           stop=lambda: os.path.exists(stop_flag))
    if not done:
        return {"side": "pre", "files": 0, "bytes": 0, "spool": None}
    table = pa.table({
        "nkey": [by_path[d[0]]["nkey"] for d in done],
        "key_bytes": [by_path[d[0]]["key_bytes"] for d in done],
        "size": [d[1] for d in done],
        "mtime_ns": [d[2] for d in done],
        "md5": [d[3] for d in done],
        "crc64nvme": [d[4] for d in done],
    }, schema=S.PREHASH)
    INV.write_atomic(table, out)
    return {"side": "pre", "files": len(done), "bytes": sum(d[1] for d in done), "spool": out}


@functools.lru_cache(maxsize=2)
def _known_for(prehash_dir: str, root: str, part: int) -> dict:
    """The prehashed digests of one partition, by absolute path (cached per process)."""
    from . import schema as S

    broot = os.fsencode(root)
    t = INV.read_partition(prehash_dir, part, S.PREHASH,
                           ["key_bytes", "size", "mtime_ns", "md5", "crc64nvme"]).to_pydict()
    return {broot + b"/" + kb: (size, mtime, md5, crc)  # the last entry of a path wins
            for kb, size, mtime, md5, crc in zip(t["key_bytes"], t["size"], t["mtime_ns"],
                                                 t["md5"], t["crc64nvme"], strict=True)}


def _unit_job(ctx: R.Context, units: list, topic: str | None, part: int, i: int,
              prehash_dir: str | None = None) -> dict:
    """One digest unit; publishes its files and bytes for the driver's progress line."""
    known = _known_for(prehash_dir, ctx.root, part) if prehash_dir else None
    with D.known_digests(known):
        res = R.run_unit_checkpointed(ctx, units[0], part, i)
    unit = units[0]
    PROG.unit_done(topic, files=sum(1 for r in unit.ranges if r.offset == 0),
                   nbytes=unit.nbytes)
    return res


def _partition_job(ctx: R.Context, part: int, topic: str | None = None,
                   prehash_dir: str | None = None) -> dict:
    """One partition end to end, fanning its digest units out to the whole cluster.

    The task secedes from its worker's thread pool while the units run, so
    partition tasks never starve the digest units of threads.
    """
    from distributed import get_client, rejoin, secede

    plan = R.plan_partition(ctx, part, prehash_dir)
    units = plan["units"]
    PROG.unit_done(topic, plan_files=sum(1 for u in units for r in u.ranges if r.offset == 0),
                   plan_bytes=sum(u.nbytes for u in units))
    if not units:
        return R.finish_partition(ctx, plan)
    client = get_client()
    futs = [
        client.submit(_unit_job, ctx, [u], topic, part, i, prehash_dir, pure=False,
                      key=f"digest-p{part}-u{i}-{ctx.run_id}")
        for i, u in enumerate(units)
    ]
    secede()
    try:
        results = client.gather(futs)
    finally:
        rejoin()
    return R.finish_partition(ctx, plan, *results)
