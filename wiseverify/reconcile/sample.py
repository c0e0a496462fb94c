"""``--sample SPEC``: read back a random sample in stored mode, and state what it proves.

Stored checksums and ETags were computed by whoever uploaded the objects.  A
stored-mode MATCH proves that the source equals that claim; reading a sample of
the objects back checks the claim itself against the bytes S3 holds.  Full
read-back of 200 TB does not fit a weekend; a sample does, and a validator can
accept it when the run states what it proves.

* **Who is sampled**: keys whose stored evidence found the content equal
  (MATCH, METADATA_MISMATCH), regular files on both sides, not in an archive
  class (GLACIER, DEEP_ARCHIVE: counted, never read).  Each key's draw is a
  stable function of its key hash and the seed (``--sample-seed``, recorded in
  ``summary.json``, which the audit manifest hashes): a re-run draws the same
  keys, another seed others.
* **Size strata** (below 1 MiB, to 64 MiB, to 1 GiB, above) are sampled at the
  requested rate, and each at least :data:`MIN_PER_STRATUM` keys where it has
  them, so the few large objects that hold most bytes are represented.
* **What is read**: each sampled object with ranged GETs, hashed to CRC64NVME
  like the source (both read once more).  A disagreement with a stored-evidence
  MATCH becomes CONTENT_MISMATCH with cause ``stored-checksum-wrong``.
* **What it proves**: with n read back and k wrong, the exact one-sided
  Clopper-Pearson upper bound on the share of wrong keys among the eligible
  ones, at 95 % and 99 % (per stratum, and over the keys); in bytes, the
  strata's bounds weighted by their bytes, each at 1 - alpha/S so the byte
  statement holds at 1 - alpha overall (Bonferroni).

Two task passes per partition: :func:`strata_counts` (three columns read) so the
driver can turn a count into rates, then :func:`sample_partition`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.errors import ConfigError
from wiseverify.core.rules import ARCHIVE_CLASSES
from wiseverify.core.stats import cp_upper
from wiseverify.core.units import human_bytes
from wiseverify.digest import execute as EXECUTE
from wiseverify.digest import hashing as HASHING
from wiseverify.digest import units as D
from wiseverify.reconcile.assemble import summarize, write_output
from wiseverify.reconcile.plan import Context
from wiseverify.report.pieces import write_piece

#: upper bounds of the size strata (bytes); the last is open
STRATA = (1 << 20, 64 << 20, 1 << 30)
STRATUM_NAMES = ("<1MiB", "1MiB-64MiB", "64MiB-1GiB", ">=1GiB")
MIN_PER_STRATUM = 30
ELIGIBLE = (S.MATCH, S.METADATA_MISMATCH)
CONFIDENCES = (0.95, 0.99)


def parse_spec(spec: str) -> tuple[str, float]:
    """``0.5%`` or ``0.005`` (a fraction), or ``20000`` (a count)."""
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            v = float(text[:-1]) / 100
            kind = "fraction"
        elif re.fullmatch(r"\d+", text):
            v, kind = float(int(text)), "count"
        else:
            v, kind = float(text), "fraction"
    except ValueError:
        v, kind = -1.0, "fraction"
    if (kind == "fraction" and not 0 < v <= 1) or (kind == "count" and v < 1):
        raise ConfigError(f"--sample {spec!r}: give a count (20000) or a fraction "
                          "(0.5% or 0.005) of the keys")
    return kind, v


def _stratum(sizes: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.array(STRATA), sizes, side="right")


def _eligible(t: pa.Table) -> np.ndarray:
    ok = pc.and_(pc.is_in(t.column("status"), value_set=pa.array(ELIGIBLE, pa.string())),
                 pc.and_(pc.equal(t.column("src_kind"), S.KIND_FILE),
                         pc.is_valid(t.column("dst_size"))))
    return pc.fill_null(ok, False).to_numpy(zero_copy_only=False)


def _archived(t: pa.Table) -> np.ndarray:
    sc = pc.fill_null(t.column("dst_storage_class"), "STANDARD")
    return pc.is_in(sc, value_set=pa.array(sorted(ARCHIVE_CLASSES))).to_numpy(
        zero_copy_only=False)


def _draw(nkeys: pa.ChunkedArray | pa.Array, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per key: splitmix64 of its key hash and the seed."""
    x = K.key_hash(nkeys).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def strata_counts(part_file: str) -> dict:
    """Per stratum, the eligible keys and bytes of one partition; and the archived ones."""
    t = pq.read_table(part_file, columns=["status", "src_kind", "src_size", "dst_size",
                                          "dst_storage_class"])
    el = _eligible(t)
    arch = el & _archived(t)
    size = pc.fill_null(t.column("src_size"), 0).to_numpy(zero_copy_only=False)
    st = _stratum(size)
    use = el & ~arch
    return {"keys": [int(((st == s) & use).sum()) for s in range(len(STRATUM_NAMES))],
            "bytes": [int(size[(st == s) & use].sum()) for s in range(len(STRATUM_NAMES))],
            "archived": int(arch.sum()), "archived_bytes": int(size[arch].sum())}


