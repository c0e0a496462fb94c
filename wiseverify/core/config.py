"""The settings of one verification run, and the bounds every way of giving them must keep.

CLI flags, job files, ``--resume`` and notebooks all build a
:class:`VerifyConfig`; :func:`check_limits` holds each of them to the same
bounds before anything touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from wiseverify.core.errors import ConfigError


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
    partitions: int | None = field(default=None, metadata={"lo": 1})
    rows_per_partition: int = field(default=250_000, metadata={"lo": 1})
    walk_budget: int = field(default=50_000, metadata={"lo": 1})
    max_metadata_ops: float | None = None
    # source files open at once, across the cluster
    max_open_files: int | None = field(default=None, metadata={"lo": 1})
    fanout_depth: int = field(default=2, metadata={"lo": 0})
    head_min_size: int = field(default=4 << 20, metadata={"lo": 0})
    unit_bytes: int = field(default=256 << 20, metadata={"lo": 1})
    unit_files: int = field(default=2000, metadata={"lo": 1})
    range_bytes: int = field(default=256 << 20, metadata={"lo": 1})
    head_concurrency: int = field(default=32, metadata={"lo": 1})
    get_concurrency: int = field(default=16, metadata={"lo": 1})
    run_id: str | None = None
    previous_run: str | None = None  # audit chain link; default: newest earlier sibling
    full: bool = False  # re-hash everything instead of reusing the previous run's evidence
    prehash: bool = True  # hash small source files while the destination is being listed
    resume: bool = False  # continue the interrupted run in ``out``
    source_listing: str | None = None  # an lfs find / find -printf listing instead of the walk
    listing_format: str | None = None  # its -printf directives (ingest.DEFAULT_LISTING_FORMAT)
    dest_inventory: str | None = None  # an S3 Inventory manifest.json instead of ListObjectsV2
    checksum_report: str | None = None  # a compute-checksum completion report as evidence
    # which paths the run covers (core.filters, rclone's syntax); part of its identity
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    filter_from: list[str] = field(default_factory=list)
    slice: str | None = None  # "K/N": the keys of hash slice K of N (core.filters)
    rollup_depth: int = field(default=2, metadata={"lo": 0})  # rollup.parquet's directories
    sample: str | None = None  # stored mode: also read back a sample ("0.5%", "20000")
    sample_seed: int = 0  # the sample's seed: the same seed draws the same keys
    list_match: bool = False  # also write lists/match.txt (as long as the run)
    files_from: str | None = None  # check exactly the keys listed (one per line) ...
    files_from0: str | None = None  # ... or NUL-separated
    extra: dict = field(default_factory=dict)


#: the smallest value of each bounded setting, declared on its field (``metadata["lo"]``)
LOWER_LIMITS = {f.name: f.metadata["lo"] for f in fields(VerifyConfig) if "lo" in f.metadata}


def check_limits(cfg: VerifyConfig) -> None:
    """Every numeric setting in range, whoever built ``cfg`` (flags, job file, a notebook)."""
    for name, lo in LOWER_LIMITS.items():
        v = getattr(cfg, name)
        if v is not None and v < lo:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {lo}, got {v}")
    if cfg.max_metadata_ops is not None and not cfg.max_metadata_ops > 0:
        raise ConfigError(f"--max-metadata-ops must be greater than 0, got {cfg.max_metadata_ops}")
