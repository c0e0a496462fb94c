"""Names: POSIX path bytes to S3 keys, and the key hash that partitions every stage.

Lustre names are bytes; S3 keys are UTF-8 of at most 1024 bytes compared byte
for byte.  The partition of a key is computed from its NFC form so that an NFC
name and its NFD twin land in the same partition, where the match stage can
pair them as NAME_MISMATCH instead of reporting one missing and one extra.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

try:  # the C sort and hash (setup.py builds them); pyarrow and pandas give the same results
    from wiseverify.core import _fastkeys as _SORT
except ImportError:  # pragma: no cover - no C compiler at install time
    _SORT = None

MAX_KEY_BYTES = 1024


def display_key(raw: bytes) -> str:
    """The human-readable key: UTF-8, with undecodable bytes as ``\\xNN``."""
    return raw.decode("utf-8", errors="backslashreplace")


def name_problem(raw: bytes, prefix: str = "") -> str | None:
    """Why ``raw`` (relative path bytes) cannot become an S3 key under ``prefix``."""
    try:
        raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        return f"name is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
    total = len(prefix.encode()) + len(raw)
    if total > MAX_KEY_BYTES:
        return f"key would be {total} bytes; S3 keys are at most {MAX_KEY_BYTES}"
    return None


def nfc(key: str) -> str:
    """NFC form used for partitioning and Unicode-equivalent matching."""
    return key if key.isascii() else unicodedata.normalize("NFC", key)


def key_hash(nkeys: pa.Array | pa.ChunkedArray | np.ndarray | list[str] | pd.Series
             ) -> np.ndarray:
    """Stable 64-bit hash of each NFC key (same result in every process).

    pandas' hash_array uses SipHash with a fixed key, so a worker on another
    node computes the same value for the same key; every run's partitions were
    drawn with it, and an incremental run reads the previous run's partition of
    a key.  An Arrow string column is hashed by the C function of the same
    result (``_fastkeys.hash_keys``) from its buffers: pandas needs a Python
    object per key, 200 ns each, three times per key in a run.
    """
    if isinstance(nkeys, pa.Array | pa.ChunkedArray):
        nkeys, c_args = _c_keys(nkeys)
        if c_args is not None:
            out = np.empty(len(nkeys), np.uint64)
            _SORT.hash_keys(*c_args, out)
            return out
        nkeys = nkeys.to_numpy(zero_copy_only=False)
    arr = np.asarray(nkeys, dtype=object)
    if len(arr) == 0:
        return np.zeros(0, np.uint64)
    return pd.util.hash_array(arr, categorize=False)


def partition_of(nkeys: np.ndarray | list[str] | pd.Series, n: int,
                 hashes: np.ndarray | None = None) -> np.ndarray:
    """Stable partition number of each NFC key: its :func:`key_hash` modulo ``n``."""
    count = len(hashes) if hashes is not None else len(nkeys)
    if n <= 1 or count == 0:
        return np.zeros(count, dtype=np.int32)
    h = key_hash(nkeys) if hashes is None else hashes
    return (h % np.uint64(n)).astype(np.int32)


def top_prefixes(rel: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The top-level prefix of each relative key: ``"a/"`` for ``a/b/c``, ``""`` for ``c``."""
    slash = pc.fill_null(pc.match_substring(rel, "/"), False)
    head = pc.replace_substring_regex(rel, r"(?s)/.*", "/", max_replacements=1)
    out = pc.if_else(slash, head, "")
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def sample_by_prefix(keys: pa.Array | pa.ChunkedArray, hashes: np.ndarray,
                     k: int) -> dict[str, list[tuple[int, str]]]:
    """The ``k`` keys of smallest hash under each top-level prefix, as ``(hash, key)``.

    A bottom-k sample: uniform over each prefix's keys, the same on every run
    of the same keys, and mergeable - the bottom k of several groups' bottom k
    is the bottom k of their union - so each compaction group samples the
    keys it holds and the driver keeps ``k`` per prefix.
    """
    if not len(keys) or k <= 0:
        return {}
    enc = top_prefixes(keys).dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((hashes, codes))
    sc = codes[order]
    first = np.ones(len(sc), bool)
    first[1:] = sc[1:] != sc[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(len(sc)), 0))
    take = order[np.arange(len(sc)) - start < k]
    names = enc.dictionary.to_pylist()
    out: dict[str, list[tuple[int, str]]] = {}
    key_list = pc.take(keys, pa.array(take)).to_pylist()
    for c, h, key in zip(codes[take].tolist(), hashes[take].tolist(), key_list, strict=True):
        out.setdefault(names[c], []).append((h, key))
    return out


def join_key(prefix: str, key: str) -> str:
    """Full object key for a relative key under ``prefix`` (which ends in ``/`` or is empty)."""
    return prefix + key


def sort_order(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Row numbers of ``keys`` in byte order, equal keys in row order.

    The order of ``pyarrow.compute.sort_indices``: the match stage writes every
    partition in key order, so a run's tables are the same whatever order the
    walk and the listing produced the keys in.  The C sort (``_fastkeys.c``)
    takes 8 bytes per step instead of comparing shared directory prefixes over
    and over; it was a tenth of a partition's CPU in pyarrow.
    """
    arr, c_args = _c_keys(keys)
    if c_args is None:
        return pc.sort_indices(arr)
    out = np.empty(len(arr), np.int64)
    _SORT.sort_keys(*c_args, out)
    return pa.array(out)


def _c_keys(keys: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, tuple | None]:
    """``keys`` as one array, and the ``(offsets, data, start, n)`` the ``_fastkeys``
    functions take, or None where they do not apply (not built, nulls, other types)."""
    arr = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    if (_SORT is None or not len(arr) or arr.null_count
            or arr.type not in (pa.string(), pa.binary())):
        return arr, None
    bufs = arr.buffers()
    return arr, (bufs[1], bufs[2] if bufs[2] is not None else b"", arr.offset, len(arr))
