"""Benchmark: the digest stage on large files against the machine's limit.

Why this exists: for 200 TB the digest stage is the long pole, and it can only
be as fast as the slower of two things: reading the bytes, and computing the
digests the evidence needs on every core.  The tool must get close to that
limit, whatever the evidence: a stored CRC64NVME (cheap: ~11 GB/s per core) or
a multipart ETag (MD5 of every part: ~0.75 GB/s per core, plus the CRC64NVME
every source pass carries).

What it does, in one run:

* writes ``--files`` (default 8) files of ``--size-mib`` (default 640) MiB,
  5.4 GB in all, and reads them once so they are in the page cache;
* measures the plain read rate of the same files: ``cat`` and a ``readinto``
  loop with 1 MiB and 8 MiB buffers on 1 and on ``cores`` threads (the best
  counts);
* measures the hash rate of each digest on one core (256 MiB in memory);
* starts a Dask LocalCluster as ``wiseverify verify`` does and, per case, packs
  the files into work units with :func:`wiseverify.digest.units.make_units` (the
  verify defaults: 256 MiB units and ranges) and runs
  :func:`wiseverify.digest.execute.run_unit` on every unit as a task, then folds the
  range results with :func:`wiseverify.digest.hashing.combine_ranges` and checks them
  against digests computed directly;
* prints ours, the limit = min(read rate, cores x hash rate of the digests the
  case needs) and ours/limit (target >= 0.8) for each of ``--repeat`` rounds
  (default 3); a round measures everything within seconds, under the same load
  from other work, and the RESULT line takes the best round (the ratio of the
  best throughput to the best limit over all rounds is printed beside it).

Linux shares CPU time between sessions (sched_autogroup), so the worker
processes and the ``cat``/``readinto`` measurements each run in a session of
their own: on a machine busy with other sessions each gets the share a
separate job would get.  Load averages are printed with every result.  The
last line is::

    RESULT digest ours=<GB/s> limit=<GB/s> ratio=<r> ...   (the CRC64NVME case)

Run: ``.venv/bin/python benchmarks/digest.py [--workdir DIR] [--keep]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from _bench import clean_up, load, load_kv, make_workdir, new_session, print_results

from wiseverify.core import checksums as CHECKSUMS
from wiseverify.deploy.cluster import default_workers, open_client
from wiseverify.digest import execute as EXECUTE
from wiseverify.digest import hashing as HASHING
from wiseverify.digest import units as D

MiB = 1 << 20
PART = 8 * MiB  # the aws cli / boto3 default part size


def build(root: Path, files: int, size: int) -> list[Path]:
    """Files of random bytes (a 64 MiB random block, varied per file and per copy)."""
    root.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(64 * MiB))
    out = []
    for i in range(files):
        p = root / f"large_{i:02d}.bin"
        with open(p, "wb") as f:
            left, j = size, 0
            while left:
                block[:16] = f"{i:08d}{j:08d}".encode()
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
                j += 1
        out.append(p)
    return out


# --- the machine's limit ----------------------------------------------------------


def read_cat(paths: list[Path]) -> float:
    """Seconds for ``cat FILES > /dev/null`` in a session of its own."""
    t0 = time.monotonic()
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", *map(str, paths)], stdout=null, check=True,
                       start_new_session=True)
    return time.monotonic() - t0


_READ_SCRIPT = r"""
import concurrent.futures as cf, os, sys, time
paths, threads, bufsize = sys.argv[3:], int(sys.argv[1]), int(sys.argv[2])
def one(p):
    buf = bytearray(bufsize); mv = memoryview(buf); n = 0
    with open(p, "rb", buffering=0) as f:
        while (k := f.readinto(mv)):
            n += k
    return n
t0 = time.monotonic()
with cf.ThreadPoolExecutor(threads) as ex:
    total = sum(ex.map(one, paths))
