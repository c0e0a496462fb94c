"""Metadata compared: POSIX attributes stored with the object, and its encryption.

A GxP migration must carry owner, mode and times; the uploader stores them as
object metadata, and this is where they are read back and compared with the source.
"""

from __future__ import annotations

from wiseverify.core.bursts import gather_limited
from wiseverify.core.s3 import S3Target
from wiseverify.core.sigv4 import head_reader


async def _sse_of(client, target: S3Target, key: str) -> str | None:
    h = await (await head_reader(client, target.bucket)).head(key)
    return h.get("ServerSideEncryption") or h.get("SSECustomerAlgorithm")


def encryption_of(target: S3Target, keys: list[str]) -> list[str | None]:
    """Server-side encryption of objects whose single-part ETag did not equal the MD5.

    An SSE-KMS or SSE-C ETag is not an MD5, so such a difference proves nothing.
    """
    if not keys:
        return []

    async def _all():
        client = await target.client()

        async def one(k):
            try:
                return await _sse_of(client, target, k)
            except Exception:
                return None

        return await gather_limited(keys, one, 16, endpoint=target)

    return target.run(_all)


# --- POSIX metadata as stored by FSx for Lustre / DataSync ------------------------------


def _parse_time_ns(value: str) -> int | None:
    v = value.strip()
    try:
        if v.endswith("ns"):
            return int(v[:-2])
        return int(v) * 1_000_000  # milliseconds
    except ValueError:
        return None


def stored_file_mtime_ns(meta: dict | None) -> int | None:
    """The ``file-mtime`` an object stores (DataSync/FSx layout) in ns, or None."""
    if not meta:
        return None
    for k, v in meta.items():
        if k.lower() == "file-mtime":
            return _parse_time_ns(str(v))
    return None


def compare_posix_metadata(meta: dict | None, row: dict) -> tuple[bool, list[str]]:
    """Compare stored POSIX metadata with the source; returns (checked, differing fields)."""
    if not meta:
        return False, []
    meta = {k.lower(): v for k, v in meta.items()}
    checked = False
    diffs: list[str] = []
    if "file-mtime" in meta:
        checked = True
        raw = meta["file-mtime"].strip()
        ns = _parse_time_ns(raw)
        src = int(row["src_mtime_ns"])
        # a source time of whole seconds may come from a listing of second resolution
        # (lfs find's %T@): compare it to the second
        unit = 1_000_000_000 if src % 1_000_000_000 == 0 else (
            1 if raw.endswith("ns") else 1_000_000)
        same = ns is not None and ns // unit == src // unit
        if not same:
            diffs.append(f"mtime (source {src} ns, object {raw})")
    for name, col in (("file-owner", "src_uid"), ("file-group", "src_gid")):
        if name in meta:
            checked = True
            try:
                ok = int(meta[name]) == int(row[col])
            except (TypeError, ValueError):
                ok = False
            if not ok:
                label = "uid" if col == "src_uid" else "gid"
                diffs.append(f"{label} (source {row[col]}, object {meta[name]})")
    if "file-permissions" in meta:
        checked = True
        try:
            stored = int(meta["file-permissions"], 8)
        except ValueError:
            stored = -1
        src_mode = int(row["src_mode"])
        # with the file-type bits stored, compare all of st_mode; else the permission bits
        ok = stored == src_mode if stored > 0o7777 else stored == (src_mode & 0o7777)
        if not ok:
            diffs.append(f"mode (source {src_mode:07o}, object {meta['file-permissions']})")
    return checked, diffs
