"""Job files: one YAML file per verification, kept under ``jobs/``.

A scheduled dry run has to be reproducible from a file that can be reviewed
and versioned (a GxP change record points at it), not from a shell history.
The job file names what to verify and where the evidence goes; everything
else has the same meaning as the ``wiseverify verify`` option of the same
name, so the file and the command line never drift apart::

    source: /lustre/stats/platform
    dest: s3://stats-archive/platform/
    out_root: /lustre/verify-runs/platform   # a new dated run directory per run
    # out: /lustre/verify-runs/platform/cutover   (a fixed run directory instead)
    endpoint_url: null
    mode: stored
    metadata: auto
    max_metadata_ops: 5000
    slurm:                 # overrides of the wiseverify.slurm dask config
      tls: true
      cluster: {max-jobs: 20}
    dask:                  # any other dask config, dotted keys
      distributed.comm.timeouts.connect: 60s

Credentials never belong in a job file: they come from the AWS chain
(environment, profile, instance role) of whoever runs the job.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from wiseverify.core.options import VERIFY_OPTIONS, job_keys

#: keys that are not ``wiseverify verify`` options
STRUCTURAL = ("source", "dest", "out", "out_root", "slurm", "dask")
#: command-line options a job file must not set: the runner decides where Dask runs
NOT_IN_JOB_FILES = tuple(o.dest for o in VERIFY_OPTIONS if not o.job)
#: key names that look like credentials; refused so they never land in a file
CREDENTIAL_WORDS = ("secret", "password", "token", "access_key", "credential")


class JobFileError(Exception):
    """The job file cannot be used (exit code 2)."""


def _norm(key: str) -> str:
    return str(key).strip().replace("-", "_")


def load_job(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a job file; returns its settings with ``_`` key names.

    Unknown keys are errors rather than being ignored: a misspelt option in a
    scheduled run would otherwise silently verify something else than what the
    file says.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise JobFileError(f"cannot read job file {str(p)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise JobFileError(f"job file {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise JobFileError(f"job file {str(p)!r} must be a YAML mapping of settings")
    job: dict[str, Any] = {}
    for key, value in data.items():
        k = _norm(key)
        if any(word in k.lower() for word in CREDENTIAL_WORDS):
            raise JobFileError(
                f"job file {str(p)!r}: {key!r} looks like a credential; credentials come "
                "from the AWS chain (environment, profile, instance role), never a job file"
            )
        job[k] = value
    for k in ("source", "dest"):
        if not job.get(k):
            raise JobFileError(f"job file {str(p)!r}: {k!r} is required")
    if bool(job.get("out")) == bool(job.get("out_root")):
        raise JobFileError(
            f"job file {str(p)!r}: set exactly one of 'out' (a run directory) or "
            "'out_root' (a new dated run directory under it per run)"
        )
    for k in ("slurm", "dask"):
        if job.get(k) is not None and not isinstance(job[k], dict):
            raise JobFileError(f"job file {str(p)!r}: {k!r} must be a mapping")
    options = _verify_options()
    for k in job:
        if k in STRUCTURAL:
            continue
        if k in NOT_IN_JOB_FILES or k not in options:
            known = ", ".join(sorted(set(STRUCTURAL) | (set(options) - set(NOT_IN_JOB_FILES))))
            raise JobFileError(f"job file {str(p)!r}: unknown setting {k!r} (known: {known})")
    job["_path"] = str(p.absolute())
    return job


def run_dir(job: dict[str, Any], stamp: str | None = None) -> str:
    """The run directory of this run: ``out``, or a new dated directory under ``out_root``.

    The stamp comes from ``WISEVERIFY_RUN_STAMP`` when set (``slurm/verify.sh``
    sets it once, so every rank of a job agrees on the directory), and the
    SLURM job id is appended so two runs started in the same second differ.
    """
    if job.get("out"):
        return str(job["out"])
    stamp = stamp or os.environ.get("WISEVERIFY_RUN_STAMP") or datetime.now(UTC).strftime(
        "%Y%m%dT%H%M%SZ")
    job_id = os.environ.get("SLURM_JOB_ID")
    name = f"{stamp}-job{job_id}" if job_id else stamp
    return str(Path(str(job["out_root"])) / name)


def verify_argv(job: dict[str, Any], stamp: str | None = None) -> list[str]:
    """The ``wiseverify verify`` arguments equivalent to a job file."""
    argv = [str(job["source"]), str(job["dest"]), "--out", run_dir(job, stamp)]
    options = _verify_options()
    for k, value in job.items():
        if k in STRUCTURAL or k.startswith("_") or value is None:
            continue
        flag, takes_value = options[k]
        if not takes_value:
            if value is True:
                argv.append(flag)
            elif value is not False:
                raise JobFileError(f"job file setting {k!r} must be true or false")
        elif isinstance(value, list):  # a repeatable option: exclude, include, filter_from
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return argv


def _verify_options() -> dict[str, tuple[str, bool]]:
    """``{key: (--flag, takes a value)}`` of the ``wiseverify verify`` options."""
    return {k: (o.flag, o.kind != "flag") for k, o in job_keys().items()}
