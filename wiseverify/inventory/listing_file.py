"""``--source-listing``: ``lfs find``/GNU ``find -printf`` output instead of the walk.

Parsed by Dask tasks on byte ranges of the file (split on record separators) into
the same SOURCE_INVENTORY spool files the walk writes, so the MDS is not asked again
for what the nightly policy scan already wrote down.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.filters import Filters
from wiseverify.core.runio import write_atomic
from wiseverify.inventory.jobs import Job, JobContext, Spooled, tally_ingest, tally_source
from wiseverify.inventory.sources import IngestError

if TYPE_CHECKING:
    from distributed import Future

#: the -printf directives of a listing when --listing-format is not given
DEFAULT_LISTING_FORMAT = "%s %T@ %U %G %m %y %b %p"
#: bytes of listing per parse task (about 120,000 records of ~130 bytes)
LISTING_CHUNK = 16 << 20


# --- 1. source: an lfs find / find -printf listing -------------------------------------------

_TYPES = {b"f": S.KIND_FILE, b"d": S.KIND_DIR, b"l": S.KIND_SYMLINK, b"p": S.KIND_FIFO,
          b"s": S.KIND_SOCKET, b"c": S.KIND_CHAR, b"b": S.KIND_BLOCK, b"?": S.KIND_ERROR}
_TYPE_BITS = {S.KIND_FILE: 0o100000, S.KIND_DIR: 0o040000, S.KIND_SYMLINK: 0o120000,
              S.KIND_FIFO: 0o010000, S.KIND_SOCKET: 0o140000, S.KIND_CHAR: 0o020000,
              S.KIND_BLOCK: 0o060000, S.KIND_ERROR: 0}
_OCTAL = frozenset(b"01234567")


def _int(raw: bytes) -> int | None:
    return int(raw) if raw.isdigit() else None


def _octal(raw: bytes) -> int | None:
    return int(raw, 8) if raw and _OCTAL.issuperset(raw) else None


def _time_ns(raw: bytes) -> int | None:
    """``%T@``: GNU find prints ``1700000000.1234567890``, lfs find whole seconds."""
    neg = raw.startswith(b"-")
    sec, dot, frac = (raw[1:] if neg else raw).partition(b".")
    if not sec.isdigit() or (dot and not frac.isdigit()):
        return None
    ns = int(sec) * 1_000_000_000 + (int(frac[:9].ljust(9, b"0")) if frac else 0)
    return -ns if neg else ns


def _type(raw: bytes) -> str | None:
    return _TYPES.get(raw)


#: directive -> (field name, converter)
DIRECTIVES: dict[str, tuple[str, Any]] = {
    "%s": ("size", _int), "%T@": ("mtime_ns", _time_ns), "%C@": ("ctime_ns", _time_ns),
    "%U": ("uid", _int), "%G": ("gid", _int), "%m": ("perm", _octal), "%y": ("kind", _type),
    "%b": ("blocks", _int), "%i": ("ino", _int), "%n": ("nlink", _int), "%p": ("path", None),
}
#: without these the match and metadata stages would compare against nothing
REQUIRED = ("%s", "%T@", "%U", "%G", "%m", "%p")


def parse_format(fmt: str | None) -> tuple[str, ...]:
    """The directives of a listing format, checked: space-separated, ``%p`` last.

    The path goes last because it is the only field that may contain spaces;
    everything before it splits on single spaces.  A trailing ``\\n``/``\\0``
    (as typed for find) is accepted and ignored: the separator is detected.
    """
    text = (fmt or DEFAULT_LISTING_FORMAT).strip()
    for tail in ("\\n", "\\0", "\n", "\0"):
        text = text.removesuffix(tail)
    items = text.split(" ")
    unknown = [d for d in items if d not in DIRECTIVES]
    if unknown:
        raise IngestError(f"listing format {text!r}: unsupported {', '.join(unknown)} "
                          f"(supported: {' '.join(DIRECTIVES)}, separated by single spaces)")
    missing = [d for d in REQUIRED if d not in items]
    if missing:
        raise IngestError(f"listing format {text!r} lacks {' '.join(missing)}")
    if items[-1] != "%p" or len(set(items)) != len(items):
        raise IngestError(f"listing format {text!r}: each directive once, %p last (names may "
                          "contain spaces)")
    return tuple(items)


def _parse_record(rec: bytes, names: tuple[str, ...]) -> dict | None:
    """Fields of one record, or None when it is not a record of this format."""
    parts = rec.split(b" ", len(names) - 1)
    if len(parts) != len(names):
        return None
    vals: dict = {"path": parts[-1]}
    for d, raw in zip(names[:-1], parts[:-1], strict=True):
        name, conv = DIRECTIVES[d]
        v = conv(raw)
        if v is None:
            return None
        vals[name] = v
    return vals


def _relative(path: bytes, broot: bytes) -> bytes | None:
    """The path relative to the source root: ``ROOT/a/b`` or ``./a/b``; None if outside."""
    base = broot.rstrip(b"/")
    if path in (broot, base, base + b"/", b".", b"./"):
        return b""
    for p in (base + b"/", b"./"):
        if path.startswith(p):
            return path[len(p):].lstrip(b"/")
    return None


def detect_separator(listing: str) -> bytes:
    """NUL when the first MiB holds one (find ``-printf ...\\0``), else newline."""
    with open(listing, "rb") as f:
        head = f.read(1 << 20)
    return b"\0" if b"\0" in head else b"\n"


def _records(f, pos: int, sep: bytes, block: int = 4 << 20) -> Iterator[tuple[int, bytes]]:
    """``(offset, record)`` for every separator-terminated record from ``pos`` on."""
    f.seek(pos)
    buf, base = b"", pos
    while True:
        chunk = f.read(block)
        if not chunk:
            if buf:
                yield base, buf
            return
        buf += chunk
        i = 0
        while (j := buf.find(sep, i)) >= 0:
            yield base + i, buf[i:j]
            i = j + 1
        buf, base = buf[i:], base + i


class _SourceRows:
    """Column lists of SOURCE_INVENTORY, filled one listing record at a time."""

    def __init__(self, broot: bytes, prefix: str, has_blocks: bool):
        self.broot, self.prefix, self.has_blocks = broot, prefix, has_blocks
        self.cols: dict[str, list] = {f.name: [] for f in S.SOURCE_INVENTORY}
        self.stats = {"listing_records": 0, "listing_outside": 0, "listing_unparsed": 0,
                      "listing_multiline": 0, "dirs": 0, "bytes": 0}

    def _append(self, rel: bytes, **fields) -> None:
        key = K.display_key(rel)
        row = {"key": key, "key_bytes": rel, "nkey": K.nfc(key),
               "name_problem": K.name_problem(rel, self.prefix), **fields}
        for name, col in self.cols.items():
            col.append(row.get(name))

    def record(self, vals: dict, multiline: bool = False) -> None:
        self.stats["listing_records"] += 1
        rel = _relative(vals["path"], self.broot)
        if rel is None:
            self.stats["listing_outside"] += 1
            return
        kind = vals.get("kind", S.KIND_FILE)
        if kind == S.KIND_DIR:  # like the walk: directories are not rows
            self.stats["dirs"] += 1
            return
        if not rel:
            return
        self.stats["listing_multiline"] += multiline
        size = vals["size"]
        blocks = vals.get("blocks")
        if not self.has_blocks and kind == S.KIND_FILE and size > 0:
            # unknown allocation: 0 makes the HSM check ask about the file before opening it
            blocks = 0
        self.stats["bytes"] += size
        self._append(
            rel, kind=kind, size=size, mtime_ns=vals["mtime_ns"], ctime_ns=vals.get("ctime_ns"),
            ino=vals.get("ino"), nlink=vals.get("nlink"), uid=vals["uid"], gid=vals["gid"],
            mode=_TYPE_BITS[kind] | vals["perm"], blocks=blocks,
            error="the listing tool could not tell the file type" if kind == S.KIND_ERROR
            else None)

    def unparsed(self, offset: int, rec: bytes, fmt: str) -> None:
        """A record that is not in the format is a SOURCE_ERROR row, never dropped."""
        self.stats["listing_unparsed"] += 1
        at = rec.find(self.broot.rstrip(b"/") + b"/")
        rel = _relative(rec[at:], self.broot) if at >= 0 else None
        rel = rel or rec[:300] or b"<empty record>"
        self._append(rel, kind=S.KIND_ERROR,
                     error=f"listing record at byte {offset} is not in the format {fmt!r}")

    def table(self) -> pa.Table:
        return pa.table(self.cols, schema=S.SOURCE_INVENTORY)


def parse_listing_range(listing: str, root: str, start: int, end: int, fmt: str | None,
                        sep: bytes, prefix: str, spool: str,
                        filters: Filters | None = None) -> dict:
    """Parse the records that *start* in ``[start, end)`` of a listing; spool them.

    A record belongs to the range holding its first byte: a task skips the
    partial record it starts in and reads past ``end`` to finish its last one,
    so ranges cut anywhere still give every record exactly once.  In a
    newline-separated listing a line that is not a record continues the name
    of the record before it (a name containing a newline), on both sides of a
    range boundary alike.
    """
    names = parse_format(fmt)
    shown = " ".join(names)
    rows = _SourceRows(os.fsencode(root), prefix, "%b" in names)
    with open(listing, "rb") as f:
        it = _records(f, max(0, start - 1), sep)
        if start > 0:
            next(it, None)  # the rest of a record owned by the range before
        if sep == b"\0":
            for off, rec in it:
                if off >= end:
                    break
                if not rec:
                    continue
                vals = _parse_record(rec, names)
                if vals is None:
                    rows.unparsed(off, rec, shown)
                else:
                    rows.record(vals)
        else:
            cur: dict | None = None
            lines = 0
            for off, rec in it:
                vals = _parse_record(rec, names)
                if vals is None:
                    if cur is not None:
                        cur["path"] += b"\n" + rec
                        lines += 1
                    elif start == 0 and off < end and rec:
                        rows.unparsed(off, rec, shown)
                    continue  # else: the tail of the range before's last record
                if off >= end:
                    break
                if cur is not None:
                    rows.record(cur, lines > 0)
                cur, lines = vals, 0
            if cur is not None:
                rows.record(cur, lines > 0)
    table = rows.table()
    counts: dict = {}
    st = rows.stats
    nbytes = st.pop("bytes")
    if filters:  # a listing cannot be pruned: its excluded entries are dropped here
        table = filters.keep(table, counts=counts)
        nbytes -= sum(c["bytes"] for i, c in counts.items() if not filters.rules[i].include)
    if table.num_rows:
        write_atomic(table, spool)
    return {"side": "src", "count": table.num_rows, "pending": [], "dirs": st.pop("dirs"),
            "ops": 0, "spool": spool if table.num_rows else None, "bytes": nbytes,
            "ingest": st, "filtered": counts}


@dataclass
class ListingRangeJob(Job):
    """Parse the records of one byte range of a listing file into a source spool file."""

    listing: str
    start: int
    end: int
    fmt: str | None
    sep: bytes
    kind: ClassVar[str] = "listing"

    def submit(self, ctx: JobContext, n: int) -> Future:
        return ctx.client.submit(parse_listing_range, self.listing, ctx.root, self.start,
                                 self.end, self.fmt, self.sep, ctx.target.prefix,
                                 ctx.spool_base("lsrc", n) + ".parquet", ctx.filters,
                                 pure=False, key=ctx.key("listing", n))

    def tally(self, res: dict, ctx: JobContext, inv: Spooled) -> list[Job]:
        tally_ingest(res, inv)
        return tally_source(res, ctx, inv)


def listing_jobs(listing: str, fmt: str | None, chunk: int = LISTING_CHUNK) -> list[Job]:
    """One parse job per ``chunk`` bytes of the listing (the driver reads nothing more)."""
    listing = os.path.abspath(listing)  # workers may run elsewhere, in another directory
    size = os.path.getsize(listing)
    sep = detect_separator(listing)
    return [ListingRangeJob(listing, s, min(s + chunk, size), fmt, sep)
            for s in range(0, size, chunk)]


def check_listing(listing: str, root: str, fmt: str | None) -> None:
    """Refuse a listing that cannot be this source's: unreadable, empty, other format or root."""
    names = parse_format(fmt)
    try:
        size = os.path.getsize(listing)
        sep = detect_separator(listing)
        with open(listing, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise IngestError(f"--source-listing {listing}: {exc.strerror or exc}") from None
    if size == 0:
        raise IngestError(f"--source-listing {listing} is empty")
    first = head.split(sep, 1)[0]
    vals = _parse_record(first, names)
    if vals is None:
        raise IngestError(f"--source-listing {listing}: first record {first[:120]!r} is not in "
                          f"the format {' '.join(names)!r} (see --listing-format)")
    if _relative(vals["path"], os.fsencode(root)) is None:
        raise IngestError(f"--source-listing {listing}: paths start like {vals['path'][:80]!r}, "
                          f"not with the source {root!r} (or ./)")
