"""Candidates settled in bulk: content evidence that costs no request and no read.

Most keys of a large namespace are decided by values that already sit in
Parquet next to the inventories:

* the destination's evidence is the listed ETag of a single-part object
  (an MD5, when no HeadObject is wanted: ``evidence.plan_one``'s cheapest
  case) or a compute-checksum report entry (``ingest.report_evidence``);
* the source's digests were computed ahead of the plan
  (``inventory/prehash``, what ``digest.known_digests`` serves to a digest
  unit) for a file whose size and mtime still equal the listing's.

For those rows the per-row path would build an Evidence, a FileItem, a unit,
a range result and a row dict each, only to compare two strings; at 30 million
keys that was hours of Python.  :func:`settle` makes the same decisions with
Arrow and numpy kernels over the whole partition and returns the rows'
reconciliation values, column by column.  Everything it cannot decide exactly
as the per-row path would - a HEAD is wanted, metadata is compared, a digest
must be read, an MD5 differs (its SSE check is a request) - stays open for the
per-row path, which is unchanged.

A known digest is used for a file of any size.  The per-row path serves it
only to a unit that reads the whole file in one range; prehashed files are
below the HEAD threshold and never split, so both give the same row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import schema as S
from .evidence import ALGO_COST
from .ingest import REPORT_ALGOS
from .match import Matched

#: digests a prehash table holds (digest.PREHASH_SPEC): evidence needing only these is settled
KNOWN_ALGOS = ("md5", "crc64nvme")
#: evidence.MD5_RE in RE2 syntax (Python's ``$`` also matches before a final newline)
MD5_PATTERN = r"^[0-9a-fA-F]{32}\n?$"
REPORT_NOTE = " from S3 Batch Operations compute-checksum report "
UNVERIFIED_ETAG = ("ETag {!r} is not an MD5 (SSE-KMS/SSE-C or other) and the object has no "
                   "stored checksum")

#: the columns :func:`settle` returns besides ``_pos`` (reconciliation column names)
COLUMNS = {
    "status": pa.string(), "detail": pa.string(), "verified_by": pa.string(),
    "dst_parts": pa.int32(), "dst_checksum_algorithm": pa.string(),
    "dst_checksum_type": pa.string(), "dst_checksum": pa.string(), "src_digest": pa.string(),
    "src_crc64nvme": pa.string(), "bytes_read_src": pa.int64(),
}


# --- encodings without a Python loop ------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                     np.uint8)


def _strings(chars: np.ndarray) -> pa.Array:
    """A string array from an (n, width) uint8 array of ASCII characters."""
    n, width = chars.shape
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(np.ascontiguousarray(chars))])


def hex_rows(raw: np.ndarray) -> pa.Array:
    """Lower-case hex of each row of an (n, k) uint8 array (``bytes.hex()``)."""
    out = np.empty((raw.shape[0], 2 * raw.shape[1]), np.uint8)
    out[:, 0::2] = _HEX[raw >> 4]
    out[:, 1::2] = _HEX[raw & 15]
    return _strings(out)


def b64_rows(raw: np.ndarray) -> pa.Array:
    """Standard base64 with padding of each row of an (n, k) uint8 array."""
    n, k = raw.shape
    pad = -k % 3
    if pad:
        raw = np.concatenate([raw, np.zeros((n, pad), np.uint8)], axis=1)
    g = raw.reshape(n, (k + pad) // 3, 3).astype(np.uint32)
    v = (g[..., 0] << 16) | (g[..., 1] << 8) | g[..., 2]
    idx = np.stack([(v >> 18) & 63, (v >> 12) & 63, (v >> 6) & 63, v & 63], axis=-1)
    out = _B64[idx.reshape(n, 4 * ((k + pad) // 3))]
    if pad:
        out[:, -pad:] = ord("=")
    return _strings(out)


def _fixed(arr: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray:
    """An (n, width) uint8 view of a fixed-size binary array without nulls."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_fixed_size_binary(arr.type):
        arr = pa.array(arr.to_pylist(), pa.binary(width))
    data = np.frombuffer(arr.buffers()[1], np.uint8)
    return data[arr.offset * width:(arr.offset + len(arr)) * width].reshape(-1, width)


def _np(arr) -> np.ndarray:
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


# --- inputs ----------------------------------------------------------------------------------


