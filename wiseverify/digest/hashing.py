"""Stage 3, digest: chunked checksums of source files (and, in readback mode, objects).

One read per source byte: a work unit opens a file once and feeds every buffer
to all the digests the evidence needs.  Large files are split into byte ranges
handled by separate tasks; CRCs of ranges are folded with awscrt's combine
functions and per-part digests (multipart ETag MD5s, composite SHA/CRC parts)
are concatenated in offset order, so a range boundary never falls inside a
part.  Digests that cannot be combined (whole-object MD5/SHA) keep the file in
one range.

A :class:`Spec` says what to compute for one file; ``execute.run_unit`` executes a
list of ``(file, offset, length)`` ranges (:func:`hash_source_ranges` here) and
returns plain dicts that :func:`combine_ranges` folds back per file.
"""

from __future__ import annotations

import os
import threading

from wiseverify.core.checksums import (
    COMBINABLE,
    CRC_COMBINE,
    CRC_FUNCS,
    HASH_FUNCS,
)
from wiseverify.core.md5lanes import md5_many, new_lanes
from wiseverify.digest.lanes import MAX_FILES_IN_LANES, Stream, read_side_by_side
from wiseverify.digest.smallfiles import SMALL_BATCH_BYTES, SMALL_BATCH_FILES, from_known
from wiseverify.digest.source import (
    open_checked,
    unchanged_after,
    with_source,
)
from wiseverify.digest.units import BUFFER_SIZE, RangeTask, Spec

_local = threading.local()


def _buffer() -> memoryview:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(BUFFER_SIZE))
    return buf


# --- hashing a byte stream -------------------------------------------------------------


class StreamHasher:
    """Feeds consecutive buffers starting at ``offset`` to every digest of a Spec."""

    def __init__(self, spec: Spec, offset: int):
        self.spec = spec
        self.pos = offset
        self.crcs = {a: 0 for a in spec.whole if a in COMBINABLE}
        self.hashes = {a: HASH_FUNCS[a]() for a in spec.whole if a not in COMBINABLE}
        self.part_results: dict[str, list] = {a: [] for a in spec.parts}
        self._part_state: dict[str, object] = {}
        if spec.parts:
            offs = spec.part_offsets
            # index of the part containing offset; ranges start on part boundaries
            self._pi = max(i for i, o in enumerate(offs) if o <= offset)
            self._part_end = offs[self._pi + 1] if self._pi + 1 < len(offs) else None
            self._new_part_state()

    def _new_part_state(self) -> None:
        self._part_state = {
            a: (0 if a in COMBINABLE else HASH_FUNCS[a]()) for a in self.spec.parts
        }

    def _flush_part(self) -> None:
        for a, st in self._part_state.items():
            self.part_results[a].append(st if isinstance(st, int) else st.digest())
        self._new_part_state()

    def _feed_parts(self, mv: memoryview) -> None:
        while len(mv):
            take = len(mv) if self._part_end is None else min(len(mv), self._part_end - self.pos)
            chunk = mv[:take]
            for a, st in self._part_state.items():
                if isinstance(st, int):
                    self._part_state[a] = CRC_FUNCS[a](chunk, st)
                else:
                    st.update(chunk)
            self.pos += take
            mv = mv[take:]
            if self._part_end is not None and self.pos == self._part_end:
                self._flush_part()
                self._pi += 1
                offs = self.spec.part_offsets
                self._part_end = offs[self._pi + 1] if self._pi + 1 < len(offs) else None

    def update(self, mv: memoryview) -> None:
        for a in self.crcs:
            self.crcs[a] = CRC_FUNCS[a](mv, self.crcs[a])
        for h in self.hashes.values():
            h.update(mv)
        if self.spec.parts:
            self._feed_parts(mv)
        else:
            self.pos += len(mv)

    def finish(self, at_eof: bool) -> dict:
        if self.spec.parts and at_eof:
            self._flush_part()
        return {
            "crc": dict(self.crcs),
            "hash": {a: h.digest() for a, h in self.hashes.items()},
            "parts": self.part_results,
        }


# --- source ranges ----------------------------------------------------------------------

def hash_source_range(r: RangeTask) -> dict:
    """Hash one range of a source file; errors and changes since listing become ``error``."""
    known = from_known(r)
    if known is not None:
        return known
    return with_source(r, _read_range)


