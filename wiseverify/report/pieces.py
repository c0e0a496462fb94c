"""Each partition's share of the run's lists, rendered where the partition is reconciled.

combined.txt, discrepancies.csv, the remediation lists and rollup.parquet are
each a concatenation over the reconciliation partitions.  Rendered by the
driver after the last partition, they were a serial pass over every key at the
end of the run (0.7 s per 250,000 keys here, most of a minute at 30 million).
So the task that writes a partition renders its share from the table it still
holds (:func:`write_piece`), in parallel with the other partitions, into
``reconciliation/_pieces/part-NNNNN/``; the driver appends the shares' bytes in
partition order and adds up their rollup counts
(:func:`wiseverify.report.summary.write_lists`).

A share is used only when it was rendered from the very file now in place (same
size, mtime and inode) with the settings the summary asks for (``--list-match``, the
bucket, ``--rollup-depth``).  Any other partition (one written by an older
version, one rewritten since) is rendered from its Parquet file by the driver,
with the same :class:`Sinks`, so the bytes are the same either way.  The shares
are removed once the lists are written.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from wiseverify.core import schema as S
from wiseverify.core.runio import atomic_path

DISCREPANCY_COLUMNS = ["status", "key", "dst_key", "detail", "verified_by", "src_size",
                       "dst_size", "src_mtime_ns", "dst_etag", "dst_checksum", "src_digest"]
#: what rendering reads of a reconciliation table
COLUMNS = [*DISCREPANCY_COLUMNS, "key_bytes"]
#: the remediation lists (``lists/NAME.txt`` and ``lists/NAME.nul``) and their statuses
REMEDIATION_LISTS: dict[str, tuple[str, ...]] = {
    "missing-on-dst": (S.MISSING_IN_DEST,),
    "missing-on-src": (S.EXTRA_IN_DEST,),
    "differ": (S.SIZE_MISMATCH, S.CONTENT_MISMATCH, S.METADATA_MISMATCH, S.NAME_MISMATCH),
    "error": (S.SOURCE_ERROR, S.DEST_ERROR, S.NAME_UNMAPPABLE, S.NOT_FOUND),
    "unverified": (S.UNVERIFIED,),
    "match": (S.MATCH,),  # only with --list-match: as long as the run
}
#: S3 Batch Operations manifest (bucket,key; keys URL-encoded) of the UNVERIFIED objects,
#: for a compute-checksum job whose report goes back in with --checksum-report
BATCH_MANIFEST = "unverified-batch-manifest.csv"
#: directory depth of ``rollup.parquet`` when the run did not say (``--rollup-depth``)
DEFAULT_ROLLUP_DEPTH = 2
PIECES = "_pieces"
PIECE_RECORD = "piece.json"


@dataclass(frozen=True)
class ListSettings:
    """What the lists depend on besides the rows: a share rendered with others is not used."""

    match_requested: bool = False
    bucket: str = ""
    depth: int = DEFAULT_ROLLUP_DEPTH

    @classmethod
    def of_summary(cls, summary: dict) -> ListSettings:
        dest = summary.get("destination") or ""
        return cls(bool((summary.get("lists") or {}).get("match_requested")),
                   dest[len("s3://"):].split("/", 1)[0] if dest.startswith("s3://") else "",
                   int((summary.get("rollup") or {}).get("depth", DEFAULT_ROLLUP_DEPTH)))

    @property
    def names(self) -> list[str]:
        return [n for n in REMEDIATION_LISTS if n != "match" or self.match_requested]


class Sinks:
    """The open output files of the lists under ``out``, renamed into place when ``stack`` closes.

    :meth:`add` renders rows into them; :meth:`append` copies a share rendered
    elsewhere.  ``header``: discrepancies.csv gets its header row (a share has none).

    The remediation lists (``lists/NAME.txt``, one path per line, and
    ``lists/NAME.nul``, NUL-separated) hold the exact source-relative bytes
    (``key_bytes``; the key for destination-only objects), so each works as-is
    with ``rclone copy --files-from-raw`` and ``wiseverify verify --files-from``.
    A name holding a newline cannot be a line: it is only in the ``.nul`` twin
    (use ``--files-from0``), and ``summary.json`` counts it.
    """

    def __init__(self, out: Path, settings: ListSettings, stack: contextlib.ExitStack,
                 header: bool) -> None:
        self.settings = settings
        (out / "lists").mkdir(parents=True, exist_ok=True)

        #: every output by its name under ``out``, and the mode :meth:`append` reads it in
        self.files: dict[str, tuple[IO, dict]] = {}

        def opened(name: str, text: bool = False) -> IO:
            kw = {"mode": "w", "encoding": "utf-8", "newline": ""} if text else {"mode": "wb"}
            f = stack.enter_context(stack.enter_context(atomic_path(out / name)).open(**kw))
            self.files[name] = (f, {**kw, "mode": "r"} if text else {"mode": "rb"})
            return f

        self.comb = opened("combined.txt")
        self.csv = csv.writer(opened("discrepancies.csv", text=True))
        if header:
            self.csv.writerow(DISCREPANCY_COLUMNS)
        self.txt, self.nul, self.counts = {}, {}, {}
        for n in settings.names:
            self.txt[n] = opened(f"lists/{n}.txt")
            self.nul[n] = opened(f"lists/{n}.nul")
            self.counts[n] = {"paths": 0, "only_in_nul": 0}
        self.batch = opened(f"lists/{BATCH_MANIFEST}", text=True)
        self.batch_rows = 0
        self.rollup = Rollup(settings.depth)

    _sig_status = pa.array(list(S.SIGILS), pa.string())
    _sig_chars = pa.array(list(S.SIGILS.values()), pa.string())
    _clean = pa.array(sorted(S.CLEAN_STATUSES), pa.string())

    def add(self, b: pa.RecordBatch | pa.Table) -> None:
        """Render rows (at least :data:`COLUMNS`) into every output."""
        status, key = b.column("status"), b.column("key")
        sig = pc.take(self._sig_chars, pc.index_in(status, value_set=self._sig_status))
        # keys with newlines would break the one-key-per-line format
        safe = pc.replace_substring(pc.replace_substring(key, "\n", "\\n"), "\r", "\\r")
        lines = pc.drop_null(pc.binary_join_element_wise(sig, safe, " "))
        if len(lines):
            self.comb.write(joined(lines, b"\n"))
        bad = b.filter(pc.invert(pc.is_in(status, value_set=self._clean)))
        for row in bad.select(DISCREPANCY_COLUMNS).to_pylist():
            self.csv.writerow([row[c] for c in DISCREPANCY_COLUMNS])
        self._add_lists(b)
        self.rollup.add(b)

    def _add_lists(self, b: pa.RecordBatch | pa.Table) -> None:
        status = b.column("status")
        kb = b.column("key_bytes")
        path = pc.if_else(pc.is_valid(kb), kb, pc.cast(b.column("key"), pa.binary()))
        for n in self.settings.names:
            sel = pc.is_in(status, value_set=pa.array(REMEDIATION_LISTS[n], pa.string()))
            picked = pc.drop_null(path.filter(sel))
            if not len(picked):
                continue
            self.nul[n].write(joined(picked, b"\0"))
            multi = pc.or_(pc.match_substring(picked, b"\n"), pc.match_substring(picked, b"\r"))
            one_line = picked.filter(pc.invert(multi))
            if len(one_line):
                self.txt[n].write(joined(one_line, b"\n"))
            self.counts[n]["paths"] += len(picked)
            self.counts[n]["only_in_nul"] += len(picked) - len(one_line)
        if self.settings.bucket:
            unv = b.filter(pc.equal(status, S.UNVERIFIED))
            for key in unv.column("dst_key").to_pylist():
                if key:
                    self.batch.write(f"{self.settings.bucket},{quote(key, safe='/')}\n")
                    self.batch_rows += 1

    def append(self, piece: Path) -> None:
        """A share rendered by :func:`write_piece`, after what is written so far."""
        record = json.loads((piece / PIECE_RECORD).read_text())
        for name, (f, read_mode) in self.files.items():
            with open(piece / name, **read_mode) as src:
                shutil.copyfileobj(src, f, 1 << 20)
        for n, c in record["counts"].items():
            self.counts[n]["paths"] += c["paths"]
            self.counts[n]["only_in_nul"] += c["only_in_nul"]
        self.batch_rows += record["batch_rows"]
        self.rollup.merge(record["rollup"])

    def lists_summary(self) -> dict:
        return {"dir": "lists", "match_requested": self.settings.match_requested,
                **self.counts,
                "batch_manifest": {"file": f"lists/{BATCH_MANIFEST}", "objects": self.batch_rows}}


def joined(values: pa.Array | pa.ChunkedArray, sep: bytes) -> pa.Buffer | bytes:
    """``value + sep`` for every string or binary value, as one buffer: no Python object
    per key (combined.txt and the remediation lists are as long as the run)."""
    if isinstance(values, pa.ChunkedArray):
        values = pa.concat_arrays(values.chunks) if values.num_chunks else \
            pa.array([], values.type)
    if not len(values):
        return b""
    ended = pc.binary_join_element_wise(pc.cast(values, pa.binary()),
                                        pa.scalar(b"", pa.binary()),
                                        pa.scalar(sep, pa.binary())).cast(pa.large_binary())
    _, offsets, data = ended.buffers()
    off = memoryview(offsets).cast("q")
    start = off[ended.offset]
    return data.slice(start, off[ended.offset + len(ended)] - start)


class Rollup:
    """Keys, bytes and statuses per directory at a depth: what each study owner signs.

    A key's directory is its parent path cut to ``depth`` components (files
    above that depth count under their own parent; ``""`` is the root), so
    every key is in exactly one row and the rows sum to the whole table.
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.rx = f"^((?:[^/]*/){{0,{max(0, depth - 1)}}}[^/]*)/.*$" if depth > 0 else None
        self.acc: dict[tuple[str, str], list[int]] = {}

    def add(self, b: pa.RecordBatch | pa.Table) -> None:
        key = b.column("key")
        size = pc.coalesce(b.column("src_size"), b.column("dst_size"), pa.scalar(0, pa.int64()))
        if self.rx is None:
            t = pa.table({"dir": pa.array([""] * len(key), pa.string()),
                          "status": b.column("status"), "size": size})
        else:
            # grouped by parent first: the cut to ``depth`` (a regex) then runs once per
            # directory, not once per key (two thirds of this method's time per key)
            parent = pc.if_else(pc.match_substring(key, "/"),
                                pc.replace_substring_regex(key, "/[^/]*$", ""), "")
            t = pa.table({"dir": parent, "status": b.column("status"), "size": size})
        agg = t.group_by(["dir", "status"]).aggregate([("size", "count"), ("size", "sum")])
        d = agg.column("dir")
        if self.rx is not None:
            cut = pc.replace_substring_regex(pc.binary_join_element_wise(d, "/", ""),
                                             self.rx, "\\1")
            d = pc.if_else(pc.equal(d, ""), "", cut)
        self.merge(zip(*(c.to_pylist() for c in
                         (d, agg.column("status"), agg.column("size_count"),
                          agg.column("size_sum"))), strict=True))

    def merge(self, rows) -> None:
        """Add ``(dir, status, keys, bytes)`` rows (another rollup's :meth:`rows`)."""
        for dd, st, n, nb in rows:
            cur = self.acc.setdefault((dd, st), [0, 0])
            cur[0] += n
            cur[1] += nb or 0

    def rows(self) -> list[list]:
        return [[d, st, n, nb] for (d, st), (n, nb) in self.acc.items()]

    def table(self) -> pa.Table:
        dirs = sorted({d for d, _ in self.acc})
        present = [st for st in S.STATUSES if any(k[1] == st for k in self.acc)]
        cols: dict[str, list] = {"dir": dirs, "keys": [], "bytes": [], "discrepancies": [],
                                 "verdict": []}
        per = {st: [] for st in present}
        for d in dirs:
            n = sum(self.acc.get((d, st), [0, 0])[0] for st in S.STATUSES)
            nb = sum(self.acc.get((d, st), [0, 0])[1] for st in S.STATUSES)
            bad = sum(self.acc.get((d, st), [0, 0])[0] for st in S.STATUSES
                      if st not in S.CLEAN_STATUSES)
            cols["keys"].append(n)
            cols["bytes"].append(nb)
            cols["discrepancies"].append(bad)
            cols["verdict"].append("PASS" if bad == 0 else "FAIL")
            for st in present:
                per[st].append(self.acc.get((d, st), [0, 0])[0])
        out = pa.table({**cols, **{st: pa.array(v, pa.int64()) for st, v in per.items()}})
        return out.cast(pa.schema([pa.field(f.name, pa.int64() if f.name not in
                                            ("dir", "verdict") else pa.string())
                                   for f in out.schema]))