print(total, time.monotonic() - t0)
"""


def read_loop(paths: list[Path], threads: int, bufsize: int) -> float:
    """Seconds for a ``readinto`` loop over the files on ``threads`` threads."""
    p = subprocess.run([sys.executable, "-c", _READ_SCRIPT, str(threads), str(bufsize),
                        *map(str, paths)],
                       capture_output=True, text=True, check=True, start_new_session=True)
    return float(p.stdout.split()[1])


def hash_rates() -> dict[str, float]:
    """Bytes/s of each digest on one core over 256 MiB in memory (best of 3 and of 1 MiB
    or 8 MiB updates)."""
    data = memoryview(os.urandom(256 * MiB))
    rates = {}
    for algo in ("crc64nvme", "md5"):
        best = float("inf")
        for step in (MiB, 8 * MiB, MiB, 8 * MiB, MiB, 8 * MiB):
            t0 = time.perf_counter()
            if algo in CHECKSUMS.CRC_FUNCS:
                v = 0
                for off in range(0, len(data), step):
                    v = CHECKSUMS.CRC_FUNCS[algo](data[off:off + step], v)
            else:
                h = CHECKSUMS.HASH_FUNCS[algo]()
                for off in range(0, len(data), step):
                    h.update(data[off:off + step])
            best = min(best, time.perf_counter() - t0)
        rates[algo] = len(data) / best
    return rates


def spec_rate(spec: D.Spec, rates: dict[str, float]) -> float:
    """One core's rate for a spec: every digest sees every byte once."""
    algos = set(spec.whole) | set(spec.parts)
    return 1.0 / sum(1.0 / rates[a] for a in algos)


# --- the tool -----------------------------------------------------------------------


def items_for(paths: list[Path], case: str) -> list[D.FileItem]:
    """The FileItems evidence.plan_one makes for each case."""
    out = []
    for i, p in enumerate(paths):
        st = p.stat()
        if case == "crc64nvme":
            spec = D.Spec(whole=("crc64nvme",))
        else:  # a multipart ETag in 8 MiB parts: MD5 per part, plus the pass's CRC64NVME
            offsets = tuple(range(0, st.st_size, PART))
            spec = D.Spec(whole=("crc64nvme",), parts=("md5",), part_offsets=offsets)
        out.append(D.FileItem(i, os.fsencode(p), st.st_size, st.st_mtime_ns, spec))
    return out


def run_ours(client, items: list[D.FileItem], case: str) -> tuple[float, int, list[dict]]:
    """make_units + one run_unit task per unit on the cluster; wall, units, per-file results."""
    t0 = time.monotonic()
    units = D.make_units(items, unit_bytes=256 * MiB, unit_files=2000, range_bytes=256 * MiB)
    futs = [client.submit(EXECUTE.run_unit, u, pure=False, key=f"digest-{case}-{i}-{time.time_ns()}")
            for i, u in enumerate(units)]
    results = client.gather(futs)
    wall = time.monotonic() - t0
    by_file: dict[int, list[dict]] = {}
    for res in results:
        for r in res["src"]:
            by_file.setdefault(r["idx"], []).append(r)
    folded = [HASHING.combine_ranges(by_file[it.idx], it.spec, it.size) for it in items]
    return wall, len(units), folded


