"""Arrow schemas and status vocabulary, declared once.

Every stage reads and writes these tables, so a notebook or another tool can
open any intermediate Parquet file of a run directory and know its columns.
"""

from __future__ import annotations

import pyarrow as pa

# --- statuses (one per key) -------------------------------------------------

MATCH = "MATCH"
MISSING_IN_DEST = "MISSING_IN_DEST"
EXTRA_IN_DEST = "EXTRA_IN_DEST"
SIZE_MISMATCH = "SIZE_MISMATCH"
CONTENT_MISMATCH = "CONTENT_MISMATCH"
METADATA_MISMATCH = "METADATA_MISMATCH"
NAME_MISMATCH = "NAME_MISMATCH"
NAME_UNMAPPABLE = "NAME_UNMAPPABLE"
UNVERIFIED = "UNVERIFIED"
SKIPPED = "SKIPPED"
SOURCE_ERROR = "SOURCE_ERROR"
DEST_ERROR = "DEST_ERROR"
#: listed by --files-from, and neither a source file nor an object under the key
NOT_FOUND = "NOT_FOUND"

STATUSES: tuple[str, ...] = (
    MATCH,
    MISSING_IN_DEST,
    EXTRA_IN_DEST,
    SIZE_MISMATCH,
    CONTENT_MISMATCH,
    METADATA_MISMATCH,
    NAME_MISMATCH,
    NAME_UNMAPPABLE,
    UNVERIFIED,
    SKIPPED,
    SOURCE_ERROR,
    DEST_ERROR,
    NOT_FOUND,
)

#: why a key differs (compare.causes); the alarms are the corruption, not a stale copy
CAUSE_CHANGED = "source-changed-after-copy"
CAUSE_OLDER = "source-older-than-copy"
CAUSE_UNKNOWN = "unknown"
CAUSE_STORED_WRONG = "stored-checksum-wrong"
ALARM_CAUSES = frozenset({CAUSE_OLDER, CAUSE_STORED_WRONG})

#: statuses that do not count as a discrepancy (exit code 0)
CLEAN_STATUSES = frozenset({MATCH, SKIPPED})

#: rclone ``--combined`` sigils.  SKIPPED keys are deliberately not checked and,
#: like rclone's own skipped entries, do not appear in combined.txt.
SIGILS: dict[str, str] = {
    MATCH: "=",
    MISSING_IN_DEST: "+",
    EXTRA_IN_DEST: "-",
    SIZE_MISMATCH: "*",
    CONTENT_MISMATCH: "*",
    METADATA_MISMATCH: "*",
    NAME_MISMATCH: "*",
    NAME_UNMAPPABLE: "!",
    UNVERIFIED: "!",
    SOURCE_ERROR: "!",
    DEST_ERROR: "!",
    NOT_FOUND: "!",
}

# --- source entry kinds -----------------------------------------------------

KIND_FILE = "file"
KIND_DIR = "dir"
KIND_SYMLINK = "symlink"
KIND_FIFO = "fifo"
KIND_SOCKET = "socket"
KIND_CHAR = "chardev"
KIND_BLOCK = "blockdev"
KIND_ERROR = "error"
#: a key --files-from listed that is not on the source (decided NOT_FOUND or EXTRA_IN_DEST)
KIND_ABSENT = "absent"

# --- tables -----------------------------------------------------------------

