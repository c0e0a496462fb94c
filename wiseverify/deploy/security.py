"""TLS between the Dask scheduler and its workers on a shared cluster.

On a multi-user HPC network anyone can connect to an open port, so a SLURM cluster
runs with TLS and a per-run certificate written where only the user can read it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask
import dask.config

from wiseverify.core.errors import ClusterError


def _cluster_error(msg: str) -> Exception:
    """A :class:`~wiseverify.core.errors.ClusterError`, so the CLI reports it as exit code 2."""
    return ClusterError(msg)


def _hyphenate(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).replace("_", "-"): _hyphenate(v) for k, v in value.items()}
    return value

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
