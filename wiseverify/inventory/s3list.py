"""The destination listing: ListObjectsV2 under the prefix, as Dask tasks.

The first ``fanout_depth`` levels are listed with ``Delimiter='/'`` so that each
common prefix becomes a task of its own; below, one paginated recursive listing per
prefix.  Zero-byte keys ending in ``/`` are folder markers.

Pages are fetched as locally signed GETs (:class:`~wiseverify.core.sigv4.SignedEndpoint`)
and read by :func:`parse_page` with the standard library's expat: botocore's
response parser took about 150 us of CPU per listed object, 75 CPU-minutes for
30 million.  A page that is not a plain 200 ``ListBucketResult`` is asked again
through botocore, which retries, redirects and raises the error the run reports.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus
from xml.etree import ElementTree

import pyarrow.compute as pc

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.filters import Filters
from wiseverify.core.runio import write_atomic
from wiseverify.core.s3 import (
    S3Target,
    error_text,
    fast_timestamp,
    looks_like_error_body,
    strip_etag,
    use_fast_timestamps,
)
from wiseverify.core.sigv4 import SignedEndpoint, canonical_query

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _same(text: str) -> str:
    return text


def parse_page(body: bytes) -> dict[str, Any] | None:
    """A ListObjectsV2 page as botocore's output, for the fields the listing reads.

    Keys and common prefixes are decoded as botocore decodes them when the
    answer says ``EncodingType=url`` (``unquote_plus``); timestamps go through
    :func:`~wiseverify.core.s3.fast_timestamp`, as botocore's parser is set to.
    None for anything but a ``ListBucketResult``.
    """
    root = ElementTree.fromstring(body)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag != ns + "ListBucketResult" or ns not in ("", _NS):
        return None
    unq = unquote_plus if root.findtext(ns + "EncodingType") == "url" else _same
    cut = len(ns)
    contents = []
    for c in root.iterfind(ns + "Contents"):
        obj: dict[str, Any] = {}
        for el in c:
            tag, text = el.tag[cut:], el.text or ""
            if tag == "Key":
                obj["Key"] = unq(text)
            elif tag == "Size":
                obj["Size"] = int(text)
            elif tag == "ETag":
                obj["ETag"] = text
            elif tag == "LastModified":
                obj["LastModified"] = fast_timestamp(text)
            elif tag == "StorageClass":
                obj["StorageClass"] = text
            elif tag == "ChecksumAlgorithm":
                obj.setdefault("ChecksumAlgorithm", []).append(text)
            elif tag == "ChecksumType":
                obj["ChecksumType"] = text
        if "Key" not in obj:
            return None
        contents.append(obj)
    prefixes = [{"Prefix": unq(cp.findtext(ns + "Prefix") or "")}
                for cp in root.iterfind(ns + "CommonPrefixes")]
    return {"Contents": contents, "CommonPrefixes": prefixes,
            "IsTruncated": (root.findtext(ns + "IsTruncated") or "").strip() == "true",
            "NextContinuationToken": root.findtext(ns + "NextContinuationToken")}


class PageLister:
    """ListObjectsV2 pages of one bucket: locally signed, botocore where that fails."""

    def __init__(self, client: Any, bucket: str, endpoint: SignedEndpoint | None):
        self.client, self.bucket, self.endpoint = client, bucket, endpoint
        self.lean = 0  # pages read here
        self.botocore = 0  # pages asked again through botocore

    @classmethod
    async def for_client(cls, client: Any, bucket: str) -> PageLister:
        endpoint = await SignedEndpoint.for_client(client, "ListObjectsV2",
                                                   {"Bucket": bucket, "Prefix": ""})
        return cls(client, bucket, endpoint)

    async def page(self, prefix: str, delimiter: str | None = None,
                   token: str | None = None) -> dict[str, Any]:
        """One page under ``prefix`` after ``token``, as ``client.list_objects_v2`` returns it."""
        if self.endpoint is not None:
            got = await self._lean(prefix, delimiter, token)
            if got is not None:
                self.lean += 1
                return got
            self.endpoint = None  # once refused, the rest of this listing takes botocore
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        self.botocore += 1
        return await self.client.list_objects_v2(**kwargs)

    async def _lean(self, prefix: str, delimiter: str | None,
                    token: str | None) -> dict[str, Any] | None:
        assert self.endpoint is not None
        params = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        raw = None
        body = None
        try:
            raw, status, _headers, content = await self.endpoint.get(
                self.endpoint.base_path or "/", {}, canonical_query(params))
            body = await content.read()
            if status != 200 or looks_like_error_body(body):
                return None
            return parse_page(body)
        except Exception:  # reset, timeout, a body expat refuses: botocore asks again
            return None
        finally:
            if raw is not None:
                # a connection with unread bytes must not go back to the pool
                raw.release() if body is not None else raw.close()


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
        lister = await PageLister.for_client(client, target.bucket)
        rows: list[dict] = []
        prefixes: list[str] = []
        markers = 0
        requests = 0
        token = None
        plen = len(target.prefix)
        while True:
            resp = await lister.page(target.prefix + rel_prefix, "/" if delimiter else None,
                                     token)
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