def hash_source_ranges(ranges: list[RangeTask]) -> list[dict]:
    """:func:`hash_source_range` of every range, in order, MD5s of whole files in lanes.

    A small file (one buffer or less, no parts) whose evidence includes its MD5
    is read whole and its MD5 taken together with those of the next files, in
    SIMD lanes (:mod:`wiseverify.core.md5lanes`); larger whole files with an MD5
    to take are hashed side by side, up to :data:`MAX_FILES_IN_LANES` at once.
    The rules and error texts are those of :func:`hash_source_range`.
    """
    out: list = [None] * len(ranges)
    batch: list[int] = []
    datas: list = []
    held = 0

    def flush() -> None:
        nonlocal held
        for i, digest in zip(batch, md5_many(datas), strict=True):
            out[i]["hash"]["md5"] = digest
        batch.clear()
        datas.clear()
        held = 0

    def read_whole(fd: int, r: RangeTask, res: dict) -> dict | None:
        data = os.pread(fd, r.length, 0) if r.length else b""
        if len(data) != r.length:
            res["error"] = f"file shrank while hashing (EOF at {len(data)} of {r.item.size})"
            return None
        res["bytes"] = r.length
        spec = r.item.spec
        hashes = {a: HASH_FUNCS[a](data).digest() for a in spec.whole
                  if a not in COMBINABLE and a != "md5"}
        datas.append(data)
        return {"crc": {a: CRC_FUNCS[a](data) for a in spec.whole if a in COMBINABLE},
                "hash": hashes, "parts": {}}

    big: list[int] = []  # whole files above the buffer size with an MD5 to take

    def flush_big() -> None:
        lanes = new_lanes() if len(big) > 1 else None
        if lanes is None:
            for i in big:
                out[i] = with_source(ranges[i], _read_range)
        else:
            for i, res in zip(big, _hash_files_in_lanes([ranges[i] for i in big], lanes),
                              strict=True):
                out[i] = res
        big.clear()

    for i, r in enumerate(ranges):
        known = from_known(r)
        if known is not None:
            out[i] = known
            continue
        item = r.item
        if not (r.offset == 0 and r.length == item.size and not item.spec.parts
                and "md5" in item.spec.whole):
            out[i] = with_source(r, _read_range)
            continue
        if item.size > BUFFER_SIZE:
            big.append(i)
            if len(big) >= MAX_FILES_IN_LANES:
                flush_big()
            continue
        n_before = len(datas)
        out[i] = with_source(r, read_whole)
        if len(datas) == n_before:  # an error: nothing to hash
            continue
        if out[i]["error"]:  # read, then found changed: its bytes are not hashed
            datas.pop()
            continue
        batch.append(i)
        held += r.length
        if len(batch) >= SMALL_BATCH_FILES or held >= SMALL_BATCH_BYTES:
            flush()
    if batch:
        flush()
    if big:
        flush_big()
    return out


def _hash_files_in_lanes(ranges: list[RangeTask], lanes) -> list[dict]:
    """Whole files whose evidence is their MD5, each its own stream, side by side in lanes.

    For single-part objects above the buffer size, by the same rules as
    :func:`hash_source_range` (the checks before and after, the error texts).
    """
    out: list[dict] = []
    fds: list[int | None] = []
    for r in ranges:
        fd, res = open_checked(r)
        out.append(res)
        fds.append(fd)
    try:
        live = [i for i, fd in enumerate(fds) if fd is not None]
        streams = [Stream(fds[i], 0, ranges[i].length, ranges[i].item.size,
                          crcs={a: 0 for a in ranges[i].item.spec.whole if a in COMBINABLE},
                          hashes={a: HASH_FUNCS[a]() for a in ranges[i].item.spec.whole
                                  if a not in COMBINABLE and a != "md5"})
                   for i in live]
        digests = read_side_by_side(streams, lanes) if streams else []
        for i, s, md5 in zip(live, streams, digests, strict=True):
            r, res = ranges[i], out[i]
            if s.error:
                res["error"] = s.error
                continue
            try:
                if not unchanged_after(s.fd, r, res):
                    continue
            except OSError as exc:
                res["error"] = f"read failed: {exc.strerror}"
                continue
            res["bytes"] = r.length
            res.update({"crc": s.crcs, "parts": {},
                        "hash": {"md5": md5, **{a: h.digest() for a, h in s.hashes.items()}}})
    finally:
        for fd in fds:
            if fd is not None:
                os.close(fd)
    return out


