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

import base64
import contextlib
import hashlib
import os
import pickle
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import carry as C
from . import digest as D
from . import hsm
from . import ingest as INGEST
from . import metascope as MS
from . import schema as S
from . import settle as SETTLE
from .assemble import assemble, rows_table, summarize, write_output  # noqa: F401
from .config import VerifyConfig
from .evidence import (
    Evidence,
    apply_layout,
    compare_posix_metadata,
    encryption_of,
    layout_text,
    plan_evidence,
    true_layout,
)
from .inventory import read_partition
from .match import Matched, match_table
from .s3 import S3Target, error_text

#: the run's settings a partition task reads, with VerifyConfig's defaults (written once there)
_SHARED = ("mode", "metadata", "head_min_size", "unit_bytes", "unit_files", "range_bytes",
           "head_concurrency", "get_concurrency", "max_open_files")
_DEFAULT = VerifyConfig("", "", "")


@dataclass(frozen=True)
class Context:
    """Everything a partition task needs; small and picklable.

    The settings it shares with :class:`~wiseverify.config.VerifyConfig` take
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

    src = read_partition(ctx.src_inv, part, S.SOURCE_INVENTORY)
    dst = read_partition(ctx.dst_inv, part, S.DEST_INVENTORY)
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
    carried_at: dict[int, dict] = {}
    if ctx.previous_run and len(open_pos):
        m_open = mt.frame(open_pos)
        prev = C.load_previous(Path(ctx.previous_run), part, m_open["key"].tolist())
        # a verdict that did not compare metadata is not carried where it must be compared
        carried_at = {int(open_pos[i]): p for i, p in
                      C.carry_over(m_open, list(range(len(open_pos))), prev).items()
                      if p["metadata_checked"] or not scope.head[open_pos[i]]}
        if carried_at:
            still = np.zeros(len(mt), bool)
            still[open_pos] = True
            still[np.fromiter(carried_at, np.int64)] = False
            open_pos = np.flatnonzero(still)
        lap("carry")
    settled = SETTLE.settle(mt, open_pos[~scope.head[open_pos]], run_dir=ctx.run_dir,
                            part=part, mode=ctx.mode,
                            metadata=ctx.metadata, head_min_size=ctx.head_min_size,
                            prehash_dir=prehash_dir)
    if settled is not None:
        open_pos = open_pos[~settled.mask[open_pos]]
    lap("settle")
    positions = np.sort(np.concatenate([open_pos, np.fromiter(carried_at, np.int64)]))
    m = mt.frame(positions)
    local = {int(p): i for i, p in enumerate(positions)}
    carried = {local[p]: prow for p, prow in carried_at.items()}
    cand_idx = [local[int(p)] for p in open_pos]
    cand_rows = [_row_dict(m, i) for i in cand_idx]
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
    size = pc.fill_null(t.column("src_size"), 0).to_numpy()
    blocks = t.column("src_blocks")
    maybe = pc.fill_null(pc.and_(pc.greater(t.column("src_size"), 0),
                                 pc.less(pc.multiply(blocks, 512), size)), False)
    rows = np.flatnonzero(maybe.to_numpy(zero_copy_only=False))
    paths = {ctx.source_path(kb): int(cand[r]) for r, kb in
             zip(rows, t.column("key_bytes").take(pa.array(rows)).to_pylist(), strict=True)}
    for path, reason in hsm.released(list(paths), lfs).items():
        if path in paths:
            mt.decide(np.array([paths[path]]), S.SKIPPED, reason)


def run_unit(ctx: Context, units: list[D.Unit], i: int) -> dict:
    """Digest work unit ``i`` of a partition (a Dask task of its own)."""
    target = ctx.target if ctx.mode == "readback" else None
    return D.run_unit(units[i], target, ctx.get_concurrency)


def unit_fingerprint(unit: D.Unit) -> str:
    """Identifies a unit's exact work: a checkpoint is reused only for the same ranges."""
    h = hashlib.sha256()
    for r in unit.ranges:
        it = r.item
        h.update(repr((it.path, it.size, it.mtime_ns, it.dst_key, it.spec.whole, it.spec.parts,
                       it.spec.part_offsets, r.offset, r.length)).encode())
    return h.hexdigest()[:24]


