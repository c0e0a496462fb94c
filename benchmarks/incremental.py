"""Incremental dry runs and resume: what a repeated verification costs.

On the verify_vs_rclone fixture (>= 20,000 files, >= 2.5 GB by default) it runs:

1. a first, full run;
2. a second run on the unchanged tree, which reuses the first run's evidence
   (target: <= 0.2x the first run);
3. a run after touching 1% of the files: only those are re-read (bytes counted);
4. a run killed with SIGKILL once a third of its digest units are saved, then
   ``--resume``: how much completed work was redone (target <= 10%).

Last line: ``RESULT incremental first=<s> second=<s> ratio=<r> touched_bytes=<n>/<expected>
resume_redone=<pct>``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from verify_vs_rclone import BUCKET, PREFIX, build_fixture  # noqa: E402

from wiseverify.demo.locals3 import FAKE_CREDENTIALS, LocalS3


def _cmd(fx_root: Path, s3: LocalS3, out: Path, *extra: str) -> list[str]:
    exe = Path(sys.executable).parent / "wiseverify"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "wiseverify.cli"]
    return [*base, "verify", str(fx_root), f"s3://{BUCKET}/{PREFIX}", "--out", str(out),
            "--endpoint-url", s3.url, "--quiet", *extra]


def timed(cmd: list[str]) -> tuple[float, dict]:
    env = dict(os.environ, **FAKE_CREDENTIALS)
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    out = Path(cmd[cmd.index("--out") + 1]) if "--out" in cmd else Path(cmd[cmd.index(
        "--resume") + 1])
    if p.returncode not in (0, 1):
        print(p.stdout[-2000:], p.stderr[-2000:], sep="\n")
        raise SystemExit(f"wiseverify exited {p.returncode}")
    return wall, json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir")
    ap.add_argument("--files", type=int, default=20_400)
    ap.add_argument("--multipart", type=int, default=12)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wv-incr-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = work / "runs"
    try:
        with LocalS3(log_path=str(work / "moto.log")) as s3:
            fx = build_fixture(work / "src", s3, args.files, args.multipart, threads=16)
            print(f"fixture: {fx.files:,} files, {fx.total_bytes / 1e9:.2f} GB "
                  f"(built in {fx.build_s:.1f} s)", flush=True)
            first_s, first = timed(_cmd(fx.root, s3, runs / "1-first", "--full"))
            print(f"first run:  {first_s:6.2f} s, read {first['bytes_read_source']:,} B, "
                  f"stages {first['timings']}")
            second_s, second = timed(_cmd(fx.root, s3, runs / "2-unchanged"))
            print(f"second run: {second_s:6.2f} s, read {second['bytes_read_source']:,} B, "
                  f"carried {second['incremental']['carried']:,}, stages {second['timings']}")
            # touch 1% of the files: new mtime, same bytes (a re-sync that rewrote them)
            files = sorted(p for p in fx.root.rglob("*") if p.is_file())
            touched = random.Random(1).sample(files, max(1, len(files) // 100))
            now = time.time_ns()
            for p in touched:
                os.utime(p, ns=(now, now))
            expected = sum(p.stat().st_size for p in touched)
            third_s, third = timed(_cmd(fx.root, s3, runs / "3-touched"))
            print(f"touched {len(touched)} files ({expected:,} B): {third_s:6.2f} s, "
                  f"read {third['bytes_read_source']:,} B, carried "
                  f"{third['incremental']['carried']:,}")

            # resume: kill -9 the whole job once a third of the units are saved
            out = runs / "4-killed"
            cmd = _cmd(fx.root, s3, out, "--full", "--mode", "readback", "--unit-bytes", "32MiB")
            env = dict(os.environ, **FAKE_CREDENTIALS)
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            t0 = time.monotonic()
            saved = 0
            while proc.poll() is None:
                saved = len(list((out / "digest").glob("p*/u*.pkl")))
                if saved >= 20:
                    break
                time.sleep(0.05)
            killed_after = time.monotonic() - t0
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            saved = len(list((out / "digest").glob("p*/u*.pkl")))
            resume_s, resumed = timed([*_cmd(fx.root, s3, out)[:2], "verify", "--resume",
                                       str(out), "--endpoint-url", s3.url, "--quiet"])
            info = resumed.get("resumed", {})
            reused = info.get("units_reused", 0)
            redone = max(0, saved - reused)
            pct = 100.0 * redone / saved if saved else 0.0
            print(f"resume: killed after {killed_after:.1f} s with {saved} units saved; "
                  f"resumed in {resume_s:.1f} s reusing {reused} units "
                  f"({info.get('units_computed', 0)} computed), completed work redone "
                  f"{redone} units = {pct:.1f}%")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ratio = second_s / first_s
    print(f"RESULT incremental first={first_s:.2f} second={second_s:.2f} ratio={ratio:.3f} "
          f"touched_bytes={third['bytes_read_source']}/{expected} resume_redone={pct:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
