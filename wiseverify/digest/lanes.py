"""Reading many byte streams side by side into multi-buffer MD5 lanes.

The digest stage has two such cases: the parts of one multipart object (one file,
many streams) and several large single-part files (one stream each).  Both read
:data:`LANE_CHUNK` bytes of every unfinished stream per round, feed each chunk to
the stream's CRCs and other hashes, and hand the round's chunks to the lanes in
one call, so every source byte is still read once.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from wiseverify.core.checksums import CRC_FUNCS

#: bytes read per stream and round.  All the streams' buffers together (32 x 128 KiB)
#: stay in the CPU cache between the read and the hash: with 1 MiB each, the copy from
#: the page cache and the hash both went to memory, and the pass ran at half the speed
#: (benchmarks/md5.py).
LANE_CHUNK = 128 << 10

#: whole files above the buffer size hashed side by side (two lanes' worth, open at once)
MAX_FILES_IN_LANES = 32

_local = threading.local()


def lane_buffers(n: int) -> list[memoryview]:
    """``n`` buffers of :data:`LANE_CHUNK` bytes, kept per thread."""
    bufs = getattr(_local, "lane_bufs", None)
    if bufs is None or len(bufs) < n:
        whole = memoryview(bytearray(n * LANE_CHUNK))
        bufs = _local.lane_bufs = [whole[i * LANE_CHUNK:(i + 1) * LANE_CHUNK]
                                   for i in range(n)]
    return bufs


@dataclass
class Stream:
    """Bytes ``[pos, end)`` of an open file, and the digests other than MD5 they feed."""

    fd: int
    pos: int
    end: int
    size: int  # the file's listed size, for the error text
    crcs: dict[str, int] = field(default_factory=dict)  # algorithm -> running value
    hashes: dict = field(default_factory=dict)  # algorithm -> hashlib object
    error: str | None = None


def read_side_by_side(streams: list[Stream], lanes) -> list[bytes | None]:
    """Read every stream to its end, MD5s in lanes; the MD5 of each (None after an error).

    A stream that fails (a read error, the file shrinking) gets ``error`` and is
    read no further; the others go on.
    """
    bufs = lane_buffers(len(streams))
    first = lanes.new(len(streams))
    try:
        while True:
            pairs = []
            for i, s in enumerate(streams):
                if s.error or s.pos >= s.end:
                    continue
                try:
                    n = os.preadv(s.fd, [bufs[i][:min(LANE_CHUNK, s.end - s.pos)]], s.pos)
                except OSError as exc:
                    s.error = f"read failed: {exc.strerror}"
                    continue
                if n == 0:
                    s.error = f"file shrank while hashing (EOF at {s.pos} of {s.size})"
                    continue
                mv = bufs[i][:n]
                for a in s.crcs:
                    s.crcs[a] = CRC_FUNCS[a](mv, s.crcs[a])
                for h in s.hashes.values():
                    h.update(mv)
                pairs.append((first + i, mv))
                s.pos += n
            if not pairs:
                break
            lanes.update(pairs)
        lanes.finish(list(range(first, first + len(streams))))
        return [None if s.error else lanes.digest(first + i) for i, s in enumerate(streams)]
    finally:
        lanes.reset()