@contextlib.contextmanager
def open_files_lease(ctx: Context) -> Iterator[None]:
    """Hold one of ``max_open_files`` cluster-wide leases while a unit reads the source.

    A unit has at most one source file open at a time, so capping the units that
    read at once caps the open files (and the OST/MDS load) across the cluster.
    The lease lives on the Dask scheduler (``distributed.Semaphore``).
    """
    if not ctx.max_open_files:
        yield
        return
    from distributed import Semaphore

    sem = Semaphore(max_leases=ctx.max_open_files, name=f"wiseverify-open-{ctx.run_id}")
    with sem:
        yield


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at the same instant (a sweep over start/end events)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals],
                    key=lambda e: (e[0], e[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def checkpoint_dir(ctx: Context, part: int) -> Path:
    return Path(ctx.run_dir) / "digest" / f"p{part:05d}"


def run_unit_checkpointed(ctx: Context, unit: D.Unit, part: int, i: int) -> dict:
    """Run a unit, or load its result saved by an interrupted run (``--resume``).

    Each finished unit is saved under ``digest/`` (temp name, then rename), so a
    killed run redoes only the units that were in flight.
    """
    path = checkpoint_dir(ctx, part) / f"u{i:06d}-{unit_fingerprint(unit)}.pkl"
    if path.is_file():
        try:
            res = pickle.loads(path.read_bytes())
            res["reused"] = True
            return res
        except Exception:  # a damaged checkpoint is recomputed
            path.unlink(missing_ok=True)
    target = ctx.target if ctx.mode == "readback" else None
    with open_files_lease(ctx):
        t0 = time.time()
        res = D.run_unit(unit, target, ctx.get_concurrency)
        res["open_interval"] = (t0, time.time())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL))
    os.replace(tmp, path)
    res["reused"] = False
    return res


def _row_dict(m: pd.DataFrame, i: int) -> dict:
    row = m.loc[i].to_dict()
    return {k: (None if v is pd.NA or (isinstance(v, float) and v != v) else v)
            for k, v in row.items()}


def _computed(ev: Evidence, res: dict) -> tuple[str | None, list[str]]:
    """The source value in the evidence's encoding, and alternative readings."""
    a = ev.algo
    if ev.kind == "etag-md5":
        return res["hash"]["md5"].hex(), []
    if ev.kind == "etag-multipart":
        return D.multipart_etag(res["parts"]["md5"]), []
    if ev.kind and ev.kind.endswith("-composite"):
        alts = [D.crc_b64(a, res["crc"][a])] if ev.alternatives else []
        return D.composite(a, res["parts"][a]), alts
    if a in D.CRC_FUNCS:
        return D.crc_b64(a, res["crc"][a]), []
    if a in ("sha256", "sha1", "md5"):
        return base64.b64encode(res["hash"][a]).decode(), []
    return None, []


def _matches(ev: Evidence, got: str | None, alts: list[str]) -> bool:
    """The source value equals the destination's, or an alternative reading equals its twin."""
    return got == ev.expected or any(alt == v for alt in alts for (_, _, v) in ev.alternatives)


def _confirm_layout(ctx: Context, m: pd.DataFrame, i: int, ev: Evidence, size: int) -> dict:
    """Before a rebuilt multipart ETag or composite checksum is reported as different.

    The layout came from part 1 and the arithmetic ``(N-1) x P + last == size``,
    which also holds for legal irregular layouts (parts of 6, 5, 7 MiB and a
    1 MiB tail).  Every part is HEADed; if the true layout is another, the
    source is hashed again with it and that digest decides.  Returns
    ``status``/``detail`` for a row decided here (an error); else ``same``,
    ``got`` (None: the first digest stands) and ``layout`` (for ``detail``);
    and always the ``bytes`` read again.
    """
    key = ctx.target.prefix + m.at[i, "dst_rel"]
    try:
        lengths = true_layout(ctx.target, key, int(ev.parts or 0), ev)
    except Exception as exc:
        return {"status": S.DEST_ERROR, "bytes": 0,
                "detail": f"{ev.kind} differs and the part layout could not be confirmed: "
                          + error_text(exc, "HeadObject PartNumber")}
    assumed = ev.spec.part_offsets
    if not apply_layout(ev, lengths, size):
        return {"status": S.DEST_ERROR, "detail": ev.error, "bytes": 0}
    if ev.spec.part_offsets == assumed:
        return {"status": None, "same": False, "got": None, "bytes": 0,
                "layout": f"part layout {layout_text(lengths)} confirmed by HeadObject of "
                          "every part"}
    item = D.FileItem(idx=i, path=ctx.source_path(m.at[i, "key_bytes"]),
                      size=size, mtime_ns=int(m.at[i, "src_mtime_ns"]), spec=ev.spec)
    with open_files_lease(ctx):
        res = D.combine_ranges([D.hash_source_range(r) for r in
                                D.split_file(item, ctx.range_bytes)], ev.spec, size)
    if res["error"]:
        return {"status": S.SOURCE_ERROR, "detail": res["error"], "bytes": res.get("bytes", 0)}
    got, alts = _computed(ev, res)
    same = _matches(ev, got, alts)
    return {"status": None, "same": same, "got": got, "bytes": res.get("bytes", 0),
            "layout": f"part layout {layout_text(lengths)} from HeadObject of every part, "
                      "source hashed again with it"}