def known_table(prehash_dir: str | None, part: int) -> pa.Table | None:
    """The prehashed digests of one partition (``pipeline._known_for``'s files and order)."""
    if not prehash_dir:
        return None
    d = os.path.join(prehash_dir, f"part={part:05d}")
    names = sorted(os.listdir(d)) if os.path.isdir(d) else []
    tables = [pq.read_table(os.path.join(d, f), columns=["key_bytes", "size", "mtime_ns", "md5",
                                                         "crc64nvme"])
              for f in names if f.endswith(".parquet")]
    return pa.concat_tables(tables) if tables else None


def report_choice(run_dir: str, part: int, dst_rel: pa.Array, etag: pa.Array,
                  multipart: np.ndarray) -> dict | None:
    """The report entry ``ingest.report_evidence`` would pick for each candidate, or None.

    Same files, order and rules as ``attach_checksums`` + ``report_evidence``:
    error-free entries of the candidate's key whose ETag (when both are known)
    is the listed one, a known algorithm and a value, COMPOSITE values only for
    single-part objects without a part count; the cheapest algorithm wins,
    the first entry among equals.  ``rows`` are the candidates that have one.
    """
    d = Path(run_dir) / "inventory" / "checksums" / f"part={part:05d}"
    files = sorted(d.glob("*.parquet")) if d.is_dir() else []
    if not files:
        return None
    e = pa.concat_tables([pq.read_table(f, schema=S.CHECKSUM_REPORT) for f in files])
    e = e.append_column("_order", pa.array(np.arange(e.num_rows)))
    e = e.filter(pc.is_null(e.column("error")))
    # the (few) candidates with an entry, found by probing the report's keys
    named = _np(pc.and_(pc.is_in(dst_rel, value_set=e.column("key").combine_chunks()),
                        pc.not_equal(dst_rel, "")))
    cand_rows = np.flatnonzero(named)
    if not len(cand_rows):
        return None
    sel = pa.array(cand_rows)
    cand = pa.table({"key": dst_rel.take(sel), "_c": sel,
                     "_etag": pc.utf8_lower(etag.take(sel)), "_mp": pa.array(multipart[cand_rows])})
    j = e.join(cand, keys="key", join_type="inner")
    e_etag = pc.fill_null(j.column("etag"), "")
    etag_ok = pc.or_(pc.or_(pc.equal(e_etag, ""), pc.equal(j.column("_etag"), "")),
                     pc.equal(pc.utf8_lower(e_etag), j.column("_etag")))
    algo = pc.utf8_lower(pc.fill_null(j.column("algorithm"), ""))
    ctype_raw = pc.fill_null(j.column("checksum_type"), "")
    ctype = pc.utf8_upper(pc.if_else(pc.equal(ctype_raw, ""), "FULL_OBJECT", ctype_raw))
    parts_set = pc.fill_null(pc.not_equal(j.column("checksum_parts"), 0), False)
    composite_bad = pc.and_(pc.equal(ctype, "COMPOSITE"), pc.or_(j.column("_mp"), parts_set))
    valid = pc.and_(pc.and_(etag_ok, pc.is_in(algo, value_set=pa.array(REPORT_ALGOS))),
                    pc.and_(pc.fill_null(pc.not_equal(j.column("checksum"), ""), False),
                            pc.invert(composite_bad)))
    j = j.append_column("_algo", algo).append_column("_ctype", ctype).filter(valid)
    if not j.num_rows:
        return None
    costs = np.array([ALGO_COST[a] for a in REPORT_ALGOS])
    j = j.append_column("_cost", pa.array(costs[pc.index_in(
        j.column("_algo"), value_set=pa.array(REPORT_ALGOS)).to_numpy()]))
    j = j.take(pc.sort_indices(j, [("_c", "ascending"), ("_cost", "ascending"),
                                   ("_order", "ascending")]))
    c = j.column("_c").to_numpy()
    first = np.ones(len(c), bool)
    first[1:] = c[1:] != c[:-1]
    best = j.filter(pa.array(first))
    note = pc.binary_join_element_wise(best.column("algorithm"), REPORT_NOTE,
                                       pc.fill_null(best.column("report"), "None"), "")
    return {"rows": best.column("_c").to_numpy(), "algo": best.column("_algo"),
            "expected": best.column("checksum"), "ctype": best.column("_ctype"), "note": note}


