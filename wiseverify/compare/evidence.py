"""Choosing the destination evidence for each candidate, cheapest first.

Cost model (per object):

* the listing already carries the ETag: a single-part object below
  ``head_min_size`` costs no request, only a local MD5 (0.75 GB/s per core);
* a HeadObject (one request, a few ms) buys a stored checksum - CRC64NVME or
  CRC32C at ~11 GB/s replaces MD5 - so it pays for objects of a few MB and up,
  and is only sent when the listing says a checksum exists;
* a multipart object has no usable MD5: its part layout comes from
  ``HeadObject(PartNumber=1)`` (part length and PartsCount), checked against
  the size, else every part is HEADed; then per-part digests rebuild the
  composite checksum or the multipart ETag;
* readback mode ignores stored evidence and hashes the object's bytes.

Anything without evidence is UNVERIFIED with the reason, never MATCH.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from wiseverify.core import rules
from wiseverify.core.bursts import gather_limited
from wiseverify.core.rules import ALGO_COST, MD5_RE, REPORT_ALGOS, STORED_ALGOS
from wiseverify.core.s3 import S3Target, error_code, error_text
from wiseverify.core.sigv4 import head_reader
from wiseverify.digest.units import Spec


@dataclass
class Evidence:
    """What the source must be hashed with, and what it must equal."""

    kind: str | None = None  # verified_by value
    algo: str | None = None  # digest algorithm compared
    expected: str | None = None  # stored value in its S3 encoding
    spec: Spec = field(default_factory=Spec)
    alternatives: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, algo, value)
    parts: int | None = None
    part_size: int | None = None
    checksum_algorithm: str | None = None
    checksum_type: str | None = None
    metadata: dict | None = None  # user metadata from a HEAD, when one was made
    sse: str | None = None
    error: str | None = None  # DEST_ERROR reason
    unverified: str | None = None  # UNVERIFIED reason
    requests: int = 0
    note: str | None = None  # where the expected value came from when not from S3 itself
    layout: str | None = None  # an irregular part layout, as HEADs of every part gave it
    layout_assumed: bool = False  # part offsets inferred from part 1: confirm before a mismatch


def _uniform_offsets(size: int, part: int, n: int) -> tuple[int, ...] | None:
    if part <= 0 or n <= 0:
        return None
    if (n - 1) * part < size <= n * part:
        return tuple(i * part for i in range(n))
    return None


def _with_crc64(whole: tuple[str, ...]) -> tuple[str, ...]:
    """Add a whole-file CRC64NVME to every source pass: nearly free and kept for the audit."""
    return whole if "crc64nvme" in whole else (*whole, "crc64nvme")


class LazyClient:
    """The S3 client, made at a partition's first request.

    Most partitions of a small-file tree settle every candidate from the listing
    and the prehashed digests, and never send a request: building a client
    anyway (botocore's service model, 0.1-0.2 s of CPU per worker process) sat on
    the partition stage's critical path.
    """

    def __init__(self, target: S3Target) -> None:
        self.target = target
        self._client = None
        self._lock: asyncio.Lock | None = None

    async def get(self):
        if self._client is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._client is None:
                    self._client = await self.target.client()
        return self._client


async def _head(client: LazyClient, target: S3Target, key: str, ev: Evidence,
                part_number: int | None = None, checksum_mode: bool = False) -> dict:
    ev.requests += 1
    reader = await head_reader(await client.get(), target.bucket)
    return await reader.head(key, part_number, checksum_mode)


async def plan_one(client: LazyClient, target: S3Target, row: dict, mode: str, metadata: str,
                   head_min_size: int) -> Evidence:
    """Decide the evidence for one candidate row (source and object sizes already equal).

    ``metadata`` is this row's: ``all`` when its object's POSIX metadata must
    be compared (``metascope``), so a HEAD is made whatever the content
    evidence.
    """
    ev = Evidence()
    size = int(row["src_size"])
    key = target.prefix + row["dst_rel"]
    etag = row.get("dst_etag") or ""
    algos = [a for a in (row.get("dst_checksum_algorithm") or "").split(",") if a]
    multipart = "-" in etag
    ev.parts = rules.etag_part_count(etag)
    nparts = ev.parts if multipart else None

    if mode == "readback":
        ev.kind, ev.algo = "readback", "crc64nvme"
        ev.spec = Spec(whole=("crc64nvme",))
        sclass = (row.get("dst_storage_class") or "STANDARD").upper()
        may_archive = sclass in rules.ARCHIVE_CLASSES or sclass == "INTELLIGENT_TIERING"
        if metadata == "all" or may_archive:
            try:
                h = await _head(client, target, key, ev)
            except Exception as exc:
                ev.error = error_text(exc, "HeadObject")
                return ev
            if metadata == "all":
                ev.metadata = h.get("Metadata") or {}
            tier = rules.archived_tier(sclass, h.get("ArchiveStatus"), h.get("Restore"))
            if tier:
                # a GET would fail with InvalidObjectState, and a restore costs money and
                # hours: never sent; the stored evidence still stands in stored mode
                ev.unverified = f"archived ({tier}): read-back needs a restore"
        return ev

    if row.get("report_checksums"):
        # a compute-checksum report already holds a value S3 computed at rest: no HEAD
        rev = report_evidence(row)
        if rev is not None:
            if metadata == "all":
                try:
                    rev.metadata = (await _head(client, target, key, rev)).get("Metadata") or {}
                except Exception as exc:
                    rev.error = error_text(exc, "HeadObject")
            return rev

    want_checksum = bool(rules.wants_head(bool(algos), multipart, size, head_min_size,
                                          MD5_RE.match(etag) is not None))
    head: dict | None = None
    if want_checksum or metadata == "all":
        try:
            head = await _head(client, target, key, ev, checksum_mode=True)
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                ev.error = "object disappeared since listing (HeadObject 404)"
                return ev
            if multipart or not MD5_RE.match(etag) or metadata == "all":
                # the ETag would still prove a single-part object's content, but not
                # the metadata this object must be compared on
                ev.error = error_text(exc, "HeadObject")
                return ev
            head = None
    if head is not None:
        ev.metadata = head.get("Metadata") or {}
        ev.sse = head.get("ServerSideEncryption") or head.get("SSECustomerAlgorithm")
        ev.checksum_type = head.get("ChecksumType")

    stored: list[tuple[str, str]] = []
    if head is not None:
        for a in STORED_ALGOS:
            v = head.get("Checksum" + a)
            if v:
                stored.append((a.lower(), v))
    if stored:
        ev.checksum_algorithm = ",".join(a for a, _ in stored)

    # 1. full-object checksums: combinable CRCs, no part layout needed
    full: list[tuple[str, str]] = []
    composite: list[tuple[str, str]] = []
    for a, v in stored:
        is_comp = "-" in v or ev.checksum_type == "COMPOSITE"
        if a == "crc64nvme":
            full.append((a, v))
        elif not multipart:
            full.append((a, v.split("-")[0]))
        elif a in ("sha256", "sha1") or is_comp:
            composite.append((a, v.split("-")[0]))
        elif ev.checksum_type == "FULL_OBJECT":
            full.append((a, v))
        else:  # CRC32/CRC32C of a multipart object, type not reported: accept either reading
            full.append((a, v))
            composite.append((a, v))
    full.sort(key=lambda t: ALGO_COST[t[0]])
    composite.sort(key=lambda t: ALGO_COST[t[0]])

    ambiguous = {a for a, _ in full} & {a for a, _ in composite}
    if full and full[0][0] not in ambiguous:
        a, v = full[0]
        ev.kind, ev.algo, ev.expected = a, a, v
        ev.spec = Spec(whole=_with_crc64((a,)))
        return ev
    if not multipart:
        if MD5_RE.match(etag):
            ev.kind, ev.algo, ev.expected = "etag-md5", "md5", etag.lower()
            ev.spec = Spec(whole=_with_crc64(("md5",)))
            return ev
        ev.unverified = rules.UNVERIFIED_ETAG.format(etag)
        return ev

    # 2. multipart: the part layout is needed for a composite checksum or the ETag
    try:
        h1 = await _head(client, target, key, ev, part_number=1)
    except Exception as exc:
        ev.error = error_text(exc, "HeadObject PartNumber=1")
        return ev
    if ev.metadata is None:
        ev.metadata = h1.get("Metadata") or {}
    count = h1.get("PartsCount") or nparts
    first = int(h1.get("ContentLength") or 0)
    if nparts and count and count != nparts:
        ev.error = f"ETag says {nparts} parts but HeadObject reports PartsCount {count}"
        return ev
    offsets = _uniform_offsets(size, first, int(count or 0))
    ev.parts, ev.part_size = int(count or 0), first
    ev.layout_assumed = offsets is not None
    if offsets is None:
        # irregular parts: ask for each part's length
        try:
            lengths = [first] + await part_lengths(client, target, key, int(count), ev, start=2)
        except Exception as exc:
            ev.error = error_text(exc, "HeadObject PartNumber")
            return ev
        if not apply_layout(ev, lengths, size):
            return ev
        offsets = ev.spec.part_offsets

    if composite:
        a, v = composite[0]
        ev.kind, ev.algo, ev.expected = f"{a}-composite", a, v
        whole: tuple[str, ...] = ()
        if a in ambiguous:  # CRC32/CRC32C of unknown type: either reading counts
            ev.alternatives.append((a, a, dict(full)[a]))
            whole = (a,)
        ev.spec = Spec(whole=_with_crc64(whole), parts=(a,), part_offsets=offsets)
        return ev
    ev.kind, ev.algo, ev.expected = "etag-multipart", "md5", etag.lower()
    ev.spec = Spec(whole=_with_crc64(()), parts=("md5",), part_offsets=offsets)
    return ev


async def part_lengths(client: LazyClient, target: S3Target, key: str, count: int, ev: Evidence,
                       start: int = 1) -> list[int]:
    """The length of parts ``start..count``, one ``HeadObject(PartNumber=i)`` each."""

    async def part_len(i: int) -> int:
        h = await _head(client, target, key, ev, part_number=i)
        return int(h["ContentLength"])

    return await gather_limited(range(start, count + 1), part_len, 8)


def layout_text(lengths: list[int]) -> str:
    """A part layout for ``detail``: runs of equal parts, e.g. ``3 x 6291456 + 1048576``."""
    runs: list[list[int]] = []
    for n in lengths:
        if runs and runs[-1][1] == n:
            runs[-1][0] += 1
        else:
            runs.append([1, n])
    return " + ".join(f"{c} x {n}" if c > 1 else str(n) for c, n in runs)


def is_regular(lengths: list[int]) -> bool:
    """Every part but the last of one size, the last no larger: what a part size describes."""
    return all(n == lengths[0] for n in lengths[:-1]) and lengths[-1] <= lengths[0]


def apply_layout(ev: Evidence, lengths: list[int], size: int) -> bool:
    """Set ``ev``'s part offsets from the true part lengths; False (and ``ev.error``) if they
    do not add up to the object's size."""
    if sum(lengths) != size:
        ev.error = f"part lengths add up to {sum(lengths)}, object size is {size}"
        return False
    offs, acc = [], 0
    for n in lengths:
        offs.append(acc)
        acc += n
    ev.spec = Spec(whole=ev.spec.whole, parts=ev.spec.parts, part_offsets=tuple(offs))
    ev.parts = len(lengths)
    regular = is_regular(lengths)
    ev.part_size = lengths[0] if regular else None
    ev.layout = None if regular else f"parts {layout_text(lengths)} (HeadObject of every part)"
    return True


def true_layout(target: S3Target, key: str, count: int, ev: Evidence) -> list[int]:
    """Every part's length, from a HEAD of each: the layout a mismatch is confirmed against."""

    async def _all():
        return await part_lengths(LazyClient(target), target, key, count, ev)

    return target.run(_all)


def report_evidence(row: dict) -> Evidence | None:
    """Evidence from the report entries of one candidate, or None to choose as usual.

    An entry counts only while it describes the object now listed: when the
    report names an ETag that differs from the listing's, the object was
    replaced after the checksum job, and the report proves nothing about it.
    COMPOSITE values of multipart objects would need the part layout (a HEAD),
    so those take the usual way too.
    """
    etag = (row.get("dst_etag") or "").lower()
    multipart = "-" in etag
    best: tuple[str, dict] | None = None
    for e in row.get("report_checksums") or ():
        if e.get("etag") and etag and e["etag"].lower() != etag:
            continue
        algo = (e.get("algorithm") or "").lower()
        if algo not in REPORT_ALGOS or not e.get("checksum"):
            continue
        ctype = (e.get("checksum_type") or "FULL_OBJECT").upper()
        if ctype == "COMPOSITE" and (multipart or e.get("checksum_parts")):
            continue
        if best is None or ALGO_COST[algo] < ALGO_COST[best[0]]:
            best = (algo, e)
    if best is None:
        return None
    algo, e = best
    ev = Evidence(kind=algo, algo=algo, expected=e["checksum"],
                  spec=Spec(whole=_with_crc64((algo,))))
    ev.parts = rules.etag_part_count(etag)
    ev.checksum_algorithm = algo
    ev.checksum_type = (e.get("checksum_type") or "FULL_OBJECT").upper()
    ev.note = rules.report_note(e.get("algorithm"), e.get("report"))
    return ev


def plan_evidence(rows: list[dict], target: S3Target, mode: str, metadata: str | list[str],
                  head_min_size: int, concurrency: int = 32) -> list[Evidence]:
    """Evidence for every candidate row of a partition, HEADs sent concurrently.

    ``metadata`` is the run's setting, or one per row.
    """
    if not rows:
        return []
    per_row = [metadata] * len(rows) if isinstance(metadata, str) else metadata

    async def _all():
        client = LazyClient(target)
        return await gather_limited(
            range(len(rows)),
            lambda i: plan_one(client, target, rows[i], mode, per_row[i], head_min_size),
            concurrency, endpoint=target,
        )

    return target.run(_all)
