"""Stage 1 driven: the walk, the listing and the ingest tasks, submitted in a window.

The driver holds directory names, prefixes, spool paths and counts, never rows:
each task writes its rows to a spool file and hands back the work it left.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from wiseverify.core import runio as RUNIO

# the config and its errors, where callers have always found them
from wiseverify.core.s3 import S3Target
from wiseverify.digest import hashing as D
from wiseverify.inventory import s3list as S3LIST
from wiseverify.inventory import spool as SPOOL
from wiseverify.inventory import walk as INV

#: source inventory rows per listing-time prehash task (see _prehash_job)
PREHASH_ROWS = 1_000


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
    res = S3LIST.list_prefix(target, rel, delimiter, spool)
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

    from wiseverify.core import schema as S
    from wiseverify.inventory import hsm

    cols = ["key_bytes", "nkey", "kind", "size", "mtime_ns", "blocks", "error", "name_problem"]
    rows = SPOOL.read_spool(spool, columns=cols).slice(start, count).to_pylist()
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
    RUNIO.write_atomic(table, out)
    return {"side": "pre", "files": len(done), "bytes": sum(d[1] for d in done), "spool": out}
