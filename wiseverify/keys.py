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


def partition_of(nkeys: np.ndarray | list[str] | pd.Series, n: int) -> np.ndarray:
    """Stable partition number of each NFC key (same result in every process).

    pandas' hash_array uses SipHash with a fixed key, so a worker on another
    node computes the same bucket for the same key.
    """
    arr = np.asarray(nkeys, dtype=object)
    if n <= 1 or len(arr) == 0:
        return np.zeros(len(arr), dtype=np.int32)
    h = pd.util.hash_array(arr, categorize=False)
    return (h % np.uint64(n)).astype(np.int32)


def join_key(prefix: str, key: str) -> str:
    """Full object key for a relative key under ``prefix`` (which ends in ``/`` or is empty)."""
    return prefix + key
