"""The settings of one verification run, and the bounds every way of giving them must keep.

CLI flags, job files, ``--resume`` and notebooks all build a
:class:`VerifyConfig`; :func:`check_limits` holds each of them to the same
bounds before anything touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass
class VerifyConfig:
    """Settings of one verification run (CLI flags and job files fill it)."""

    source: str
    dest: str
    out: str
    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    mode: str = "stored"
    metadata: str = "auto"
    partitions: int | None = None
    rows_per_partition: int = 250_000
    walk_budget: int = 50_000
    max_metadata_ops: float | None = None
    max_open_files: int | None = None  # source files open at once, across the cluster
    fanout_depth: int = 2
    head_min_size: int = 4 << 20
    unit_bytes: int = 256 << 20
    unit_files: int = 2000
    range_bytes: int = 256 << 20
    head_concurrency: int = 32
    get_concurrency: int = 16
    run_id: str | None = None
    previous_run: str | None = None  # audit chain link; default: newest earlier sibling
    full: bool = False  # re-hash everything instead of reusing the previous run's evidence
    prehash: bool = True  # hash small source files while the destination is being listed
    resume: bool = False  # continue the interrupted run in ``out``
    source_listing: str | None = None  # an lfs find / find -printf listing instead of the walk
    listing_format: str | None = None  # its -printf directives (ingest.DEFAULT_LISTING_FORMAT)
    dest_inventory: str | None = None  # an S3 Inventory manifest.json instead of ListObjectsV2
    checksum_report: str | None = None  # a compute-checksum completion report as evidence
    extra: dict = field(default_factory=dict)


#: the smallest value of each numeric setting (None: unset); named as its option
LOWER_LIMITS = {"partitions": 1, "rows_per_partition": 1, "walk_budget": 1,
                "max_open_files": 1, "fanout_depth": 0, "head_min_size": 0, "unit_bytes": 1,
                "unit_files": 1, "range_bytes": 1, "head_concurrency": 1, "get_concurrency": 1}


def check_limits(cfg: VerifyConfig) -> None:
    """Every numeric setting in range, whoever built ``cfg`` (flags, job file, a notebook)."""
    for name, lo in LOWER_LIMITS.items():
        v = getattr(cfg, name)
        if v is not None and v < lo:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {lo}, got {v}")
    if cfg.max_metadata_ops is not None and not cfg.max_metadata_ops > 0:
        raise ConfigError(f"--max-metadata-ops must be greater than 0, got {cfg.max_metadata_ops}")
