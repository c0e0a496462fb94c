"""Before a run: every setting checked, the source and the bucket reached, or one line.

Run by the command line before it starts a cluster (a mistake costs no SLURM job)
and by ``verify()`` when a notebook calls it directly.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from wiseverify.core import md5lanes
from wiseverify.core.config import VerifyConfig, check_limits
from wiseverify.core.errors import ConfigError
from wiseverify.core.filters import Filters
from wiseverify.core.s3 import S3Target, preflight
from wiseverify.inventory import ingest as INGEST
from wiseverify.report import manifest as AUD


def resolve_source(source: str) -> str:
    """A local path or file:// URL to an absolute directory path."""
    if "://" in source:
        u = urlparse(source)
        if u.scheme != "file":
            raise ConfigError(
                f"source must be a local path or file:// URL (Lustre is POSIX), got {source!r}"
            )
        if u.netloc not in ("", "localhost"):
            raise ConfigError(f"file:// URL with a host is not supported: {source!r}")
        source = unquote(u.path)
    path = os.path.abspath(source)
    if not os.path.exists(path):
        raise ConfigError(f"source {source!r} does not exist")
    if not os.path.isdir(path):
        raise ConfigError(f"source {source!r} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"source {source!r} is not readable")
    return path


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def prepare(cfg: VerifyConfig,
            check_destination: Callable[[S3Target], None] | None = None) -> tuple[str, S3Target]:
    """Validate source and destination before any task is sent (exit 2 on failure).

    Settings are checked before the destination's verdict is taken.
    ``check_destination`` replaces :func:`~wiseverify.core.s3.preflight` with
    one that gives the same verdict (the command line's, made in the background).
    """
    from wiseverify.core.s3 import S3ConfigError

    check_limits(cfg)
    try:
        md5lanes.kernel()  # a forced kernel this CPU cannot run is refused here
    except md5lanes.KernelError as exc:
        raise ConfigError(str(exc)) from None
    Filters.from_config(cfg)  # a pattern or filter file that cannot be used: one line
    if cfg.sample:
        from wiseverify.reconcile.sample import parse_spec

        parse_spec(cfg.sample)
        if cfg.mode != "stored":
            raise ConfigError("--sample reads back a sample in stored mode; --mode readback "
                              "reads every object already")
    if cfg.mode not in ("stored", "readback"):
        raise ConfigError(f"--mode must be stored or readback, got {cfg.mode!r}")
    if cfg.metadata not in ("auto", "all", "off"):
        raise ConfigError(f"--metadata must be auto, all or off, got {cfg.metadata!r}")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {cfg.out} is a file, not a directory")
    root = resolve_source(cfg.source)
    try:
        target = S3Target.parse(cfg.dest, cfg.endpoint_url, cfg.profile, cfg.region)
        (check_destination or preflight)(target)
    except S3ConfigError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.resume:
        if not (out / "run.json").is_file():
            raise ConfigError(f"--resume {cfg.out}: no interrupted run there (no run.json)")
        if (out / "summary.json").exists():
            raise ConfigError(f"--resume {cfg.out}: that run is complete; nothing to resume")
    elif (out / "summary.json").exists() or (out / "reconciliation").exists():
        raise ConfigError(f"{cfg.out} already holds a run; choose a new --out directory")
    if cfg.previous_run and not (Path(cfg.previous_run) / AUD.MANIFEST).is_file():
        raise ConfigError(f"--previous-run {cfg.previous_run} holds no {AUD.MANIFEST}")
    try:
        INGEST.check(cfg, root, target)
    except INGEST.IngestError as exc:
        raise ConfigError(str(exc)) from None
    return root, target


def resume_config(run_dir: Path, cfg: VerifyConfig) -> VerifyConfig:
    """The interrupted run's own settings (its run id included); cluster flags stay as given."""
    saved = json.loads((run_dir / "run.json").read_text())
    known = {f for f in VerifyConfig.__dataclass_fields__}
    conf = {k: v for k, v in saved.get("config", {}).items() if k in known}
    conf.update(out=cfg.out, resume=True, run_id=saved["run_id"],
                endpoint_url=cfg.endpoint_url or conf.get("endpoint_url"), profile=cfg.profile)
    return VerifyConfig(**conf)
