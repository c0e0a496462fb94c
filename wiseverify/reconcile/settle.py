"""Candidates settled in bulk: content evidence that costs no request and no read.

Most keys of a large namespace are decided by values that already sit in
Parquet next to the inventories:

* the destination's evidence is the listed ETag of a single-part object
  (an MD5, when no HeadObject is wanted: ``evidence.plan_one``'s cheapest
  case) or a compute-checksum report entry (``evidence.report_evidence``);
* the source's digests were computed ahead of the plan
  (``inventory/prehash``, what ``digest.smallfiles.known_digests`` serves to a digest
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

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wiseverify.compare.match import Matched
from wiseverify.core import schema as S
from wiseverify.core.columns import Decided, b64_rows, hex_rows, with_validity
from wiseverify.core.rules import (
    ALGO_COST,
    ETAG_COUNT_PATTERN,
    MD5_PATTERN,
    REPORT_ALGOS,
    REPORT_NOTE,
    UNVERIFIED_ETAG,
    wants_head,
)
from wiseverify.inventory.partition import read_partition

#: digests a prehash table holds (digest.smallfiles.PREHASH_SPEC): evidence needing only these is settled
KNOWN_ALGOS = ("md5", "crc64nvme")

#: the columns :func:`settle` returns besides ``_pos`` (reconciliation column names)
COLUMNS = {
    "status": pa.string(), "detail": pa.string(), "verified_by": pa.string(),
    "dst_parts": pa.int32(), "dst_checksum_algorithm": pa.string(),
    "dst_checksum_type": pa.string(), "dst_checksum": pa.string(), "src_digest": pa.string(),
    "src_crc64nvme": pa.string(), "bytes_read_src": pa.int64(),
}


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
    """The prehashed digests of one partition (``run.tasks._known_for``'s files and order).

    With ``_valid``: both digests, the size and the mtime present.
    """
    if not prehash_dir:
        return None
    t = read_partition(prehash_dir, part, S.PREHASH,
                       ["key_bytes", "size", "mtime_ns", "md5", "crc64nvme"]).combine_chunks()
    if not t.num_rows:
        return None
    valid = pc.and_(pc.and_(pc.is_valid(t.column("md5")), pc.is_valid(t.column("crc64nvme"))),
                    pc.and_(pc.is_valid(t.column("size")), pc.is_valid(t.column("mtime_ns"))))
    return t.append_column("_valid", valid)


def report_choice(run_dir: str, part: int, dst_rel: pa.Array, etag: pa.Array,
                  multipart: np.ndarray) -> dict | None:
    """The report entry ``evidence.report_evidence`` would pick for each candidate, or None.

    Same files, order and rules as ``attach_checksums`` + ``report_evidence``:
    error-free entries of the candidate's key whose ETag (when both are known)
    is the listed one, a known algorithm and a value, COMPOSITE values only for
    single-part objects without a part count; the cheapest algorithm wins,
    the first entry among equals.  ``rows`` are the candidates that have one.
    """
    # one dataset over the partition's files, in their order (30 at 30 million keys):
    # reading them one by one took a third of this stage
    e = read_partition(str(Path(run_dir) / "inventory" / "checksums"), part, S.CHECKSUM_REPORT)
    if not e.num_rows:
        return None
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


#: rows decided with no request and no read (:data:`COLUMNS` in ``columns``)
Settled = Decided


def _null(typ: pa.DataType) -> pa.Scalar:
    return pa.scalar(None, typ)


def settle(mt: Matched, rows: np.ndarray, *, run_dir: str, part: int, mode: str, metadata: str,
           head_min_size: int, prehash_dir: str | None) -> Settled | None:
    """Decide the open rows at ``rows`` that need no request and no read.

    Returns the rows and the :data:`COLUMNS` values the per-row path would have
    given them, or None when no row can be settled.  ``mode``/``metadata``/
    ``head_min_size`` are the run's.  Works on whole columns of the partition:
    taking the open rows out first would copy almost all of it.
    """
    if mode != "stored" or metadata == "all" or not len(rows):
        return None
    n = len(mt)
    cand = np.zeros(n, bool)
    cand[rows] = True
    etag = pc.fill_null(mt.column("dst_etag"), "")
    size_col = mt.column("src_size")
    size = pc.fill_null(size_col, -1).to_numpy()
    # rows without these facts fail in the per-row path as they always did
    has_size = cand & _np(pc.is_valid(size_col))
    facts = has_size & _np(pc.is_valid(mt.column("src_mtime_ns")))

    # source digests first: an ETag equal to the file's MD5 is a single-part MD5 ETag,
    # so the (slow) pattern matching is left to the few rows where it differs
    known = known_table(prehash_dir, part)
    at = _known_rows(mt, known, facts, size) if known is not None else np.full(n, -1)
    has_known = at >= 0
    md5_hex = crc_hex = pa.nulls(n, pa.string())
    if has_known.any():
        # the raw digests gathered into partition order, then hexed once, as the
        # listing and the output spell them
        hit = np.flatnonzero(has_known)
        md5 = np.zeros((n, 16), np.uint8)
        md5[hit] = _fixed(known.column("md5"), 16)[at[hit]]
        crc = np.zeros(n, ">u8")
        crc[hit] = pc.fill_null(known.column("crc64nvme"), 0).to_numpy()[at[hit]]
        md5_hex = with_validity(hex_rows(md5), has_known)
        crc_hex = with_validity(hex_rows(crc.view(np.uint8).reshape(n, 8)), has_known)
    same = _np(pc.equal(md5_hex, pc.ascii_lower(etag)))
    multipart, md5_etag = np.zeros(n, bool), same.copy()
    rest = np.flatnonzero(cand & ~same)
    if len(rest):
        other = etag.take(pa.array(rest))
        multipart[rest] = _np(pc.match_substring(other, "-"))
        md5_etag[rest] = _np(pc.match_substring_regex(other, MD5_PATTERN))
    algos = np.zeros(n, bool)
    listed = np.flatnonzero(cand & _np(pc.is_valid(mt.column("dst_checksum_algorithm"))))
    if len(listed):
        algos[listed] = _np(pc.match_substring_regex(
            mt.column("dst_checksum_algorithm").take(pa.array(listed)), "[^,]"))
    want_head = wants_head(algos, multipart, size, head_min_size, md5_etag)

    rep = report_choice(run_dir, part, mt.column("dst_rel"), etag, multipart & cand)
    has_rep = np.zeros(n, bool)
    rep_known = np.zeros(n, bool)
    if rep is not None:
        keep = cand[rep["rows"]]
        rep = {k: (v[keep] if k == "rows" else v.filter(pa.array(keep))) for k, v in rep.items()}
        has_rep[rep["rows"]] = True
        rep_known[rep["rows"][_np(pc.is_in(rep["algo"], value_set=pa.array(KNOWN_ALGOS)))]] = True
    by_etag = cand & ~has_rep & ~want_head & ~multipart

    # the bulk: single-part objects whose ETag is the source MD5 - MATCH by etag-md5.  An MD5
    # that differs is checked for SSE-KMS/SSE-C by a HeadObject: left to the per-row path.
    etag_md5 = by_etag & same & facts
    # the others: report values (a few percent of a partition) and ETags that cannot be an MD5
    few: list[pa.Table] = []
    ok = np.flatnonzero(rep_known & facts & has_known)
    # every row compared with a prehashed digest names the file's CRC64NVME and size
    hashed = etag_md5.copy()
    hashed[ok] = True
    md5_out = with_validity(md5_hex, etag_md5)  # the same digest is both sides' value
    bulk: dict = {  # column: the etag-md5 rows' value, or the whole column as an array
        "status": S.MATCH, "verified_by": "etag-md5", "dst_parts": 1,
        "detail": None, "dst_checksum_algorithm": None, "dst_checksum_type": None,
        "dst_checksum": md5_out, "src_digest": md5_out,
        "src_crc64nvme": with_validity(crc_hex, hashed),
        "bytes_read_src": with_validity(size_col, hashed),
    }
    if len(ok):
        few.append(_report_rows(mt, known, at[ok], ok, etag, rep))
    unv = np.flatnonzero(by_etag & ~md5_etag & has_size)
    if len(unv):
        texts = [UNVERIFIED_ETAG.format(e) for e in
                 mt.column("dst_etag").take(pa.array(unv)).to_pylist()]
        k = len(unv)
        few.append(_table(unv, status=pa.array([S.UNVERIFIED] * k, pa.string()),
                          detail=pa.array(texts, pa.string()),
                          dst_parts=pa.array(np.ones(k, np.int32))))
    mask = etag_md5.copy()
    t = _table(np.zeros(0, np.int64))
    if few:  # in position order: replace_with_mask takes its values in that order
        t = pa.concat_tables(few)
        t = t.take(pc.sort_indices(t.column("_pos"))).combine_chunks()
    pos = t.column("_pos").to_numpy()
    mask[pos] = True
    at_pos = pa.array(mask & ~etag_md5)  # the rows of t, for replace_with_mask
    cols = {c: _column(n, etag_md5, bulk[c], pos, at_pos, t.column(c).chunk(0) if len(t) else
                       pa.nulls(0, typ))
            for c, typ in COLUMNS.items()}
    return Settled(mask, cols) if mask.any() else None


def _column(n: int, rows: np.ndarray, bulk, pos: np.ndarray, at_pos: pa.Array,
            values: pa.Array) -> pa.Array:
    """One settled column: ``bulk`` at ``rows``, ``values`` at ``pos``, null elsewhere.

    ``bulk`` is the value of every row at ``rows``, or a whole column (an array,
    null outside ``rows``); ``rows`` and ``pos`` are disjoint, and ``at_pos`` is
    ``pos`` as a mask.  Each column is built in one pass: a value and the few
    others through a small dictionary, a whole column by replacing only where
    ``values`` has any.
    """
    if isinstance(bulk, pa.Array):
        if not len(values) or values.null_count == len(values):
            return bulk
        return pc.replace_with_mask(bulk, at_pos, values)
    enc = values.dictionary_encode() if len(values) else None
    words = enc.dictionary if enc is not None else pa.array([], values.type)
    codes = np.full(n, -1, np.int32)
    if bulk is not None:
        codes[rows] = len(words)
        words = pa.concat_arrays([words, pa.array([bulk], values.type)])
    if enc is not None:
        codes[pos] = pc.fill_null(enc.indices, -1).to_numpy()
    return words.take(pa.array(codes, mask=codes < 0))


def _table(pos: np.ndarray, **cols) -> pa.Table:
    """A settled-rows table: ``_pos`` and every column of :data:`COLUMNS` (null unless given)."""
    k = len(pos)
    return pa.table({"_pos": pa.array(pos, pa.int64()),
                     **{name: cols[name].cast(t) if name in cols else pa.nulls(k, t)
                        for name, t in COLUMNS.items()}})


def _known_rows(mt: Matched, known: pa.Table, need: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Row of ``known`` holding each row's digests for its listed size and mtime, or -1.

    The last entry of a path wins, as in the dict ``run.tasks._known_for`` builds.
    """
    n = len(mt)
    at = np.full(n, -1, np.int64)
    if not known.num_rows or not need.any():
        return at
    rev = known.column("key_bytes").combine_chunks()[::-1]
    hit = pc.index_in(mt.column("key_bytes"), value_set=rev)
    k = len(rev) - 1 - pc.fill_null(hit, len(rev)).to_numpy().astype(np.int64)
    ok = need & (k >= 0)
    kk = np.where(ok, k, 0)
    mtime = pc.fill_null(mt.column("src_mtime_ns"), -1).to_numpy()
    ksize = pc.fill_null(known.column("size"), -2).to_numpy()
    kmtime = pc.fill_null(known.column("mtime_ns"), -2).to_numpy()
    ok &= (ksize[kk] == size) & (kmtime[kk] == mtime) & _np(known.column("_valid"))[kk]
    at[ok] = k[ok]
    return at


def _report_rows(mt: Matched, known: pa.Table, at: np.ndarray, ok: np.ndarray, etag,
                 rep: dict) -> pa.Table:
    """Objects with a report value in a known digest: MATCH or CONTENT_MISMATCH by its algorithm."""
    idx = np.full(len(mt), -1, np.int64)
    idx[rep["rows"]] = np.arange(len(rep["rows"]))
    sel = pa.array(idx[ok])
    algo, expected = rep["algo"].take(sel), rep["expected"].take(sel)
    note = rep["note"].take(sel)
    kt = known.select(["md5", "crc64nvme"]).take(pa.array(at))
    md5 = _fixed(kt.column("md5"), 16)
    crc = kt.column("crc64nvme").to_numpy().astype(">u8").view(np.uint8).reshape(-1, 8)
    got = pc.if_else(pc.equal(algo, "crc64nvme"), b64_rows(crc), b64_rows(md5))
    same = pc.equal(got, expected)
    mismatch = pc.binary_join_element_wise(algo, ": source ", got, " != destination ", expected,
                                           " (", note, ")", "")
    return _table(ok, status=pc.if_else(same, S.MATCH, S.CONTENT_MISMATCH),
                  detail=pc.if_else(same, note, mismatch), verified_by=algo,
                  dst_parts=_etag_parts(etag.take(pa.array(ok))), dst_checksum_algorithm=algo,
                  dst_checksum_type=rep["ctype"].take(sel), dst_checksum=expected,
                  src_digest=got)


def _etag_parts(etag: pa.Array) -> pa.Array:
    """``Evidence.parts`` of report evidence: the ETag's ``-N``, 1 without one, null if not a number."""
    low = pc.utf8_lower(etag)
    count = pc.if_else(pc.match_substring(low, "-"),
                       pc.replace_substring_regex(low, r"(?s)^.*-", ""), "1")
    digits = pc.match_substring_regex(count, ETAG_COUNT_PATTERN)
    return pc.if_else(digits, count, pa.scalar(None, pa.string())).cast(pa.int32())
