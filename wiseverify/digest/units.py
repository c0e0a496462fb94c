"""Digest units: what to read and hash, grouped so that one task is worth its overhead.

A unit is a list of files (or byte ranges of one large file) of about
``unit_bytes``; a large file is split into ranges whose digests are combined.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wiseverify.core.checksums import (
    COMBINABLE,
)
from wiseverify.core.md5lanes import lane_count

# 1 MiB: each read lands in the core's L2 cache and every digest then hashes it
# from there. With 8 MiB the buffer spills to L3/DRAM and read + CRC64NVME from
# the page cache ran at 4.3 GB/s per core here against 6.2 GB/s with 1 MiB
# (benchmarks/digest.py measures both buffer sizes for the read limit).
BUFFER_SIZE = 1024 * 1024

#: the longest range :func:`split_file` makes to give every MD5 lane a part: beyond it,
#: ranges of fewer parts on more cores are worth more than full lanes on one
LANE_RANGE_MAX = 256 << 20


# --- what to compute ---------------------------------------------------------------


@dataclass
class Spec:
    """The digests one file needs, computed in a single pass.

    ``whole`` digests run over the whole file (CRCs over any range, combined);
    ``parts`` digests run once per part of ``part_offsets`` (start of each part).
    """

    whole: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    part_offsets: tuple[int, ...] = ()

    @property
    def splittable(self) -> bool:
        return all(a in COMBINABLE for a in self.whole)


@dataclass
class FileItem:
    """One source file (and, for readback, its object) to hash."""

    idx: int  # row index in the partition plan
    path: str  # absolute source path (fs-encoded str)
    size: int
    mtime_ns: int
    spec: Spec
    dst_key: str | None = None  # full object key, readback only


@dataclass
class RangeTask:
    item: FileItem
    offset: int
    length: int


@dataclass
class Unit:
    ranges: list[RangeTask] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(r.length for r in self.ranges)

    def __reduce__(self):
        """Pickle as a few flat lists rather than thousands of small objects.

        A unit is pickled and unpickled several times on its way to a worker
        (the submitting client, the scheduler, the worker); as nested
        dataclasses that took about a second per partition of 10,000 files.
        Specs are stored once per distinct value; files shared by several
        ranges stay shared.
        """
        spec_ix: dict[tuple, int] = {}
        item_ix: dict[int, int] = {}
        specs: list[tuple] = []
        items: list[tuple] = []
        ranges: list[tuple[int, int, int]] = []
        for r in self.ranges:
            it = r.item
            ii = item_ix.get(id(it))
            if ii is None:
                sk = (it.spec.whole, it.spec.parts, it.spec.part_offsets)
                si = spec_ix.setdefault(sk, len(specs))
                if si == len(specs):
                    specs.append(sk)
                ii = item_ix[id(it)] = len(items)
                items.append((it.idx, it.path, it.size, it.mtime_ns, si, it.dst_key))
            ranges.append((ii, r.offset, r.length))
        return _unit_from_lists, (specs, items, ranges)


def _unit_from_lists(specs: list[tuple], items: list[tuple],
                     ranges: list[tuple[int, int, int]]) -> Unit:
    sp = [Spec(*s) for s in specs]
    its = [FileItem(idx, path, size, mtime_ns, sp[si], dst_key)
           for idx, path, size, mtime_ns, si, dst_key in items]
    return Unit([RangeTask(its[ii], off, length) for ii, off, length in ranges])


def split_file(item: FileItem, range_bytes: int,
               min_parts: int | None = None) -> list[RangeTask]:
    """Byte ranges for one file, cut only at part boundaries when parts are hashed.

    A range of a multipart object hashes its parts side by side, one MD5 lane
    each, so a range is made long enough for ``min_parts`` parts (default: the
    lanes of the MD5 kernel in use), up to :data:`LANE_RANGE_MAX`: a 130 MB
    object in 8 MiB parts cut into 50 MB ranges kept 6 of 16 lanes busy and
    its digest ran at about half the kernel's rate, while an object in 1 GiB
    parts keeps a range per part, for as many cores.  The cuts are placed by
    bytes, at the first part boundary past each share, so an irregular layout
    is balanced too.
    """
    size = item.size
    if size <= range_bytes or not item.spec.splittable:
        return [RangeTask(item, 0, size)]
    if item.spec.parts:
        offsets = list(item.spec.part_offsets)
        if min_parts is None:
            min_parts = lane_count()
        typical = size // max(1, len(offsets))
        target = max(range_bytes, min(max(1, min_parts) * typical, LANE_RANGE_MAX))
        n = max(1, round(size / target))
        bounds = [offsets[0]]
        j = 0
        for i in range(1, n):
            share = i * size // n
            while j < len(offsets) and offsets[j] < share:
                j += 1
            if j < len(offsets) and offsets[j] > bounds[-1]:
                bounds.append(offsets[j])
        bounds.append(size)
        return [RangeTask(item, a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    out = []
    step = max(BUFFER_SIZE, (range_bytes // BUFFER_SIZE) * BUFFER_SIZE)
    for off in range(0, size, step):
        out.append(RangeTask(item, off, min(step, size - off)))
    return out


def make_units(
    items: list[FileItem], unit_bytes: int = 256 << 20, unit_files: int = 2000,
    range_bytes: int = 256 << 20,
) -> list[Unit]:
    """Pack files into work units: many small files per unit, big files split in ranges."""
    units: list[Unit] = []
    cur = Unit()
    cur_bytes = 0  # running total: Unit.nbytes re-sums its ranges, quadratic over a partition
    for item in items:
        for r in split_file(item, range_bytes):
            if cur.ranges and (
                cur_bytes + r.length > unit_bytes or len(cur.ranges) >= unit_files
            ):
                units.append(cur)
                cur = Unit()
                cur_bytes = 0
            cur.ranges.append(r)
            cur_bytes += r.length
    if cur.ranges:
        units.append(cur)
    return units
