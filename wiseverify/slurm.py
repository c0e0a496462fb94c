"""SLURM: one allocation per run (``sbatch slurm/verify.sh``) or worker jobs on demand.

Two ways to run on the cluster that hosts the data:

* ``sbatch slurm/verify.sh`` starts ``python -m wiseverify.slurm`` on every task
  of one allocation through ``srun``.  dask-jobqueue's :class:`SLURMRunner`
  gives each task its role: rank 0 runs the scheduler, rank 1 drives the
  verification (the ``wiseverify verify`` code path, attached through the
  scheduler file), every other rank is a worker.  The allocation is the whole
  cluster, so nothing outlives the job.
* ``wiseverify verify --cluster slurm`` (a login node, a notebook) keeps the
  driver and the scheduler where it runs and submits worker jobs with
  dask-jobqueue's :class:`SLURMCluster`, scaled adaptively between a minimum
  and a maximum number of jobs.  A worker job that ends early (``scancel``,
  node failure, time limit) is noticed through ``squeue`` and replaced: the
  cluster object would otherwise keep counting it and never ask for another.

Settings come from dask config under ``wiseverify.slurm``: the packaged
``wiseverify.yaml`` holds the defaults (like dask-jobqueue's
``jobqueue.yaml``), user config files and ``DASK_WISEVERIFY__...``
environment variables override them, and a job file's ``slurm:`` section
overrides those for one run.

Security: the scheduler and its dashboard bind to this node's own address
(never all interfaces), workers likewise; TLS uses distributed's security
settings; S3 credentials reach workers only through the environment SLURM
propagates (``--export=ALL``), never through a job script, a job file or a log.
"""

from __future__ import annotations

import contextlib
import copy
import getpass
import io
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.config
import yaml

logger = logging.getLogger("wiseverify.slurm")

DEFAULTS_FILE = Path(__file__).with_name("wiseverify.yaml")

#: squeue states after which a job will never run a worker again
ENDED_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
})


def _load_defaults() -> None:
    """Register the packaged defaults below any user configuration."""
    with open(DEFAULTS_FILE) as f:
        dask.config.update_defaults(yaml.safe_load(f))


_load_defaults()


def _cluster_error(msg: str) -> Exception:
    """A :class:`wiseverify.cluster.ClusterError`, so the CLI reports it as exit code 2."""
    from .cluster import ClusterError

    return ClusterError(msg)


def _hyphenate(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).replace("_", "-"): _hyphenate(v) for k, v in value.items()}
    return value


def settings(overrides: dict | None = None) -> dict:
    """The ``wiseverify.slurm`` settings, with a job file's ``slurm:`` section on top.

    Keys are returned with hyphens whichever spelling the sources used, so
    ``max_jobs`` in a job file and ``max-jobs`` in YAML mean the same.
    """
    base = _hyphenate(copy.deepcopy(dask.config.get("wiseverify.slurm")))
    if overrides:
        base = dask.config.merge(base, _hyphenate(overrides))
    return base


def apply_job_config(job: dict) -> dict:
    """Apply a job file's ``dask:`` and ``slurm:`` sections to this process's dask config.

    Done in the process that creates the scheduler and submits the jobs (the
    driver, or every rank of an allocation), so a job file sizes its own cluster.
    Returns the ``slurm:`` overrides.
    """
    if job.get("dask"):
        dask.config.set(dict(job["dask"]))
    overrides = dict(job.get("slurm") or {})
    if overrides:
        dask.config.set({"wiseverify.slurm": settings(overrides)})
    return overrides


# --- addresses -----------------------------------------------------------------------------


