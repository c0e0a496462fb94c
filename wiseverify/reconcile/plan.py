"""Stage 4, reconcile: per partition, from matched rows and digests to one status per key.

A partition is processed by two kinds of Dask task: :func:`plan_partition`
(match + evidence, returns the work units) and :func:`finish_partition`
(folds the units' digests, compares, writes ``reconciliation/part-NNNNN.parquet``
atomically and returns only counts).  Between them, the digest units run
anywhere in the cluster.

Only the rows that need a request or a read travel that per-row path
(Evidence, FileItem, unit, row dict).  A partition of 250,000 keys is mostly
rows the listings decide and rows whose evidence is already in Parquet
(``settle``); those are decided and written as whole Arrow columns, which
took 30 million keys from hours of Python to minutes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from wiseverify.compare import carry as C
from wiseverify.compare import metascope as MS
from wiseverify.compare.evidence import (
    Evidence,
    plan_evidence,
)
from wiseverify.compare.match import Matched, match_table
from wiseverify.core import schema as S
from wiseverify.core.config import VerifyConfig
from wiseverify.core.s3 import S3Target
from wiseverify.digest import units as D
from wiseverify.inventory import checksum_report as INGEST
from wiseverify.inventory import hsm
from wiseverify.inventory.partition import read_partition
from wiseverify.reconcile import settle as SETTLE
from wiseverify.report.pieces import ListSettings


def _clean(row: dict) -> dict:
    return {k: (None if v is pd.NA or (isinstance(v, float) and v != v) else v)
            for k, v in row.items()}


def _row_dict(m: pd.DataFrame, i: int) -> dict:
    """One row of the frame as plain Python values (None for a missing value)."""
    return _clean(m.iloc[i].to_dict())


def row_dicts(m: pd.DataFrame, idx: list[int]) -> list[dict]:
    """Rows ``idx`` of the frame as plain Python values, in one conversion.

    ``m.loc[i].to_dict()`` per row built a Series per candidate: a third of a
    worker's time on a tree of small files.
    """
    if not idx:
        return []
    sub = m if len(idx) == len(m) and idx == list(range(len(m))) else m.iloc[idx]
    return [_clean(r) for r in sub.to_dict("records")]

#: the run's settings a partition task reads, with VerifyConfig's defaults (written once there)
_SHARED = ("mode", "metadata", "head_min_size", "unit_bytes", "unit_files", "range_bytes",
           "head_concurrency", "get_concurrency", "max_open_files", "list_match",
           "rollup_depth")
_DEFAULT = VerifyConfig("", "", "")


@dataclass(frozen=True)
class Context:
    """Everything a partition task needs; small and picklable.

    The settings it shares with :class:`~wiseverify.core.config.VerifyConfig` take
    their defaults from there, and :meth:`from_config` copies them by name.
    """

    root: str
    target: S3Target
    run_dir: str
    run_id: str
    mode: str = _DEFAULT.mode  # or "readback"
    metadata: str = _DEFAULT.metadata  # "auto": decided per prefix by metascope; "all"; "off"
    head_min_size: int = _DEFAULT.head_min_size
    unit_bytes: int = _DEFAULT.unit_bytes
    unit_files: int = _DEFAULT.unit_files
    range_bytes: int = _DEFAULT.range_bytes
    head_concurrency: int = _DEFAULT.head_concurrency
    get_concurrency: int = _DEFAULT.get_concurrency
    max_open_files: int | None = _DEFAULT.max_open_files  # cluster-wide cap on open source files
    list_match: bool = _DEFAULT.list_match  # the lists each partition renders (report.pieces)
    rollup_depth: int = _DEFAULT.rollup_depth
    min_units: int = 8  # split small partitions into at least this many units
    previous_run: str | None = None  # reuse unchanged evidence of this run (incremental)
    #: --metadata auto: the run-wide sample's decision per top-level prefix (None: sample here)
    metadata_decision: MS.Decision | None = None

    @classmethod
    def from_config(cls, cfg: VerifyConfig, **kw) -> Context:
        """A context with ``cfg``'s shared settings; ``kw`` gives the rest.

        ``previous_run`` is not shared: the config's names the audit chain's link,
        the context's the run whose evidence is carried.
        """
        return cls(**{name: getattr(cfg, name) for name in _SHARED}, **kw)

    def source_path(self, key_bytes: bytes) -> bytes:
        """The absolute source path of a key's exact name bytes."""
        return os.fsencode(self.root) + b"/" + bytes(key_bytes)

    @property
    def src_inv(self) -> str:
        return str(Path(self.run_dir) / "inventory" / "src")

    @property
    def dst_inv(self) -> str:
        return str(Path(self.run_dir) / "inventory" / "dst")

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / "reconciliation"

    def part_path(self, part: int) -> Path:
        return self.out_dir / f"part-{part:05d}.parquet"

    @property
    def list_settings(self) -> ListSettings:
        return ListSettings(self.list_match, self.target.bucket, self.rollup_depth)


