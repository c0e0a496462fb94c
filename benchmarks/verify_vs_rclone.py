"""Benchmark: ``wiseverify verify`` against ``rclone check`` on the same fixture.

Why this exists: the usual tool for "did the copy arrive intact" is ``rclone
check``.  It compares sizes and the MD5 it finds in single-part ETags; for an
object uploaded in several parts without a stored checksum it has no hash, says
so, and still counts the file as matching.  wiseverify must cover those objects
too (by rebuilding the multipart ETag from the part layout) and still finish in
a fraction of rclone's wall time, cluster start-up included.  The readback
modes (``--mode readback`` / ``rclone check --download``) read every object
back and are compared the same way.

Fixture (built fresh each run, deleted afterwards unless ``--keep``):

* ``--files`` small files (default 20,400) in a two-level directory tree,
  log-normal sizes (median 20 KiB); a third uploaded with a stored CRC64NVME,
  the rest ETag-only;
* ``--multipart`` objects (default 12) of 100-160 MiB uploaded in 8 MiB parts
  with no checksum at all, as an old bulk import looks: only the multipart ETag;
* a local S3 endpoint (moto server on 127.0.0.1, real HTTP), uploads in
  parallel threads.

Both tools run as subprocesses, timed end to end (wiseverify's timing includes
starting its Dask LocalCluster), after the fixture is synced to disk and each has
run once untimed.  The comparison is made on several layouts
(``--files-per-dir``, default 20, 50 and 200 small files per directory), each on a
fresh endpoint, and rclone is given its best flags as well as its defaults
(``--fast-list --checkers 16``): per layout its fastest run is the comparator.
One ``RESULT verify_vs_rclone_layout`` line per layout, a readback line for the
first layout, and last::

    RESULT verify_vs_rclone ours=<s> rclone=<s> ratio=<r> verified=<n>/<total> files_per_dir=<n>

the stored-mode line of the layout with the worst ratio.

Run: ``.venv/bin/python benchmarks/verify_vs_rclone.py [--workdir DIR] [--keep]``
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _bench import clean_up, load, make_workdir, print_results, rclone_env, venv_bin

from wiseverify.demo.locals3 import FAKE_CREDENTIALS, LocalS3, put_multipart

MiB = 1 << 20
BUCKET = "bench-bucket"
PREFIX = "wise/"
PART_SIZE = 8 * MiB
REMOTE = "WVBENCH"  # rclone remote name, configured through RCLONE_CONFIG_WVBENCH_*


# --- fixture -------------------------------------------------------------------------


@dataclass
class Fixture:
    """What was built: where, how much, and how it was uploaded."""

    root: Path
    files: int = 0
    total_bytes: int = 0
    crc_objects: int = 0
    etag_only_objects: int = 0
    multipart_objects: int = 0
    directories: int = 0
    build_s: float = 0.0


class _Clients:
    """One boto3 client pair per upload thread (clients are created on the main thread,
    because creating them concurrently from the default session is not thread-safe)."""

    def __init__(self, s3: LocalS3, n: int):
        self._free = [(s3.client(checksums=False), s3.client(checksums=True)) for _ in range(n)]
        self._lock = threading.Lock()
        self._local = threading.local()

    def get(self):
        pair = getattr(self._local, "pair", None)
        if pair is None:
            with self._lock:
                pair = self._local.pair = self._free.pop()
        return pair


def _small_sizes(rng: random.Random, n: int) -> list[int]:
    """Log-normal sizes, median 20 KiB, capped below 4 MiB; a few empty files."""
    sizes = []
    for i in range(n):
        if i % 997 == 0:
            sizes.append(0)
            continue
        sizes.append(min(int(rng.lognormvariate(9.9, 1.4)), 4 * MiB - 1))
    return sizes


def build_fixture(root: Path, s3: LocalS3, n_files: int, n_multipart: int,
                  threads: int, files_per_dir: int = 20, seed: int = 11) -> Fixture:
    """Write the source tree and upload it; returns what was built.

    Small files are slices of one random pool with a unique header (distinct
    content, cheap to generate); multipart files are fully random.
    """
    t0 = time.monotonic()
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    admin = s3.client()
    admin.create_bucket(Bucket=BUCKET)
    pool = rng.randbytes(16 * MiB)
    fx = Fixture(root=root)

    small = []
    ndirs = max(1, -(-n_files // files_per_dir))
    for i, size in enumerate(_small_sizes(rng, n_files)):
        d = i % ndirs
        key = f"proj{d % 17:02d}/batch{d // 17:03d}/file_{i:06d}.dat"
        off = rng.randrange(0, len(pool) - size) if size < len(pool) else 0
        small.append((key, size, off, i % 3 == 0))
    big = []
    for j in range(n_multipart):
        size = rng.randint(100 * MiB, 160 * MiB) + rng.randint(1, PART_SIZE - 1)
        big.append((f"archive/run{j:02d}/matrix_{j:02d}.bin", size, seed * 1000 + j))

    clients = _Clients(s3, threads)
    dirs = {str(Path(k).parent) for k, *_ in small} | {str(Path(k).parent) for k, *_ in big}
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    fx.directories = len(dirs)

    def put_small(item):
        key, size, off, with_crc = item
        header = f"{key}\n".encode()
        data = (header + pool[off : off + size])[:size] if size else b""
        (root / key).write_bytes(data)
        plain, crc = clients.get()
        if with_crc:
            crc.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=data,
                           ChecksumAlgorithm="CRC64NVME")
        else:
            plain.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=data)
        return size, with_crc

    def put_big(item):
        key, size, s = item
        data = random.Random(s).randbytes(size)
        (root / key).write_bytes(data)
        plain, _ = clients.get()
        put_multipart(plain, BUCKET, PREFIX + key, data, PART_SIZE)
        return size

    with cf.ThreadPoolExecutor(threads) as ex:
        # the big ones first, so they overlap with the many small PUTs
        big_futs = [ex.submit(put_big, b) for b in big]
        for size, with_crc in ex.map(put_small, small, chunksize=64):
            fx.files += 1
            fx.total_bytes += size
            fx.crc_objects += with_crc
            fx.etag_only_objects += not with_crc
        for f in big_futs:
            fx.total_bytes += f.result()
            fx.files += 1
            fx.multipart_objects += 1
    fx.build_s = time.monotonic() - t0
    return fx


def check_fixture(s3: LocalS3, fx: Fixture) -> None:
    """Confirm the endpoint holds what the benchmark claims (ETag-only multipart, CRCs)."""
    c = s3.client()
    n = 0
    algos = 0
    multipart = 0
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        for obj in page.get("Contents", ()):
            n += 1
            algos += bool(obj.get("ChecksumAlgorithm"))
            multipart += "-" in obj["ETag"]
    if n != fx.files:
        raise SystemExit(f"fixture: {n} objects listed, {fx.files} uploaded")
    if multipart != fx.multipart_objects:
        raise SystemExit(f"fixture: {multipart} multipart ETags, expected {fx.multipart_objects}")
    big = c.head_object(Bucket=BUCKET, Key=PREFIX + "archive/run00/matrix_00.bin",
                        ChecksumMode="ENABLED", PartNumber=1)
    stored = [k for k in big if k.startswith("Checksum") and k != "ChecksumType"]
    if stored or big.get("ContentLength") != PART_SIZE:
        raise SystemExit(f"fixture: multipart object has {stored} / part {big['ContentLength']}")
    print(f"fixture: {n:,} objects listed, {algos:,} with a listed checksum algorithm, "
          f"{multipart} multipart (ETag only, {PART_SIZE // MiB} MiB parts)", flush=True)


# --- the two tools --------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    mode: str
    wall_s: float
    rc: int
    verified: int
    total: int
    note: str = ""
    timings: dict = field(default_factory=dict)
    endpoint_cpu_s: float = 0.0
    cpu_s: float = 0.0  # the tool's own processes


def _endpoint_cpu(s3: LocalS3) -> float:
    """CPU seconds the local S3 endpoint has used so far: it is single-threaded Python,
    so a tool's number of requests, not only its own work, sets its wall time."""
    try:
        import psutil

        t = psutil.Process(s3.proc.pid).cpu_times()
        return t.user + t.system
    except Exception:
        return 0.0


