"""Benchmark: what ``--metadata auto`` costs in HeadObject requests, and how fast they go.

Why this exists: under ``--metadata auto`` every object of a prefix whose
sample carries DataSync/FSx ``file-*`` metadata is HEADed (its metadata can
only be read that way), and a prefix without it costs only the sample.  The
capacity plan needs both figures at 30 million objects: the HEAD count on
each kind of destination and the rate HEADs go at.

The same tree of ``--files`` small files is uploaded twice: under ``ds/`` with
DataSync-style metadata on every object, under ``sb/`` with none (a Snowball
import).  Measured in one run:

* ``wiseverify verify`` on each prefix (whole CLI, cluster start included):
  wall time and the HEADs it sent, per 1,000 objects;
* the tool's HEAD path alone (aiobotocore through :class:`S3Target`, 32 in
  flight, as a partition task sends them): HEADs per second and the client's
  CPU per HEAD, the figure that bounds a core against a real S3 endpoint
  whose round trip is latency, not CPU;
* the comparator, ``rclone lsjson -R --metadata`` on ``ds/``, which also
  HEADs every object for its metadata.

The endpoint is moto, single-threaded Python: its CPU per request is printed,
and bounds both tools' rates here.  The last line is::

    RESULT head_rate ours_heads_per_s=<r> rclone_heads_per_s=<r> ratio=<r> ...

Run: ``.venv/bin/python benchmarks/head_rate.py [--files N] [--workdir DIR] [--keep]``
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from _bench import clean_up, load, load_kv, make_workdir, print_results, rclone_env, venv_bin

from wiseverify.core.bursts import gather_limited
from wiseverify.core.s3 import S3Target
from wiseverify.demo.locals3 import FAKE_CREDENTIALS, LocalS3, posix_metadata

BUCKET = "head-bench"
REMOTE = "WVHEAD"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _endpoint_cpu(s3: LocalS3) -> float:
    import psutil

    t = psutil.Process(s3.proc.pid).cpu_times()
    return t.user + t.system


def build(root: Path, s3: LocalS3, files: int, threads: int) -> list[str]:
    rng = random.Random(5)
    rels = []
    for i in range(files):
        rel = f"d{i % 40:02d}/f{i:06d}.txt"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(0, 2000)))
        rels.append(rel)
    c = s3.client()
    c.create_bucket(Bucket=BUCKET)

    def put(rel: str) -> None:
        data = (root / rel).read_bytes()
        c.put_object(Bucket=BUCKET, Key="ds/" + rel, Body=data,
                     Metadata=posix_metadata((root / rel).lstat()))
        c.put_object(Bucket=BUCKET, Key="sb/" + rel, Body=data)

    with cf.ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, rels))
    return rels


def run_cli(root: Path, s3: LocalS3, prefix: str, out: Path) -> dict:
    exe = Path(sys.executable).parent / "wiseverify"
    cmd = [str(exe), "verify", str(root), f"s3://{BUCKET}/{prefix}", "--out", str(out),
           "--endpoint-url", s3.url]
    print(f"\n$ {' '.join(cmd)}   [{load()}]", flush=True)
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=dict(os.environ, **FAKE_CREDENTIALS), capture_output=True,
                       text=True)
    wall = time.monotonic() - t0
    if p.returncode not in (0, 1):
        print(p.stdout[-3000:], p.stderr[-3000:], sep="\n")
        raise SystemExit(f"wiseverify exited {p.returncode}")
    s = json.loads((out / "summary.json").read_text())
    for line in p.stdout.splitlines():
        if line.startswith(("metadata", "wiseverify ")):
            print("  | " + line)
    heads = s["requests"]["head_get_plan"] + s["requests"]["metadata_sample"]
    return {"wall": wall, "heads": heads, "metadata": s["metadata"],
            "counts": {k: v for k, v in s["counts"].items() if v}}


def head_loop(s3: LocalS3, keys: list[str], concurrency: int) -> dict:
    """The tool's HEAD path alone: one client, ``concurrency`` requests in flight."""
    target = S3Target.parse(f"s3://{BUCKET}/", endpoint_url=s3.url)

    def heads(some: list[str]):
        async def _all():
            client = await target.client()
            return await gather_limited(
                some, lambda k: client.head_object(Bucket=BUCKET, Key=k, ChecksumMode="ENABLED"),
                concurrency)
        return target.run(_all)

    heads(keys[:concurrency])  # the client and its connections, outside the timing
    e0, c0, t0 = _endpoint_cpu(s3), _cpu(), time.monotonic()
    got = heads(keys)
    wall, cpu, ecpu = time.monotonic() - t0, _cpu() - c0, _endpoint_cpu(s3) - e0
    assert all("file-mtime" in h["Metadata"] for h in got)
    return {"wall": wall, "rate": len(keys) / wall, "client_cpu_us": 1e6 * cpu / len(keys),
            "endpoint_cpu_us": 1e6 * ecpu / len(keys)}