def plan_partition(ctx: Context, part: int, prehash_dir: str | None = None) -> dict:
    """Match one partition and choose evidence; returns rows, evidence and work units.

    Rows the listings decide, and candidates whose evidence needs no request
    and no read (``settle``: an ETag MD5 or a checksum-report value against a
    digest in ``prehash_dir``), are decided here column by column; only the
    rest become rows of the pandas ``frame`` that the per-row evidence, digest
    and finish steps work on.  ``positions`` maps the frame's rows back to the
    partition (``matched``).
    """
    clock = time.perf_counter()
    stage_s: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stage_s[name] = stage_s.get(name, 0.0) + now - clock
        clock = now

    # contiguous: the join takes rows by index, and a copy made here frees each chunk as it goes
    src = read_partition(ctx.src_inv, part, S.SOURCE_INVENTORY, contiguous=True)
    dst = read_partition(ctx.dst_inv, part, S.DEST_INVENTORY, contiguous=True)
    lap("read")
    mt = match_table(src, dst)
    del src, dst
    lap("match")
    _skip_released(ctx, mt)
    open_pos = np.flatnonzero(mt.open)
    # whose metadata must be compared: decided from a sample before anything is settled
    scope = MS.scope(ctx.target, mt.column("dst_rel").take(pa.array(open_pos, pa.int64())),
                     open_pos, len(mt), ctx.metadata, ctx.mode, ctx.metadata_decision,
                     ctx.head_concurrency)
    lap("metadata")
    carried = None
    if ctx.previous_run and len(open_pos):
        prev = C.load_previous(Path(ctx.previous_run), part,
                               mt.column("key").take(pa.array(open_pos, pa.int64())))
        # a verdict that did not compare metadata is not carried where it must be compared
        carried = C.carry_over(mt, open_pos, prev, allowed=~scope.head)
        if carried is not None:
            open_pos = open_pos[~carried.mask[open_pos]]
        lap("carry")
    settled = SETTLE.settle(mt, open_pos[~scope.head[open_pos]], run_dir=ctx.run_dir,
                            part=part, mode=ctx.mode,
                            metadata=ctx.metadata, head_min_size=ctx.head_min_size,
                            prehash_dir=prehash_dir)
    if settled is not None:
        open_pos = open_pos[~settled.mask[open_pos]]
    lap("settle")
    positions = np.sort(open_pos)
    m = mt.frame(positions)
    local = {int(p): i for i, p in enumerate(positions)}
    cand_idx = [local[int(p)] for p in open_pos]
    cand_rows = row_dicts(m, cand_idx)
    if ctx.mode == "stored":  # entries of a --checksum-report, read for this partition only
        INGEST.attach_checksums(ctx.run_dir, part, cand_rows)
    # rows of a prefix whose metadata sample had no answer at all are errors, not requests
    ask = [j for j, p in enumerate(open_pos) if int(p) not in scope.failed]
    asked = iter(plan_evidence([cand_rows[j] for j in ask], ctx.target, ctx.mode,
                               ["all" if scope.head[open_pos[j]] else ctx.metadata for j in ask],
                               ctx.head_min_size, ctx.head_concurrency))
    evs = [Evidence(error=scope.failed[int(p)]) if int(p) in scope.failed else next(asked)
           for p in open_pos]
    evidence: dict[int, Evidence] = {}
    items: list[D.FileItem] = []
    for i, row, ev in zip(cand_idx, cand_rows, evs, strict=True):
        evidence[i] = ev
        if ev.error or ev.unverified:
            continue
        items.append(
            D.FileItem(
                idx=i,
                path=ctx.source_path(row["key_bytes"]),
                size=int(row["src_size"]),
                mtime_ns=int(row["src_mtime_ns"]),
                spec=ev.spec,
                dst_key=ctx.target.prefix + row["dst_rel"] if ctx.mode == "readback" else None,
            )
        )
    # a small partition is still spread over every thread of the cluster
    total = sum(it.size for it in items)
    unit_bytes = min(ctx.unit_bytes, max(16 << 20, total // ctx.min_units))
    unit_files = min(ctx.unit_files, max(100, len(items) // ctx.min_units))
    range_bytes = min(ctx.range_bytes, max(32 << 20, total // ctx.min_units))
    units = D.make_units(items, unit_bytes, unit_files, range_bytes)
    lap("evidence")
    return {"part": part, "frame": m, "evidence": evidence, "units": units,
            "rows": dict(zip(cand_idx, cand_rows, strict=True)),
            "carried": carried, "requests": scope.requests + sum(e.requests for e in evs),
            "matched": mt, "positions": positions, "settled": settled, "stage_s": stage_s,
            "meta_head": scope.head[positions]}


def _skip_released(ctx: Context, mt: Matched) -> None:
    """Mark HSM-released candidates SKIPPED before anything could open them."""
    lfs = hsm.lfs_path()
    if not lfs or not len(mt):
        return
    cand = np.flatnonzero(mt.open)
    t = mt.rows(["key_bytes", "src_size", "src_blocks"], cand)
    maybe = hsm.may_be_released(t.column("src_size"), t.column("src_blocks"))
    rows = np.flatnonzero(maybe.to_numpy(zero_copy_only=False))
    paths = {ctx.source_path(kb): int(cand[r]) for r, kb in
             zip(rows, t.column("key_bytes").take(pa.array(rows)).to_pylist(), strict=True)}
    for path, reason in hsm.released(list(paths), lfs).items():
        if path in paths:
            mt.decide(np.array([paths[path]]), S.SKIPPED, reason)