# --- settling ---------------------------------------------------------------------------------


def settle(mt: Matched, rows: np.ndarray, *, run_dir: str, part: int, mode: str, metadata: str,
           head_min_size: int, prehash_dir: str | None) -> pa.Table | None:
    """Decide the open rows at ``rows`` that need no request and no read.

    Returns a table with ``_pos`` (the row's position in ``mt``) and the
    :data:`COLUMNS` the per-row path would have given it, or None when no row
    can be settled.  ``mode``/``metadata``/``head_min_size`` are the run's.
    """
    if mode != "stored" or metadata == "all" or not len(rows):
        return None
    c = mt.table.select(["key_bytes", "src_size", "src_mtime_ns", "dst_rel", "dst_etag",
                         "dst_checksum_algorithm"]).take(pa.array(rows, pa.int64()))
    c = c.combine_chunks()
    n = len(rows)
    etag = pc.fill_null(c.column("dst_etag"), "").combine_chunks()
    multipart = _np(pc.match_substring(etag, "-"))
    md5_etag = _np(pc.match_substring_regex(etag, MD5_PATTERN))
    algos = _np(pc.match_substring_regex(pc.fill_null(c.column("dst_checksum_algorithm"), ""),
                                         "[^,]"))
    size = pc.fill_null(c.column("src_size"), -1).to_numpy()
    # rows without these facts fail in the per-row path as they always did
    has_size = _np(pc.is_valid(c.column("src_size")))
    facts = has_size & _np(pc.is_valid(c.column("src_mtime_ns")))
    want_head = algos & (multipart | (size >= head_min_size) | ~md5_etag)

    rep = report_choice(run_dir, part, c.column("dst_rel").combine_chunks(), etag, multipart)
    has_rep = np.zeros(n, bool)
    rep_known = np.zeros(n, bool)
    if rep is not None:
        has_rep[rep["rows"]] = True
        rep_known[rep["rows"][_np(pc.is_in(rep["algo"], value_set=pa.array(KNOWN_ALGOS)))]] = True
    by_etag = ~has_rep & ~want_head & ~multipart
    etag_md5 = by_etag & md5_etag & facts

    out: list[pa.Table] = []
    known = known_table(prehash_dir, part) if (etag_md5.any() or rep_known.any()) else None
    if known is not None and known.num_rows:
        at = _known_rows(c, known, etag_md5 | (rep_known & facts))
        ok = np.flatnonzero(etag_md5 & (at >= 0))
        if len(ok):
            out.append(_etag_md5_rows(c, known, rows, ok, at[ok], etag))
        ok = np.flatnonzero(rep_known & facts & (at >= 0))
        if len(ok):
            out.append(_report_rows(c, known, rows, ok, at[ok], etag, rep))
    unv = np.flatnonzero(by_etag & ~md5_etag & has_size)
    if len(unv):
        texts = [UNVERIFIED_ETAG.format(e) for e in c.column("dst_etag").take(pa.array(unv))
                 .to_pylist()]
        k = len(unv)
        out.append(_table(rows[unv], status=pa.array([S.UNVERIFIED] * k, pa.string()),
                          detail=pa.array(texts, pa.string()),
                          dst_parts=pa.array(np.ones(k, np.int32))))
    out = [t for t in out if t.num_rows]
    return pa.concat_tables(out) if out else None


def _table(pos: np.ndarray, **cols) -> pa.Table:
    """A settled-rows table: ``_pos`` and every column of :data:`COLUMNS` (null unless given)."""
    k = len(pos)
    return pa.table({"_pos": pa.array(pos, pa.int64()),
                     **{name: cols[name].cast(t) if name in cols else pa.nulls(k, t)
                        for name, t in COLUMNS.items()}})