def rates(spec: tuple[str, float], keys: list[int]) -> list[float]:
    """The draw probability per stratum for ``spec`` over ``keys`` eligible per stratum."""
    total = sum(keys)
    if not total:
        return [0.0] * len(keys)
    kind, v = spec
    base = v if kind == "fraction" else min(1.0, v / total)
    return [min(1.0, max(base, MIN_PER_STRATUM / n)) if n else 0.0 for n in keys]


def sample_partition(ctx: Context, part: int, probs: list[float], seed: int) -> dict:
    """Read back this partition's sampled keys; rewrite it; return what was found."""
    path = ctx.part_path(part)
    table = pq.read_table(path)
    el = _eligible(table) & ~_archived(table)
    size = pc.fill_null(table.column("src_size"), 0).to_numpy(zero_copy_only=False)
    st = _stratum(size)
    u = _draw(table.column("key"), seed)
    pick = el & (u < np.array(probs + [0.0])[np.minimum(st, len(probs))])
    rows = np.flatnonzero(pick)
    n = len(STRATUM_NAMES)
    out = {"n": [0] * n, "k": [0] * n, "n_bytes": [0] * n, "k_bytes": [0] * n,
           "inconclusive": 0, "wrong_keys": [], "bytes_read_src": 0, "bytes_read_dst": 0}
    if not len(rows):
        return out
    keyb = table.column("key_bytes").take(pa.array(rows)).to_pylist()
    mt = table.column("src_mtime_ns").take(pa.array(rows)).to_pylist()
    dk = table.column("dst_key").take(pa.array(rows)).to_pylist()
    items = [D.FileItem(idx=int(i), path=str(Path(ctx.root) / k.decode("utf-8",
                                                                       "surrogateescape")),
                        size=int(size[i]), mtime_ns=m, spec=D.Spec(whole=("crc64nvme",)),
                        dst_key=d)
             for i, k, m, d in zip(rows.tolist(), keyb, mt, dk, strict=True)]
    src: dict[int, list] = {}
    dst: dict[int, list] = {}
    for unit in D.make_units(items, ctx.unit_bytes, ctx.unit_files, ctx.range_bytes):
        res = EXECUTE.run_unit(unit, ctx.target, ctx.get_concurrency)
        for r in res["src"]:
            src.setdefault(r["idx"], []).append(r)
        for r in res["dst"] or ():
            dst.setdefault(r["idx"], []).append(r)
    verdict = np.full(table.num_rows, None, object)
    status = table.column("status").to_numpy(zero_copy_only=False).copy()
    detail = table.column("detail").to_numpy(zero_copy_only=False).copy()
    cause = table.column("cause").to_numpy(zero_copy_only=False).copy()
    spec = D.Spec(whole=("crc64nvme",))
    for it in items:
        i = it.idx
        a = HASHING.combine_ranges(src.get(i, []), spec, it.size)
        b = HASHING.combine_ranges(dst.get(i, []), spec, it.size)
        out["bytes_read_src"] += a.get("bytes", 0)
        out["bytes_read_dst"] += b.get("bytes", 0)
        # botocore checks a GET's bytes against the stored checksum S3 sends with them:
        # when that fails, the bytes S3 holds are not the ones the checksum describes
        refused = b["error"] and "FlexibleChecksumError" in b["error"]
        if a["error"] or (b["error"] and not refused):
            verdict[i] = f"inconclusive: {a['error'] or b['error']}"
            out["inconclusive"] += 1
            continue
        s = int(st[i])
        out["n"][s] += 1
        out["n_bytes"][s] += it.size
        if not refused and a["crc"]["crc64nvme"] == b["crc"]["crc64nvme"]:
            verdict[i] = "agree"
            continue
        verdict[i] = "disagree"
        out["k"][s] += 1
        out["k_bytes"][s] += it.size
        out["wrong_keys"].append(table.column("key")[i].as_py())
        prior = f"the stored evidence ({table.column('verified_by')[i].as_py()}) matched"
        found = (f"the bytes read back do not match the object's stored checksum "
                 f"({b['error']})" if refused else
                 f"CRC64NVME of source {a['crc']['crc64nvme']:016x} != read back "
                 f"{b['crc']['crc64nvme']:016x}")
        status[i] = S.CONTENT_MISMATCH
        cause[i] = S.CAUSE_STORED_WRONG
        detail[i] = (f"read-back sample: {found}; {prior}, so the stored checksum or ETag "
                     "is wrong; cause: stored-checksum-wrong")
    before = summarize(table)
    table = table.set_column(table.schema.get_field_index("status"), "status",
                             pa.array(status, pa.string()))
    table = table.set_column(table.schema.get_field_index("detail"), "detail",
                             pa.array(detail, pa.string()))
    table = table.set_column(table.schema.get_field_index("cause"), "cause",
                             pa.array(cause, pa.string()))
    table = table.set_column(table.schema.get_field_index("readback_sample"),
                             "readback_sample", pa.array(verdict, pa.string()))
    write_output(table, path)
    write_piece(table, path, ctx.list_settings)
    after = summarize(table)
    out["delta"] = {k: _diff(after.get(k, {}), before.get(k, {}))
                    for k in ("counts", "bytes", "verified_by", "causes")}
    return out


