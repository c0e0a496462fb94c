"""SLURM on real daemons: ``sbatch slurm/verify.sh``, ``--cluster slurm`` and worker-job loss.

The daemons come from ``scripts/slurm-local.sh start`` (as root) or an existing
installation.  Under CI (``CI=true``) a SLURM that cannot be started fails
these tests instead of skipping them, so a broken setup is never green.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from wiseverify.demo.locals3 import FAKE_CREDENTIALS
from wiseverify.demo.tree import build_fixture
from wiseverify.deploy.jobfile import JobFileError, load_job, run_dir, verify_argv

from ..conftest import read_table

REPO = Path(__file__).resolve().parents[2]
VERIFY_SH = REPO / "slurm" / "verify.sh"
SECRET = FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
#: columns that name the run rather than describe the key
RUN_COLUMNS = {"evidence_run"}
USABLE = {"idle", "mixed", "allocated", "completing"}


def _slurm_usable() -> bool:
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    return r.returncode == 0 and bool(USABLE & set(r.stdout.split()))


@functools.cache
def _slurm_problem() -> str | None:
    """None when SLURM accepts jobs (starting the local daemons if needed), else why not."""
    if _slurm_usable():
        return None
    if os.geteuid() != 0:
        return "SLURM is not running and only root can start scripts/slurm-local.sh"
    r = subprocess.run([str(REPO / "scripts" / "slurm-local.sh"), "start"], capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        return f"scripts/slurm-local.sh start failed (exit {r.returncode}): {r.stderr[-3000:]}"
    return None if _slurm_usable() else "SLURM started but no node accepts jobs"


def need_slurm() -> None:
    problem = _slurm_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"SLURM tests must run in CI: {problem}")
    pytest.skip(problem)


def _rows(table: dict[str, dict]) -> dict[str, dict]:
    return {k: {c: v for c, v in r.items() if c not in RUN_COLUMNS} for k, r in table.items()}


def _assert_same_table(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert set(got) == set(want)
    diffs = {k: {c: (got[k].get(c), v) for c, v in want[k].items() if got[k].get(c) != v}
             for k in want}
    diffs = {k: d for k, d in diffs.items() if d}
    assert not diffs, diffs


def _job_env(**extra: str) -> dict[str, str]:
    """The submitting shell's environment: the fake AWS credentials travel in it, only in it."""
    env = dict(os.environ)
    env.update(FAKE_CREDENTIALS)
    env["WISEVERIFY_PYTHON"] = sys.executable
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def fixture_tree(s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-src") / "source"
    bucket = "slurm-e2e"
    expect = build_fixture(root, s3, bucket, "wise/")
    return root, f"s3://{bucket}/wise/", expect


@pytest.fixture(scope="module")
def local_table(fixture_tree, s3, dask_client, tmp_path_factory):
    """The reference: the same verification on the embedded local cluster."""
    from wiseverify.core.config import VerifyConfig
    from wiseverify.run.driver import verify

    root, dest, expect = fixture_tree
    out = tmp_path_factory.mktemp("local") / "run"
    verify(VerifyConfig(source=str(root), dest=dest, out=str(out), endpoint_url=s3.url),
           dask_client, log=None)
    table = read_table(out)
    assert {k: r["status"] for k, r in table.items()} == expect
    return _rows(table)


def _sbatch(args: list[str], out_dir: Path, env: dict[str, str], *flags: str):
    """``sbatch --wait`` with small resources; returns (exit code, output file text, seconds)."""
    t0 = time.monotonic()
    r = subprocess.run(
        ["sbatch", "--wait", "--parsable", "--ntasks=3", "--cpus-per-task=1",
         "--mem-per-cpu=1G", "--time=00:15:00", f"--output={out_dir}/wiseverify-%j.out",
         *flags, str(VERIFY_SH), *args],
        capture_output=True, text=True, env=env, cwd=out_dir, timeout=900,
    )
    elapsed = time.monotonic() - t0
    job_id = r.stdout.strip().split(";")[0]
    out_file = out_dir / f"wiseverify-{job_id}.out"
    assert out_file.exists(), (r.returncode, r.stdout, r.stderr)
    return r.returncode, job_id, out_file.read_text(), elapsed


def _assert_readable_output(text: str, job_id: str) -> None:
    assert f"wiseverify: job {job_id}" in text
    assert "verdict: FAIL (9 discrepancies)" in text
    assert "wiseverify FAIL run=" in text
    assert "wiseverify: finished: discrepancies found (exit 1)" in text
    assert "Traceback" not in text, text
    assert SECRET not in text
    assert "0.0.0.0" not in text
    # distributed's INFO chatter stays out of the job's output (WARNING by default)
    assert " - INFO - " not in text and "close-stream" not in text, text


@pytest.mark.slurm
def test_sbatch_job_file_matches_local_run(fixture_tree, s3, local_table, tmp_path):
    """``sbatch --wait slurm/verify.sh jobs/x.yaml``: same rows as the local run, a readable log."""
    need_slurm()
    root, dest, expect = fixture_tree
    runs = tmp_path / "runs"
    job = tmp_path / "dryrun.yaml"
    job.write_text(yaml.safe_dump({
        "source": str(root), "dest": dest, "out_root": str(runs), "endpoint_url": s3.url,
        "mode": "stored", "metadata": "auto",
        "slurm": {"dashboard-port": 0},  # the job file's cluster settings apply
    }))
    rc, job_id, text, elapsed = _sbatch([str(job)], tmp_path, _job_env(WISEVERIFY_RUN_STAMP=""))
    print(f"sbatch --wait (job file): {elapsed:.1f} s")
    assert rc == 1, text  # the fixture holds discrepancies: the job's exit code says so
    _assert_readable_output(text, job_id)
    assert "/status, waiting for 1 worker(s)" in text and ":8787/status" not in text
    # a new dated run directory under out_root, named with the job id
    (run,) = list(runs.iterdir())
    assert run.name.endswith(f"-job{job_id}") and run.name[:8].isdigit()
    assert f"out={run}" in text
    _assert_same_table(_rows(read_table(run)), local_table)
    # nothing left behind in the run directory but the evidence
    assert not list(run.glob(".dask-scheduler-*.json"))
    assert not any(SECRET in p.read_text(errors="replace") for p in run.rglob("*")
                   if p.is_file() and p.suffix in (".json", ".txt", ".csv", ".html"))


@pytest.mark.slurm
def test_sbatch_job_file_with_tls_and_overrides(fixture_tree, s3, local_table, tmp_path):
    """``sbatch slurm/verify.sh --job FILE --out RUN_DIR``: a job file asking for TLS."""
    need_slurm()
    root, dest, expect = fixture_tree
    out = tmp_path / "run"
    tls_dir = tmp_path / "tls"
    job = tmp_path / "tls.yaml"
    job.write_text(yaml.safe_dump({
        "source": str(root), "dest": dest, "out": str(tmp_path / "not-this-one"),
        "endpoint_url": s3.url, "slurm": {"tls": True, "tls_directory": str(tls_dir)},
    }))
    rc, job_id, text, elapsed = _sbatch(["--job", str(job), "--out", str(out)], tmp_path,
                                        _job_env())
    print(f"sbatch --wait (--job, TLS): {elapsed:.1f} s")
    assert not (tmp_path / "not-this-one").exists()  # the flag overrode the file
    assert rc == 1, text
    _assert_readable_output(text, job_id)
    assert "scheduler tls://" in text
    assert "PRIVATE KEY" not in text
    _assert_same_table(_rows(read_table(out)), local_table)
    # the throwaway certificate is gone with the job
    assert not (tls_dir / f"job-{job_id}").exists()


@pytest.mark.slurm
def test_sbatch_usage_errors_exit_2(fixture_tree, tmp_path):
    """Mistakes are reported once, by the driver task, with exit code 2."""
    need_slurm()
    root, dest, _ = fixture_tree
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: /nonexistent\ndest: s3://b/p/\nout: /tmp/x\nworkrs: 3\n")
    rc, job_id, text, _ = _sbatch([str(bad)], tmp_path, _job_env())
    assert rc == 2, text
    assert text.count("unknown setting 'workrs'") == 1, text
    assert "Traceback" not in text
    # the arguments of `wiseverify verify`, with a wrong value
    rc, job_id, text, _ = _sbatch([str(root), dest, "--out", str(tmp_path / "r"), "--mode",
                                   "bogus"], tmp_path, _job_env())
    assert rc == 2, text
    assert text.count("invalid choice: 'bogus'") == 1, text
    assert "Traceback" not in text


def _worker_jobs(cluster) -> dict[str, str]:
    return {name: str(job.job_id) for name, job in list(cluster.workers.items())
            if getattr(job, "job_id", None)}


def _processing_by_name(dask_scheduler) -> dict:
    return {ws.name: [str(ts.key) for ts in ws.processing]
            for ws in dask_scheduler.workers.values()}


@pytest.mark.slurm
def test_cluster_slurm_survives_a_cancelled_worker_job(fixture_tree, s3, tmp_path, dask_client):
    """A worker job scancelled mid-digest is replaced and the table is the same."""
    need_slurm()
    from wiseverify.core.config import VerifyConfig
    from wiseverify.deploy.cluster import open_client
    from wiseverify.run.driver import verify

    root, dest, expect = fixture_tree
    # one file per digest unit and 1 MiB ranges, read back from S3: enough digest
    # tasks in flight to cancel a worker in the middle of them
    knobs = {"mode": "readback", "unit_files": 1, "range_bytes": 1 << 20, "unit_bytes": 1 << 20}
    # separate parents: a run reuses the evidence of an earlier run beside it
    ref = tmp_path / "local" / "run"
    verify(VerifyConfig(source=str(root), dest=dest, out=str(ref), endpoint_url=s3.url, **knobs),
           dask_client, log=None)
    want = _rows(read_table(ref))
    assert {k: r["status"] for k, r in want.items()} == expect

    out = tmp_path / "slurm" / "run"
    cfg = VerifyConfig(source=str(root), dest=dest, out=str(out), endpoint_url=s3.url, **knobs)
    overrides = {"cluster": {"cores": 1, "memory": "1GiB", "walltime": "00:15:00",
                             "watch-interval": 1, "startup-timeout": 300}}
    result: dict = {}
    cancelled: dict = {}
    names_seen: set = set()
    t0 = time.monotonic()
    with open_client(cluster="slurm", min_jobs=2, max_jobs=2, run_dir=str(out),
                     slurm_overrides=overrides) as client:
        cluster = client.cluster
        t_up = time.monotonic() - t0
        first_jobs = _worker_jobs(cluster)
        assert len(first_jobs) == 2

        def run():
            try:
                result["summary"] = verify(cfg, client, log=None)
            except BaseException as exc:  # surfaced by the assertions below
                result["error"] = exc

        th = threading.Thread(target=run)
        th.start()
        try:
            while th.is_alive() and not cancelled:
                busy = client.run_on_scheduler(_processing_by_name)
                names_seen.update(busy)
                for name, keys in busy.items():
                    if any(k.startswith("digest-") for k in keys) and name in first_jobs:
                        jid = first_jobs[name]
                        subprocess.run(["scancel", jid], check=True, timeout=60)
                        cancelled.update(name=name, job=jid, at=time.monotonic() - t0)
                        break
                time.sleep(0.02)
            th.join(timeout=600)
            assert not th.is_alive(), "verification did not finish"
            # the replacement job arrives even if the run finished first
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                names = set(client.run_on_scheduler(_processing_by_name))
                names_seen.update(names)
                if len(names) == 2 and names - set(first_jobs):
                    break
                time.sleep(0.5)
            replaced = {n: j for n, j in _worker_jobs(cluster).items() if n not in first_jobs}
            states = subprocess.run(["squeue", "-h", "-t", "all", "-j", cancelled.get("job", "0"),
                                     "-o", "%T"], capture_output=True, text=True).stdout.strip()
        finally:
            th.join(timeout=600)
    elapsed = time.monotonic() - t0
    print(f"--cluster slurm: workers up in {t_up:.1f} s, cancelled {cancelled} , total "
          f"{elapsed:.1f} s")
    assert cancelled, "the digest stage ended before a worker could be cancelled"
    assert "error" not in result, result.get("error")
    assert states == "CANCELLED"
    assert replaced, f"no replacement worker job was submitted (workers seen: {names_seen})"
    assert result["summary"]["keys"] == len(expect)
    _assert_same_table(_rows(read_table(out)), want)
    # worker job logs sit beside the evidence, outside the audit manifest, without secrets
    logs = list((out / ".slurm").glob("*.err"))
    assert len(logs) >= 3
    assert not any(SECRET in p.read_text(errors="replace") for p in logs)
    # every worker job of the run has ended with it
    left = subprocess.run(["squeue", "-h", "-j", ",".join([*first_jobs.values(),
                                                            *replaced.values()]),
                           "-t", "PENDING,RUNNING", "-o", "%i"],
                          capture_output=True, text=True).stdout.split()
    assert not left


@pytest.mark.slurm
def test_cli_cluster_slurm_run_is_audit_clean(fixture_tree, s3, local_table, tmp_path):
    """``wiseverify verify --cluster slurm``: same rows, exit 1, and an intact audit."""
    need_slurm()
    root, dest, expect = fixture_tree
    out = tmp_path / "run"
    env = _job_env(DASK_WISEVERIFY__SLURM__CLUSTER__CORES="1",
                   DASK_WISEVERIFY__SLURM__CLUSTER__MEMORY="1GiB")
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "wiseverify.cli", "verify", str(root), dest, "--out", str(out),
         "--endpoint-url", s3.url, "--cluster", "slurm", "--min-jobs", "1", "--max-jobs", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    print(f"wiseverify verify --cluster slurm: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "slurm: scheduler tcp://" in r.stderr and "waiting for 1 worker job(s) (max 2)" in r.stderr
    assert "wiseverify FAIL run=" in r.stdout
    _assert_same_table(_rows(read_table(out)), local_table)
    assert list((out / ".slurm").glob("wiseverify-worker-*.err"))
    # worker logs still being written after the manifest do not break the audit
    a = subprocess.run([sys.executable, "-m", "wiseverify.cli", "audit", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, (a.stdout, a.stderr)


@pytest.mark.parametrize("flags, needle", [
    (["--min-jobs", "2"], "--min-jobs and --max-jobs need --cluster slurm"),
    (["--cluster", "slurm", "--workers", "2"], "with --cluster slurm use --min-jobs"),
])
def test_cli_cluster_flag_errors(fixture_tree, s3, tmp_path, flags, needle):
    root, dest, _ = fixture_tree
    r = subprocess.run(
        [sys.executable, "-m", "wiseverify.cli", "verify", str(root), dest, "--out",
         str(tmp_path / "run"), "--endpoint-url", s3.url, *flags],
        capture_output=True, text=True, env=_job_env(), timeout=300,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slurm
def test_slurmcluster_job_script_directives(tmp_path, monkeypatch):
    """The generated worker job script: resources, binding, TLS files, and no credentials."""
    need_slurm()
    import dask

    from wiseverify.deploy import slurmcluster as slurm

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert dask.config.get("wiseverify.slurm.cluster.max-jobs") == 4  # packaged default
    cfg = slurm.settings({
        "cluster": {"queue": "debug", "account": "stats-mig", "walltime": "01:00:00",
                    "job_extra_directives": ["--qos=normal"],
                    "job-script-prologue": ["module load python/3.11"]},
        "tls": True, "tls_directory": str(tmp_path / "tls"),
    })
    assert cfg["cluster"]["cores"] == 2 and cfg["cluster"]["memory"] == "4GiB"  # defaults kept
    cluster = slurm.make_cluster(cfg, run_dir=str(tmp_path / "run"))
    try:
        script = cluster.job_script()
        host = slurm.node_address()
        for line in ("#SBATCH -J wiseverify-worker",
                     f"#SBATCH -e {tmp_path}/run/.slurm/wiseverify-worker-%J.err",
                     f"#SBATCH -o {tmp_path}/run/.slurm/wiseverify-worker-%J.out",
                     "#SBATCH -p debug", "#SBATCH -A stats-mig", "#SBATCH -n 1",
                     "#SBATCH --cpus-per-task=2", "#SBATCH --mem=4G", "#SBATCH -t 01:00:00",
                     "#SBATCH --qos=normal", "module load python/3.11",
                     "export DASK_LOGGING__DISTRIBUTED=warning"):
            assert line in script.splitlines(), (line, script)
        assert script.startswith("#!/usr/bin/env bash")
        assert f"{sys.executable} -m distributed.cli.dask_worker tls://{host}:" in script
        assert "--nthreads 2" in script and "--memory-limit 4.00GiB" in script
        assert "--no-dashboard" in script and '--host "$WISEVERIFY_HOST"' in script
        assert "-m wiseverify.slurm address)\" || exit 1" in script
        assert cluster.scheduler_address.startswith(f"tls://{host}:")
        assert f"//{host}:" in cluster.dashboard_link
        assert "0.0.0.0" not in script and "0.0.0.0" not in cluster.dashboard_link
        # TLS: file paths in the script, the key itself only in a private file
        assert "--tls-ca-file" in script and "--tls-key" in script
        assert "PRIVATE KEY" not in script and "BEGIN CERTIFICATE" not in script
        key = script.split("--tls-key ")[1].split()[0]
        assert key.startswith(str(tmp_path / "tls"))
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        # credentials travel in the environment of sbatch, never in the script
        assert SECRET not in script and "AWS_" not in script
    finally:
        cluster.close()


def test_job_file_maps_to_verify_arguments(tmp_path, monkeypatch):
    job = tmp_path / "j.yaml"
    job.write_text(yaml.safe_dump({
        "source": "/lustre/p", "dest": "s3://b/p/", "out_root": str(tmp_path / "runs"),
        "endpoint-url": "http://127.0.0.1:9", "mode": "readback", "partitions": 8,
        "head_min_size": "8MiB", "quiet": True, "slurm": {"tls": True},
    }, sort_keys=False))
    monkeypatch.setenv("WISEVERIFY_RUN_STAMP", "20261127T180000Z")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    j = load_job(job)
    assert run_dir(j) == str(tmp_path / "runs" / "20261127T180000Z-job42")
    assert verify_argv(j) == [
        "/lustre/p", "s3://b/p/", "--out", str(tmp_path / "runs" / "20261127T180000Z-job42"),
        "--endpoint-url", "http://127.0.0.1:9", "--mode", "readback", "--partitions", "8",
        "--head-min-size", "8MiB", "--quiet",
    ]


def test_runner_arguments_from_a_job_file(tmp_path, monkeypatch):
    """``verify.sh --job FILE [flags]``: the job's arguments, then the flags that override them."""
    import dask

    from wiseverify.deploy.slurm import _resolve_verify_args, settings

    job = tmp_path / "j.yaml"
    job.write_text("source: /lustre/p\ndest: s3://b/p/\nout: /runs/a\nmode: stored\n"
                   "slurm: {cluster: {max_jobs: 9}}\n")
    saved = copy.deepcopy(dask.config.config)
    try:
        args, overrides = _resolve_verify_args(["--job", str(job), "--mode", "readback"])
        assert args == ["/lustre/p", "s3://b/p/", "--out", "/runs/a", "--mode", "stored",
                        "--mode", "readback"]
        assert overrides == {"cluster": {"max_jobs": 9}}
        assert settings()["cluster"]["max-jobs"] == 9  # applied to this process's config
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)
    assert settings()["cluster"]["max-jobs"] == 4
    assert _resolve_verify_args(["/src", "s3://b/", "--out", "/r"]) == (
        ["/src", "s3://b/", "--out", "/r"], {})


@pytest.mark.parametrize("body, needle", [
    ("source: /a\ndest: s3://b/\nout: /r\nworkrs: 2\n", "unknown setting 'workrs'"),
    ("source: /a\ndest: s3://b/\nout: /r\nscheduler: tcp://x:1\n", "unknown setting"),
    ("source: /a\ndest: s3://b/\nout: /r\naws_secret_access_key: x\n", "credential"),
    ("source: /a\ndest: s3://b/\n", "exactly one of 'out'"),
    ("dest: s3://b/\nout: /r\n", "'source' is required"),
    ("- a\n- b\n", "mapping"),
])
def test_job_file_errors(tmp_path, body, needle):
    job = tmp_path / "j.yaml"
    job.write_text(body)
    with pytest.raises(JobFileError, match=needle):
        load_job(job)
