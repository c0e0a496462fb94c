"""SLURM, one allocation per run: ``sbatch slurm/verify.sh`` runs ``python -m wiseverify.slurm``.

``srun`` starts this module on every task of the allocation.  dask-jobqueue's
:class:`SLURMRunner` gives each task its role: rank 0 runs the scheduler,
rank 1 drives the verification (the ``wiseverify verify`` code path, attached
through the scheduler file), every other rank is a worker.  The allocation is
the whole cluster, so nothing outlives the job.

Settings, TLS and the worker jobs of ``--cluster slurm`` are
:mod:`wiseverify.deploy.slurmcluster`'s and :mod:`wiseverify.deploy.security`'s.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from wiseverify.core.options import verify_parser
from wiseverify.deploy.security import (
    _private_write,
    _temporary_security,
    _tls_paths,
    use_tls_files,
)
from wiseverify.deploy.slurmcluster import (
    _cluster_error,
    apply_job_config,
    node_address,
    settings,
)


def runner_tls(cfg: dict, job_id: str, rank: int, timeout: float = 120.0) -> Path | None:
    """Set up TLS for all ranks of an allocation; returns a directory to remove at the end.

    With ``tls: true`` rank 0 makes a throwaway certificate in a private
    directory on shared storage and the other ranks wait for it: a Security
    object held in memory cannot reach the other tasks.
    """
    tls = cfg.get("tls")
    if not tls:
        return None
    if isinstance(tls, dict):
        use_tls_files(*_tls_paths(tls))
        return None
    if tls is not True:
        raise _cluster_error(f"tls must be true, false or a mapping, got {tls!r}")
    d = Path(os.path.expanduser(str(cfg["tls-directory"]))) / f"job-{job_id}"
    ca, key = d / "ca.pem", d / "key.pem"
    if rank == 0:
        d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.mkdir(exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        sec = _temporary_security()
        _private_write(key, sec.tls_scheduler_key)
        _private_write(ca, sec.tls_ca_file)
    else:
        deadline = time.monotonic() + timeout
        while not (ca.exists() and key.exists()):
            if time.monotonic() > deadline:
                raise _cluster_error(f"no TLS certificate from rank 0 in {d} after {timeout:.0f} s")
            time.sleep(0.2)
    use_tls_files(str(ca), str(ca), str(key))
    return d


# --- sbatch slurm/verify.sh: SLURMRunner inside one allocation -----------------------------


def _tasks_on_this_node() -> int:
    """Tasks of this step on this node, from SLURM's compressed ``2(x3),1`` notation."""
    spec = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return 1
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = int(os.environ.get("SLURM_NODEID", "0"))
    return counts[node] if 0 <= node < len(counts) else 1


def task_memory() -> int | None:
    """Bytes this task may use, from the allocation (None: let Dask decide).

    A worker sized from the whole node's RAM would overcommit a node shared
    with other tasks and jobs.
    """
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    per_cpu = os.environ.get("SLURM_MEM_PER_CPU")
    if per_cpu:
        return int(per_cpu) * cpus << 20
    per_node = os.environ.get("SLURM_MEM_PER_NODE")
    if per_node and int(per_node) > 0:
        return (int(per_node) << 20) // max(1, _tasks_on_this_node())
    return None


def _resolve_verify_args(argv: list[str]) -> tuple[list[str], dict]:
    """``JOB.yaml``, ``--job JOB.yaml [flags]`` or ``SOURCE DEST --out RUN_DIR [flags]``.

    Returns the ``wiseverify verify`` arguments (flags after a job file
    override it, as on the command line) and the job's ``slurm:`` overrides.
    """
    from wiseverify.deploy.jobfile import JobFileError, load_job, verify_argv

    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        argv = ["--job", argv[0]]
    if "--job" not in argv:
        return list(argv), {}
    i = argv.index("--job")
    if i + 1 >= len(argv):
        raise JobFileError("--job needs a job file path")
    job = load_job(argv[i + 1])
    overrides = apply_job_config(job)
    return [*verify_argv(job), *argv[:i], *argv[i + 2:]], overrides


