"""Where the Dask work runs: an embedded LocalCluster, SLURM jobs or any running scheduler.

The embedded cluster uses worker processes (the digest work is CPU and I/O,
and awscrt/hashlib release the GIL, so two threads per process overlap reads
with hashing) and binds the scheduler and dashboard to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from wiseverify.core.errors import ClusterError

#: imported once by the forkserver that starts local worker processes (see
#: _fast_worker_start).  Third-party modules only: the forkserver resolves imports
#: against its own working directory, so wiseverify itself is imported after the
#: fork, from the driver's sys.path, exactly as a spawned worker would.
WORKER_PRELOAD = ("distributed", "numpy", "pandas", "pyarrow.parquet", "pyarrow.compute",
                  "pyarrow.dataset", "awscrt.checksums", "s3fs", "aiobotocore.session",
                  "botocore.session")


def _forkserver_wanted() -> bool:
    import multiprocessing

    import dask

    method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
    return method == "spawn" and "forkserver" in multiprocessing.get_all_start_methods()


def prestart_local_workers() -> None:
    """Start the forkserver of the embedded cluster's workers now, in the background.

    Its imports (about 1.5 s of one core) then overlap the driver's own imports
    and the preflight instead of following them; the worker processes
    themselves are forked only when the cluster starts, after the preflight
    has passed, so a run refused for bad input starts no worker.  A no-op
    where :func:`_fast_worker_start` would keep the configured method.
    """
    if not _forkserver_wanted():
        return
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_PRELOAD))
    forkserver.ensure_running()


@contextlib.contextmanager
def _fast_worker_start() -> Iterator[None]:
    """Start local worker processes from a forkserver that has the heavy modules imported.

    With distributed's default ``spawn`` every worker process imports
    distributed, pandas, pyarrow, s3fs and botocore again before its first
    task: about two CPU seconds per process, a large share of a short run on a
    small machine (a cutover dry run, the benchmark).  A forkserver imports
    them once and forks ready workers.  A configured method other than the
    default ``spawn`` is left alone, as are platforms without forkserver.
    """
    import dask

    if not _forkserver_wanted():
        yield
        return
    try:
        from distributed.utils import get_mp_context
    except ImportError:  # pragma: no cover - a distributed without it: keep spawn
        yield
        return
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        ctx = get_mp_context()  # distributed sets its own preload list the first time
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))  # a superset of it
        yield


@contextlib.contextmanager
def _light_worker_profiler() -> Iterator[None]:
    """Sample worker stacks for the dashboard every 100 ms instead of every 10 ms.

    distributed's statistical profiler walks every thread's Python stack at
    each tick; at the default 10 ms that was a few per cent of a worker's CPU
    in a run.  An interval configured by the user is kept.
    """
    import dask

    key = "distributed.worker.profile.interval"
    if dask.config.get(key, "10ms") != "10ms":
        yield
        return
    with dask.config.set({key: "100ms"}):
        yield


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def open_client(
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 2,
    memory_limit: str | None = "auto",
    quiet: bool = True,
    cluster: str = "local",
    min_jobs: int | None = None,
    max_jobs: int | None = None,
    run_dir: str | None = None,
    slurm_overrides: dict | None = None,
) -> Iterator:
    """Yield a ``distributed.Client`` for the run and tear down what was started.

    ``scheduler`` (an address or a scheduler file) attaches to any running
    Dask deployment; ``cluster="slurm"`` submits worker jobs through
    dask-jobqueue, scaled between ``min_jobs`` and ``max_jobs`` (see
    :mod:`wiseverify.deploy.slurm`); otherwise a LocalCluster is embedded.
    """
    from distributed import Client, LocalCluster

    if scheduler and cluster != "local":
        raise ClusterError("--scheduler attaches to a running scheduler; it cannot be "
                           f"combined with --cluster {cluster}")
    if cluster == "slurm" and workers:
        raise ClusterError("--workers sizes the local cluster; with --cluster slurm use "
                           "--min-jobs and --max-jobs")
    if cluster != "slurm" and (min_jobs or max_jobs):
        raise ClusterError("--min-jobs and --max-jobs need --cluster slurm")
    if scheduler:
        try:
            if os.path.isfile(scheduler):  # a scheduler file, as dask scheduler writes
                client = Client(scheduler_file=scheduler, timeout="15s")
            else:
                client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    if cluster == "slurm":
        from wiseverify.deploy.slurmcluster import slurm_client

        with slurm_client(min_jobs, max_jobs, overrides=slurm_overrides, run_dir=run_dir,
                          quiet=quiet) as client:
            yield client
        return
    if cluster != "local":
        raise ClusterError(f"unknown cluster type {cluster!r} (local or slurm)")
    with _fast_worker_start(), _light_worker_profiler():
        local = LocalCluster(
            n_workers=workers or default_workers(),
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            memory_limit=memory_limit,
            silence_logs=logging.ERROR if quiet else logging.WARNING,
            # forked workers inherit the forkserver's environment: hand them today's
            # AWS settings (credentials, endpoint, profile) explicitly
            env={k: v for k, v in os.environ.items() if k.startswith("AWS_")},
        )
    client = Client(local)
    try:
        yield client
    finally:
        client.close()
        local.close()
