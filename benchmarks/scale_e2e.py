"""Benchmark: the whole CLI run at 250k .. millions of small files, memory and wall.

Why this exists: the mission's namespace is 30 million files, mostly small (logs,
programs, outputs, SAS datasets).  A stage measured alone can hold its memory
bound while the whole run does not, and per-file overhead that is invisible at
20,000 files is hours of cluster time at 30 million.  So this script runs the
command line exactly as a user would, at several sizes, reads the peak resident
memory of every process of the run (the driver with its in-process scheduler,
and each worker process: the kernel's high-water mark), and times, in the same run,

    find ROOT -type f -print0 | xargs -0 -P<cores> -n 2000 md5sum

which does the same content work (read and MD5 every file) with nothing to list,
partition or reconcile.

Per ``--files N`` (repeatable) it builds, once:

* N files of 0-2 KiB (uniform) in directories of 1,000;
* a local S3 Inventory of the destination (``manifest.json`` and one gzipped CSV
  per million rows) describing every file as a single-part object with its MD5
  ETag, except for injected discrepancies: 10 missing, 10 extra, 10 with another
  ETag (CONTENT_MISMATCH) and 10 with another size (SIZE_MISMATCH);
* an empty bucket on a local moto endpoint for the preflight.

It runs ``wiseverify verify ROOT s3://bucket/data/ --dest-inventory MANIFEST
--metadata off`` (no object exists behind the inventory to HEAD; a site with a
real bucket would sample it), cold (page cache dropped first, as root) and then
warm, and md5sum cold (before and after wiseverify's cold run, the faster of the
two: the first reads a tree just written) and warm.  Statuses are checked against
the injected ones every time.

``--listing M`` adds the listing path: M objects uploaded to moto and verified
with the walk and a real ListObjectsV2 listing instead of the inventory.

One line per N:

    RESULT scale_e2e files=N ours=S md5sum=S ratio=R warm_ours=S warm_md5sum=S
        warm_ratio=R driver_gb=G worker_gb=G statuses=exact

then the slopes (MB per million keys: a fit over every size, and between the two
largest) and the extrapolation to 30 million from the growth between the two largest.

Run: ``.venv/bin/python benchmarks/scale_e2e.py --files 250000 --files 1000000``
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote_plus

from _bench import clean_up, load, load_kv, make_workdir, print_results

BUCKET = "scale"
PREFIX = "data/"
PER_DIR = 1000
INJECT = 10
SCHEMA = "Bucket, Key, Size, LastModifiedDate, ETag, IsMultipartUploaded, StorageClass"


def drop_caches() -> bool:
    """Empty the page cache (root only); False when it cannot be done."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def build(base: Path, n: int, seed: int = 7) -> tuple[Path, Path, dict]:
    """The tree, its S3 Inventory with injected discrepancies, and the expected counts."""
    root = base / f"tree-{n}"
    inv = base / f"inventory-{n}"
    (inv / "data").mkdir(parents=True)
    rnd = random.Random(seed)
    t0 = time.monotonic()
    picks = rnd.sample(range(n), 3 * INJECT)
    missing = set(picks[:INJECT])
    content = set(picks[INJECT:2 * INJECT])
    size = set(picks[2 * INJECT:3 * INJECT])
    files, chunk, rows = [], 1_000_000, []
    lm = "2026-11-30T12:00:00.000Z"

    def flush():
        buf = io.StringIO()
        w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerows(rows)
        body = gzip.compress(buf.getvalue().encode(), compresslevel=1)
        name = f"data/part-{len(files):05d}.csv.gz"
        (inv / name).write_bytes(body)
        files.append({"key": name, "size": len(body),
                      "MD5checksum": hashlib.md5(body).hexdigest()})
        rows.clear()

    for i in range(n):
        d = root / f"d{i // PER_DIR:05d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        data = rnd.randbytes(rnd.randint(0, 2048))
        name = f"f{i:08d}.dat"
        fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        if i in missing:
            continue
        etag = hashlib.md5(data).hexdigest()
        nbytes = len(data)
        if i in content:
            etag = hashlib.md5(data + b"x").hexdigest()
        if i in size:
            nbytes += 1
        key = quote_plus(f"{PREFIX}d{i // PER_DIR:05d}/{name}", safe="")
        rows.append([BUCKET, key, nbytes, lm, etag, "false", "STANDARD"])
        if len(rows) >= chunk:
            flush()
    for j in range(INJECT):
        rows.append([BUCKET, quote_plus(f"{PREFIX}extra/x{j}.dat", safe=""), 5, lm,
                     hashlib.md5(b"extra").hexdigest(), "false", "STANDARD"])
    flush()
    manifest = {"sourceBucket": BUCKET, "destinationBucket": "arn:aws:s3:::inventory",
                "version": "2016-11-30", "creationTimestamp": "1796040000000",
                "fileFormat": "CSV", "fileSchema": SCHEMA, "files": files}
    (inv / "manifest.json").write_text(json.dumps(manifest))
    expect = {"MATCH": n - 3 * INJECT, "MISSING_IN_DEST": INJECT,
              "EXTRA_IN_DEST": INJECT, "CONTENT_MISMATCH": INJECT, "SIZE_MISMATCH": INJECT}
    print(f"  built {n:,} files and their inventory in {time.monotonic() - t0:.1f} s ({load()})",
          flush=True)
    return root, inv / "manifest.json", expect


