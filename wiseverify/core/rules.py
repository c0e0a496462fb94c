"""The evidence rules, declared once: the per-row plan and the columnar settle both read them.

``evidence.plan_one`` decides one candidate at a time (with requests where
they buy something); ``settle`` decides most of a partition with Arrow
kernels and no request.  A rule that changed in one and not the other is how
a false MATCH gets in, so each rule the two share is written here, in a form
both can apply: a constant, a pattern in both regex dialects, or a predicate
over numpy booleans that also takes Python scalars.  ``tests/test_settle.py``
holds the two paths to the same rows.
"""

from __future__ import annotations

import re

import numpy as np

#: a single-part ETag is the object's MD5 in hex
MD5_HEX = "[0-9a-fA-F]{32}"
MD5_RE = re.compile(f"^{MD5_HEX}$")
#: the same in RE2 syntax, for Arrow (Python's ``$`` also matches before a final newline)
MD5_PATTERN = rf"^{MD5_HEX}\n?$"

#: stored checksums a HeadObject may return, in its header names' order
STORED_ALGOS = ("CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1")
#: algorithms a compute-checksum report entry may carry
REPORT_ALGOS = ("crc64nvme", "crc32c", "crc32", "sha1", "sha256", "md5")
#: local cost per byte, used to rank evidence (lower is cheaper); ties keep the first
ALGO_COST = {"crc64nvme": 1, "crc32c": 1, "crc32": 5, "sha256": 10, "sha1": 8, "md5": 15}

#: the UNVERIFIED reason of a single-part object whose ETag is no MD5 and nothing else is stored
UNVERIFIED_ETAG = ("ETag {!r} is not an MD5 (SSE-KMS/SSE-C or other) and the object has no "
                   "stored checksum")
#: ``detail`` of a verdict taken from a compute-checksum report: algorithm + this + report URL
REPORT_NOTE = " from S3 Batch Operations compute-checksum report "
#: the part count of a multipart ETag (after its ``-``), in RE2 and Python alike
ETAG_COUNT_PATTERN = "^[0-9]+$"


def wants_head(listed_checksum, multipart, size, head_min_size: int, md5_etag):
    """Whether a HeadObject is sent for a stored checksum (rows or one row alike).

    Only when the listing says a checksum is stored, and the ETag alone is not
    the cheap answer: a multipart object, one of ``head_min_size`` and more
    (CRC64NVME at ~11 GB/s beats MD5 at ~0.75), or an ETag that is no MD5.
    """
    return np.logical_and(listed_checksum, np.logical_or.reduce(
        [multipart, np.greater_equal(size, head_min_size), np.logical_not(md5_etag)]))


def etag_part_count(etag: str) -> int | None:
    """The parts a listed ETag names: 1 without ``-N``, None where N is not a number."""
    if "-" not in etag:
        return 1
    count = etag.rsplit("-", 1)[1]
    return int(count) if count.isascii() and count.isdigit() else None


def report_note(algorithm: str | None, report: str | None) -> str:
    """Where a report verdict's expected value came from, for ``detail``."""
    return f"{algorithm}{REPORT_NOTE}{report}"


#: storage classes whose objects cannot be read without a restore
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
#: Intelligent-Tiering's archive tiers (HEAD's x-amz-archive-status)
ARCHIVE_TIERS = frozenset({"ARCHIVE_ACCESS", "DEEP_ARCHIVE_ACCESS"})


def archived_tier(storage_class: str | None, archive_status: str | None,
                  restore: str | None) -> str | None:
    """The archive class or tier an object sits in unreadable, or None when a GET works.

    GLACIER_IR and the other instant classes read normally.  A finished restore
    (HEAD's ``Restore: ongoing-request="false", ...``) makes a temporary copy
    readable.
    """
    sc = (storage_class or "STANDARD").upper()
    tier = sc if sc in ARCHIVE_CLASSES else (
        f"INTELLIGENT_TIERING {archive_status}" if (archive_status or "").upper()
        in ARCHIVE_TIERS else None)
    if tier is None:
        return None
    if restore and 'ongoing-request="false"' in restore.replace(" ", ""):
        return None
    return tier
