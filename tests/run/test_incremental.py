"""Cutover dry runs: incremental re-verification, resume after kill -9, history and diff."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from wiseverify.core import schema as S

from ..conftest import read_table

MiB = 1 << 20
RUN_SPECIFIC = {"evidence_run", "partition"}


def comparable(table: dict) -> dict:
    return {k: {c: v for c, v in r.items() if c not in RUN_SPECIFIC} for k, r in table.items()}


@pytest.fixture
def tree(s3, bucket, tmp_path):
    root = tmp_path / "src"
    rng = random.Random(3)
    c = s3.client()
    for i in range(60):
        p = root / f"d{i % 5}" / f"f{i:02d}.dat"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(1, 50_000)))
        c.put_object(Bucket=bucket, Key=f"inc/{p.relative_to(root)}", Body=p.read_bytes())
    return root


def test_second_run_reuses_unchanged_evidence(tree, bucket, s3, run_verify, tmp_path):
    first, t1 = run_verify(tree, f"s3://{bucket}/inc")
    assert first["counts"][S.MATCH] == 60 and first["incremental"]["carried"] == 0
    prev = str(tmp_path / "run0")
    second, t2 = run_verify(tree, f"s3://{bucket}/inc", previous_run=prev)
    assert second["incremental"]["carried"] == 60
    assert second["bytes_read_source"] == 0
    assert all(r["evidence_run"] == first["run_id"] for r in t2.values())
    # the same rows, except that nothing was read this time
    assert {k: {c: v for c, v in r.items() if c != "bytes_read_src"}
            for k, r in comparable(t1).items()} == {
        k: {c: v for c, v in r.items() if c != "bytes_read_src"}
        for k, r in comparable(t2).items()}
    # touch 1 file (same size, new bytes) and change one object: only those are re-read
    f = tree / "d1" / "f01.dat"
    f.write_bytes(os.urandom(f.stat().st_size))
    s3.client().put_object(Bucket=bucket, Key="inc/d2/f02.dat", Body=b"rewritten")
    third, t3 = run_verify(tree, f"s3://{bucket}/inc", previous_run=prev)
    assert third["incremental"]["carried"] == 58
    assert third["bytes_read_source"] == f.stat().st_size
    assert t3["d1/f01.dat"]["status"] == S.CONTENT_MISMATCH
    assert t3["d1/f01.dat"]["evidence_run"] == third["run_id"]
    assert t3["d2/f02.dat"]["status"] == S.SIZE_MISMATCH
    # --full re-hashes everything
    full, _ = run_verify(tree, f"s3://{bucket}/inc", previous_run=prev, full=True)
    assert full["incremental"]["carried"] == 0
    assert full["bytes_read_source"] == sum(
        p.stat().st_size for p in tree.rglob("*.dat") if p.name != "f02.dat")


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "wiseverify.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def test_resume_after_kill_gives_the_uninterrupted_table(s3, bucket, tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    c = s3.client()
    rng = random.Random(8)
    for i in range(48):
        data = rng.randbytes(12 * MiB + i)
        (root / f"big{i:02d}.bin").write_bytes(data)
        c.put_object(Bucket=bucket, Key=f"r/big{i:02d}.bin", Body=data)
    # readback with small units: many units, each a few hundred ms, so the kill lands mid-run
    common = [str(root), f"s3://{bucket}/r", "--endpoint-url", s3.url, "--workers", "1",
              "--threads-per-worker", "1", "--quiet", "--mode", "readback",
              "--unit-bytes", "16MiB", "--full"]
    clean = _cli("verify", *common, "--out", str(tmp_path / "clean"))
    assert clean.wait(600) == 0, clean.stderr.read()

    out = tmp_path / "killed"
    proc = _cli("verify", *common, "--out", str(out))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / "digest").glob("p*/u*.pkl"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its scheduler and workers
    proc.wait()
    done_before = len(list((out / "digest").glob("p*/u*.pkl")))
    assert not (out / "summary.json").exists()

    resumed = _cli("verify", "--resume", str(out), "--workers", "1", "--threads-per-worker",
                   "1", "--endpoint-url", s3.url)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert "resuming run" in stdout
    summary = json.loads((out / "summary.json").read_text())
    info = summary["resumed"]
    assert info["inventory_reused"] is True
    assert info["units_reused"] >= done_before >= 3
    assert comparable(read_table(out)) == comparable(read_table(tmp_path / "clean"))
    # the completed units were not computed again: the resumed run computed only the rest
    clean_units = json.loads((tmp_path / "clean" / "summary.json").read_text())[
        "digest_units"]["units"]
    assert info["units_computed"] + info["units_reused"] == clean_units
    assert info["units_computed"] <= clean_units - done_before
    # every row still reports its bytes, reused or not
    assert summary["bytes_read_source"] == sum(p.stat().st_size for p in root.iterdir())
    assert not (out / "digest").exists() or not list((out / "digest").glob("p*/u*.pkl"))


def test_diff_shows_progress_and_regressions(s3, bucket, tmp_path, run_verify):
    root = tmp_path / "src"
    root.mkdir()
    c = s3.client()
    for i in range(10):
        (root / f"f{i}.txt").write_bytes(f"file {i}\n".encode() * 10)
        if i < 7:
            c.put_object(Bucket=bucket, Key=f"h/f{i}.txt", Body=(root / f"f{i}.txt").read_bytes())
    a, _ = run_verify(root, f"s3://{bucket}/h")
    for i in range(7, 10):  # the sync catches up
        c.put_object(Bucket=bucket, Key=f"h/f{i}.txt", Body=(root / f"f{i}.txt").read_bytes())
    b, _ = run_verify(root, f"s3://{bucket}/h", full=True)
    data = bytearray((root / "f0.txt").read_bytes())
    data[3] ^= 1  # a silent corruption after a clean run
    c.put_object(Bucket=bucket, Key="h/f0.txt", Body=bytes(data))
    (root / "new.txt").write_bytes(b"new")
    cc, _ = run_verify(root, f"s3://{bucket}/h", full=True)
    ra, rb, rc = (str(tmp_path / f"run{i}") for i in range(3))

    proc = subprocess.run([sys.executable, "-m", "wiseverify.cli", "diff", ra, rb, "--out",
                           str(tmp_path / "d1")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MISSING_IN_DEST    MATCH" in proc.stdout
    d1 = json.loads((tmp_path / "d1" / "diff.json").read_text())
    assert {"from": S.MISSING_IN_DEST, "to": S.MATCH, "keys": 3} in d1["transitions"]
    assert d1["readiness"]["discrepancies_left"] == 0

    proc = subprocess.run([sys.executable, "-m", "wiseverify.cli", "diff", rb, rc],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1  # a MATCH regressed
    assert "REGRESSION" in proc.stdout and "f0.txt" in proc.stdout
    assert "keys added 1" in proc.stdout

    proc = subprocess.run([sys.executable, "-m", "wiseverify.cli", "runs", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    index = json.loads((tmp_path / "runs.json").read_text())
    assert [r["run_id"] for r in index] == [a["run_id"], b["run_id"], cc["run_id"]]