#: one row per source entry (files and the non-regular entries we report).
#: (*) partition files hold these only where they differ from ``key``
#: (``inventory.drop_repeats``); ``inventory.read_partition`` fills them back in.
SOURCE_INVENTORY = pa.schema(
    [
        ("key", pa.string()),  # display key, backslashreplace for non-UTF-8
        ("key_bytes", pa.binary()),  # exact relative path bytes (*)
        ("nkey", pa.string()),  # NFC-normalised key: partition and name-match key (*)
        ("kind", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("ctime_ns", pa.int64()),
        ("ino", pa.uint64()),
        ("dev", pa.uint64()),
        ("nlink", pa.int64()),
        ("uid", pa.int64()),
        ("gid", pa.int64()),
        ("mode", pa.int64()),
        ("blocks", pa.int64()),
        ("name_problem", pa.string()),  # why the name cannot be an S3 key, else null
        ("error", pa.string()),  # lstat error text, else null
    ]
)

#: one row per destination object (folder markers excluded)
DEST_INVENTORY = pa.schema(
    [
        ("key", pa.string()),  # relative to the destination prefix
        ("nkey", pa.string()),  # (*) as in SOURCE_INVENTORY
        ("size", pa.int64()),
        ("etag", pa.string()),  # without quotes
        ("last_modified_ns", pa.int64()),
        ("storage_class", pa.string()),
        ("checksum_algorithm", pa.string()),  # comma-separated, as listed
        ("checksum_type", pa.string()),
    ]
)

#: one row per entry of an S3 Batch Operations compute-checksum completion report
#: (RUN_DIR/inventory/checksums/, partitioned like the inventories)
CHECKSUM_REPORT = pa.schema(
    [
        ("key", pa.string()),  # relative to the destination prefix
        ("nkey", pa.string()),  # (*) as in SOURCE_INVENTORY
        ("version_id", pa.string()),
        ("algorithm", pa.string()),  # CRC64NVME, CRC32C, CRC32, SHA1, SHA256, MD5
        ("checksum_type", pa.string()),  # FULL_OBJECT or COMPOSITE
        ("checksum", pa.string()),  # base64, as S3 encodes checksums, without "-N"
        ("checksum_parts", pa.int32()),  # N of a composite "value-N", else null
        ("etag", pa.string()),  # the object's ETag when the job ran, without quotes
        ("task_status", pa.string()),
        ("error", pa.string()),  # why the entry holds no usable checksum, else null
        ("report", pa.string()),  # the result file it came from
    ]
)

#: digests of small source files hashed while the destination was listed
#: (RUN_DIR/inventory/prehash/, partitioned like the inventories)
PREHASH = pa.schema(
    [
        ("nkey", pa.string()),
        ("key_bytes", pa.binary()),
        ("size", pa.int64()),  # size and mtime when hashed: the digests hold while they do
        ("mtime_ns", pa.int64()),
        ("md5", pa.binary(16)),
        ("crc64nvme", pa.uint64()),
    ]
)

#: the output contract: RUN_DIR/reconciliation/, one row per key
RECONCILIATION = pa.schema(
    [
        ("key", pa.string()),
        ("key_bytes", pa.binary()),
        ("dst_key", pa.string()),  # full object key including the prefix
        ("status", pa.string()),
        ("verified_by", pa.string()),
        ("detail", pa.string()),
        ("src_kind", pa.string()),
        ("src_size", pa.int64()),
        ("dst_size", pa.int64()),
        ("src_mtime_ns", pa.int64()),
        ("src_ctime_ns", pa.int64()),
        ("src_ino", pa.uint64()),
        ("src_uid", pa.int64()),
        ("src_gid", pa.int64()),
        ("src_mode", pa.int64()),
        ("dst_etag", pa.string()),
        ("dst_last_modified_ns", pa.int64()),
        ("dst_storage_class", pa.string()),
        ("dst_parts", pa.int32()),
        ("dst_part_size", pa.int64()),
        ("dst_checksum_algorithm", pa.string()),
        ("dst_checksum_type", pa.string()),
        ("dst_checksum", pa.string()),  # the stored value the source was compared with
        ("src_digest", pa.string()),  # the value computed from the source, same encoding
        ("src_crc64nvme", pa.string()),  # whole-file CRC64NVME when computed (hex)
        ("metadata_checked", pa.bool_()),
        ("bytes_read_src", pa.int64()),
        ("bytes_read_dst", pa.int64()),
        ("partition", pa.int32()),
        ("evidence_run", pa.string()),  # run id whose evidence decided this row
        ("dst_file_mtime_ns", pa.int64()),  # the object's stored file-mtime, when seen
        ("cause", pa.string()),  # why a key differs (compare.causes), else null
        # --sample: agree / disagree / inconclusive: <why> for the keys read back, else null
        ("readback_sample", pa.string()),
    ]
)


def empty(schema: pa.Schema) -> pa.Table:
    """An empty table with ``schema``; stages return it rather than None."""
    return schema.empty_table()


def from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table from row dicts, filling absent columns with nulls."""
    if not rows:
        return empty(schema)
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.table(cols, schema=schema)
