"""Verdicts: a partition's planned rows and computed digests become status rows.

The one place a MATCH is given, and the invariants that forbid an unearned one
(no MATCH without content evidence, metadata present but not compared) are
asserted here before anything is written.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections import defaultdict

import pandas as pd

from wiseverify.compare import metascope as MS
from wiseverify.compare.causes import add_causes
from wiseverify.compare.evidence import (
    Evidence,
    apply_layout,
    layout_text,
    true_layout,
)
from wiseverify.compare.metadata import compare_posix_metadata, encryption_of, stored_file_mtime_ns
from wiseverify.core import checksums as D
from wiseverify.core import schema as S
from wiseverify.core.s3 import error_text
from wiseverify.digest import hashing as HASHING
from wiseverify.digest import units as UNITS
from wiseverify.reconcile.assemble import assemble, rows_table, summarize, write_output
from wiseverify.reconcile.checkpoint import checkpoint_dir, open_files_lease
from wiseverify.reconcile.plan import Context, _row_dict
from wiseverify.report.pieces import write_piece


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
    item = UNITS.FileItem(idx=i, path=ctx.source_path(m.at[i, "key_bytes"]),
                      size=size, mtime_ns=int(m.at[i, "src_mtime_ns"]), spec=ev.spec)
    with open_files_lease(ctx):
        res = HASHING.combine_ranges([HASHING.hash_source_range(r) for r in
                                UNITS.split_file(item, ctx.range_bytes)], ev.spec, size)
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
    rows: dict[int, dict] = plan.get("rows") or {}
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
    out["dst_file_mtime_ns"] = [None] * n
    status = m["status"].astype(object).where(m["status"].notna(), None).tolist()
    detail = m["detail"].astype(object).where(m["detail"].notna(), None).tolist()
    out["evidence_run"] = [ctx.run_id] * n
    sse_check: list[int] = []
    meta_head = plan.get("meta_head")

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
        res = HASHING.combine_ranges(src_ranges.get(i, []), ev.spec, size)
        out["bytes_read_src"][i] = res.get("bytes", 0)
        if res["error"]:
            status[i], detail[i] = S.SOURCE_ERROR, res["error"]
            continue
        if "crc64nvme" in res["crc"]:
            out["src_crc64nvme"][i] = f"{res['crc']['crc64nvme']:016x}"
        if ev.kind == "readback":
            dres = HASHING.combine_ranges(dst_ranges.get(i, []), ev.spec, size)
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
        out["dst_file_mtime_ns"][i] = stored_file_mtime_ns(ev.metadata)
        if not same:
            status[i], detail[i] = S.CONTENT_MISMATCH, what
            continue
        row = rows.get(i) or _row_dict(m, i)
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
    table = add_causes(table)
    table = _test_forced_status(table)
    write_output(table, ctx.part_path(plan["part"]))
    t2 = time.perf_counter()
    write_piece(table, ctx.part_path(plan["part"]), ctx.list_settings)
    t3 = time.perf_counter()
    shutil.rmtree(checkpoint_dir(ctx, plan["part"]), ignore_errors=True)
    stage_s = dict(plan.get("stage_s") or {})
    stage_s.update(finish=t0 - started, assemble=t1 - t0, write=t2 - t1, lists=t3 - t2)
    return summarize(table) | {
        "requests": plan.get("requests", 0),
        "carried": plan["carried"].count if plan.get("carried") is not None else 0,
        "units": len(unit_results),
        "units_reused": sum(1 for r in unit_results if r.get("reused")),
        "open_intervals": [r["open_interval"] for r in unit_results if r.get("open_interval")],
        "stage_s": stage_s,
    }


def _test_forced_status(table):
    """Test hook, only under pytest: ``WISEVERIFY_TEST_FORCE_STATUS=key=STATUS`` forces a
    wrong status, so the test of ``wiseverify qualify`` can show a failing OQ check."""
    import os

    spec = os.environ.get("WISEVERIFY_TEST_FORCE_STATUS")
    if not spec or not os.environ.get("PYTEST_CURRENT_TEST"):
        return table
    import pyarrow as pa
    import pyarrow.compute as pc

    key, _, status = spec.rpartition("=")
    hit = pc.equal(table.column("key"), key)
    forced = pc.if_else(hit, pa.scalar(status), table.column("status"))
    return table.set_column(table.schema.get_field_index("status"), "status", forced)