def _runner_class():
    """dask-jobqueue's SLURMRunner, with a driver that can stop a TLS scheduler.

    dask-jobqueue 0.9 opens the driver's control connection to the scheduler
    without security arguments; over TLS the final "terminate" then fails and
    the scheduler and workers would hold the allocation until its time limit.
    """
    from dask_jobqueue.slurm import SLURMRunner
    from distributed.core import rpc
    from distributed.security import Security

    class Runner(SLURMRunner):
        async def before_client_start(self) -> None:
            if self.scheduler_address:
                self.scheduler_comm = rpc(
                    self.scheduler_address,
                    connection_args=Security().get_connection_args("client"),
                )

    return Runner


def _shutdown_scheduler(sched_file: Path) -> None:
    """Last resort after a failed driver: stop the scheduler, and with it the workers."""
    from distributed import Client

    if not sched_file.exists():
        return
    with contextlib.suppress(Exception), Client(scheduler_file=str(sched_file),
                                                timeout="10s") as client:
        client.shutdown()


def run_in_allocation(argv: list[str], cli_main: Callable[[list[str]], int]) -> int:
    """The body of every ``srun`` task of ``slurm/verify.sh``; returns the exit code.

    ``cli_main`` runs ``wiseverify verify`` on the driver rank: the command line sits
    above this module (it starts SLURM clusters), so it is handed in, not imported.
    """
    from distributed import Client

    from wiseverify.core.errors import EXIT_CONFIG, EXIT_FAIL
    from wiseverify.deploy.jobfile import JobFileError

    def fail(msg: str, code: int = EXIT_CONFIG) -> int:
        print(f"wiseverify: error: {msg}", file=sys.stderr, flush=True)
        return code

    try:
        rank = int(os.environ["SLURM_PROCID"])
        ntasks = int(os.environ["SLURM_NTASKS"])
        job_id = os.environ["SLURM_JOB_ID"]
    except KeyError:
        return fail("run this through srun inside a SLURM allocation (sbatch slurm/verify.sh)")
    try:
        verify_args, overrides = _resolve_verify_args(argv)
    except JobFileError as exc:
        return fail(str(exc)) if rank == 1 else EXIT_CONFIG
    # every task parses the same arguments: only the driver reports a mistake
    try:
        with contextlib.redirect_stderr(sys.stderr if rank == 1 else io.StringIO()):
            ns = verify_parser().parse_args(verify_args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    if ns.scheduler or getattr(ns, "cluster", "local") != "local" or ns.workers:
        return fail("--scheduler, --cluster and --workers do not apply inside an allocation: "
                    "the allocation's tasks are the cluster") if rank == 1 else EXIT_CONFIG
    if ntasks < 3:
        return fail(f"{ntasks} task(s): need at least 3 (scheduler, driver, one worker); "
                    "use sbatch --ntasks=N with N >= 3") if rank == 1 else EXIT_CONFIG
    run_path = ns.out or getattr(ns, "resume", None)
    if not run_path:
        return fail("give the run directory: --out RUN_DIR (or out/out_root in the job "
                    "file), or --resume RUN_DIR") if rank == 1 else EXIT_CONFIG
    cfg = settings(overrides)
    rcfg = cfg["runner"]
    run_dir = Path(run_path).absolute()
    sched_file = Path(os.path.expanduser(
        str(rcfg["scheduler-file"]).format(run_dir=run_dir, job_id=job_id)))
    tls_dir: Path | None = None
    rc = EXIT_FAIL
    stopped = False
    try:
        host = node_address(cfg.get("interface"))
        tls_dir = runner_tls(cfg, job_id, rank)
        protocol = "tls" if cfg.get("tls") else "tcp"
        if rank == 0:
            sched_file.parent.mkdir(parents=True, exist_ok=True)
        if not ns.debug and not _logging_configured():
            # distributed's INFO lines (worker retire, close-stream, ...) drown the run's
            # progress in the job's output; --debug or a dask logging setting keeps them
            logging.getLogger("distributed").setLevel(logging.WARNING)
        scheduler_options = {
            "host": host, "port": 0, "protocol": protocol,
            "dashboard_address": f"{host}:{int(cfg['dashboard-port'])}",
            "idle_timeout": rcfg.get("idle-timeout"),
        }
        mem = task_memory()
        worker_options = {
            "host": host, "protocol": protocol, "dashboard": False,
            "nthreads": int(os.environ.get("SLURM_CPUS_PER_TASK", "1")),
            "memory_limit": mem if mem else "auto",
            "local_directory": os.path.expanduser(
                rcfg.get("local-directory") or os.environ.get("TMPDIR") or "/tmp"),
        }
        # Scheduler and worker ranks stay inside the constructor until the
        # scheduler shuts down, then leave through SystemExit(0).
        runner_cls = _runner_class()
        with runner_cls(scheduler_file=str(sched_file), scheduler_options=scheduler_options,
                        worker_options=worker_options) as runner, Client(runner) as client:
            print(f"wiseverify: job {job_id}: scheduler {client.scheduler.address}, "
                  f"dashboard {client.dashboard_link}, waiting for {runner.n_workers} "
                  "worker(s)", flush=True)
            try:
                client.wait_for_workers(runner.n_workers,
                                        timeout=float(rcfg.get("worker-timeout") or 600))
            except TimeoutError:
                return fail(f"not all {runner.n_workers} worker tasks connected within "
                            f"{rcfg.get('worker-timeout')} s", EXIT_FAIL)
            rc = cli_main(["verify", *verify_args, "--scheduler", str(sched_file)])
            # workers first, so their own clients close instead of retrying a
            # scheduler that is gone; the scheduler forgets a retired worker
            # before the worker has closed its connection, so give the
            # connections a moment rather than cut them (an alarming traceback)
            with contextlib.suppress(Exception):
                client.retire_workers(close_workers=True)
                deadline = time.monotonic() + 15
                while client.scheduler_info()["workers"] and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(1.0)
        stopped = True
    except Exception as exc:
        from wiseverify.deploy.cluster import ClusterError

        if isinstance(exc, ClusterError):
            return fail(str(exc))
        if ns.debug:
            raise
        return fail(f"run failed: {type(exc).__name__}: {exc}", EXIT_FAIL)
    finally:
        if rank == 1 and not stopped:
            _shutdown_scheduler(sched_file)
        if rank == 1 and tls_dir is not None:
            shutil.rmtree(tls_dir, ignore_errors=True)
    return rc



USAGE = """\
usage: python -m wiseverify.slurm JOB.yaml
       python -m wiseverify.slurm --job JOB.yaml [wiseverify verify options]
       python -m wiseverify.slurm SOURCE DEST --out RUN_DIR [wiseverify verify options]
       python -m wiseverify.slurm address

Run under srun inside an allocation (slurm/verify.sh does this): rank 0 is the
Dask scheduler, rank 1 drives the verification, the other ranks are workers.
`address` prints the address this node's Dask servers bind to.
"""


def main(argv: list[str] | None, cli_main: Callable[[list[str]], int]) -> int:
    """``python -m wiseverify.slurm`` (see :mod:`wiseverify.slurm`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv == ["address"]:
        try:
            print(node_address(settings().get("interface")))
        except Exception as exc:
            print(f"wiseverify: error: {exc}", file=sys.stderr)
            return 2
        return 0
    return run_in_allocation(argv, cli_main)


def _logging_configured() -> bool:
    """Whether the user's dask config (a job file's ``dask:``, DASK_LOGGING__...) sets it."""
    import dask

    return dask.config.get("logging.distributed", None) is not None or \
        dask.config.get("logging", {}).get("version") is not None