def node_address(interface: str | None = None) -> str:
    """The IP address this node's Dask servers bind to.

    An explicit interface wins; otherwise the address SLURM itself uses for
    the node (``NodeAddr``), else what the host name resolves to.  Binding to
    one address rather than 0.0.0.0 keeps the scheduler and dashboard off
    networks the cluster does not use.
    """
    if interface:
        from distributed.utils import get_ip_interface

        try:
            return get_ip_interface(interface)
        except ValueError as exc:
            raise _cluster_error(f"network interface {interface!r}: {exc}") from None
    candidates: list[str] = []
    node = os.environ.get("SLURMD_NODENAME")
    if node:
        if shutil.which("scontrol"):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(["scontrol", "show", "node", "-o", node],
                                     capture_output=True, text=True, timeout=30).stdout
                m = re.search(r"\bNodeAddr=(\S+)", out)
                if m:
                    candidates.append(m.group(1))
        candidates.append(node)
    candidates += [socket.gethostname(), socket.getfqdn()]
    for name in candidates:
        try:
            return socket.gethostbyname(name)
        except OSError:
            continue
    raise _cluster_error(
        "cannot determine this node's address; set wiseverify.slurm.interface (e.g. ib0)"
    )


# --- TLS ----------------------------------------------------------------------------------------


def _tls_paths(tls: dict) -> tuple[str, str, str]:
    t = _hyphenate(tls)
    try:
        files = tuple(os.path.expanduser(str(t[k])) for k in ("ca-file", "cert", "key"))
    except KeyError as exc:
        raise _cluster_error(f"tls settings need ca-file, cert and key (missing {exc})") from None
    for f in files:
        if not os.path.isfile(f):
            raise _cluster_error(f"tls file {f!r} does not exist")
    return files  # type: ignore[return-value]


def _temporary_security():
    """A throwaway self-signed certificate for one run (needs ``cryptography``)."""
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError:
        raise _cluster_error(
            "tls: true needs the cryptography package (pip install cryptography), or give "
            "tls: {ca-file, cert, key} with your own PEM files"
        ) from None


def cluster_security(cfg: dict):
    """The :class:`distributed.Security` for ``--cluster slurm``, or None for plain TCP."""
    from distributed.security import Security

    tls = cfg.get("tls")
    if not tls:
        return None
    if tls is True:
        return _temporary_security()
    if isinstance(tls, dict):
        ca, cert, key = _tls_paths(tls)
        return Security(
            tls_ca_file=ca, tls_scheduler_cert=cert, tls_scheduler_key=key,
            tls_worker_cert=cert, tls_worker_key=key, tls_client_cert=cert,
            tls_client_key=key, require_encryption=True,
        )
    raise _cluster_error(f"tls must be true, false or a mapping, got {tls!r}")


def use_tls_files(ca: str, cert: str, key: str) -> None:
    """Make every Dask server and client of this process use these PEM files.

    Through dask config, so the scheduler, workers and clients that the runner
    and the CLI create pick them up without being handed a Security object.
    """
    dask.config.set({
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": ca,
        "distributed.comm.tls.scheduler.cert": cert,
        "distributed.comm.tls.scheduler.key": key,
        "distributed.comm.tls.worker.cert": cert,
        "distributed.comm.tls.worker.key": key,
        "distributed.comm.tls.client.cert": cert,
        "distributed.comm.tls.client.key": key,
    })


def _private_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
    from .jobfile import JobFileError, load_job, verify_argv

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


def run_in_allocation(argv: list[str]) -> int:
    """The body of every ``srun`` task of ``slurm/verify.sh``; returns the exit code."""
    from distributed import Client

    from .cli import EXIT_CONFIG, EXIT_FAIL, build_parser
    from .cli import main as cli_main
    from .jobfile import JobFileError

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
            ns = build_parser().parse_args(["verify", *verify_args])
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
        if rank >= 2:
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
        from .cluster import ClusterError

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


# --- --cluster slurm: SLURMCluster with adaptive scaling -----------------------------------


