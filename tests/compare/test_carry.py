"""carry_over: which open rows keep a previous run's verdict, by lookup or by join."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from wiseverify.compare import carry as C


class _Rows:
    """The two methods of a matched partition that carry_over reads."""

    def __init__(self, table: pa.Table) -> None:
        self.t = table

    def __len__(self) -> int:
        return self.t.num_rows

    def column(self, name: str):
        return self.t.column(name)


def _facts(keys, size=10, etag="e"):
    n = len(keys)
    return {"src_size": pa.array([size] * n, pa.int64()),
            "src_mtime_ns": pa.array([5] * n, pa.int64()),
            "src_ctime_ns": pa.array([6] * n, pa.int64()),
            "src_ino": pa.array([ord(k[0]) for k in keys], pa.uint64()),
            "dst_size": pa.array([size] * n, pa.int64()),
            "dst_etag": pa.array([etag] * n, pa.string()),
            "dst_last_modified_ns": pa.array([7] * n, pa.int64())}


def _prev(keys, verified_by, metadata_checked, **kw):
    n = len(keys)
    cols = {"key": pa.array(keys, pa.string()), **_facts(keys, **kw),
            "status": pa.array(["MATCH"] * n), "verified_by": pa.array(verified_by),
            "metadata_checked": pa.array(metadata_checked, pa.bool_())}
    for c in C.EVIDENCE_COLUMNS:
        if c not in cols:
            cols[c] = pa.array([f"{c}-{k}" for k in keys], pa.string())
    return pa.table(cols)


def _current(keys, rel=None):
    return _Rows(pa.table({"key": pa.array(keys, pa.string()),
                           "dst_rel": pa.array(rel or keys, pa.string()), **_facts(keys)}))


def test_carried_rows_need_every_fact_the_name_and_allowed_metadata():
    keys = ["a", "b", "c", "d", "e"]
    mt = _current(keys, rel=["a", "b", "c", "d", "E"])  # e's object has another name
    prev = _prev(["a", "b", "c", "e", "zz"], ["etag-md5"] * 5,
                 [False, True, False, False, False])
    # c changed size since the previous run
    prev = prev.set_column(prev.schema.get_field_index("src_size"), "src_size",
                           pa.array([10, 10, 11, 10, 10], pa.int64()))
    allowed = np.array([True, False, True, True, True])  # b's metadata must be compared
    got = C.carry_over(mt, np.arange(5), prev, allowed=allowed)
    # a: unchanged; b: not allowed but its verdict compared metadata; c: changed;
    # d: not in the previous run; e: name differs byte for byte
    assert got.mask.tolist() == [True, True, False, False, False]
    assert got.columns["src_digest"].to_pylist() == ["src_digest-a", "src_digest-b", None,
                                                     None, None]
    assert C.carry_over(mt, np.arange(5), prev, allowed=np.zeros(5, bool)).mask.tolist() == \
        [False, True, False, False, False]


def test_a_previous_table_with_a_key_twice_is_still_carried_by_a_join():
    mt = _current(["a", "b"])
    prev = _prev(["a", "a", "b"], ["first", "second", "etag-md5"], [False] * 3)
    got = C.carry_over(mt, np.arange(2), prev)
    assert got.mask.tolist() == [True, True]
    first, second = got.columns["verified_by"].to_pylist()
    assert first in ("first", "second") and second == "etag-md5"  # one of its pairings


def test_nothing_in_common_carries_nothing():
    assert C.carry_over(_current(["a"]), np.arange(1), _prev(["b"], ["x"], [False])) is None
    assert C.carry_over(_current(["a"]), np.arange(0), _prev(["a"], ["x"], [False])) is None


def test_only_content_verdicts_with_their_evidence_named_are_carried():
    """load_previous keeps every row; carry_over itself passes over what cannot stand."""
    keys = ["a", "b", "c", "d"]
    prev = _prev(keys, ["etag-md5", "etag-md5", None, "etag-md5"], [False] * 4)
    prev = prev.set_column(prev.schema.get_field_index("status"), "status",
                           pa.array(["MATCH", "EXTRA_IN_DEST", "MATCH", "CONTENT_MISMATCH"]))
    got = C.carry_over(_current(keys), np.arange(4), prev)
    # b: not a content verdict; c: no evidence named; d: a content mismatch stands
    assert got.mask.tolist() == [True, False, False, True]
    assert got.columns["status"].to_pylist() == ["MATCH", None, None, "CONTENT_MISMATCH"]
    # the same with a key twice (the joined path)
    twice = _prev(["a", "a", "b"], ["etag-md5", "etag-md5", "etag-md5"], [False] * 3)
    twice = twice.set_column(twice.schema.get_field_index("status"), "status",
                             pa.array(["MATCH", "MATCH", "MISSING_IN_DEST"]))
    assert C.carry_over(_current(["a", "b"]), np.arange(2), twice).mask.tolist() == [True, False]
