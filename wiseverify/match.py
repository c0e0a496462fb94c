"""Stage 2, match: a full outer join of one partition of both inventories.

Everything that can be decided from the two listings is decided here
(missing, extra, size, names, skipped kinds, listing errors); the rest are
candidates whose content must be proven by the digest stage.  Works on one
partition at a time, so memory is bounded by the partition size.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from . import schema as S

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


def _frame(table: pa.Table, cols: list[str], prefix: str, extra: list[str]) -> pd.DataFrame:
    df = table.select(["key", "nkey", *extra, *cols]).to_pandas(types_mapper=pd.ArrowDtype)
    return df.rename(columns={c: prefix + c for c in cols})


def match_partition(src: pa.Table, dst: pa.Table) -> pd.DataFrame:
    """Join one partition of the source and destination inventories.

    Returns one row per key with ``status``/``detail`` set where the listings
    decide, and null ``status`` for candidates that need content evidence.
    ``dst_rel`` is the destination key (relative to the prefix) the row was
    paired with; it differs from ``key`` only for NAME_MISMATCH.
    """
    s = _frame(src, SRC_COLS, "src_", ["key_bytes"])
    d = _frame(dst, DST_COLS, "dst_", [])
    d["dst_rel"] = d["key"]
    m = s.merge(d.rename(columns={"nkey": "dst_nkey"}), on="key", how="outer", indicator=True)
    m["nkey"] = m["nkey"].where(m["nkey"].notna(), m["dst_nkey"])
    m = m.drop(columns=["dst_nkey"])
    m["name_pair"] = False

    # Unicode-equivalent names: pair source-only and dest-only rows on their NFC form
    left = m[(m["_merge"] == "left_only") & m["src_kind"].eq(S.KIND_FILE).fillna(False)]
    right = m[m["_merge"] == "right_only"]
    if len(left) and len(right):
        rfirst = right.reset_index().drop_duplicates("nkey").set_index("nkey")
        rfirst = rfirst[rfirst.index.notna()]
        hits = left[left["nkey"].isin(rfirst.index)]
        if len(hits):
            lfirst = hits.reset_index().drop_duplicates("nkey")
            used_right = []
            for _, lrow in lfirst.iterrows():
                r = rfirst.loc[lrow["nkey"]]
                li = lrow["index"]
                for c in ["dst_rel", *("dst_" + x for x in DST_COLS)]:
                    m.at[li, c] = r[c]
                m.at[li, "_merge"] = "both"
                m.at[li, "name_pair"] = True
                used_right.append(r["index"])
            m = m.drop(index=used_right)

    m["status"] = pd.Series(pd.NA, index=m.index, dtype="string")
    m["detail"] = pd.Series(pd.NA, index=m.index, dtype="string")
    m = m.reset_index(drop=True)

    def put(mask, status, detail):
        mask = mask.fillna(False).astype(bool) & m["status"].isna()
        m.loc[mask, "status"] = status
        if isinstance(detail, pd.Series):
            m.loc[mask, "detail"] = detail[mask]
        else:
            m.loc[mask, "detail"] = detail

    in_src = m["_merge"].isin(["left_only", "both"])
    in_dst = m["_merge"].isin(["right_only", "both"])
    has_obj = pd.Series(
        [", an object exists under this key" if x else "" for x in in_dst], index=m.index
    )

    put(in_src & m["src_error"].notna(), S.SOURCE_ERROR, m["src_error"].astype("string"))
    for kind, reason in SKIP_REASONS.items():
        put(in_src & m["src_kind"].eq(kind), S.SKIPPED, reason + has_obj)
    put(in_src & m["src_name_problem"].notna(), S.NAME_UNMAPPABLE,
        m["src_name_problem"].astype("string"))
    put(in_src & ~in_dst, S.MISSING_IN_DEST, "no object under this key")
    put(in_dst & ~in_src, S.EXTRA_IN_DEST, "object has no source file")
    size_differs = in_src & in_dst & (m["src_size"] != m["dst_size"])
    put(size_differs, S.SIZE_MISMATCH,
        "source " + m["src_size"].astype("string") + " bytes, destination "
        + m["dst_size"].astype("string") + " bytes")
    return m.drop(columns=["_merge"])
