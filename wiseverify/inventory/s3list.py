"""The destination listing: ListObjectsV2 under the prefix, as Dask tasks.

The first ``fanout_depth`` levels are listed with ``Delimiter='/'`` so that each
common prefix becomes a task of its own; below, one paginated recursive listing per
prefix.  Zero-byte keys ending in ``/`` are folder markers.
"""

from __future__ import annotations

import pyarrow.compute as pc

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.filters import Filters
from wiseverify.core.runio import write_atomic
from wiseverify.core.s3 import S3Target, error_text, strip_etag, use_fast_timestamps


def list_prefix(target: S3Target, rel_prefix: str, delimiter: bool, spool_path: str,
                filters: Filters | None = None, only: set[str] | None = None) -> dict:
    """List objects under ``target.prefix + rel_prefix``; spool them.

    With ``delimiter`` only one level is listed and the common prefixes are
    returned (relative) for the driver to fan out; those the ``filters`` leave
    out entirely are not listed at all.  Objects the filters exclude are not
    spooled (``"filtered"`` counts them per rule).  With ``only`` (relative keys)
    just those objects are kept: ``--files-from``.
    """

    async def _list():
        client = await target.client()
        use_fast_timestamps(target)
        kwargs = {"Bucket": target.bucket, "Prefix": target.prefix + rel_prefix}
        if delimiter:
            kwargs["Delimiter"] = "/"
        rows: list[dict] = []
        prefixes: list[str] = []
        markers = 0
        requests = 0
        token = None
        plen = len(target.prefix)
        while True:
            if token:
                kwargs["ContinuationToken"] = token
            resp = await client.list_objects_v2(**kwargs)
            requests += 1
            for obj in resp.get("Contents", ()):
                full = obj["Key"]
                if not full.startswith(target.prefix):
                    continue
                if full.endswith("/") and obj.get("Size", 0) == 0:
                    markers += 1
                    continue
                rel = full[plen:]
                if only is not None and rel not in only:
                    continue
                algos = obj.get("ChecksumAlgorithm") or []
                lm = obj.get("LastModified")
                rows.append(
                    {
                        "key": rel,
                        "nkey": K.nfc(rel),
                        "size": obj.get("Size"),
                        "etag": strip_etag(obj.get("ETag")),
                        "last_modified_ns": int(lm.timestamp() * 1e9) if lm else None,
                        "storage_class": obj.get("StorageClass"),
                        "checksum_algorithm": ",".join(algos) if algos else None,
                        "checksum_type": obj.get("ChecksumType"),
                    }
                )
            for cp in resp.get("CommonPrefixes", ()):
                prefixes.append(cp["Prefix"][plen:])
            if resp.get("IsTruncated"):
                token = resp.get("NextContinuationToken")
                if not token:
                    break
            else:
                break
        return rows, prefixes, markers, requests

    try:
        rows, prefixes, markers, requests = target.run(_list)
    except Exception as exc:
        return {"count": 0, "pending": [], "markers": 0, "requests": 0, "spool": None,
                "bytes": 0, "error": f"listing {target.prefix + rel_prefix!r} failed: "
                         f"{error_text(exc, 'ListObjectsV2')}"}
    table = S.from_rows(rows, S.DEST_INVENTORY)
    counts: dict = {}
    if filters:
        table = filters.keep(table, counts=counts)
        kept = []
        for p in prefixes:
            rule = filters.prune(p)
            if rule is None:
                kept.append(p)
            else:
                filters.count_pruned(rule, counts)
        prefixes = kept
    if table.num_rows:
        write_atomic(table, spool_path)
    nbytes = (pc.sum(table.column("size")).as_py() or 0) if table.num_rows else 0
    return {"count": table.num_rows, "pending": prefixes, "markers": markers,
            "requests": requests, "spool": spool_path if table.num_rows else None,
            "bytes": nbytes, "error": None, "filtered": counts}