def finish_partition(ctx: Context, plan: dict, *unit_results: dict) -> dict:
    """Compare digests with evidence, set every row's status, write the partition output."""
    started = time.perf_counter()
    m: pd.DataFrame = plan["frame"]
    evidence: dict[int, Evidence] = plan["evidence"]
    src_ranges: dict[int, list[dict]] = defaultdict(list)
    dst_ranges: dict[int, list[dict]] = defaultdict(list)
    dst_meta: dict[int, dict] = {}
    for res in unit_results:
        for r in res["src"]:
            src_ranges[r["idx"]].append(r)
        for r in res["dst"] or ():
            dst_ranges[r["idx"]].append(r)
            if r.get("metadata") is not None:
                dst_meta[r["idx"]] = r["metadata"]

    n = len(m)
    out = {c: [None] * n for c in (
        "verified_by", "dst_parts", "dst_part_size", "dst_checksum_algorithm",
        "dst_checksum_type", "dst_checksum", "src_digest", "src_crc64nvme", "bytes_read_src",
        "bytes_read_dst")}
    out["metadata_checked"] = [False] * n
    status = m["status"].astype(object).where(m["status"].notna(), None).tolist()
    detail = m["detail"].astype(object).where(m["detail"].notna(), None).tolist()
    out["evidence_run"] = [ctx.run_id] * n
    sse_check: list[int] = []
    meta_head = plan.get("meta_head")

    # unchanged on both sides since the previous run: its evidence stands
    for i, prow in plan.get("carried", {}).items():
        status[i], detail[i] = prow["status"], prow["detail"]
        for c in C.EVIDENCE_COLUMNS:
            if c not in ("status", "detail"):
                out[c][i] = prow[c]
        out["bytes_read_src"][i] = 0

    for i, ev in evidence.items():
        out["dst_parts"][i] = ev.parts
        out["dst_part_size"][i] = ev.part_size
        out["dst_checksum_algorithm"][i] = ev.checksum_algorithm
        out["dst_checksum_type"][i] = ev.checksum_type
        out["dst_checksum"][i] = ev.expected
        if ev.error:
            status[i], detail[i] = S.DEST_ERROR, ev.error
            continue
        if ev.unverified:
            status[i], detail[i] = S.UNVERIFIED, ev.unverified
            continue
        size = int(m.at[i, "src_size"])
        res = D.combine_ranges(src_ranges.get(i, []), ev.spec, size)
        out["bytes_read_src"][i] = res.get("bytes", 0)
        if res["error"]:
            status[i], detail[i] = S.SOURCE_ERROR, res["error"]
            continue
        if "crc64nvme" in res["crc"]:
            out["src_crc64nvme"][i] = f"{res['crc']['crc64nvme']:016x}"
        if ev.kind == "readback":
            dres = D.combine_ranges(dst_ranges.get(i, []), ev.spec, size)
            out["bytes_read_dst"][i] = dres.get("bytes", 0)
            if dres["error"]:
                status[i], detail[i] = S.DEST_ERROR, dres["error"]
                continue
            got = D.crc_b64("crc64nvme", res["crc"]["crc64nvme"])
            want = D.crc_b64("crc64nvme", dres["crc"]["crc64nvme"])
            out["src_digest"][i], out["dst_checksum"][i] = got, want
            out["verified_by"][i] = "readback"
            same = got == want
            what = f"CRC64NVME of source {got} != CRC64NVME read back {want}"
            if ev.metadata is None and i in dst_meta:
                ev.metadata = dst_meta[i]
        else:
            got, alts = _computed(ev, res)
            out["src_digest"][i] = got
            out["verified_by"][i] = ev.kind
            same = _matches(ev, got, alts)
            what = f"{ev.kind}: source {got} != destination {ev.expected}" + (
                f" ({ev.note})" if ev.note else "")
            if not same and ev.kind == "etag-md5":
                sse_check.append(i)
            if not same and ev.layout_assumed:
                # a uniform layout was assumed from part 1: learn the true one first
                conf = _confirm_layout(ctx, m, i, ev, size)
                out["bytes_read_src"][i] = (out["bytes_read_src"][i] or 0) + conf["bytes"]
                out["dst_parts"][i], out["dst_part_size"][i] = ev.parts, ev.part_size
                if conf["status"] is not None:
                    status[i], detail[i] = conf["status"], conf["detail"]
                    continue
                if conf["got"] is not None:
                    got = out["src_digest"][i] = conf["got"]
                same = conf["same"]
                what = f"{ev.kind}: source {got} != destination {ev.expected} ({conf['layout']})"
        if not same:
            status[i], detail[i] = S.CONTENT_MISMATCH, what
            continue
        row = _row_dict(m, i)
        if ctx.metadata != "off":
            checked, diffs = compare_posix_metadata(ev.metadata, row)
            out["metadata_checked"][i] = checked
            if checked != MS.has_posix(ev.metadata):
                raise AssertionError(f"metadata present but not compared for {row['key']!r}")
            if diffs:
                status[i] = S.METADATA_MISMATCH
                detail[i] = "content equal; metadata differs: " + "; ".join(diffs)
                continue
        if meta_head is not None and meta_head[i] and ev.metadata is None:
            # its prefix carries POSIX metadata: a MATCH must have looked at it
            raise AssertionError(f"MATCH without the metadata comparison its prefix needs "
                                 f"for {row['key']!r}")
        status[i] = S.MATCH
        # None unless the evidence came from outside S3's own answers or an irregular layout
        detail[i] = "; ".join(x for x in (ev.note, ev.layout) if x) or None

    # an ETag that is not an MD5 (SSE-KMS, SSE-C) proves nothing either way
    if sse_check:
        keys = [ctx.target.prefix + m.at[i, "dst_rel"] for i in sse_check]
        for i, sse in zip(sse_check, encryption_of(ctx.target, keys), strict=True):
            if sse and sse != "AES256":
                status[i] = S.UNVERIFIED
                detail[i] = f"object is encrypted with {sse}: its ETag is not an MD5"
                out["verified_by"][i] = None

    # Unicode-equivalent pairs are reported as such, with the content result kept
    pairs = m["name_pair"].fillna(False).astype(bool).tolist()
    for i, is_pair in enumerate(pairs):
        if not is_pair:
            continue
        content = {
            S.MATCH: f"content matches ({out['verified_by'][i]})",
            S.METADATA_MISMATCH: f"content matches ({out['verified_by'][i]}), {detail[i]}",
        }.get(status[i], f"{status[i]}: {detail[i]}")
        detail[i] = (
            f"destination holds this file as {m.at[i, 'dst_rel']!r} (Unicode normalization "
            f"differs, byte-wise a different key); {content}"
        )
        status[i] = S.NAME_MISMATCH

    for i, st in enumerate(status):
        if st in (S.MATCH,) and out["verified_by"][i] is None:
            # a MATCH always names its evidence; anything else is a defect
            raise AssertionError(f"MATCH without evidence for {m.at[i, 'key']!r}")

    t0 = time.perf_counter()
    table = assemble(ctx, plan, rows_table(ctx, plan["part"], m, status, detail, out))
    t1 = time.perf_counter()
    write_output(table, ctx.part_path(plan["part"]))
    t2 = time.perf_counter()
    shutil.rmtree(checkpoint_dir(ctx, plan["part"]), ignore_errors=True)
    stage_s = dict(plan.get("stage_s") or {})
    stage_s.update(finish=t0 - started, assemble=t1 - t0, write=t2 - t1)
    return summarize(table) | {
        "requests": plan.get("requests", 0),
        "carried": len(plan.get("carried", {})),
        "units": len(unit_results),
        "units_reused": sum(1 for r in unit_results if r.get("reused")),
        "open_intervals": [r["open_interval"] for r in unit_results if r.get("open_interval")],
        "stage_s": stage_s,
    }