def check(items: list[D.FileItem], folded: list[dict], case: str) -> None:
    """The folded digests of the first file equal digests computed in one straight pass."""
    it, got = items[0], folded[0]
    if any(f["error"] for f in folded):
        raise SystemExit(f"digest errors: {[f['error'] for f in folded if f['error']][:2]}")
    crc, md5s = 0, []
    with open(it.path, "rb") as f:
        while chunk := f.read(PART):
            crc = CHECKSUMS.CRC_FUNCS["crc64nvme"](chunk, crc)
            md5s.append(hashlib.md5(chunk).digest())
    if got["crc"]["crc64nvme"] != crc:
        raise SystemExit("combined CRC64NVME differs from a straight pass")
    if case == "etag-multipart" and CHECKSUMS.multipart_etag(got["parts"]["md5"]) != \
            CHECKSUMS.multipart_etag(md5s):
        raise SystemExit("rebuilt multipart ETag differs from a straight pass")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--size-mib", type=int, default=640)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    ap.add_argument("--threads-per-worker", type=int, default=2)
    ap.add_argument("--workdir", help="where to write the files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)

    cores = default_workers()
    base = make_workdir("wv-digest-", args.workdir)
    print(f"workdir {base}  (cores {cores}, {load()})", flush=True)
    lines: list[str] = []
    try:
        t0 = time.monotonic()
        paths = build(base / "files", args.files, args.size_mib * MiB)
        total = sum(p.stat().st_size for p in paths)
        print(f"files: {len(paths)} x {args.size_mib} MiB = {total / 1e9:.2f} GB written in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        read_cat(paths)  # into the page cache
        t0 = time.monotonic()
        with open_client(workers=args.workers, threads_per_worker=args.threads_per_worker) \
                as client:
            info = client.scheduler_info(n_workers=-1)["workers"]
            client.run(new_session)
            print(f"LocalCluster: {len(info)} worker processes x {args.threads_per_worker} "
                  f"threads, each worker in a session of its own, up in "
                  f"{time.monotonic() - t0:.1f} s (not counted below)", flush=True)
            cases = ("crc64nvme", "etag-multipart")
            items = {c: items_for(paths, c) for c in cases}
            for c in cases:  # warm: worker imports, buffers
                run_ours(client, items[c][:1], c)
            rounds = []
            nunits: dict[str, int] = {}
            for i in range(args.repeat):
                # everything of one round is measured within seconds, under the same load
                rd = {"cat": total / read_cat(paths)}
                for mib in (1, 8):
                    rd[f"readinto {mib}M x1"] = total / read_loop(paths, 1, mib * MiB)
                    rd[f"readinto {mib}M x{cores}"] = total / read_loop(paths, cores, mib * MiB)
                rates = hash_rates()
                ours = {}
                for c in cases:
                    wall, nunits[c], folded = run_ours(client, items[c], c)
                    if i == 0:
                        check(items[c], folded, c)
                    ours[c] = total / wall
                rounds.append((rd, rates, ours, load()))
                print(f"  round {i + 1}: read " + ", ".join(f"{k} {v / 1e9:.2f}"
                                                           for k, v in rd.items())
                      + " GB/s; one core: " + ", ".join(f"{a} {r / 1e9:.2f}"
                                                        for a, r in rates.items())
                      + " GB/s; ours: " + ", ".join(f"{c} {v / 1e9:.2f}" for c, v in ours.items())
                      + f" GB/s  [{rounds[-1][3]}]", flush=True)
        print(f"\n== digest stage, {total / 1e9:.2f} GB of large files in the page cache, "
              f"{len(info)} worker processes x {args.threads_per_worker} threads on {cores} "
              f"cores  [{load()}]")
        print("   limit = min(read rate: the best plain read, cores x one core's rate for "
              "all the digests the case needs); per round, then over all rounds")
        summary = {}
        for c in cases:
            spec = items[c][0].spec
            digests = "+".join([*spec.whole, *(f"{a}/part" for a in spec.parts)])
            per_round = []
            for rd, rates, ours, at_load in rounds:
                read = max(rd.values())
                hashl = cores * spec_rate(spec, rates)
                per_round.append((ours[c], min(read, hashl), read, hashl, at_load))
            best = max(per_round, key=lambda r: r[0] / r[1])
            o_best = max(r[0] for r in per_round)
            l_best = max(r[1] for r in per_round)
            summary[c] = (best[0], best[1], best[0] / best[1], o_best / l_best)
            print(f"  {c} ({digests}, {nunits[c]} units of <= 256 MiB):")
            for k, (o, lim, read, hashl, at_load) in enumerate(per_round, 1):
                print(f"    round {k}: ours {o / 1e9:5.2f} GB/s, limit min(read {read / 1e9:.2f}, "
                      f"{cores} x {hashl / cores / 1e9:.2f} = {hashl / 1e9:.2f}) = "
                      f"{lim / 1e9:.2f} GB/s, ratio {o / lim:.3f}  [{at_load}]")
            print(f"    best round ratio {best[0] / best[1]:.3f}; best ours / best limit "
                  f"{o_best / 1e9:.2f} / {l_best / 1e9:.2f} = {o_best / l_best:.3f} -> "
                  f"{'OK' if best[0] / best[1] >= 0.8 else 'BELOW 0.8'}; per worker process "
                  f"{o_best / len(info) / 1e9:.2f} GB/s")
        m = summary["etag-multipart"]
        lines.append(f"RESULT digest_etag_multipart ours={m[0] / 1e9:.2f} limit={m[1] / 1e9:.2f} "
                     f"ratio={m[2]:.3f} ratio_of_bests={m[3]:.3f} GB={total / 1e9:.2f} "
                     f"{load_kv()}")
        c = summary["crc64nvme"]
        lines.append(f"RESULT digest ours={c[0] / 1e9:.2f} limit={c[1] / 1e9:.2f} "
                     f"ratio={c[2]:.3f} ratio_of_bests={c[3]:.3f} GB={total / 1e9:.2f} "
                     f"cores={cores} etag_multipart_ratio={m[2]:.3f} {load_kv()}")
    finally:
        clean_up(base, args.keep)
    return print_results(lines)


if __name__ == "__main__":
    sys.exit(main())