def rclone_metadata(s3: LocalS3, n: int) -> dict:
    cmd = [venv_bin("rclone"), "lsjson", "-R", "--files-only", "--metadata", "--checkers", "32",
           f"{REMOTE}:{BUCKET}/ds"]
    print(f"\n$ {' '.join(cmd)}   [{load()}]", flush=True)
    e0, t0 = _endpoint_cpu(s3), time.monotonic()
    p = subprocess.run(cmd, env=rclone_env(s3, REMOTE), capture_output=True, text=True)
    wall, ecpu = time.monotonic() - t0, _endpoint_cpu(s3) - e0
    if p.returncode != 0:
        raise SystemExit(f"rclone exited {p.returncode}: {p.stderr[-2000:]}")
    rows = json.loads(p.stdout)
    with_md = sum(1 for r in rows if "file-mtime" in (r.get("Metadata") or {}))
    if len(rows) != n or with_md != n:
        raise SystemExit(f"rclone listed {len(rows)} objects, {with_md} with metadata")
    return {"wall": wall, "rate": n / wall, "endpoint_cpu_us": 1e6 * ecpu / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=5000, help="objects per prefix (default 5000)")
    ap.add_argument("--concurrency", type=int, default=32, help="HEADs in flight (default 32)")
    ap.add_argument("--threads", type=int, default=16, help="upload threads")
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    for k, v in FAKE_CREDENTIALS.items():
        os.environ.setdefault(k, v)
    base = make_workdir("wv-head-", args.workdir)
    lines = []
    try:
        with LocalS3(log_path=str(base / "moto.log")) as s3:
            t0 = time.monotonic()
            rels = build(base / "src", s3, args.files, args.threads)
            print(f"fixture: {len(rels):,} files, uploaded twice (ds/ with DataSync metadata, "
                  f"sb/ without) in {time.monotonic() - t0:.1f} s  [{load()}]", flush=True)
            ds = run_cli(base / "src", s3, "ds/", base / "run-ds")
            sb = run_cli(base / "src", s3, "sb/", base / "run-sb")
            loop = head_loop(s3, ["ds/" + r for r in rels], args.concurrency)
            print(f"\nHEAD path alone: {loop['rate']:,.0f} HEAD/s at {args.concurrency} in "
                  f"flight, client {loop['client_cpu_us']:.0f} us CPU per HEAD, endpoint "
                  f"{loop['endpoint_cpu_us']:.0f} us", flush=True)
            rc = rclone_metadata(s3, len(rels))
            print(f"rclone lsjson --metadata: {rc['rate']:,.0f} objects/s, endpoint "
                  f"{rc['endpoint_cpu_us']:.0f} us per object", flush=True)
    finally:
        clean_up(base, args.keep)
    n = len(rels)
    print(f"\nds/ (DataSync): {ds['wall']:.1f} s, {ds['heads']:,} HEADs "
          f"({1000 * ds['heads'] / n:.0f} per 1,000), metadata {ds['metadata']['compared']:,}"
          f"/{ds['metadata']['objects']:,}, {ds['counts']}")
    print(f"sb/ (Snowball): {sb['wall']:.1f} s, {sb['heads']:,} HEADs "
          f"({1000 * sb['heads'] / n:.1f} per 1,000), metadata {sb['metadata']['compared']:,}"
          f"/{sb['metadata']['objects']:,}, {sb['counts']}")
    lines.append(
        f"RESULT head_rate ours_heads_per_s={loop['rate']:.0f} "
        f"rclone_heads_per_s={rc['rate']:.0f} ratio={rc['rate'] / loop['rate']:.2f} "
        f"client_cpu_us_per_head={loop['client_cpu_us']:.0f} "
        f"datasync_heads_per_1000={1000 * ds['heads'] / n:.0f} "
        f"snowball_heads_per_1000={1000 * sb['heads'] / n:.1f} "
        f"auto_added_s={ds['wall'] - sb['wall']:.1f} files={n} {load_kv()}")
    return print_results(lines)


if __name__ == "__main__":
    sys.exit(main())
