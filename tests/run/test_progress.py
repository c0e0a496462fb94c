"""Progress: the line format, terminal vs batch rendering, and the counters of a real run."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from wiseverify.report.progress import Progress, StageSnapshot, eta_seconds, format_line


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def snap(**kw) -> StageSnapshot:
    base = {"name": "digest", "unit": "files", "files": 40, "nbytes": 30_000_000,
            "total_files": 80, "total_bytes": 60_000_000, "elapsed": 10.0}
    return StageSnapshot(**(base | kw))


def test_line_shows_files_bytes_rate_and_eta():
    line = format_line(snap())
    assert line.startswith("digest: 40/80 files, 30.0 MB/60.0 MB (50%)")
    assert "4 files/s, 3.0 MB/s" in line
    assert line.endswith("elapsed 0:00:10, ETA 0:00:10")
    # bytes decide the ETA when a byte total is known (hashing time follows bytes)
    assert eta_seconds(snap(files=79)) == 10.0
    # without any total (a walk of unknown size) there is no ETA
    line = format_line(snap(name="inventory", unit="entries", total_files=None,
                            total_bytes=None, note="source 30, destination 10"))
    assert "ETA" not in line and "source 30, destination 10" in line


def test_batch_mode_prints_plain_lines_and_tty_mode_redraws():
    out = io.StringIO()
    p = Progress(out, mode="auto")
    assert p.mode == "plain"  # not a terminal
    p.stage("inventory", unit="entries")
    p.update(files=5, nbytes=5000)
    p.emit()
    p.log("inventory: done")
    p.end_stage()
    p.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines()[0].startswith("progress: inventory: 5 entries, 5.0 kB")
    assert text.splitlines()[-1] == "inventory: done"
    assert p.history[0].files == 5 and p.history[0].nbytes == 5000

    tty = FakeTTY()
    p = Progress(tty, mode="auto")
    assert p.mode == "tty"
    p.stage("digest", total_files=2, total_bytes=100)
    p.update(files=1, nbytes=50)
    p.emit()
    p.log("a message")  # printed above the live line, which is redrawn after it
    p.close()
    text = tty.getvalue()
    assert "\r\x1b[2Kdigest: 1/2 files, 50 B/100 B (50%)" in text
    assert "\r\x1b[2Ka message\n" in text and text.endswith("\r\x1b[2K")


def test_quiet_prints_nothing():
    out = io.StringIO()
    p = Progress(out, mode="off")
    p.start()
    p.stage("inventory")
    p.update(files=1)
    p.emit()
    p.log("hidden")
    p.close()
    assert out.getvalue() == ""
    assert p.snapshot().files == 1  # counters are kept for the caller


def test_real_run_counts_every_stage(s3, bucket, tmp_path, dask_client):
    from wiseverify.core.config import VerifyConfig
    from wiseverify.run.driver import verify

    src = tmp_path / "tree"
    (src / "d").mkdir(parents=True)
    client = s3.client()
    total = 0
    for i in range(5):
        data = os.urandom(1000 * (i + 1))
        total += len(data)
        (src / "d" / f"f{i}.bin").write_bytes(data)
        client.put_object(Bucket=bucket, Key=f"r/d/f{i}.bin", Body=data)
    out = io.StringIO()
    prog = Progress(out, mode="plain", interval=0.05)
    with prog:
        # no prehash: every file then goes through a digest unit, which the stage counts
        summary = verify(VerifyConfig(source=str(src), dest=f"s3://{bucket}/r/",
                                      out=str(tmp_path / "run"), endpoint_url=s3.url,
                                      prehash=False),
                         dask_client, log=prog.log, progress=prog)
    assert summary["verdict"] == "PASS"
    stages = {s.name: s for s in prog.history}
    assert list(stages) == ["inventory", "partition", "digest"]
    assert stages["inventory"].files == 10  # 5 files each side
    assert stages["inventory"].nbytes == 2 * total
    assert stages["partition"].files == stages["partition"].total_files == 10
    assert stages["digest"].files == stages["digest"].total_files == 5
    assert stages["digest"].nbytes == total
    text = out.getvalue()
    assert "\r" not in text
    for line in text.splitlines():
        assert line.startswith(("progress: ", "run ", "inventory:", "partitioned", "digest",
                                "metadata sample:",
                                "report:", "dashboard:")), line


def test_cli_batch_output_has_dashboard_link_and_no_carriage_returns(s3, bucket, tmp_path):
    src = tmp_path / "tree"
    src.mkdir()
    (src / "a.txt").write_bytes(b"alpha\n")
    s3.client().put_object(Bucket=bucket, Key="q/a.txt", Body=b"alpha\n")
    env = dict(os.environ, WISEVERIFY_PROGRESS_INTERVAL="0.05")
    proc = subprocess.run(
        [sys.executable, "-m", "wiseverify.cli", "verify", str(src), f"s3://{bucket}/q/",
         "--out", str(tmp_path / "run"), "--endpoint-url", s3.url, "--workers", "1"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("dashboard: http://127.0.0.1:") for ln in lines[:3]), lines[:3]
    assert lines[-1].startswith("wiseverify PASS")