def _read_range(fd: int, r: RangeTask, out: dict) -> dict | None:
    """The digests of one range read in order, or of its parts in lanes when it has several."""
    item = r.item
    spec = item.spec
    if "md5" in spec.parts and all(a in COMBINABLE for a in spec.whole):
        parts = _parts_of(r)
        if len(parts) > 1:
            lanes = new_lanes()
            if lanes is not None:
                return _read_parts_in_lanes(fd, r, parts, lanes, out)
    h = StreamHasher(spec, r.offset)
    buf = _buffer()
    pos, end = r.offset, r.offset + r.length
    while pos < end:
        n = os.preadv(fd, [buf[: min(BUFFER_SIZE, end - pos)]], pos)
        if n == 0:
            out["error"] = f"file shrank while hashing (EOF at {pos} of {item.size})"
            return None
        h.update(buf[:n])
        pos += n
    out["bytes"] = pos - r.offset
    return h.finish(at_eof=end == item.size)


def _parts_of(r: RangeTask) -> list[tuple[int, int]]:
    """(start, end) of every part inside the range; ranges start and end on part bounds."""
    bounds = [*r.item.spec.part_offsets, r.item.size]
    end = r.offset + r.length
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if a >= r.offset and b <= end
            and b > a] or [(r.offset, end)]


def _read_parts_in_lanes(fd: int, r: RangeTask, parts: list[tuple[int, int]], lanes,
                         out: dict) -> dict | None:
    """The parts of a multipart object as separate MD5 streams, a lane each.

    The parts of one group are read side by side (:mod:`wiseverify.digest.lanes`),
    so every source byte is still read once; the CRCs are kept per part and the
    whole-range CRC is folded from them (awscrt's combine), as for ranges.
    """
    spec = r.item.spec
    crc_algos = sorted({a for a in (*spec.whole, *spec.parts) if a in COMBINABLE})
    other = [a for a in spec.parts if a not in COMBINABLE and a != "md5"]
    # up to two lanes' worth of parts at once, in groups of equal size: a lane that
    # finishes its part takes the next one, so no lane idles until the group's end
    most = 2 * max(1, lanes.lanes)
    ngroups = -(-len(parts) // most)
    size = -(-len(parts) // ngroups)
    part_crc: list[dict[str, int]] = []
    part_other: list[dict] = []
    part_md5: list[bytes] = []
    for g in range(0, len(parts), size):
        streams = [Stream(fd, a, e, r.item.size, crcs={x: 0 for x in crc_algos},
                          hashes={x: HASH_FUNCS[x]() for x in other})
                   for a, e in parts[g:g + size]]
        digests = read_side_by_side(streams, lanes)
        failed = next((s.error for s in streams if s.error), None)
        if failed:
            out["error"] = failed
            return None
        part_md5 += digests
        part_crc += [s.crcs for s in streams]
        part_other += [{a: h.digest() for a, h in s.hashes.items()} for s in streams]
    out["bytes"] = r.length
    whole: dict[str, int] = {}
    for a in (x for x in spec.whole if x in COMBINABLE):
        val = part_crc[0][a]
        for (s, e), c in zip(parts[1:], part_crc[1:], strict=True):
            val = CRC_COMBINE[a](val, c[a], e - s)
        whole[a] = val
    results: dict[str, list] = {}
    for a in spec.parts:
        if a == "md5":
            results[a] = part_md5
        elif a in COMBINABLE:
            results[a] = [c[a] for c in part_crc]
        else:
            results[a] = [o[a] for o in part_other]
    return {"crc": whole, "hash": {}, "parts": results}


def combine_ranges(results: list[dict], spec: Spec, size: int) -> dict:
    """Fold range results of one file (any order) into whole-file digests."""
    results = sorted(results, key=lambda d: d["offset"])
    errors = [r["error"] for r in results if r.get("error")]
    nbytes = sum(r.get("bytes", 0) for r in results)
    if errors:
        return {"error": errors[0], "bytes": nbytes}
    covered = 0
    for r in results:
        if r["offset"] != covered:
            return {"error": f"internal: range gap at {covered}", "bytes": nbytes}
        covered += r["length"]
    if covered != size:
        return {"error": f"internal: ranges cover {covered} of {size} bytes", "bytes": nbytes}
    crcs: dict[str, int] = {}
    for a in (x for x in spec.whole if x in COMBINABLE):
        val = results[0]["crc"][a]
        for r in results[1:]:
            val = CRC_COMBINE[a](val, r["crc"][a], r["length"])
        crcs[a] = val
    hashes: dict[str, bytes] = {}
    for a in (x for x in spec.whole if x not in COMBINABLE):
        hashes[a] = results[0]["hash"][a]
    parts: dict[str, list] = {a: [] for a in spec.parts}
    for r in results:
        for a in spec.parts:
            parts[a].extend(r["parts"][a])
    return {"error": None, "bytes": nbytes, "crc": crcs, "hash": hashes, "parts": parts}