def _known_rows(c: pa.Table, known: pa.Table, need: np.ndarray) -> np.ndarray:
    """Row of ``known`` holding each candidate's digests for its listed size and mtime, or -1.

    The last entry of a path wins, as in the dict ``pipeline._known_for`` builds.
    """
    at = np.full(c.num_rows, -1, np.int64)
    rows = np.flatnonzero(need)
    rev = known.column("key_bytes").combine_chunks()[::-1]
    hit = pc.index_in(c.column("key_bytes").take(pa.array(rows)), value_set=rev)
    found = _np(pc.is_valid(hit))
    rows = rows[found]
    k = len(rev) - 1 - np.asarray(hit.filter(pa.array(found)).to_numpy(), np.int64)
    kt = known.take(pa.array(k))
    same = _np(pc.and_(pc.and_(
        pc.equal(kt.column("size"), c.column("src_size").take(pa.array(rows))),
        pc.equal(kt.column("mtime_ns"), c.column("src_mtime_ns").take(pa.array(rows)))),
        pc.and_(pc.is_valid(kt.column("md5")), pc.is_valid(kt.column("crc64nvme")))))
    at[rows[same]] = k[same]
    return at


def _digests(known: pa.Table, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 16) MD5 and (n, 8) big-endian CRC64NVME bytes of ``known`` rows ``at``."""
    kt = known.select(["md5", "crc64nvme"]).take(pa.array(at))
    md5 = _fixed(kt.column("md5"), 16)
    crc = kt.column("crc64nvme").to_numpy().astype(">u8").view(np.uint8).reshape(-1, 8)
    return md5, crc


def _etag_md5_rows(c: pa.Table, known: pa.Table, rows: np.ndarray, ok: np.ndarray,
                   at: np.ndarray, etag: pa.Array) -> pa.Table:
    """Single-part objects whose ETag equals the source MD5: MATCH by ``etag-md5``.

    An ETag that differs is left open: the per-row path asks S3 whether the
    object is SSE-KMS/SSE-C encrypted (its ETag is then not an MD5).
    """
    md5, crc = _digests(known, at)
    got = hex_rows(md5)
    expected = pc.utf8_lower(etag.take(pa.array(ok)))
    same = _np(pc.equal(got, expected))
    k = int(same.sum())
    keep = pa.array(same)
    return _table(rows[ok[same]], status=pa.array([S.MATCH] * k, pa.string()),
                  verified_by=pa.array(["etag-md5"] * k, pa.string()),
                  dst_parts=pa.array(np.ones(k, np.int32)),
                  dst_checksum=expected.filter(keep), src_digest=got.filter(keep),
                  src_crc64nvme=hex_rows(crc[same]),
                  bytes_read_src=c.column("src_size").take(pa.array(ok[same])))


def _report_rows(c: pa.Table, known: pa.Table, rows: np.ndarray, ok: np.ndarray,
                 at: np.ndarray, etag: pa.Array, rep: dict) -> pa.Table:
    """Objects with a report value in a known digest: MATCH or CONTENT_MISMATCH by its algorithm."""
    md5, crc = _digests(known, at)
    idx = np.full(c.num_rows, -1, np.int64)
    idx[rep["rows"]] = np.arange(len(rep["rows"]))
    sel = pa.array(idx[ok])
    algo, expected = rep["algo"].take(sel), rep["expected"].take(sel)
    note = rep["note"].take(sel)
    got = pc.if_else(pc.equal(algo, "crc64nvme"), b64_rows(crc), b64_rows(md5))
    same = pc.equal(got, expected)
    mismatch = pc.binary_join_element_wise(algo, ": source ", got, " != destination ", expected,
                                           " (", note, ")", "")
    return _table(rows[ok], status=pc.if_else(same, S.MATCH, S.CONTENT_MISMATCH),
                  detail=pc.if_else(same, note, mismatch), verified_by=algo,
                  dst_parts=_etag_parts(etag.take(pa.array(ok))), dst_checksum_algorithm=algo,
                  dst_checksum_type=rep["ctype"].take(sel), dst_checksum=expected,
                  src_digest=got, src_crc64nvme=hex_rows(crc),
                  bytes_read_src=c.column("src_size").take(pa.array(ok)))


def _etag_parts(etag: pa.Array) -> pa.Array:
    """``Evidence.parts`` of report evidence: the ETag's ``-N``, 1 without one, null if not a number."""
    low = pc.utf8_lower(etag)
    count = pc.if_else(pc.match_substring(low, "-"),
                       pc.replace_substring_regex(low, r"(?s)^.*-", ""), "1")
    digits = pc.match_substring_regex(count, r"^[0-9]+$")
    return pc.if_else(digits, count, pa.scalar(None, pa.string())).cast(pa.int32())
