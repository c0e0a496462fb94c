"""Where the Dask work runs: an embedded LocalCluster, SLURM jobs or any running scheduler.

The embedded cluster uses worker processes (the digest work is CPU and I/O,
and awscrt/hashlib release the GIL, so two threads per process overlap reads
with hashing) and binds the scheduler and dashboard to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from wiseverify.core import arrowmem
from wiseverify.core.errors import ClusterError

if TYPE_CHECKING:
    from wiseverify.core.s3 import S3Target

#: imported once by the forkserver that starts local worker processes (see
#: _fast_worker_start): the third-party modules every worker needs.
WORKER_PRELOAD = ("distributed", "numpy", "pandas", "pyarrow.parquet", "pyarrow.compute",
                  "pyarrow.dataset", "awscrt.checksums", "s3fs", "aiobotocore.session",
                  "botocore.session")
#: and, when the command line starts the forkserver itself, the project's task modules:
#: every worker would otherwise import them at its first task of each stage (about a
#: CPU-second per process on a short run), after the driver's own imports
PROJECT_PRELOAD = ("wiseverify.core.s3", "wiseverify.inventory.jobs",
                   "wiseverify.inventory.prehash", "wiseverify.inventory.files_from",
                   "wiseverify.compare.metascope", "wiseverify.run.tasks",
                   "wiseverify.reconcile.sample", "wiseverify.digest.execute",
                   "wiseverify.deploy._forkserver")


def _forkserver_wanted() -> bool:
    import multiprocessing

    import dask

    method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
    return method == "spawn" and "forkserver" in multiprocessing.get_all_start_methods()


@contextlib.contextmanager
def _driver_import_path() -> Iterator[None]:
    """Make a process started now resolve imports exactly as this one does.

    The forkserver is a fresh ``python -c`` that imports its preload before any
    preparation data reaches it, so it would find packages through its own
    path: the working directory first.  Run from a checkout with the package
    installed elsewhere, it would preload the checkout's modules, and every
    worker forked from it would run them.  Here it gets this process's path,
    and no working directory in front (``PYTHONSAFEPATH``).
    """
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p or os.curdir) for p in sys.path)
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def prestart_local_workers() -> bool:
    """Start the forkserver of the embedded cluster's workers now, in the background.

    Its imports (about two seconds of one core) then overlap the driver's own
    imports and the preflight instead of following them; the worker
    processes themselves are forked only when the cluster starts, after every
    settings check has passed, so a run refused for bad settings starts no
    worker (one refused by the destination closes the cluster started meanwhile).
    Returns whether a forkserver runs (not where :func:`_fast_worker_start`
    keeps the configured method).

    It starts before dask is imported to read that setting: the import takes
    0.2 s, and the preload is what the workers of a short run wait for.  A
    forkserver started for a setting that then says otherwise is stopped.

    For the command line only: the forkserver lives as long as the process,
    and the project modules it preloads are those of the moment it started.
    """
    import multiprocessing
    from multiprocessing import forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    started = False
    if getattr(forkserver._forkserver, "_forkserver_pid", None) is None:
        arrowmem.for_workers()  # the workers' Arrow pool, chosen before they load Arrow
        multiprocessing.get_context("forkserver").set_forkserver_preload(
            [*WORKER_PRELOAD, *PROJECT_PRELOAD])
        with _driver_import_path():
            forkserver.ensure_running()
        started = True
    if _forkserver_wanted():
        return True
    if started:  # a configured start method other than spawn: its workers fork elsewhere
        with contextlib.suppress(Exception):
            forkserver._forkserver._stop()
    return False


def _aws_env() -> dict[str, str]:
    """Today's AWS settings (credentials, endpoint, profile): what a process forked from the
    forkserver must be handed, as it inherits the forkserver's environment, not this one's."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def _preflight_child(conn, target: S3Target, env: dict[str, str]) -> None:
    from wiseverify.core.s3 import S3ConfigError, preflight

    os.environ.update(env)
    try:
        preflight(target, plain=False)  # the driver's own plain request was not answered 200
        verdict = ("ok", "")
    except S3ConfigError as exc:
        verdict = ("refused", str(exc))
    except BaseException as exc:  # noqa: BLE001 - the driver checks again itself
        verdict = ("again", f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):  # the driver has stopped (a settings error): no one asks
        conn.send(verdict)


class BackgroundPreflight:
    """The destination's preflight, run while the driver is still importing.

    The check itself is :func:`wiseverify.core.s3.preflight`, unchanged: one
    HeadBucket through s3fs and botocore.  Importing those and building the
    client is most of its cost (about 0.6 s), and the prestarted forkserver
    has them imported already, so a process forked from it makes the check
    while the driver imports its own modules.  The verdict is only read where
    the preflight would have run (:meth:`check`), after the settings checks,
    so messages and their order are unchanged.  Anything but a clear verdict
    (the child died, a different target) makes the driver check again itself.
    A plain request (:func:`wiseverify.core.headbucket.head_bucket_answered`) answered
    200 needs no child at all: the verdict is there in milliseconds, and the
    forkserver's processes are the workers alone.
    """

    def __init__(self, target: S3Target) -> None:
        import concurrent.futures
        import threading

        self.target = target
        self._verdict: concurrent.futures.Future = concurrent.futures.Future()
        threading.Thread(target=self._run, name="wiseverify-preflight", daemon=True).start()

    def _run(self) -> None:
        import multiprocessing

        from wiseverify.core.headbucket import head_bucket_answered

        verdict: tuple[str, str] = ("again", "")
        try:
            try:
                plain = head_bucket_answered(self.target)
            except Exception:  # noqa: BLE001 - not answered: the child asks botocore
                plain = False
            if plain:  # a plain request: answered here, in ms, no child
                verdict = ("ok", "")
                return
            ctx = multiprocessing.get_context("forkserver")
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_preflight_child, args=(send, self.target, _aws_env()),
                               name="wiseverify-preflight", daemon=True)
            proc.start()  # waits for the forkserver's preload
            send.close()
            verdict = recv.recv()
            proc.join(5)
        except (OSError, EOFError, ValueError) as exc:
            verdict = ("again", str(exc))
        finally:
            self._verdict.set_result(verdict)

    def check(self, target: S3Target) -> None:
        """Raise the preflight's :class:`S3ConfigError`, or return when the destination is usable."""
        from wiseverify.core.s3 import S3ConfigError, preflight

        state, text = self._verdict.result() if target == self.target else ("again", "")
        if state == "refused":
            raise S3ConfigError(text)
        if state != "ok":  # this target's plain request was sent (by _run) and not answered
            preflight(target, plain=target != self.target)


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
    # the Arrow pool of the workers about to start (SLURM jobs inherit this environment)
    arrowmem.for_workers()
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
            env=_aws_env(),
        )
    client = Client(local)
    try:
        yield client
    finally:
        client.close()
        local.close()
