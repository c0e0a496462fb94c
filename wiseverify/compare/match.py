"""Stage 2, match: a full outer join of one partition of both inventories.

Everything that can be decided from the two listings is decided here
(missing, extra, size, names, skipped kinds, listing errors); the rest are
candidates whose content must be proven by the digest stage.  Works on one
partition at a time, so memory is bounded by the partition size.

The join and every verdict are Arrow kernels over whole columns (a hash join
on the key alone, one sort, conditions evaluated on each side's own rows):
the pandas merge with per-row masks it replaces took seconds per partition.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from wiseverify.core import keys as K
from wiseverify.core import schema as S

SKIP_REASONS = {
    S.KIND_SYMLINK: "symbolic link, not followed",
    S.KIND_FIFO: "FIFO (named pipe), never opened",
    S.KIND_SOCKET: "socket, never opened",
    S.KIND_CHAR: "character device, never opened",
    S.KIND_BLOCK: "block device, never opened",
}

SRC_COLS = ["kind", "size", "mtime_ns", "ctime_ns", "ino", "nlink", "uid", "gid", "mode",
            "blocks", "name_problem", "error"]
DST_COLS = ["size", "etag", "last_modified_ns", "storage_class", "checksum_algorithm",
            "checksum_type"]
HAS_OBJECT = ", an object exists under this key"


#: the columns of a matched partition, in the order the per-row stages see them
FRAME_COLS = ["key", "nkey", "key_bytes", *("src_" + c for c in SRC_COLS),
              *("dst_" + c for c in DST_COLS), "dst_rel", "name_pair"]


class Matched:
    """One partition after the join, in key order, as columns taken on demand.

    The join yields, per output row, the row numbers of its source and
    destination entries (``si``/``di``, -1 where absent); a column of the
    matched partition (:data:`FRAME_COLS` names) is taken from its side the
    first time a stage asks for it (:meth:`column`), and a subset of rows
    straight from the sides (:meth:`rows`).  ``status`` and ``detail`` are
    object arrays, None where content evidence must decide (``open``).  Later
    stages decide whole column ranges at once and turn only the rows that need
    a request or a read into a pandas frame (:meth:`frame`), so a partition of
    250,000 keys costs a handful of Arrow kernels, not 250,000 Python rows.
    """

    def __init__(self, src: pa.Table, dst: pa.Table, si: np.ndarray, di: np.ndarray,
                 keys: pa.ChunkedArray, name_pair: np.ndarray):
        # one contiguous chunk per column: a take from a chunked column first
        # resolves every index to its chunk, which cost more than this copy
        self.src, self.dst = src.combine_chunks(), dst.combine_chunks()
        self.si, self.di = si, di
        self.keys, self.name_pair = keys, name_pair
        self.in_src, self.in_dst = si >= 0, di >= 0
        n = len(si)
        self.status = np.full(n, None, object)
        self.detail = np.full(n, None, object)
        self.open = np.ones(n, bool)  # status is None: a candidate for content evidence
        self._cols: dict[str, pa.ChunkedArray | pa.Array] = {}
        # the whole partition's take indices, built once for every column taken
        self._at_src, self._at_dst = take_index(si), take_index(di)

    def __len__(self) -> int:
        return len(self.si)

    def decide(self, rows: np.ndarray, status: str, detail) -> None:
        """Set the status of ``rows`` (positions of open rows) and close them."""
        self.status[rows] = status
        self.detail[rows] = detail
        self.open[rows] = False

    def _get(self, name: str, at_src: pa.Array, at_dst: pa.Array, rows: np.ndarray | None):
        """Column ``name`` taken from its side at the take indices ``at_src``/``at_dst``."""
        if name == "key":
            return self.keys if rows is None else self.keys.take(pa.array(rows))
        if name == "name_pair":
            return pa.array(self.name_pair if rows is None else self.name_pair[rows])
        if name == "nkey":
            return pc.coalesce(self.src.column("nkey").take(at_src),
                               self.dst.column("nkey").take(at_dst))
        if name == "key_bytes":
            return self.src.column("key_bytes").take(at_src)
        if name == "dst_rel":
            return self.dst.column("key").take(at_dst)
        if name.startswith("src_"):
            return self.src.column(name[4:]).take(at_src)
        if name.startswith("dst_"):
            return self.dst.column(name[4:]).take(at_dst)
        raise KeyError(name)

    def column(self, name: str) -> pa.ChunkedArray | pa.Array:
        """The whole column ``name`` of the matched partition (taken once, then kept)."""
        if name not in self._cols:
            self._cols[name] = self._get(name, self._at_src, self._at_dst, None)
        return self._cols[name]

    def rows(self, names: list[str], rows: np.ndarray) -> pa.Table:
        """Columns ``names`` of the rows at ``rows`` only."""
        rows = np.asarray(rows, np.int64)
        at_src, at_dst = take_index(self.si[rows]), take_index(self.di[rows])
        return pa.table({c: self._get(c, at_src, at_dst, rows) for c in names})

    @property
    def table(self) -> pa.Table:
        """Every column of :data:`FRAME_COLS`, for all rows."""
        return pa.table({c: self.column(c) for c in FRAME_COLS})

    def frame(self, rows: np.ndarray | None = None) -> pd.DataFrame:
        """The rows at ``rows`` (all by default) as the pandas frame :func:`match_partition` returns.

        The frame is indexed 0..len(rows)-1, in the order of ``rows``.
        """
        table = self.table if rows is None else self.rows(FRAME_COLS, rows)
        m = table.to_pandas(types_mapper=pd.ArrowDtype)
        m["name_pair"] = self.name_pair if rows is None else self.name_pair[rows]
        status = self.status if rows is None else self.status[rows]
        detail = self.detail if rows is None else self.detail[rows]
        m["status"] = pd.array(status, dtype="string")
        m["detail"] = pd.array(detail, dtype="string")
        return m


def take_index(idx: np.ndarray) -> pa.Array:
    """Row numbers of one side as take indices: null where the side has no row (-1)."""
    return pa.array(idx, mask=idx < 0)


def _objects(items: list) -> np.ndarray:
    """A 1-d object array of ``items`` (np.array would nest sequences)."""
    out = np.empty(len(items), object)
    out[:] = items
    return out


def _pairs(src: pa.Table, dst: pa.Table) -> tuple[np.ndarray, np.ndarray, pa.ChunkedArray]:
    """Source and destination row numbers (-1: absent) of each key, in key order; and the keys.

    A hash join on the key alone (Arrow's, in C++), then one sort on the key
    (``keys.sort_order``; the row numbers break ties only when a key repeats): the payload columns
    are taken once, afterwards, instead of travelling through the join.
    Duplicate keys on a side pair as in any full outer join (every combination).
    """
    ks = pa.table({"key": src.column("key"), "_si": pa.array(np.arange(src.num_rows))})
    kd = pa.table({"key": dst.column("key"), "_di": pa.array(np.arange(dst.num_rows))})
    j = ks.join(kd, keys="key", join_type="full outer", coalesce_keys=True)
    j = j.take(K.sort_order(j.column("key")))
    keys = j.column("key")
    if len(keys) > 1 and pc.any(pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1))).as_py():
        # a key on a side twice (rare): pairs in row order, so every run gives the same table
        j = j.take(pc.sort_indices(j, [("key", "ascending"), ("_si", "ascending"),
                                       ("_di", "ascending")]))
    si = pc.fill_null(j.column("_si"), -1).to_numpy()
    di = pc.fill_null(j.column("_di"), -1).to_numpy()
    return np.array(si, np.int64), np.array(di, np.int64), j.column("key")


def _name_twins(src: pa.Table, dst: pa.Table, si: np.ndarray,
                di: np.ndarray) -> list[tuple[int, int]]:
    """(source-only row, destination-only row) pairs of Unicode-equivalent names.

    The first destination-only row of each NFC key is paired with the first
    source-only regular file of the same NFC key.
    """
    left = np.flatnonzero((si >= 0) & (di < 0))
    right = np.flatnonzero((si < 0) & (di >= 0))
    if not len(left) or not len(right):
        return []
    is_file = pc.equal(src.column("kind").take(pa.array(si[left])), S.KIND_FILE)
    left = left[pc.fill_null(is_file, False).to_numpy(zero_copy_only=False)]
    if not len(left):
        return []
    rfirst: dict[str, int] = {}
    for p, k in zip(right.tolist(), dst.column("nkey").take(pa.array(di[right])).to_pylist(),
                    strict=True):
        if k is not None and k not in rfirst:
            rfirst[k] = p
    pairs: list[tuple[int, int]] = []
    seen: set[str] = set()
    for p, k in zip(left.tolist(), src.column("nkey").take(pa.array(si[left])).to_pylist(),
                    strict=True):
        if k is not None and k in rfirst and k not in seen:
            seen.add(k)
            pairs.append((p, rfirst[k]))
    return pairs


def match_table(src: pa.Table, dst: pa.Table) -> Matched:
    """Join one partition of the source and destination inventories, as columns.

    Every row whose verdict the listings decide (missing, extra, size, names,
    skipped kinds, listing errors) gets it here; the others stay open for
    content evidence.  ``dst_rel`` is the destination key (relative to the
    prefix) the row was paired with; it differs from ``key`` only for a
    Unicode-equivalent name pair (``name_pair``).  The conditions are
    evaluated on each side's own rows and carried over by row number, so no
    column is taken for them.
    """
    si, di, keys = _pairs(src, dst)
    twins = _name_twins(src, dst, si, di)
    name_pair = np.zeros(len(si), bool)
    if twins:
        lp, rp = (np.array(x, np.int64) for x in zip(*twins, strict=True))
        di[lp] = di[rp]
        name_pair[lp] = True
        keep = np.ones(len(si), bool)
        keep[rp] = False
        si, di, name_pair = si[keep], di[keep], name_pair[keep]
        keys = keys.filter(pa.array(keep))
    mt = Matched(src, dst, si, di, keys, name_pair)
    in_src, in_dst = mt.in_src, mt.in_dst

    def on_src(cond) -> np.ndarray:
        """A condition over the source rows, per matched row (False where no source)."""
        per_src = pc.fill_null(cond, False).to_numpy(zero_copy_only=False)
        return in_src & per_src[si] if len(per_src) else np.zeros(len(si), bool)

    def values(col: str, rows: np.ndarray) -> np.ndarray:
        return _objects(mt.rows([col], rows).column(0).to_pylist())

    def put(mask: np.ndarray, status: str, detail) -> None:
        rows = np.flatnonzero(mask & mt.open)
        if len(rows):
            mt.decide(rows, status, detail(rows) if callable(detail) else detail)

    put(on_src(pc.is_valid(src.column("error"))), S.SOURCE_ERROR,
        lambda r: values("src_error", r))
    kind = src.column("kind")
    for k, reason in SKIP_REASONS.items():
        put(on_src(pc.equal(kind, k)), S.SKIPPED,
            lambda r, reason=reason: np.where(in_dst[r], reason + HAS_OBJECT, reason))
    put(on_src(pc.is_valid(src.column("name_problem"))), S.NAME_UNMAPPABLE,
        lambda r: values("src_name_problem", r))
    absent = on_src(pc.equal(kind, S.KIND_ABSENT))  # listed by --files-from, no source file
    put(absent & ~in_dst, S.NOT_FOUND, "listed by --files-from: no source file and no object")
    put(absent & in_dst, S.EXTRA_IN_DEST, "listed by --files-from: object has no source file")
    put(in_src & ~in_dst, S.MISSING_IN_DEST, "no object under this key")
    put(in_dst & ~in_src, S.EXTRA_IN_DEST, "object has no source file")

    def sizes(rows: np.ndarray) -> np.ndarray:
        pairs = zip(values("src_size", rows), values("dst_size", rows), strict=True)
        return _objects([f"source {a} bytes, destination {b} bytes" for a, b in pairs])

    differ = pc.not_equal(mt.column("src_size"), mt.column("dst_size"))  # both kept for output
    put(in_src & in_dst & pc.fill_null(differ, False).to_numpy(zero_copy_only=False),
        S.SIZE_MISMATCH, sizes)
    return mt


def match_partition(src: pa.Table, dst: pa.Table) -> pd.DataFrame:
    """Join one partition of the source and destination inventories.

    Returns one row per key with ``status``/``detail`` set where the listings
    decide, and null ``status`` for candidates that need content evidence.
    ``dst_rel`` is the destination key (relative to the prefix) the row was
    paired with; it differs from ``key`` only for NAME_MISMATCH.
    """
    return match_table(src, dst).frame()
