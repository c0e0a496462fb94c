"""Per-directory sign-off: rollup.parquet sums to the whole table; report --only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq


def _study_tree(root: Path, c, bucket: str) -> None:
    for study in ("s1", "s2", "s3"):
        for sub in ("raw", "out"):
            for i in range(5):
                rel = f"{study}/{sub}/f{i}.sas7bdat"
                data = f"{rel}".encode() * 3
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
                c.put_object(Bucket=bucket, Key=f"ro/{rel}", Body=data)
    (root / "top.txt").write_bytes(b"t")
    c.put_object(Bucket=bucket, Key="ro/top.txt", Body=b"t")
    c.delete_object(Bucket=bucket, Key="ro/s2/out/f3.sas7bdat")  # s2 fails
    c.put_object(Bucket=bucket, Key="ro/s2/raw/f1.sas7bdat", Body=b"different size")


def test_rollup_and_scoped_report(tmp_path, s3, bucket, run_verify):
    root = tmp_path / "src"
    _study_tree(root, s3.client(), bucket)
    summary, rows = run_verify(root, f"s3://{bucket}/ro", rollup_depth=1)
    run = sorted(p for p in tmp_path.glob("run*") if (p / "summary.json").is_file())[-1]
    rt = pq.read_table(run / "rollup.parquet")
    by = {r["dir"]: r for r in rt.to_pylist()}
    assert sorted(by) == ["", "s1", "s2", "s3"]
    # every key in exactly one row: the rows sum to the whole table, status by status
    assert pc.sum(rt.column("keys")).as_py() == summary["keys"] == len(rows)
    for st, n in summary["counts"].items():
        assert (pc.sum(rt.column(st)).as_py() if st in rt.column_names else 0) == n
    assert by["s2"]["verdict"] == "FAIL" and by["s2"]["discrepancies"] == 2
    assert by["s1"]["verdict"] == by["s3"]["verdict"] == by[""]["verdict"] == "PASS"
    assert summary["rollup"] == {"file": "rollup.parquet", "depth": 1, "directories": 4,
                                 "failing": 1}
    html = (run / "report.html").read_text()
    assert 'id="rollup"' in html and "By directory (depth 1)" in html

    def report(*a):
        return subprocess.run([sys.executable, "-m", "wiseverify.cli", "report", str(run), *a],
                              capture_output=True, text=True, timeout=120)

    ok = report("--only", "s1")
    assert ok.returncode == 0, ok.stderr
    scope = json.loads((Path(f"{run}-only-s1") / "scope.json").read_text())
    manifest_sha = __import__("hashlib").sha256((run / "manifest.json").read_bytes()).hexdigest()
    assert scope["verdict"] == "PASS" and scope["keys"] == 10
    assert scope["run_manifest_sha256"] == manifest_sha and scope["run_verdict"] == "FAIL"
    bad = report("--only", "s2/")
    assert bad.returncode == 1 and "s2: FAIL (10 keys, 2 discrepancies)" in bad.stdout
    page = (Path(f"{run}-only-s2") / "report.html").read_text()
    assert manifest_sha in page and "s2/out/f3.sas7bdat" in page and "s1/" not in page
    none = report("--only", "s9")
    assert none.returncode == 2 and "is at or below 's9'" in none.stderr
    # the run directory itself is untouched: its audit still passes
    audit = subprocess.run([sys.executable, "-m", "wiseverify.cli", "audit", str(run)],
                           capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