def make_cluster(cfg: dict | None = None, run_dir: str | None = None, **overrides: Any):
    """A dask-jobqueue ``SLURMCluster`` from the settings (nothing is submitted yet).

    ``overrides`` are SLURMCluster keyword arguments that win over the settings.
    """
    from dask_jobqueue import SLURMCluster

    cfg = settings() if cfg is None else cfg
    cc = cfg["cluster"]
    if not shutil.which("sbatch"):
        raise _cluster_error("--cluster slurm needs SLURM's sbatch on PATH (run it on a login "
                             "node or inside an allocation)")
    host = node_address(cfg.get("interface"))
    python = cc.get("python") or sys.executable
    prologue = [str(line) for line in cc.get("job-script-prologue") or []]
    worker_args = ["--no-dashboard"]
    if not cfg.get("interface"):
        # each worker binds to its own node's address, found on that node
        prologue.append(
            f'WISEVERIFY_HOST="$({shlex.quote(python)} -m wiseverify.slurm address)" || exit 1')
        worker_args += ["--host", '"$WISEVERIFY_HOST"']
    # a dot directory: the audit manifest is written before the worker jobs end,
    # and dot entries are outside what it covers
    log_dir = cc.get("log-directory") or (str(Path(run_dir) / ".slurm") if run_dir else None)
    security = cluster_security(cfg)
    tls_dir = None
    if security is not None and cfg.get("tls") is True:
        tls_dir = os.path.expanduser(str(cfg["tls-directory"]))
        os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    kwargs: dict[str, Any] = {
        "cores": int(cc["cores"]),
        "processes": int(cc["processes"]),
        "memory": str(cc["memory"]),
        "walltime": cc.get("walltime"),
        "queue": cc.get("queue"),
        "account": cc.get("account"),
        "job_name": cc.get("job-name") or "wiseverify-worker",
        "job_extra_directives": list(cc.get("job-extra-directives") or []),
        "job_script_prologue": prologue,
        "worker_extra_args": worker_args,
        "nanny": bool(cc.get("nanny", True)),
        "python": python,
        "local_directory": cc.get("local-directory"),
        "log_directory": log_dir,
        "death_timeout": cc.get("death-timeout"),
        "interface": cfg.get("interface"),
        "scheduler_options": {
            "host": host, "port": 0,
            "dashboard_address": f"{host}:{int(cfg['dashboard-port'])}",
        },
        "security": security,
        "shared_temp_directory": tls_dir,
    }
    kwargs.update(overrides)
    return SLURMCluster(**kwargs)