def _run_metered(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; returns (result, wall seconds, CPU seconds of its whole process tree).

    CPU is sampled from every descendant while it runs (the Dask workers are
    children of a forkserver, which no one waits for, so rusage would miss
    them).  On a shared machine the CPU figure is the steadier one.
    """
    import psutil

    seen: dict[int, float] = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    box: dict = {}

    def communicate() -> None:
        box["out"], box["err"] = proc.communicate()

    reader = threading.Thread(target=communicate)
    reader.start()
    root = psutil.Process(proc.pid)
    while reader.is_alive():
        with contextlib.suppress(psutil.Error):
            for q in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = q.cpu_times()
                    seen[q.pid] = t.user + t.system
        reader.join(0.1)
    wall = time.monotonic() - t0
    res = subprocess.CompletedProcess(cmd, proc.returncode, box.get("out", ""),
                                      box.get("err", ""))
    return res, wall, sum(seen.values())


def run_ours(fx: Fixture, s3: LocalS3, out: Path, mode: str, extra: list[str],
             src: str | None = None) -> Run:
    """``wiseverify verify`` as a subprocess, wall-clock timed from exec to exit.

    ``src``: a checkout whose ``wiseverify`` package runs instead of the
    installed one (put first on PYTHONPATH, for the driver and every worker),
    so a change is timed against its base in the same run.
    """
    exe = Path(sys.executable).parent / "wiseverify"
    # -P: the current directory (a checkout of its own) must not shadow ``src``
    cmd = [str(exe)] if exe.exists() and not src else [sys.executable, *(["-P"] if src else []),
                                                      "-m", "wiseverify.cli"]
    cmd += ["verify", str(fx.root), f"s3://{BUCKET}/{PREFIX}", "--out", str(out),
            "--endpoint-url", s3.url, "--mode", mode, *extra]
    env = dict(os.environ, **FAKE_CREDENTIALS)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    print(f"\n$ {' '.join(cmd)}   [{load()}]", flush=True)
    cpu0 = _endpoint_cpu(s3)
    p, wall, cpu = _run_metered(cmd, env)
    endpoint_cpu = _endpoint_cpu(s3) - cpu0
    for line in (p.stdout + p.stderr).splitlines():
        if line.startswith(("run ", "inventory:", "partitioned", "digest and", "content ",
                            "read:", "verdict", "wiseverify", "MATCH", "UNVERIFIED",
                            "Traceback", "  ")):
            print("  | " + line)
    summ = out / "summary.json"
    if p.returncode not in (0, 1) or not summ.exists():
        print(p.stdout[-3000:], p.stderr[-3000:], sep="\n")
        raise SystemExit(f"wiseverify exited {p.returncode}")
    s = json.loads(summ.read_text())
    note = f"verdict {s['verdict']}, counts " + ", ".join(
        f"{k} {v}" for k, v in s["counts"].items() if v)
    return Run("wiseverify", mode, wall, p.returncode, s["content_verified"], fx.files, note,
               dict(s.get("timings", {}), verified_by=s.get("verified_by"),
                    requests=s.get("requests"),
                    prehashed=s.get("inventory", {}).get("prehashed_files")),
               endpoint_cpu, cpu)


_RCLONE_COUNTS = {
    "differences": re.compile(r"(\d+) differences found"),
    "unchecked": re.compile(r"(\d+) hashes could not be checked"),
    "matching": re.compile(r"(\d+) matching files"),
    "missing_dst": re.compile(r"(\d+) files missing"),
    "errors": re.compile(r"(\d+) errors while checking"),
}


def run_rclone(fx: Fixture, s3: LocalS3, download: bool, extra: list[str]) -> Run:
    """``rclone check SRC remote:bucket/prefix`` (optionally ``--download``), timed.

    Files rclone content-checked: the matching ones minus those whose hash it
    could not check (it counts those as matching).  With ``--download`` every
    compared file is read back, so all matching files count.
    """
    cmd = [venv_bin("rclone"), "check", str(fx.root), f"{REMOTE}:{BUCKET}/{PREFIX.rstrip('/')}"]
    if download:
        cmd.append("--download")
    cmd += extra
    print(f"\n$ {' '.join(cmd)}   [{load()}]", flush=True)
    cpu0 = _endpoint_cpu(s3)
    p, wall, cpu = _run_metered(cmd, rclone_env(s3, REMOTE))
    endpoint_cpu = _endpoint_cpu(s3) - cpu0
    text = p.stdout + p.stderr
    counts = {}
    for name, rx in _RCLONE_COUNTS.items():
        m = rx.search(text)
        counts[name] = int(m.group(1)) if m else 0
    for line in text.splitlines():
        if "NOTICE" in line or "ERROR" in line:
            print("  | " + line)
    if p.returncode not in (0, 1) or not re.search(r"matching files", text):
        print(text[-3000:])
        raise SystemExit(f"rclone exited {p.returncode}")
    verified = counts["matching"] - counts["unchecked"]
    if not download:
        # a hash difference is a content comparison too
        verified += counts["differences"]
    note = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    return Run("rclone", "download" if download else "check", wall, p.returncode, verified,
               fx.files, note, counts, endpoint_cpu, cpu)


def warm_up(fx: Fixture, s3: LocalS3, here: Path, ours_x: list[str],
            rclone_x: list[str], baseline_src: str | None = None) -> None:
    """The fixture's writes flushed to disk, then each tool run once, untimed.

    The fixture has just written its files (2.8 GB): the first run timed after
    that shared the disk with their writeback, and was also the first to read
    its own program files; it was the same tool every time (wiseverify: 12.9 s
    on the first layout against 9.3 and 7.4 on the next two).
    """
    os.sync()
    print("\nwarm-up (untimed): both tools once", flush=True)
    run_ours(fx, s3, here / "warm-up" / "run", "stored", ours_x)
    if baseline_src:  # its checkout's modules read (and compiled) once too
        run_ours(fx, s3, here / "warm-up-before" / "run", "stored", ours_x, baseline_src)
    run_rclone(fx, s3, False, rclone_x)


# --- reporting ------------------------------------------------------------------------


def _best(runs: list[Run]) -> Run:
    """The fastest of repeated runs (the least disturbed by other work on the machine)."""
    return min(runs, key=lambda r: r.wall_s)


def report(name: str, ours: list[Run], theirs: list[Run], target: float) -> str:
    o, t = _best(ours), _best(theirs)
    ratio = o.wall_s / t.wall_s
    print(f"\n== {name}")
    print(f"  wiseverify {o.mode:9s} wall {o.wall_s:7.2f} s  content-verified "
          f"{o.verified:,}/{o.total:,}   ({o.note})")
    if o.timings:
        stages = {k: v for k, v in o.timings.items() if k.endswith("_s")}
        print(f"    stages: {stages}")
        print(f"    evidence: {o.timings.get('verified_by')}  requests: "
              f"{o.timings.get('requests')}  small files hashed during the listing: "
              f"{o.timings.get('prehashed') or 0:,}")
    print(f"    CPU: own processes {o.cpu_s:.1f} s, endpoint {o.endpoint_cpu_s:.1f} s")
    print(f"  rclone {t.mode:13s} wall {t.wall_s:7.2f} s  content-verified "
          f"{t.verified:,}/{t.total:,}   ({t.note})")
    print(f"    CPU: own processes {t.cpu_s:.1f} s, endpoint {t.endpoint_cpu_s:.1f} s")
    if len(ours) > 1:
        print(f"  all walls: ours {[round(r.wall_s, 2) for r in ours]}, "
              f"rclone {[round(r.wall_s, 2) for r in theirs]}")
    ok = ratio <= target and o.verified == o.total
    print(f"  ratio {ratio:.3f} (target <= {target}) -> {'OK' if ok else 'ABOVE TARGET'}")
    return (f"RESULT {name} ours={o.wall_s:.2f} rclone={t.wall_s:.2f} ratio={ratio:.3f} "
            f"verified={o.verified}/{o.total}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="where to build the fixture (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the fixture and run dirs")
    ap.add_argument("--files", type=int, default=20_400, help="small files (default 20400)")
    ap.add_argument("--multipart", type=int, default=12, help="multipart objects (default 12)")
    ap.add_argument("--files-per-dir", default="20,50,200",
                    help="layouts: small files per directory, comma-separated (default "
                         "20,50,200; rclone check lists each directory with its own request "
                         "unless --fast-list)")
    ap.add_argument("--threads", type=int, default=16, help="upload threads (default 16)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each tool N times, alternating, and keep the fastest")
    ap.add_argument("--readback-repeat", type=int,
                    help="repeats for the readback comparison (default: --repeat)")
    ap.add_argument("--skip-readback", action="store_true")
    ap.add_argument("--ours-args", default="", help="extra arguments for wiseverify verify")
    ap.add_argument("--baseline-src", metavar="DIR",
                    help="also time the wiseverify package of this checkout (stored mode, "
                         "alternating with ours): the before of a change")
    ap.add_argument("--rclone-args", default="", help="extra arguments for rclone check")
    args = ap.parse_args(argv)
    layouts = [int(x) for x in str(args.files_per_dir).split(",") if x.strip()]

    for k, v in FAKE_CREDENTIALS.items():
        os.environ.setdefault(k, v)
    base = make_workdir("wv-bench-", args.workdir)
    print(f"workdir {base}  (cpus {os.cpu_count()}, {load()})", flush=True)
    lines: list[str] = []
    worst: tuple[float, str] | None = None
    try:
        for li, per_dir in enumerate(layouts):
            here = base / f"layout-{per_dir}"
            here.mkdir(parents=True, exist_ok=True)
            with LocalS3(log_path=str(here / "moto.log")) as s3:
                fx = build_fixture(here / "source", s3, args.files, args.multipart,
                                   args.threads, per_dir)
                print(f"\nfixture ({per_dir} files per directory): {fx.files:,} files in "
                      f"{fx.directories:,} directories, {fx.total_bytes / 1e9:.2f} GB "
                      f"({fx.crc_objects:,} small with CRC64NVME, {fx.etag_only_objects:,} "
                      f"small ETag-only, {fx.multipart_objects} multipart ETag-only) built and "
                      f"uploaded to {s3.url} in {fx.build_s:.1f} s", flush=True)
                if fx.files < 20_000 or fx.total_bytes < 2.5e9:
                    print("fixture: note: smaller than the issue's >= 20,000 files / 2.5 GB")
                check_fixture(s3, fx)
                ours_x, rclone_x = args.ours_args.split(), args.rclone_args.split()
                # rclone at its default and at its best flags for a bucket: one recursive
                # listing instead of one per directory, and more checkers
                rclone_flags = [rclone_x, [*rclone_x, "--fast-list", "--checkers", "16"]]
                warm_up(fx, s3, here, ours_x, rclone_flags[1], args.baseline_src)
                ours, theirs, before = [], [], []
                for i in range(args.repeat):
                    if args.baseline_src:
                        before.append(run_ours(fx, s3, here / f"before-{i}" / "run", "stored",
                                               ours_x, args.baseline_src))
                    ours.append(run_ours(fx, s3, here / f"stored-{i}" / "run", "stored",
                                         ours_x))
                    theirs += [run_rclone(fx, s3, False, f) for f in rclone_flags]
                line = report("verify_vs_rclone_layout", ours, theirs, 1.0)
                lines.append(line + f" files_per_dir={per_dir}")
                ratio = float(line.split("ratio=")[1].split()[0])
                if worst is None or ratio > worst[0]:
                    worst = (ratio, line.replace("verify_vs_rclone_layout", "verify_vs_rclone")
                             + f" files_per_dir={per_dir} layouts={args.files_per_dir}")
                if before:
                    best_before = min(r.wall_s for r in before)
                    best_ours = min(r.wall_s for r in ours)
                    lines.append(f"RESULT verify_vs_rclone_baseline before={best_before:.2f} "
                                 f"after={best_ours:.2f} ratio={best_ours / best_before:.2f} "
                                 f"files_per_dir={per_dir} before_src={args.baseline_src}")
                if li == 0 and not args.skip_readback:
                    ours_rb, theirs_rb = [], []
                    for i in range(args.readback_repeat or args.repeat):
                        ours_rb.append(run_ours(fx, s3, here / f"readback-{i}" / "run",
                                                "readback", ours_x))
                        theirs_rb.append(run_rclone(fx, s3, True, rclone_x))
                    lines.append(report("verify_vs_rclone_readback", ours_rb, theirs_rb, 0.7)
                                 + f" files_per_dir={per_dir}")
        if worst is not None:
            lines.append(worst[1])  # the worst layout's ratio, against rclone's best flags
    finally:
        clean_up(base, args.keep)
    return print_results(lines)


if __name__ == "__main__":
    sys.exit(main())
