"""Why a key differs (stale copy or corruption), --fail-on, and archived storage classes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from wiseverify.core import schema as S

from ..s3proxy import S3Proxy

DAY = 86_400


def _write_old(path: Path, data: bytes) -> os.stat_result:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    old = time.time() - DAY
    os.utime(path, (old, old))  # before the upload: ctime and mtime older than LastModified
    return path.stat()


def _cause_tree(root: Path, c, bucket: str) -> None:
    # DataSync-style prefix: every object carries the source's POSIX metadata
    for i in range(6):
        rel = f"ds/f{i}.dat"
        st = _write_old(root / rel, b"%06d" % i * 50)
        body = (root / rel).read_bytes()
        if i == 3:  # the bytes changed after the copy: same size, same file-mtime
            body = body[:-1] + b"!"
        c.put_object(Bucket=bucket, Key=f"cz/{rel}", Body=body, Metadata={
            "file-mtime": f"{st.st_mtime_ns}ns", "file-owner": str(st.st_uid),
            "file-group": str(st.st_gid), "file-permissions": f"0{st.st_mode:o}"})
    # Snowball-style prefix: no user metadata at all
    for i in range(4):
        rel = f"sb/g{i}.dat"
        _write_old(root / rel, b"%06d" % i * 40)
        body = (root / rel).read_bytes()
        if i == 1:
            body = b"X" + body[1:]
        c.put_object(Bucket=bucket, Key=f"cz/{rel}", Body=body)


def _stale(root: Path) -> None:
    """A file edited after its last copy: newer than the object, same size."""
    p = root / "ds/f5.dat"
    p.write_bytes(p.read_bytes()[::-1])
    os.utime(p, (time.time() + 5, time.time() + 5))  # clearly after LastModified's second


def test_causes(tmp_path, s3, bucket, run_verify):
    root = tmp_path / "src"
    _cause_tree(root, s3.client(), bucket)
    _stale(root)
    summary, rows = run_verify(root, f"s3://{bucket}/cz")
    assert rows["ds/f5.dat"]["status"] == S.CONTENT_MISMATCH
    assert rows["ds/f5.dat"]["cause"] == S.CAUSE_CHANGED
    assert rows["ds/f3.dat"]["status"] == S.CONTENT_MISMATCH
    assert rows["ds/f3.dat"]["cause"] == S.CAUSE_OLDER
    assert "cause: source-older-than-copy" in rows["ds/f3.dat"]["detail"]
    assert rows["sb/g1.dat"]["cause"] == S.CAUSE_UNKNOWN
    assert "no file-mtime stored on the object" in rows["sb/g1.dat"]["detail"]
    assert all(r["cause"] is None for k, r in rows.items() if r["status"] == S.MATCH)
    assert summary["causes"] == {S.CAUSE_CHANGED: 1, S.CAUSE_OLDER: 1, S.CAUSE_UNKNOWN: 1}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wiseverify.cli", "verify", *args, "--quiet"],
                          capture_output=True, text=True, timeout=300)


def test_fail_on_corruption(tmp_path, s3, bucket):
    c = s3.client()
    stale_root = tmp_path / "stale"
    for i in range(3):
        _write_old(stale_root / f"s{i}.txt", b"v1-%d" % i)
        c.put_object(Bucket=bucket, Key=f"fo1/s{i}.txt", Body=(stale_root / f"s{i}.txt")
                     .read_bytes())
    (stale_root / "s1.txt").write_bytes(b"v2-1")  # changed since the copy
    os.utime(stale_root / "s1.txt", (time.time() + 5, time.time() + 5))
    base = ["--endpoint-url", s3.url, "--metadata", "off"]
    only_stale = _cli(str(stale_root), f"s3://{bucket}/fo1", "--out", str(tmp_path / "a"),
                      "--fail-on", "corruption", *base)
    assert only_stale.returncode == 0, only_stale.stdout + only_stale.stderr
    assert "wiseverify FAIL" in only_stale.stdout and "source_older_than_copy=0" in \
        only_stale.stdout
    default = _cli(str(stale_root), f"s3://{bucket}/fo1", "--out", str(tmp_path / "b"), *base)
    assert default.returncode == 1
    alarm_root = tmp_path / "alarm"
    _cause_tree(alarm_root, c, bucket)
    alarm = _cli(str(alarm_root), f"s3://{bucket}/cz", "--out", str(tmp_path / "c"),
                 "--endpoint-url", s3.url, "--fail-on", "corruption")
    assert alarm.returncode == 1, alarm.stdout + alarm.stderr
    assert "source_older_than_copy=1" in alarm.stdout


def test_archived_objects(tmp_path, s3, bucket, dask_client):
    from wiseverify.run.driver import verify

    from ..conftest import read_table

    root = tmp_path / "src"
    c = s3.client()
    classes = {"std.bin": "STANDARD", "ir.bin": "GLACIER_IR", "gl.bin": "GLACIER",
               "deep.bin": "DEEP_ARCHIVE", "restored.bin": "DEEP_ARCHIVE"}
    for name, sc in classes.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(name.encode() * 100)
        c.put_object(Bucket=bucket, Key=f"ar/{name}", Body=p.read_bytes(), StorageClass=sc)
    c.restore_object(Bucket=bucket, Key="ar/restored.bin", RestoreRequest={"Days": 1})
    stored = _run(verify, dask_client, root, bucket, s3.url, tmp_path / "s", "stored")
    rows = read_table(tmp_path / "s")
    assert {k: r["status"] for k, r in rows.items()} == dict.fromkeys(classes, S.MATCH)
    assert stored["storage_classes"]["DEEP_ARCHIVE"] == {"objects": 2, "bytes": 2000}
    assert stored["storage_classes"]["GLACIER"]["objects"] == 1
    with S3Proxy(s3.url) as proxy:
        _run(verify, dask_client, root, bucket, proxy.url, tmp_path / "r", "readback")
    rows = read_table(tmp_path / "r")
    assert rows["gl.bin"]["status"] == S.UNVERIFIED
    assert rows["gl.bin"]["detail"] == "archived (GLACIER): read-back needs a restore"
    assert rows["deep.bin"]["detail"] == "archived (DEEP_ARCHIVE): read-back needs a restore"
    assert rows["restored.bin"]["status"] == rows["std.bin"]["status"] == S.MATCH
    assert rows["ir.bin"]["status"] == S.MATCH and rows["ir.bin"]["verified_by"] == "readback"
    gets = [p for m, p in proxy.requests if m == "GET" and "/ar/" in p]
    assert not any("gl.bin" in p or "deep.bin" in p for p in gets), gets
    assert any("restored.bin" in p for p in gets)
    assert "gl.bin" in (tmp_path / "r" / "lists" / "unverified.txt").read_text()


def _run(verify, client, root, bucket, url, out, mode):
    from wiseverify.core.config import VerifyConfig

    return verify(VerifyConfig(source=str(root), dest=f"s3://{bucket}/ar", out=str(out),
                               endpoint_url=url, mode=mode), client, log=None)


def test_diff_shows_a_stale_copy_catching_up(tmp_path, s3, bucket, run_verify):
    from wiseverify.report.history import diff, format_diff

    root = tmp_path / "src"
    c = s3.client()
    for i in range(3):
        _write_old(root / f"k{i}.txt", b"v1-%d" % i)
        c.put_object(Bucket=bucket, Key=f"dd/k{i}.txt", Body=(root / f"k{i}.txt").read_bytes())
    (root / "k2.txt").write_bytes(b"v2-2")  # changed on the source during the sync weeks
    later = time.time() + 5  # LastModified has whole seconds: clearly after it
    os.utime(root / "k2.txt", (later, later))
    first, rows = run_verify(root, f"s3://{bucket}/dd", metadata="off")
    assert rows["k2.txt"]["cause"] == S.CAUSE_CHANGED
    c.put_object(Bucket=bucket, Key="dd/k2.txt", Body=b"v2-2")  # the next sync
    run_verify(root, f"s3://{bucket}/dd", metadata="off")
    a, b = sorted(p for p in tmp_path.glob("run*") if (p / "summary.json").is_file())
    res = diff(a, b)
    moved = {(t["from"], t["to"]): t["keys"] for t in res["transitions"]}
    assert moved[("CONTENT_MISMATCH (source-changed-after-copy)", "MATCH")] == 1
    assert res["regression_count"] == 0
    assert "REGRESSION" not in format_diff(res)