def squeue_states() -> dict[str, str] | None:
    """``{job id: state}`` of this user's jobs, ended ones included; None if squeue failed."""
    try:
        r = subprocess.run(
            ["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-o", "%i %T"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("squeue failed: %s", exc)
        return None
    if r.returncode != 0:
        logger.warning("squeue failed: %s", r.stderr.strip())
        return None
    states = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


class JobWatch:
    """Replaces worker jobs that SLURM reports as ended while the run goes on.

    dask-jobqueue keeps a cancelled or failed worker job in the cluster's
    plan, so adaptive scaling sees the planned number of jobs and never asks
    for a replacement.  Every ``interval`` seconds this drops ended jobs from
    the plan and scales back to the previous size, which submits new jobs;
    the scheduler has already moved the lost tasks to the remaining workers.
    """

    def __init__(self, cluster, interval: float = 5.0):
        self.cluster = cluster
        self.interval = interval
        self.replaced: list[tuple[str, str, str]] = []  # (worker name, job id, state)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unopened: set = set()

    def start(self) -> JobWatch:
        self._thread = threading.Thread(target=self._run, name="wiseverify-jobwatch",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # keep watching; a failed check is retried next time
                logger.exception("checking worker jobs failed")

    def check(self) -> list[str]:
        """One look at squeue; returns the names of the worker jobs being replaced."""
        jobs = {name: str(job.job_id) for name, job in list(self.cluster.workers.items())
                if getattr(job, "job_id", None)}
        spec = set(self.cluster.worker_spec)
        # planned workers whose job object was dropped (dask's lost-worker path)
        # are only reopened by the next scaling call
        unopened = spec - set(self.cluster.workers)
        stale = unopened & self._unopened
        self._unopened = unopened
        dead: list[tuple[str, str, str]] = []
        if jobs:
            states = squeue_states()
            if states is not None:
                for name, jid in jobs.items():
                    state = states.get(jid, "ENDED")
                    if name in spec and (state in ENDED_STATES or state == "ENDED"):
                        dead.append((name, jid, state))
        if dead or stale:
            self.cluster.loop.add_callback(self._replace, dead)
        return [d[0] for d in dead]

    def _replace(self, dead: list[tuple[str, str, str]]) -> None:
        """On the cluster's event loop: the plan is only changed from there.

        The replacement gets a new name, taken while the ended job still holds
        its own: reusing the name would leave the plan unchanged, and the
        ended job object would be kept instead of a new job submitted.
        """
        spec = self.cluster.worker_spec
        for name, jid, state in dead:
            if name not in spec:
                continue
            new = self.cluster.new_worker_spec()
            del spec[name]
            spec.update(new)
            self.replaced.append((name, jid, state))
            logger.warning("worker job %s (%s) is %s; submitting a replacement (%s)",
                           jid, name, state, ", ".join(map(str, new)))
        if self.cluster.status.name not in ("closing", "closed"):
            # same size: only closes the ended job objects and opens the new ones
            self.cluster.scale(jobs=len(spec))


@contextlib.contextmanager
def slurm_client(
    min_jobs: int | None = None,
    max_jobs: int | None = None,
    overrides: dict | None = None,
    run_dir: str | None = None,
    quiet: bool = True,
    **cluster_kwargs: Any,
) -> Iterator:
    """Yield a Client on an adaptive SLURMCluster; the worker jobs end with the block.

    Waits for ``min_jobs`` worker jobs before yielding, so a queue that cannot
    run them fails the run up front with the scheduler's reason instead of
    leaving a driver waiting forever.
    """
    from distributed import Client

    cfg = settings(overrides)
    cc = cfg["cluster"]
    lo = int(cc["min-jobs"] if min_jobs is None else min_jobs)
    hi = int(cc["max-jobs"] if max_jobs is None else max_jobs)
    if lo < 1 or hi < lo:
        raise _cluster_error(f"need 1 <= min jobs <= max jobs, got {lo} and {hi}")
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if quiet:
        logging.getLogger("distributed").setLevel(logging.ERROR)
    cluster = make_cluster(cfg, run_dir=run_dir, **cluster_kwargs)
    watch = JobWatch(cluster, float(cc.get("watch-interval") or 5))
    try:
        cluster.adapt(minimum_jobs=lo, maximum_jobs=hi)
        client = Client(cluster, security=cluster.security)
        try:
            n = lo * int(cc["processes"])
            say(f"slurm: scheduler {cluster.scheduler_address}, dashboard "
                f"{cluster.dashboard_link}; waiting for {lo} worker job(s) (max {hi})")
            timeout = float(cc.get("startup-timeout") or 600)
            try:
                client.wait_for_workers(n, timeout=timeout)
            except TimeoutError:
                raise _cluster_error(
                    f"{n} SLURM worker(s) did not start within {timeout:.0f} s: "
                    f"{_pending_reasons(cluster)}") from None
            watch.start()
            yield client
        finally:
            watch.stop()
            client.close()
    finally:
        watch.stop()
        cluster.close()


def _pending_reasons(cluster) -> str:
    ids = [str(j.job_id) for j in list(cluster.workers.values()) if getattr(j, "job_id", None)]
    if not ids:
        return "no job was submitted (see the sbatch error above)"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i %T %r"],
                           capture_output=True, text=True, timeout=60)
        if r.stdout.strip():
            return "; ".join(line.strip() for line in r.stdout.splitlines())
    return f"jobs {', '.join(ids)} are not running"


# --- command line ------------------------------------------------------------------------------

USAGE = """\
usage: python -m wiseverify.slurm JOB.yaml
       python -m wiseverify.slurm --job JOB.yaml [wiseverify verify options]
       python -m wiseverify.slurm SOURCE DEST --out RUN_DIR [wiseverify verify options]
       python -m wiseverify.slurm address

Run under srun inside an allocation (slurm/verify.sh does this): rank 0 is the
Dask scheduler, rank 1 drives the verification, the other ranks are workers.
`address` prints the address this node's Dask servers bind to.
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m wiseverify.slurm``."""
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
    return run_in_allocation(argv)


if __name__ == "__main__":
    sys.exit(main())