class RssSampler:
    """Peak resident memory of a process tree: each process's high-water mark (``VmHWM``).

    The kernel keeps the mark, so a peak between two samples still counts (an RSS
    sampled once a second had given the same tree's largest worker 1.12 and 1.28 GB
    in two runs); the tree is read twice a second to find processes and to place the
    largest worker's peak in time.
    """

    INTERVAL_S = 0.5

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.t0 = time.monotonic()
        self.peak: dict[int, tuple[str, int]] = {}
        self.worker_peak_at = 0.0  # seconds into the run when the largest worker peaked
        self._worker_max = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def _hwm(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            role = "driver" if p.pid == self.root.pid else "worker"
            hwm = self._hwm(p.pid)
            if hwm is None:
                continue
            old = self.peak.get(p.pid, (role, 0))[1]
            self.peak[p.pid] = (role, max(old, hwm))
            if role == "worker" and hwm > self._worker_max:
                self._worker_max, self.worker_peak_at = hwm, time.monotonic() - self.t0

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self._sample()

    def stop(self) -> tuple[float, float]:
        self._sample()
        self._stop.set()
        self._t.join()
        driver = max((v for r, v in self.peak.values() if r == "driver"), default=0)
        worker = max((v for r, v in self.peak.values() if r == "worker"), default=0)
        return driver / 1e9, worker / 1e9


def stage_ends(t: dict) -> str:
    """When each stage ended, in seconds from the command's start (its set-up estimated
    as the preflight and cluster start): to place the largest worker's peak in a stage."""
    at = (t.get("preflight_s") or 0) + (t.get("cluster_start_s") or 0)
    out = []
    for stage in ("inventory", "partition", "reconcile"):
        at += t.get(f"{stage}_s") or 0
        out.append(f"{stage} ~{at:.0f} s")
    return ", ".join(out)


def run_ours(root: Path, manifest: Path | None, out: Path, endpoint: str, env: dict,
             extra: list[str]) -> tuple[float, float, float, dict]:
    cmd = [sys.executable, "-m", "wiseverify.cli", "verify", str(root), f"s3://{BUCKET}/{PREFIX}",
           "--out", str(out), "--endpoint-url", endpoint, "--metadata", "off", "--quiet",
           *(["--dest-inventory", str(manifest)] if manifest else []), *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    sampler = RssSampler(proc.pid)
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - t0
    driver, worker = sampler.stop()
    if proc.returncode not in (0, 1):
        sys.exit(f"wiseverify failed (exit {proc.returncode}):\n{stdout}\n{stderr}")
    summary = json.loads((out / "summary.json").read_text())
    summary["_worker_peak_at_s"] = round(sampler.worker_peak_at, 1)
    return wall, driver, worker, summary


def run_md5sum(root: Path, cores: int) -> float:
    t0 = time.monotonic()
    find = subprocess.Popen(["find", str(root), "-type", "f", "-print0"], stdout=subprocess.PIPE)
    subprocess.run(["xargs", "-0", f"-P{cores}", "-n", "2000", "md5sum"], stdin=find.stdout,
                   stdout=subprocess.DEVNULL, check=True)
    find.wait()
    return time.monotonic() - t0


def check(summary: dict, expect: dict) -> str:
    got = {k: v for k, v in summary["counts"].items() if v}
    return "exact" if got == expect else f"WRONG:{json.dumps(got, sort_keys=True)}"


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares GB per key."""
    if len(points) < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else float("nan")


def listing_variant(base: Path, s3, m: int, endpoint: str, env: dict, cores: int) -> str:
    """M objects in moto, verified with the walk and ListObjectsV2 (no inventory)."""
    from concurrent.futures import ThreadPoolExecutor

    root = base / f"listed-{m}"
    rnd = random.Random(11)
    c = s3.client()
    c.create_bucket(Bucket="listed")
    items = []
    for i in range(m):
        d = root / f"d{i // PER_DIR:05d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        data = rnd.randbytes(rnd.randint(0, 2048))
        (d / f"f{i:08d}.dat").write_bytes(data)
        items.append((f"{PREFIX}d{i // PER_DIR:05d}/f{i:08d}.dat", data))
    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda kv: c.put_object(Bucket="listed", Key=kv[0], Body=kv[1]), items))
    print(f"  uploaded {m:,} objects in {time.monotonic() - t0:.1f} s ({load()})", flush=True)
    out = base / f"run-listed-{m}"
    cmd = [sys.executable, "-m", "wiseverify.cli", "verify", str(root), f"s3://listed/{PREFIX}",
           "--out", str(out), "--endpoint-url", endpoint, "--metadata", "off", "--quiet"]
    drop_caches()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    sampler = RssSampler(proc.pid)
    proc.communicate()
    wall = time.monotonic() - t0
    driver, worker = sampler.stop()
    summary = json.loads((out / "summary.json").read_text())
    ok = "exact" if summary["counts"].get("MATCH") == m and summary["discrepancies"] == 0 \
        else "WRONG"
    drop_caches()
    base_md5 = run_md5sum(root, cores)
    return (f"RESULT scale_e2e_listing files={m} ours={wall:.1f} md5sum={base_md5:.1f} "
            f"ratio={wall / base_md5:.2f} driver_gb={driver:.2f} worker_gb={worker:.2f} "
            f"list_requests={summary['requests'].get('list', 0)} statuses={ok} {load_kv()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, action="append",
                    help="files in the tree (repeatable; default 250000 and 1000000)")
    ap.add_argument("--listing", type=int, default=0, metavar="M",
                    help="also verify M objects through the walk and ListObjectsV2")
    ap.add_argument("--workdir", help="where to build the trees (default: a temp dir)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-cache runs")
    ap.add_argument("--memory-only", action="store_true",
                    help="skip md5sum (no ratio): a run for the memory figures alone")
    ap.add_argument("--extra", default="", help="more wiseverify verify flags, one string")
    args = ap.parse_args()
    sizes = args.files or [250_000, 1_000_000]
    cores = os.cpu_count() or 2
    base = make_workdir("wv-scale-", args.workdir)
    print(f"workdir {base}  (cpus {cores}, {load()})", flush=True)
    if not drop_caches():
        print("  cannot drop the page cache (not root): the cold runs are warm", flush=True)
    from wiseverify.demo.locals3 import FAKE_CREDENTIALS, LocalS3

    results: list[str] = []
    points: dict[str, list[tuple[int, float]]] = {"driver": [], "worker": []}
    with LocalS3(log_path=str(base / "moto.log")) as s3:
        s3.client().create_bucket(Bucket=BUCKET)
        env = {**os.environ, **FAKE_CREDENTIALS}
        extra = args.extra.split()
        for n in sizes:
            print(f"\n{n:,} files", flush=True)
            root, manifest, expect = build(base, n)
            drop_caches()
            first_cold = float("nan") if args.memory_only else run_md5sum(root, cores)
            if not args.memory_only:
                print(f"  md5sum cold {first_cold:.1f} s", flush=True)
            drop_caches()
            wall, driver, worker, summary = run_ours(root, manifest, base / f"run-{n}-cold",
                                                     s3.url, env, extra)
            # the baseline again after ours: the first run after the build is the first
            # reader of a disk that may still be flushing it; the faster of the two counts
            base_cold = first_cold
            if not args.memory_only:
                drop_caches()
                again_cold = run_md5sum(root, cores)
                base_cold = min(first_cold, again_cold)
                print(f"  md5sum cold again {again_cold:.1f} s (the baseline: {base_cold:.1f} s)",
                      flush=True)
            ok = check(summary, expect)
            t = summary.get("timings", {})
            print(f"  wiseverify cold {wall:.1f} s (preflight {t.get('preflight_s')}, cluster "
                  f"start {t.get('cluster_start_s')}, inventory {t.get('inventory_s')}, "
                  f"partition {t.get('partition_s')}, reconcile {t.get('reconcile_s')}, "
                  f"partition task steps {t.get('partition_steps_s')}; "
                  f"{summary['inventory'].get('prehashed_files', 0):,} files prehashed), driver "
                  f"{driver:.2f} GB, largest worker {worker:.2f} GB at "
                  f"{summary['_worker_peak_at_s']} s (the stages end at {stage_ends(t)}), "
                  f"statuses {ok}", flush=True)
            points["driver"].append((n, driver))
            points["worker"].append((n, worker))
            warm = ""
            if not (args.no_warm or args.memory_only):
                base_warm = min(run_md5sum(root, cores) for _ in range(2))
                wwall, _, _, wsum = run_ours(root, manifest, base / f"run-{n}-warm", s3.url,
                                             env, extra)
                wt = wsum.get("timings", {})
                print(f"  warm (an incremental re-run: same output root): md5sum "
                      f"{base_warm:.1f} s, wiseverify {wwall:.1f} s ({json.dumps(wt)}; carried "
                      f"{wsum.get('incremental', {}).get('carried', 0):,}), statuses "
                      f"{check(wsum, expect)}", flush=True)
                warm = (f" warm_ours={wwall:.1f} warm_md5sum={base_warm:.1f} "
                        f"warm_ratio={wwall / base_warm:.2f}")
            results.append(f"RESULT scale_e2e files={n} ours={wall:.1f} md5sum={base_cold:.1f} "
                           f"ratio={wall / base_cold:.2f}{warm} driver_gb={driver:.2f} "
                           f"worker_gb={worker:.2f} statuses={ok} {load_kv()}")
            if not args.keep:
                clean_up(root, False)
        if args.listing:
            print(f"\nlisting path, {args.listing:,} objects", flush=True)
            results.append(listing_variant(base, s3, args.listing, s3.url, env, cores))
    if len(sizes) > 1:
        # the fit over every size, and the growth between the two largest: a peak that is
        # set by a task's bounded input (a partition, a compaction group) shows as growth
        # between small sizes and none at scale
        last_n = max(sizes)
        fields = []
        at30 = {}
        for k in ("driver", "worker"):
            pts = sorted(points[k])
            fit = slope(pts)
            top = slope(pts[-2:])
            fields += [f"{k}_mb_per_m={fit * 1e9:.0f}", f"{k}_mb_per_m_at_scale={top * 1e9:.0f}"]
            at30[k] = dict(pts)[last_n] + max(top, 0.0) * (30_000_000 - last_n)
        results.append("RESULT scale_e2e_slope " + " ".join(fields)
                       + f" driver_gb_at_30m={at30['driver']:.2f}"
                       f" worker_gb_at_30m={at30['worker']:.2f}")
    clean_up(base, args.keep)
    return print_results(results)


if __name__ == "__main__":
    sys.exit(main())
