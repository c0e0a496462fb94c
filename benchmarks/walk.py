"""Benchmark: the source walk against GNU find, and against a slow metadata server.

Why this exists: on Lustre the walk is bounded by the metadata server, not by
the verifier, so the verifier's own cost per entry must stay at the level of
``find`` (the tool an administrator would reach for), and its throughput must
grow with concurrency when every ``lstat`` is a round trip to a busy server.

What it does:

* builds a real tree of ``--files`` (default 520,000) empty and small files:
  a deep part (6 x 6 x 6 x 6 directories), a flat part (10 directories of
  10,000 entries) and one huge directory (``--huge``, default 120,000 entries);
* starts a Dask LocalCluster the way ``wiseverify verify`` does
  (:func:`wiseverify.deploy.cluster.open_client`) and runs the tool's source
  inventory stage on it (:func:`wiseverify.run.inventory_stage.walk_source`: the walk
  tasks of ``verify``, spooling Arrow IPC files, counting), and
  ``find ROOT -printf '%s %T@ %p\\n' > /dev/null``, alternately, warm cache,
  ``--repeat`` times each (default 3), keeping each one's best wall;
* walks a subtree again with a simulated slow metadata server (the walk's
  test hook sleeps ``--slow-us`` microseconds, default 1000, before every
  metadata operation) at 1, 2, 4, 8 and 16 lstat threads per task, with the
  automatic thread choice, and under ``--max-metadata-ops``.

CPU seconds are printed beside the walls.  Linux shares CPU time between
sessions (sched_autogroup): while other sessions keep the machine busy, the two
worker processes in this script's session together get no more CPU than one
``find`` in the same session.  The comparison is therefore made twice: as
started, and with each worker and ``find`` in a session of its own (as a batch
system starts worker jobs); the RESULT line gives both ratios.  The last line is::

    RESULT walk ours=<s> find=<s> ratio=<r> files=<n> ...

Run: ``.venv/bin/python benchmarks/walk.py [--workdir DIR] [--keep]``
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _bench import clean_up, load, load_kv, make_workdir, new_session, print_results, workers_cpu

from wiseverify.deploy.cluster import open_client
from wiseverify.run.inventory_stage import walk_source

DEEP_FANOUT = 6  # directories per level in the deep part, four levels
FLAT_DIRS = 10
FLAT_ENTRIES = 10_000


def build_tree(root: Path, files: int, huge: int) -> dict:
    """Create the tree; returns counts.  Every seventh file holds a few bytes."""
    t0 = time.monotonic()
    counts = {"files": 0, "dirs": 0}

    def fill(d: Path, n: int) -> None:
        d.mkdir(parents=True, exist_ok=True)
        counts["dirs"] += 1
        bd = os.fsencode(d)
        for i in range(n):
            fd = os.open(bd + b"/f%06d.dat" % i, os.O_CREAT | os.O_WRONLY, 0o644)
            if i % 7 == 0:
                os.write(fd, b"x" * (i % 4096))
            os.close(fd)
        counts["files"] += n

    fill(root / "huge", huge)
    for j in range(FLAT_DIRS):
        fill(root / "flat" / f"shard{j:02d}", FLAT_ENTRIES)
    # what is left goes to the deep part: 10 files in each inner directory, the
    # rest spread over the leaves
    leaves = DEEP_FANOUT ** 4
    inner = DEEP_FANOUT ** 3 + DEEP_FANOUT ** 2
    left = max(0, files - counts["files"] - 10 * inner)
    per_leaf, extra = divmod(left, leaves)
    leaf = 0
    r = range(DEEP_FANOUT)
    for a in r:
        for b in r:
            for c in r:
                for d in r:
                    fill(root / "deep" / f"a{a}" / f"b{b}" / f"c{c}" / f"d{d}",
                         per_leaf + (leaf < extra))
                    leaf += 1
                fill(root / "deep" / f"a{a}" / f"b{b}" / f"c{c}", 10)
            fill(root / "deep" / f"a{a}" / f"b{b}", 10)
    counts["build_s"] = time.monotonic() - t0
    return counts


def run_find(root: Path, own_session: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds of ``find ROOT -printf '%s %T@ %p\\n' > /dev/null``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(os.devnull, "wb") as null:
        subprocess.run(["find", str(root), "-printf", "%s %T@ %p\n"], stdout=null, check=True,
                       start_new_session=own_session)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_ours(client, root: Path, spool: Path, **kw) -> tuple[float, float, dict]:
    """Wall and worker CPU seconds of the source inventory stage, and its counts."""
    shutil.rmtree(spool, ignore_errors=True)
    cpu0 = workers_cpu(client)
    t0 = time.monotonic()
    res = walk_source(client, str(root), str(spool), **kw)
    wall = time.monotonic() - t0
    cpu = workers_cpu(client) - cpu0
    shutil.rmtree(spool, ignore_errors=True)
    return wall, cpu, res


def compare(client, root: Path, spool: Path, repeat: int, counts: dict | None,
            own_sessions: bool) -> tuple[float, float, float, float, dict]:
    """find and the walk, alternately, ``repeat`` times; the best wall and CPU of each."""
    finds, ours = [], []
    res: dict = {}
    for i in range(repeat):
        finds.append(run_find(root, own_sessions))
        wall, cpu, res = run_ours(client, root, spool)
        ours.append((wall, cpu))
        print(f"  run {i + 1}: find {finds[-1][0]:.2f} s ({finds[-1][1]:.2f} CPU s), "
              f"ours {wall:.2f} s ({cpu:.2f} CPU s in the workers), "
              f"{res['count']:,} entries, {res['tasks']} tasks  [{load()}]", flush=True)
        if counts is not None and res["count"] != counts["files"]:
            raise SystemExit(f"walk found {res['count']:,} entries, the tree has "
                             f"{counts['files']:,}")
    fw, fc = min(finds)
    ow, oc = min(ours)
    return fw, fc, ow, oc, res


def slow_series(client, root: Path, spool: Path, delay_us: float, cap: float) -> list[str]:
    """Throughput of the walk against a simulated slow metadata server."""
    print(f"\n== slow metadata server: {delay_us:.0f} us slept before every metadata "
          f"operation, subtree {root}  [{load()}]")
    print("   one walk task at a time (window 1), so the concurrency is the task's lstat threads")
    print(f"   {'threads':>8} {'files':>7} {'ops':>7} {'wall s':>7} {'ops/s':>8} {'files/s':>8}"
          f" {'speedup':>7}")
    parts = []
    base = None
    runs = [(t, None) for t in (1, 2, 4, 8, 16)] + [(None, None), (16, cap)]
    for threads, limit in runs:
        wall, _, res = run_ours(client, root, spool, window=1, threads=threads,
                                stat_delay_us=delay_us, max_metadata_ops=limit)
        rate = res["count"] / wall
        base = base or rate
        label = (f"{threads}" if threads else f"auto={res['max_threads']}") + \
            (f" cap {limit:.0f}/s" if limit else "")
        print(f"   {label:>8} {res['count']:7,} {res['ops']:7,} {wall:7.2f} "
              f"{res['ops'] / wall:8,.0f} {rate:8,.0f} {rate / base:6.1f}x", flush=True)
        key = "auto" if threads is None else (f"cap{threads}" if limit else f"t{threads}")
        parts.append(f"{key}={rate:.0f}")
        if limit:
            ok = res["ops"] / wall <= limit * 1.02
            print(f"   --max-metadata-ops {limit:.0f}: {res['ops'] / wall:,.0f} ops/s "
                  f"-> {'honoured' if ok else 'EXCEEDED'}")
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="where to build the tree (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the tree")
    ap.add_argument("--tree", help="walk an existing tree built by an earlier --keep run")
    ap.add_argument("--files", type=int, default=520_000)
    ap.add_argument("--huge", type=int, default=120_000, help="entries of the huge directory")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    ap.add_argument("--threads-per-worker", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slow-us", type=float, default=1000.0,
                    help="simulated metadata latency in microseconds (0: skip that part)")
    ap.add_argument("--slow-cap", type=float, default=2000.0,
                    help="--max-metadata-ops for the capped slow run")
    args = ap.parse_args(argv)

    base = make_workdir("wv-walk-", args.workdir)
    print(f"workdir {base}  (cpus {os.cpu_count()}, {load()})", flush=True)
    lines: list[str] = []
    try:
        if args.tree:
            root = Path(args.tree)
            print(f"tree {root} (existing, not deleted)")
            counts = None
        else:
            root = base / "tree"
            counts = build_tree(root, args.files, args.huge)
            print(f"tree: {counts['files']:,} files in {counts['dirs']:,} directories "
                  f"(deep {DEEP_FANOUT}^4, {FLAT_DIRS} x {FLAT_ENTRIES:,} flat, huge directory "
                  f"{args.huge:,}) built in {counts['build_s']:.1f} s", flush=True)
        spool = base / "spool"
        t0 = time.monotonic()
        with open_client(workers=args.workers, threads_per_worker=args.threads_per_worker) as client:
            info = client.scheduler_info(n_workers=-1)["workers"]
            nthreads = sum(w["nthreads"] for w in info.values())
            print(f"LocalCluster: {len(info)} worker processes, {nthreads} threads, up in "
                  f"{time.monotonic() - t0:.1f} s (not counted below)", flush=True)
            # warm both: page cache, dentry cache, the workers' imports
            run_find(root)
            run_ours(client, root, spool)
            same = compare(client, root, spool, args.repeat, counts, own_sessions=False)
            # Linux groups CPU time by session (sched_autogroup): in the session of
            # this script the two worker processes together get no more CPU than a
            # single find when other sessions keep the machine busy.  Each worker
            # in a session of its own, as a batch system starts them, and find in
            # one too: every process then gets the share a separate job would get.
            sids = client.run(new_session)
            print(f"\nworkers moved to sessions of their own: {sorted(sids.values())}")
            own = compare(client, root, spool, args.repeat, counts, own_sessions=True)
            for label, (fw, fc, ow, oc, res) in (("same session as find", same),
                                                 ("a session per process", own)):
                ratio = ow / fw
                print(f"\n== source walk, warm cache, best of {args.repeat}, {label}  "
                      f"[{load()}]")
                print(f"  find -printf '%s %T@ %p\\n'  wall {fw:6.2f} s   CPU {fc:5.2f} s")
                print(f"  wiseverify walk_source      wall {ow:6.2f} s   CPU {oc:5.2f} s "
                      f"(workers; {res['tasks']} tasks, {res['dirs']:,} directories, "
                      f"{res['ops']:,} metadata ops, spooled to Arrow IPC)")
                print(f"  per worker process: {res['count'] / ow / len(info):,.0f} entries/s; "
                      f"CPU per entry: ours {oc / res['count'] * 1e6:.2f} us, "
                      f"find {fc / res['count'] * 1e6:.2f} us")
                print(f"  ratio {ratio:.3f} (target <= 1.0) -> "
                      f"{'OK' if ratio <= 1.0 else 'ABOVE TARGET'}")
            fw, fc, ow, oc, res = own
            walk_line = (f"RESULT walk ours={ow:.2f} find={fw:.2f} ratio={ow / fw:.3f} "
                         f"ratio_same_session={same[2] / same[0]:.3f} files={res['count']} "
                         f"ours_cpu={oc:.2f} find_cpu={fc:.2f} workers={len(info)} "
                         f"{load_kv()}")
            if args.slow_us > 0:
                sub = root / "deep" / "a0" / "b0"
                parts = slow_series(client, sub, spool, args.slow_us, args.slow_cap)
                lines.append(f"RESULT walk_slow_mds delay_us={args.slow_us:.0f} files_per_s "
                             + " ".join(parts) + f" {load_kv()}")
            lines.append(walk_line)
    finally:
        clean_up(base, args.keep)
    return print_results(lines)


if __name__ == "__main__":
    sys.exit(main())
