"""Stage 3, digest: one work unit executed, its source ranges and (readback) its objects'.

The source ranges are hashed in the calling thread (``hashing.hash_source_ranges``)
while the object ranges are read back on s3fs' event loop, with the same
:class:`~wiseverify.digest.hashing.StreamHasher`, so a range of an object and
the same range of its file give comparable results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wiseverify.digest.hashing import StreamHasher, hash_source_ranges
from wiseverify.digest.units import RangeTask, Unit

if TYPE_CHECKING:
    from wiseverify.digest.getrange import RangeGetter


async def hash_object_range(client, bucket: str, r: RangeTask,
                            getter: RangeGetter | None = None) -> dict:
    """GET one byte range of an object and hash it the same way as the source range.

    With a :class:`~wiseverify.digest.getrange.RangeGetter` the range is first fetched
    with one locally signed request; whatever that path does not confirm
    (errors, resets, short bodies) is repeated through botocore, whose retries
    and error texts stay the reference.
    """
    from wiseverify.core.s3 import error_text

    item = r.item
    out: dict = {"idx": item.idx, "offset": r.offset, "length": r.length, "error": None,
                 "bytes": 0}
    h = StreamHasher(item.spec, r.offset)
    if r.length == 0:
        out.update(h.finish(at_eof=True))
        return out
    if getter is not None:
        meta = await getter.get(item.dst_key, r.offset, r.length, h.update)
        if meta is not None:
            if r.offset == 0:
                out["metadata"] = meta
            out["bytes"] = r.length
            out.update(h.finish(at_eof=r.offset + r.length == item.size))
            return out
        h = StreamHasher(item.spec, r.offset)  # it may have seen part of the range
    try:
        resp = await client.get_object(
            Bucket=bucket, Key=item.dst_key, Range=f"bytes={r.offset}-{r.offset + r.length - 1}"
        )
        if r.offset == 0:
            out["metadata"] = resp.get("Metadata") or {}
        body = resp["Body"]
        got = 0
        async with body as stream:
            while True:
                chunk = await stream.read(1 << 20)
                if not chunk:
                    break
                h.update(memoryview(chunk))
                got += len(chunk)
        if got != r.length:
            out["error"] = f"GetObject returned {got} bytes for a {r.length}-byte range"
            return out
        out["bytes"] = got
        out.update(h.finish(at_eof=r.offset + r.length == item.size))
    except Exception as exc:
        out["error"] = error_text(exc, "GetObject")
    return out


def run_unit(unit: Unit, target=None, get_concurrency: int = 16) -> dict:
    """Execute one work unit: source ranges, plus object ranges when ``target`` is given.

    Object GETs run on s3fs' event loop while this thread hashes the source, so
    readback overlaps network and disk.  They go out as locally signed requests
    (:mod:`wiseverify.digest.getrange`) where the client allows it: botocore's
    per-request pipeline cost more CPU than the transfer of a small object.
    """
    dst_future = None
    if target is not None:
        import asyncio

        from wiseverify.core.bursts import gather_limited
        from wiseverify.core.s3 import use_fast_timestamps
        from wiseverify.digest.getrange import RangeGetter

        async def _all():
            client = await target.client()
            use_fast_timestamps(target)  # every botocore GET parses a Last-Modified header
            getter = await RangeGetter.for_client(client, target.bucket)
            return await gather_limited(
                unit.ranges,
                lambda r: hash_object_range(client, target.bucket, r, getter),
                get_concurrency,
            )

        dst_future = asyncio.run_coroutine_threadsafe(_all(), target.filesystem().loop)
    src = hash_source_ranges(unit.ranges)
    dst = dst_future.result() if dst_future is not None else None
    return {"src": src, "dst": dst}