def _diff(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b) if a.get(k, 0) != b.get(k, 0)}


def statement(spec: str, seed: int, strata: dict, found: dict) -> dict:
    """What the sample proves: counts, and Clopper-Pearson bounds in keys and in bytes."""
    S_ = len(STRATUM_NAMES)
    n, k = sum(found["n"]), sum(found["k"])
    total_keys, total_bytes = sum(strata["keys"]), sum(strata["bytes"])
    per = []
    for s in range(S_):
        per.append({"stratum": STRATUM_NAMES[s], "eligible_keys": strata["keys"][s],
                    "eligible_bytes": strata["bytes"][s], "read_back": found["n"][s],
                    "read_back_bytes": found["n_bytes"][s], "wrong": found["k"][s],
                    **{f"upper_{int(c * 100)}": cp_upper(found["k"][s], found["n"][s], c)
                       for c in CONFIDENCES}})
    keys_bound = {f"{int(c * 100)}": cp_upper(k, n, c) for c in CONFIDENCES}
    bytes_bound = {}
    for c in CONFIDENCES:
        alpha = (1 - c) / max(1, sum(1 for x in strata["keys"] if x))
        acc = 0.0
        for s in range(S_):
            if strata["bytes"][s]:
                acc += strata["bytes"][s] / total_bytes * cp_upper(found["k"][s],
                                                                   found["n"][s], 1 - alpha)
        bytes_bound[f"{int(c * 100)}"] = min(1.0, acc) if total_bytes else 1.0
    text = (f"read-back sample ({spec}, seed {seed}): {n:,} of {total_keys:,} eligible keys "
            f"({human_bytes(sum(found['n_bytes']))} of {human_bytes(total_bytes)}) read back, "
            f"{k:,} wrong; with 95% confidence at most {keys_bound['95'] * 100:.3g}% of the "
            f"eligible keys and {bytes_bound['95'] * 100:.3g}% of their bytes have a wrong "
            f"stored checksum (99%: {keys_bound['99'] * 100:.3g}% and "
            f"{bytes_bound['99'] * 100:.3g}%)")
    if k:
        text = f"ALARM: {k:,} stored checksums proved wrong by reading back; " + text
    return {"spec": spec, "seed": seed, "eligible_keys": total_keys,
            "eligible_bytes": total_bytes, "read_back": n,
            "read_back_bytes": sum(found["n_bytes"]), "wrong": k,
            "wrong_keys": found["wrong_keys"][:100], "inconclusive": found["inconclusive"],
            "archived_excluded": strata["archived"],
            "archived_excluded_bytes": strata["archived_bytes"],
            "upper_bound_keys": keys_bound, "upper_bound_bytes": bytes_bound,
            "strata": per, "method": "one-sided Clopper-Pearson; bytes: strata weighted by "
            "bytes, Bonferroni over the strata", "statement": text}
