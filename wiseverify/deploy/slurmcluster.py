"""SLURM as a Dask backend: settings, security and worker jobs on demand.

``wiseverify verify --cluster slurm`` (a login node, a notebook) keeps the
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

The allocation runner (``sbatch slurm/verify.sh``) is :mod:`wiseverify.deploy.slurm`.
"""

from __future__ import annotations

import contextlib
import copy
import getpass
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.config
import yaml

from wiseverify.deploy.security import _cluster_error, _hyphenate, cluster_security

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
    if not any("DASK_LOGGING" in line for line in prologue) and \
            dask.config.get("logging.distributed", None) is None:
        # worker jobs log at WARNING: their INFO lines drown the job output
        prologue.append("export DASK_LOGGING__DISTRIBUTED=warning")
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