def _identity(path: Path) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _piece_dir(part_path: Path) -> Path:
    return part_path.parent / PIECES / part_path.stem


def write_piece(table: pa.Table, part_path: Path, settings: ListSettings) -> None:
    """Render a partition's share of the lists next to its just-written file (a worker's task)."""
    final = _piece_dir(part_path)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        with contextlib.ExitStack() as stack:
            sinks = Sinks(tmp, settings, stack, header=False)
            for b in table.select(COLUMNS).to_batches(max_chunksize=1 << 16):
                sinks.add(b)
        record = {"source": _identity(part_path), "settings": vars(settings),
                  "counts": sinks.counts, "batch_rows": sinks.batch_rows,
                  "rollup": sinks.rollup.rows()}
        (tmp / PIECE_RECORD).write_text(json.dumps(record))
        shutil.rmtree(final, ignore_errors=True)  # a retried task's, or the interrupted run's
        os.rename(tmp, final)
    except OSError:
        # a share is an optimisation: without it the driver renders this partition itself
        shutil.rmtree(tmp, ignore_errors=True)


def usable_piece(part_path: Path, settings: ListSettings) -> Path | None:
    """The share rendered from this very file with these settings, or None."""
    piece = _piece_dir(part_path)
    try:
        record = json.loads((piece / PIECE_RECORD).read_text())
        if record["source"] != _identity(part_path) or record["settings"] != vars(settings):
            return None
    except (OSError, ValueError, KeyError):
        return None
    return piece


def remove_pieces(run_dir: Path) -> None:
    shutil.rmtree(run_dir / "reconciliation" / PIECES, ignore_errors=True)
