"""The command line as a user meets it: help, exit codes, one-line configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from wiseverify.demo.locals3 import free_port

from ..s3proxy import Faults, S3Proxy


def wv(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wiseverify.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_config_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_lists_options_and_exit_codes():
    proc = wv("verify", "--help")
    assert proc.returncode == 0
    for opt in ("--out", "--endpoint-url", "--scheduler", "--workers", "--mode", "--partitions"):
        assert opt in proc.stdout
    assert "Exit codes" in proc.stdout


@pytest.fixture
def small_tree(tmp_path, s3, bucket):
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.txt").write_bytes(b"alpha")
    s3.client().put_object(Bucket=bucket, Key="w/a.txt", Body=b"alpha")
    return root


def test_source_not_found(tmp_path, s3, bucket):
    proc = wv("verify", str(tmp_path / "nope"), f"s3://{bucket}/w", "--out",
              str(tmp_path / "r"), "--endpoint-url", s3.url)
    assert_config_error(proc, "does not exist")


def test_dest_not_an_s3_url(small_tree, tmp_path):
    proc = wv("verify", str(small_tree), "/some/path", "--out", str(tmp_path / "r"))
    assert_config_error(proc, "s3://bucket/prefix")


def test_missing_bucket(small_tree, tmp_path, s3):
    proc = wv("verify", str(small_tree), "s3://no-such-bucket-xyz/w", "--out",
              str(tmp_path / "r"), "--endpoint-url", s3.url)
    assert_config_error(proc, "bucket 'no-such-bucket-xyz' does not exist")


def test_forced_md5_kernel_that_cannot_run_is_refused(small_tree, tmp_path, s3, bucket,
                                                      monkeypatch):
    monkeypatch.setenv("WISEVERIFY_MD5_KERNEL", "sse9")
    proc = wv("verify", str(small_tree), f"s3://{bucket}/w", "--out", str(tmp_path / "r"),
              "--endpoint-url", s3.url)
    assert_config_error(proc, "WISEVERIFY_MD5_KERNEL=sse9: unknown MD5 kernel")
    assert not (tmp_path / "r").exists()


def test_endpoint_unreachable_fails_fast(small_tree, tmp_path, bucket):
    t0 = time.monotonic()
    proc = wv("verify", str(small_tree), f"s3://{bucket}/w", "--out", str(tmp_path / "r"),
              "--endpoint-url", f"http://127.0.0.1:{free_port()}", timeout=120)
    assert_config_error(proc, "cannot reach the S3 endpoint")
    assert time.monotonic() - t0 < 120


def test_access_denied_is_one_line(small_tree, tmp_path, s3, bucket):
    with S3Proxy(s3.url, Faults(deny_keys=(bucket,))) as proxy:
        proc = wv("verify", str(small_tree), f"s3://{bucket}/w", "--out", str(tmp_path / "r"),
                  "--endpoint-url", proxy.url)
    assert_config_error(proc, "access denied")


def test_no_credentials(small_tree, tmp_path, s3, bucket):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    proc = subprocess.run(
        [sys.executable, "-m", "wiseverify.cli", "verify", str(small_tree), f"s3://{bucket}/w",
         "--out", str(tmp_path / "r"), "--endpoint-url", s3.url],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert_config_error(proc, "credentials")


def test_unreachable_scheduler(small_tree, tmp_path, s3, bucket):
    proc = wv("verify", str(small_tree), f"s3://{bucket}/w", "--out", str(tmp_path / "r"),
              "--endpoint-url", s3.url, "--scheduler", f"tcp://127.0.0.1:{free_port()}")
    assert_config_error(proc, "Dask scheduler")


def test_exit_codes_and_no_overwrite(small_tree, tmp_path, s3, bucket):
    out = tmp_path / "r"
    proc = wv("verify", str(small_tree), f"s3://{bucket}/w", "--out", str(out),
              "--endpoint-url", s3.url, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("wiseverify PASS ") and "keys=1 " in last
    # an existing run is never overwritten
    proc = wv("verify", str(small_tree), f"s3://{bucket}/w", "--out", str(out),
              "--endpoint-url", s3.url)
    assert_config_error(proc, "already holds a run")
    # a discrepancy gives exit 1
    (small_tree / "b.txt").write_bytes(b"beta")
    proc = wv("verify", str(small_tree), f"s3://{bucket}/w", "--out", str(tmp_path / "r2"),
              "--endpoint-url", s3.url, "--workers", "1", "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert "discrepancies=1" in proc.stdout
    # report rebuilds the outputs of a finished run
    proc = wv("report", str(out))
    assert proc.returncode == 0 and "MATCH" in proc.stdout
    proc = wv("report", str(tmp_path))
    assert_config_error(proc, "not a completed run directory")


def test_scheduler_address_attaches_to_a_running_cluster(small_tree, tmp_path, s3, bucket,
                                                         dask_client):
    address = dask_client.scheduler.address
    before = set(dask_client.scheduler_info()["workers"])
    proc = wv("verify", str(small_tree), f"s3://{bucket}/w", "--out", str(tmp_path / "r"),
              "--endpoint-url", s3.url, "--scheduler", address)
    assert proc.returncode == 0, proc.stderr
    assert "2 workers" in proc.stdout
    # the attached cluster is left running for its owner
    assert set(dask_client.scheduler_info()["workers"]) == before


def test_job_file_runs_and_flags_override(small_tree, tmp_path, s3, bucket):
    job = tmp_path / "job.yaml"
    job.write_text(f"source: {small_tree}\ndest: s3://{bucket}/w\nout_root: {tmp_path / 'runs'}\n"
                   f"endpoint_url: {s3.url}\nmode: readback\n")
    proc = wv("verify", "--job", str(job), "--mode", "stored", "--workers", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "runs").iterdir()  # a new dated run directory
    import json

    assert json.loads((run / "summary.json").read_text())["mode"] == "stored"


@pytest.mark.parametrize("body,needle", [
    ("dest: s3://b/p\nout: /tmp/x\n", "'source' is required"),
    ("source: /tmp\ndest: s3://b/p\nout: /tmp/x\nmod: stored\n", "unknown setting 'mod'"),
    ("source: /tmp\ndest: s3://b/p\nout: /tmp/x\naws_secret_access_key: x\n", "credential"),
    ("- just\n- a list\n", "mapping"),
])
def test_job_file_errors_are_one_line(tmp_path, body, needle):
    job = tmp_path / "job.yaml"
    job.write_text(body)
    assert_config_error(wv("verify", "--job", str(job)), needle)


def test_job_file_wrong_type(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("source: /tmp\ndest: s3://b/p\nout: /tmp/x\nmax_metadata_ops: lots\n")
    proc = wv("verify", "--job", str(job))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --max-metadata-ops: 'lots' is not a number" in proc.stderr


def test_reference_job_file_is_valid():
    from pathlib import Path

    from wiseverify.deploy.jobfile import load_job, verify_argv

    job = load_job(Path(__file__).parents[2] / "jobs" / "platform-cutover.yaml")
    argv = verify_argv(job, stamp="20261127T220000Z")
    assert argv[:2] == ["/lustre/stats/platform", "s3://stats-platform-archive/platform/"]
    assert "/lustre/verify-runs/platform/20261127T220000Z" in argv[3]
    assert "--max-metadata-ops" in argv


@pytest.mark.parametrize("flags, needle", [
    (["--partitions", "0"], "argument --partitions: must be at least 1, got 0"),
    (["--workers", "0"], "argument --workers: must be at least 1, got 0"),
    (["--threads-per-worker", "0"], "argument --threads-per-worker: must be at least 1, got 0"),
    (["--unit-bytes", "-5"], "argument --unit-bytes: must be at least 1 byte, got '-5'"),
    (["--max-open-files", "0"], "argument --max-open-files: must be at least 1, got 0"),
    (["--max-metadata-ops", "0"], "argument --max-metadata-ops: must be greater than 0, got 0"),
    (["--head-min-size", "4 parsecs"], "argument --head-min-size: '4 parsecs' is not a size"),
    (["--partitions", "many"], "argument --partitions: 'many' is not an integer"),
])
def test_out_of_range_options_are_one_line(small_tree, tmp_path, bucket, flags, needle):
    """Checked before anything touches the network: no endpoint is given or needed."""
    proc = wv("verify", str(small_tree), f"s3://{bucket}/w", "--out", str(tmp_path / "r"),
              *flags)
    assert_config_error(proc, needle)
    assert not (tmp_path / "r").exists()


def test_out_naming_a_file_is_one_line(small_tree, tmp_path, s3, bucket):
    f = tmp_path / "a-file"
    f.write_text("not a directory")
    proc = wv("verify", str(small_tree), f"s3://{bucket}/w", "--out", str(f), "--endpoint-url",
              s3.url)
    assert_config_error(proc, f"--out {f} is a file, not a directory")


def test_config_limits_hold_for_the_python_api(tmp_path):
    """Notebooks build VerifyConfig directly: the same limits, the same message."""
    from wiseverify.core.config import VerifyConfig, check_limits
    from wiseverify.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--partitions must be at least 1, got 0$"):
        check_limits(VerifyConfig("/tmp", "s3://b/p", str(tmp_path / "r"), partitions=0))
    with pytest.raises(ConfigError, match=r"^--unit-bytes must be at least 1, got -5$"):
        check_limits(VerifyConfig("/tmp", "s3://b/p", str(tmp_path / "r"), unit_bytes=-5))
    check_limits(VerifyConfig("/tmp", "s3://b/p", str(tmp_path / "r")))  # the defaults pass


def test_partition_context_takes_the_run_settings_from_the_config(tmp_path):
    """Context's shared settings default to VerifyConfig's and are copied by name, not by hand."""
    import dataclasses

    from wiseverify.core.config import VerifyConfig
    from wiseverify.core.s3 import S3Target
    from wiseverify.reconcile import plan as R

    target = S3Target.parse("s3://bkt/p")
    plain = R.Context(root="/r", target=target, run_dir=str(tmp_path), run_id="x")
    defaults = VerifyConfig("", "", "")
    assert {n: getattr(plain, n) for n in R._SHARED} == {n: getattr(defaults, n)
                                                          for n in R._SHARED}
    cfg = VerifyConfig("/r", "s3://bkt/p", str(tmp_path), mode="readback", metadata="off",
                       head_min_size=7, unit_bytes=9, unit_files=3, range_bytes=11,
                       head_concurrency=5, get_concurrency=4, max_open_files=2,
                       previous_run="/audit/link")
    ctx = R.Context.from_config(cfg, root="/r", target=target, run_dir=str(tmp_path),
                                run_id="x", min_units=6)
    assert {n: getattr(ctx, n) for n in R._SHARED} == {n: getattr(cfg, n) for n in R._SHARED}
    assert ctx.min_units == 6 and ctx.previous_run is None  # the audit link is not carried
    assert set(R._SHARED) <= {f.name for f in dataclasses.fields(VerifyConfig)}
