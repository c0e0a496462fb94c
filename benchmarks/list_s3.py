"""Benchmark: the destination listing against ``rclone lsf -R`` on the same endpoint.

Why this exists: listing 30 million objects is a stage of its own in a cutover
window.  The tool lists ListObjectsV2 pages in parallel tasks, fanned out by
common prefixes with a bound on the listings in flight; rclone is the usual
tool an operator would time against it.

What it does:

* starts a local S3 endpoint (moto server on 127.0.0.1, real HTTP) and uploads
  ``--objects`` (default 50,000) small objects under ``PREFIX`` in
  ``--top`` x ``--sub`` prefixes (default 25 x 20), plus ``--outside`` objects
  (default 2,000) beside the prefix that neither tool may list, from
  ``--threads`` upload threads (default 32);
* starts a Dask LocalCluster as ``wiseverify verify`` does and runs the tool's
  destination inventory stage on it (:func:`wiseverify.run.inventory_stage.list_dest`:
  the listing tasks of ``verify``, spooling Parquet, counting);
* runs ``rclone lsf -R`` and ``rclone lsf -R --fast-list`` on the same prefix
  (remote configured through ``RCLONE_CONFIG_*`` variables), output counted;
* alternates them ``--repeat`` times (default 2), keeps each one's best wall and
  compares with the faster rclone variant;
* measures the client-side CPU per object of both (the tool's worker processes,
  rclone's process): what a worker can list per second of CPU when the
  endpoint is not the bottleneck, the figure the capacity plan uses.

The endpoint is single-threaded Python: it scans every key of the bucket on
every ListObjectsV2 request, so the request count, not only the client, sets
the walls.  Both are printed, with the endpoint's CPU seconds.  The last line is::

    RESULT list_s3 ours=<s> rclone=<s> ratio=<r> objects=<n> ...

Run: ``.venv/bin/python benchmarks/list_s3.py [--objects N] [--repeat N]``
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from _bench import (
    clean_up,
    load,
    load_kv,
    make_workdir,
    print_results,
    rclone_env,
    venv_bin,
    workers_cpu,
)

from wiseverify.core.s3 import S3Target
from wiseverify.demo.locals3 import FAKE_CREDENTIALS, LocalS3
from wiseverify.deploy.cluster import open_client
from wiseverify.run.inventory_stage import list_dest

BUCKET = "list-bench"
PREFIX = "data/"
REMOTE = "WVLIST"


def _endpoint_cpu(s3: LocalS3) -> float:
    """CPU seconds the endpoint process has used so far."""
    try:
        import psutil

        t = psutil.Process(s3.proc.pid).cpu_times()
        return t.user + t.system
    except Exception:
        return 0.0


def upload(s3: LocalS3, keys: list[str], threads: int) -> float:
    """PUT every key (a few bytes each) from ``threads`` threads; returns seconds."""
    t0 = time.monotonic()
    clients = [s3.client() for _ in range(threads)]  # created here: not thread-safe to create
    local = threading.local()
    lock = threading.Lock()

    def put(key: str) -> None:
        c = getattr(local, "c", None)
        if c is None:
            with lock:
                c = local.c = clients.pop()
        c.put_object(Bucket=BUCKET, Key=key, Body=key.encode()[-(len(key) % 50):])

    with cf.ThreadPoolExecutor(threads) as ex:
        for _ in ex.map(put, keys, chunksize=256):
            pass
    return time.monotonic() - t0


def fixture_keys(top: int, sub: int, objects: int, outside: int) -> tuple[list[str], list[str]]:
    per = -(-objects // (top * sub))
    inside = []
    for i in range(objects):
        leaf = i // per
        inside.append(f"{PREFIX}proj{leaf // sub:03d}/run{leaf % sub:03d}/obj{i:07d}.dat")
    beside = [f"{PREFIX.rstrip('/')}-old/obj{i:06d}.dat" for i in range(outside)]
    return inside, beside


def run_rclone(s3: LocalS3, fast_list: bool) -> tuple[float, int, float, float]:
    """``rclone lsf -R [--fast-list] remote:bucket/prefix``: wall, lines, endpoint and own CPU."""
    cmd = [venv_bin("rclone"), "lsf", "-R", "--files-only", f"{REMOTE}:{BUCKET}/{PREFIX.rstrip('/')}"]
    if fast_list:
        cmd.append("--fast-list")
    cpu0 = _endpoint_cpu(s3)
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=rclone_env(s3, REMOTE), capture_output=True)
    wall = time.monotonic() - t0
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"rclone exited {p.returncode}: {p.stderr.decode()[-2000:]}")
    own = own1.ru_utime - own0.ru_utime + own1.ru_stime - own0.ru_stime
    return wall, p.stdout.count(b"\n"), _endpoint_cpu(s3) - cpu0, own


def run_ours(client, target: S3Target, spool: Path) -> tuple[float, dict]:
    """The tool's listing stage on the cluster: wall seconds and its counts (with CPU)."""
    shutil.rmtree(spool, ignore_errors=True)
    cpu0 = workers_cpu(client)
    t0 = time.monotonic()
    res = list_dest(client, target, str(spool))
    wall = time.monotonic() - t0
    res["cpu_s"] = workers_cpu(client) - cpu0
    shutil.rmtree(spool, ignore_errors=True)
    if res["errors"]:
        raise SystemExit(f"listing failed: {res['errors'][:2]}")
    return wall, res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=50_000)
    ap.add_argument("--top", type=int, default=25, help="first-level prefixes")
    ap.add_argument("--sub", type=int, default=20, help="second-level prefixes in each")
    ap.add_argument("--outside", type=int, default=2_000)
    ap.add_argument("--threads", type=int, default=32, help="upload threads")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", help="for the endpoint log and spool (default: a temp dir)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)

    for k, v in FAKE_CREDENTIALS.items():
        os.environ.setdefault(k, v)
    base = make_workdir("wv-list-", args.workdir)
    print(f"workdir {base}  (cpus {os.cpu_count()}, {load()})", flush=True)
    lines: list[str] = []
    try:
        with LocalS3(log_path=str(base / "moto.log")) as s3:
            s3.client().create_bucket(Bucket=BUCKET)
            inside, beside = fixture_keys(args.top, args.sub, args.objects, args.outside)
            secs = upload(s3, inside + beside, args.threads)
            print(f"fixture: {len(inside):,} objects under s3://{BUCKET}/{PREFIX} in "
                  f"{args.top} x {args.sub} prefixes, {len(beside):,} beside it; uploaded "
                  f"from {args.threads} threads in {secs:.1f} s "
                  f"({(len(inside) + len(beside)) / secs:,.0f} PUT/s)  [{load()}]", flush=True)
            target = S3Target.parse(f"s3://{BUCKET}/{PREFIX}", endpoint_url=s3.url)
            spool = base / "spool"
            t0 = time.monotonic()
            with open_client() as client:
                info = client.scheduler_info(n_workers=-1)["workers"]
                print(f"LocalCluster: {len(info)} worker processes, "
                      f"{sum(w['nthreads'] for w in info.values())} threads, up in "
                      f"{time.monotonic() - t0:.1f} s (not counted below)", flush=True)
                run_ours(client, target, spool)  # warm: worker imports, connections
                ours, plain, fast = [], [], []
                for i in range(args.repeat):
                    cpu0 = _endpoint_cpu(s3)
                    wall, res = run_ours(client, target, spool)
                    ours.append((wall, res, _endpoint_cpu(s3) - cpu0))
                    plain.append(run_rclone(s3, False))
                    fast.append(run_rclone(s3, True))
                    print(f"  run {i + 1}: ours {wall:.2f} s ({res['count']:,} objects, "
                          f"{res['requests']} requests, {res['tasks']} tasks), rclone lsf -R "
                          f"{plain[-1][0]:.2f} s, with --fast-list {fast[-1][0]:.2f} s  "
                          f"[{load()}]", flush=True)
                    for name, (_, n, _, _) in (("rclone", plain[-1]), ("rclone --fast-list",
                                                                        fast[-1])):
                        if n != len(inside):
                            raise SystemExit(f"{name} listed {n:,}, expected {len(inside):,}")
                    if res["count"] != len(inside):
                        raise SystemExit(f"ours listed {res['count']:,}, expected {len(inside):,}")
            ow, ores, ocpu = min(ours, key=lambda r: r[0])
            pw, _, pcpu, pown = min(plain)
            fw, _, fcpu, fown = min(fast)
            ocli = min(r[1]["cpu_s"] for r in ours)
            best_name, bw = ("rclone lsf -R --fast-list", fw) if fw < pw else ("rclone lsf -R", pw)
            ratio = ow / bw
            print(f"\n== destination listing, {len(inside):,} objects, best of {args.repeat}  "
                  f"[{load()}]")
            n = ores["count"]
            print(f"  wiseverify list_dest       wall {ow:6.2f} s  endpoint CPU {ocpu:5.1f} s  "
                  f"client CPU {ocli:5.2f} s ({ores['requests']} ListObjectsV2 requests, "
                  f"{ores['tasks']} tasks, fan-out depth {ores['max_depth']})")
            print(f"  rclone lsf -R              wall {pw:6.2f} s  endpoint CPU {pcpu:5.1f} s  "
                  f"client CPU {pown:5.2f} s")
            print(f"  rclone lsf -R --fast-list  wall {fw:6.2f} s  endpoint CPU {fcpu:5.1f} s  "
                  f"client CPU {fown:5.2f} s")
            print(f"  endpoint CPU per request (ours): {ocpu / max(1, ores['requests']):.2f} s; "
                  f"client CPU per 1,000 objects: ours {ocli / n * 1e3 * 1e3:.0f} ms "
                  f"({n / max(ocli, 1e-9):,.0f} objects per CPU second), rclone "
                  f"{fown / n * 1e6:.0f} ms")
            print(f"  ratio to the faster ({best_name}): {ratio:.3f} -> "
                  f"{'OK' if ratio <= 1.0 else 'ABOVE 1.0'}")
            lines.append(f"RESULT list_s3 ours={ow:.2f} rclone={bw:.2f} ratio={ratio:.3f} "
                         f"objects={ores['count']} rclone_plain={pw:.2f} "
                         f"rclone_fast_list={fw:.2f} requests={ores['requests']} "
                         f"client_cpu_s={ocli:.2f} objects_per_cpu_s={n / max(ocli, 1e-9):.0f} "
                         f"{load_kv()}")
    finally:
        clean_up(base, args.keep)
    return print_results(lines)


if __name__ == "__main__":
    sys.exit(main())
