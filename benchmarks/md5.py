"""Benchmark: multi-buffer MD5 against hashlib, alone and in the digest stage.

Why this exists: for an ETag-only migration (a Snowball import has no stored
checksums) the MD5 of every part is the evidence, and one hashlib MD5 stream
is ~0.9 GB/s per core at best: the CPU, not the disk, bounds the digest stage.
Independent streams hashed in SIMD lanes (``wiseverify.core._md5mb``) should
move that bound to the read rate.

In one run:

1. the kernels alone, on one core, from memory: hashlib and every kernel this
   CPU runs, at 1, 8, 16 and 64 streams of ``--stream-mib`` MiB each;
2. the digest stage (:func:`wiseverify.digest.execute.run_unit` on the units
   :func:`~wiseverify.digest.units.make_units` packs, on ``cores`` threads)
   over an ETag-only tree from the page cache: ``--small`` files of 1-64 KiB
   (MD5 and CRC64NVME of each, as the planner asks for a single-part ETag)
   and multipart objects in 8 MiB parts (MD5 per part plus the CRC64NVME every
   source pass carries), ``--gib`` GiB in all; once through hashlib
   (``WISEVERIFY_MD5_KERNEL=hashlib``) and once through the default kernel,
   every digest checked against hashlib's;
3. the read rate of the same tree (the same preads, no hashing), and the
   limit min(read rate, cores x kernel rate); and, since a read from the page
   cache is a copy made by the hashing core itself, the limit with the two
   added up on each core: cores / (cores/read + 1/MD5 + 1/CRC64NVME).

Last line::

    RESULT md5 ours_gbps=<kernel, 16+ streams, one core> hashlib_gbps=<one core>
        speedup=<ours/hashlib> stage_gbps=<stage, default kernel>
        stage_hashlib_gbps=<stage, hashlib> stage_speedup=<stage/stage hashlib>
        limit_gbps=<limit> stage_ratio=<stage/limit> serial_limit_gbps=<..>
        stage_ratio_serial=<stage/serial limit> kernel=<name>

Run: ``.venv/bin/python benchmarks/md5.py [--gib 4] [--small 20000] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import os
import random
import time
from pathlib import Path

from _bench import clean_up, load, load_kv, make_workdir, print_results

from wiseverify.core import md5lanes
from wiseverify.core.checksums import CRC_FUNCS, multipart_etag
from wiseverify.digest import execute as EXECUTE
from wiseverify.digest import hashing as HASHING
from wiseverify.digest import units as D

MiB = 1 << 20
PART = 8 * MiB


def kernel_rates(stream_mib: int, repeat: int) -> dict[str, dict[int, float]]:
    """GB/s on one core per kernel and stream count (best of ``repeat``)."""
    rnd = random.Random(1)
    pool = [rnd.randbytes(stream_mib * MiB) for _ in range(64)]
    out: dict[str, dict[int, float]] = {}
    for name in ["hashlib", *[k for k in md5lanes.available() if k != "hashlib"]]:
        out[name] = {}
        for n in (1, 8, 16, 64):
            best = 0.0
            for _ in range(repeat):
                bufs = pool[:n]
                t0 = time.perf_counter()
                if name == "hashlib":
                    digests = [hashlib.md5(b).digest() for b in bufs]
                else:
                    lanes = md5lanes._MB.MD5Lanes(name)
                    first = lanes.new(n)
                    lanes.update([(first + i, b) for i, b in enumerate(bufs)], finish=True)
                    digests = [lanes.digest(first + i) for i in range(n)]
                dt = time.perf_counter() - t0
                best = max(best, n * stream_mib * MiB / dt / 1e9)
            if name != "hashlib":
                assert digests == [hashlib.md5(b).digest() for b in bufs], name
            out[name][n] = best
        print(f"  {name:8s} " + "  ".join(f"{n:2d} streams {v:5.2f} GB/s"
                                          for n, v in out[name].items()), flush=True)
    return out


def build_tree(root: Path, n_small: int, gib: float) -> tuple[list[D.FileItem], dict]:
    """The ETag-only tree and the digest specs the planner would give it."""
    rnd = random.Random(7)
    root.mkdir(parents=True, exist_ok=True)
    items: list[D.FileItem] = []
    expect: dict[int, tuple] = {}
    small_total = 0
    for i in range(n_small):
        d = root / f"small/d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        data = rnd.randbytes(rnd.randint(1024, 64 * 1024))
        p = d / f"f{i:06d}"
        p.write_bytes(data)
        small_total += len(data)
        items.append(D.FileItem(idx=len(items), path=str(p), size=len(data),
                                mtime_ns=p.stat().st_mtime_ns,
                                spec=D.Spec(whole=("md5", "crc64nvme"))))
        expect[items[-1].idx] = ("md5", hashlib.md5(data).digest())
    big_dir = root / "big"
    big_dir.mkdir(exist_ok=True)
    remaining = int(gib * (1 << 30)) - small_total
    j = 0
    while remaining > 0:
        size = min(remaining, rnd.randint(200, 400) * MiB + rnd.randint(1, PART - 1))
        data = os.urandom(size)  # randbytes stops at 256 MiB
        p = big_dir / f"obj{j:03d}.bin"
        p.write_bytes(data)
        offsets = tuple(range(0, size, PART))
        etag = multipart_etag([hashlib.md5(data[o:o + PART]).digest() for o in offsets])
        items.append(D.FileItem(idx=len(items), path=str(p), size=size,
                                mtime_ns=p.stat().st_mtime_ns,
                                spec=D.Spec(whole=("crc64nvme",), parts=("md5",),
                                            part_offsets=offsets)))
        expect[items[-1].idx] = ("etag", etag)
        remaining -= size
        j += 1
    return items, expect


def read_rate(items: list[D.FileItem], cores: int) -> float:
    """GB/s of the same reads the stage makes (whole small files, 1 MiB buffers), no hashing."""
    def read(item: D.FileItem) -> int:
        fd = os.open(item.path, os.O_RDONLY)
        try:
            if item.size <= D.BUFFER_SIZE:
                return len(os.pread(fd, item.size, 0))
            buf = memoryview(bytearray(D.BUFFER_SIZE))
            pos = 0
            while (n := os.preadv(fd, [buf], pos)) > 0:
                pos += n
            return pos
        finally:
            os.close(fd)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(cores) as ex:
        total = sum(ex.map(read, items, chunksize=64))
    return total / (time.perf_counter() - t0) / 1e9


def run_stage(items: list[D.FileItem], expect: dict, cores: int, kernel: str) -> float:
    """GB/s of the digest stage on ``cores`` threads with ``kernel``; digests checked."""
    os.environ[md5lanes.ENV_KERNEL] = kernel
    units = D.make_units(items)
    total = sum(it.size for it in items)
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(cores) as ex:
        results = list(ex.map(EXECUTE.run_unit, units))
    dt = time.perf_counter() - t0
    by_file: dict[int, list] = {}
    for res in results:
        for r in res["src"]:
            by_file.setdefault(r["idx"], []).append(r)
    for it in items:
        got = HASHING.combine_ranges(by_file[it.idx], it.spec, it.size)
        kind, want = expect[it.idx]
        value = got["hash"]["md5"] if kind == "md5" else multipart_etag(got["parts"]["md5"])
        assert got["error"] is None and value == want, (kernel, it.path, got.get("error"))
    return total / dt / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=4.0, help="tree size in GiB (default 4)")
    ap.add_argument("--small", type=int, default=20_000, help="small files (default 20000)")
    ap.add_argument("--stream-mib", type=int, default=4, help="MiB per stream, kernels alone")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best counts (default 3)")
    ap.add_argument("--workdir", help="where to build the tree (default: a temp dir)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    base = make_workdir("wv-md5-", args.workdir)
    print(f"workdir {base}  (cpus {cores}, {load()})", flush=True)
    print(f"kernels: {md5lanes._MB.all_kernels() if md5lanes._MB else 'extension not built'}; "
          f"default {md5lanes.kernel()}", flush=True)
    print(f"\n1. kernels alone, one core, {args.stream_mib} MiB per stream", flush=True)
    rates = kernel_rates(args.stream_mib, args.repeat)
    best = md5lanes.kernel()
    hashlib_gbps = max(rates["hashlib"].values())
    ours_gbps = max(rates[best][16], rates[best][64]) if best != "hashlib" else hashlib_gbps

    print(f"\n2. the digest stage, {args.small:,} small files + multipart objects, "
          f"{args.gib} GiB", flush=True)
    t0 = time.monotonic()
    items, expect = build_tree(base / "tree", args.small, args.gib)
    total = sum(it.size for it in items)
    print(f"  built {len(items):,} files, {total / 1e9:.2f} GB in {time.monotonic() - t0:.0f} s "
          f"({load()})", flush=True)
    read_rate(items, cores)  # into the page cache
    stage, stage_h, reads = 0.0, 0.0, 0.0
    for rnd in range(args.repeat):
        reads = max(reads, read_rate(items, cores))
        stage_h = max(stage_h, run_stage(items, expect, cores, "hashlib"))
        stage = max(stage, run_stage(items, expect, cores, best))
        print(f"  round {rnd + 1}: read {reads:.2f} GB/s, stage hashlib {stage_h:.2f} GB/s, "
              f"stage {best} {stage:.2f} GB/s ({load()})", flush=True)
    os.environ.pop(md5lanes.ENV_KERNEL, None)
    # the CRC64NVME of every byte costs a little too; the MD5 is what bounds it
    crc = CRC_FUNCS["crc64nvme"]
    blob = random.Random(2).randbytes(64 * MiB)
    t0 = time.perf_counter()
    crc(blob)
    crc_gbps = len(blob) / (time.perf_counter() - t0) / 1e9
    per_core = 1 / (1 / ours_gbps + 1 / crc_gbps)
    limit = min(reads, cores * per_core)
    # a read from the page cache is a copy made by the same core that then hashes:
    # the two add up on each core instead of overlapping
    serial = cores / (cores / reads + 1 / ours_gbps + 1 / crc_gbps)
    print(f"\n3. limit = min(read {reads:.2f}, {cores} cores x (MD5 {ours_gbps:.2f} + CRC64NVME "
          f"{crc_gbps:.1f} per byte) = {cores * per_core:.2f}) = {limit:.2f} GB/s;\n"
          f"   with the page-cache copy on the hashing core: {cores} / ({cores}/read + 1/MD5 + "
          f"1/CRC) = {serial:.2f} GB/s", flush=True)
    clean_up(base, args.keep)
    return print_results([
        f"RESULT md5 ours_gbps={ours_gbps:.2f} hashlib_gbps={hashlib_gbps:.2f} "
        f"speedup={ours_gbps / hashlib_gbps:.2f} stage_gbps={stage:.2f} "
        f"stage_hashlib_gbps={stage_h:.2f} stage_speedup={stage / stage_h:.2f} "
        f"limit_gbps={limit:.2f} stage_ratio={stage / limit:.2f} serial_limit_gbps={serial:.2f} "
        f"stage_ratio_serial={stage / serial:.2f} kernel={best} {load_kv()}"])


if __name__ == "__main__":
    raise SystemExit(main())
