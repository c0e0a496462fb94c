"""``--files-from``: check exactly the listed keys, with no walk and no full listing.

The re-check after a re-copy (``lists/differ.txt`` and ``lists/missing-on-dst.txt``
of a failing run, copied again with ``rclone copy --files-from-raw``) must not
cost a walk of 30 million files or a listing of the whole bucket.  So:

* the source is an ``lstat`` of each listed path (``FilesFromSourceJob``,
  batches of :data:`KEYS_PER_TASK`); a directory named in the list is counted,
  not walked;
* the destination is one non-recursive ListObjectsV2 (``Delimiter='/'``) per
  distinct directory of the listed keys (``FilesFromDestJob``), keeping only the
  listed names: the objects of a directory come back 1,000 per request, where a
  HEAD per key would cost one request each;
* a listed key present on neither side becomes a row of its own status,
  ``NOT_FOUND``: not ``MISSING_IN_DEST``, which asks for a copy that has no
  source, and never silence, which would hide a stale or mistyped list.  The
  source row of such a key has kind ``absent``; the match stage decides it.

The list is one path per line, relative to SOURCE (a leading ``/`` is dropped,
``\\r\\n`` endings are accepted), or NUL-separated with ``--files-from0`` for
names holding newlines.  The driver reads it once to group the keys into
tasks; it holds the keys only until the tasks are submitted.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from wiseverify.core import keys as K
from wiseverify.core import schema as S
from wiseverify.core.s3 import S3Target
from wiseverify.inventory import s3list as S3LIST
from wiseverify.inventory.jobs import Job, JobContext, Spooled, tally_dest, tally_source
from wiseverify.inventory.sources import IngestError
from wiseverify.inventory.spool import _entry_row, write_spool

if TYPE_CHECKING:
    from distributed import Future

#: listed keys per source task (lstat calls) and per destination task
KEYS_PER_TASK = 5_000
#: directories listed per destination task
DIRS_PER_TASK = 64


def read_files_from(path: str, nul: bool = False) -> list[bytes]:
    """The listed keys, in order, each once; :class:`IngestError` names a bad line."""
    flag = "--files-from0" if nul else "--files-from"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise IngestError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    records = data.split(b"\0") if nul else data.split(b"\n")
    keys: dict[bytes, None] = {}
    for no, rec in enumerate(records, 1):
        if not nul:
            rec = rec.removesuffix(b"\r")
        if not rec:
            continue
        key = rec.lstrip(b"/")
        parts = key.split(b"/")
        if not key or b".." in parts or b"." in parts or b"" in parts[:-1]:
            where = f"record {no}" if nul else f"line {no}"
            raise IngestError(f"{flag} {path}:{where}: {os.fsdecode(rec)!r} is not a path "
                              "relative to SOURCE (no '.', '..' or empty components)")
        keys[key.rstrip(b"/")] = None
    if not keys:
        raise IngestError(f"{flag} {path}: lists no key")
    return list(keys)


def lstat_keys(root: str, keys: list[bytes], spool_path: str, prefix: str = "") -> dict:
    """Source rows of the listed keys by ``lstat`` (a Dask task); absent keys kept as such."""
    broot = os.fsencode(root)
    rows: list[dict] = []
    absent = dirs = 0
    nbytes = 0
    for key in keys:
        try:
            st = os.lstat(broot + b"/" + key)
        except (FileNotFoundError, NotADirectoryError):
            absent += 1
            dk = K.display_key(key)
            rows.append({"key": dk, "key_bytes": key, "nkey": K.nfc(dk), "kind": S.KIND_ABSENT,
                         "name_problem": None, "error": None})
            continue
        except OSError as exc:
            rows.append(_entry_row(key, None, prefix, f"lstat failed: {exc.strerror}"))
            continue
        if (st.st_mode & 0o170000) == 0o040000:
            dirs += 1  # a directory is not a key; the list names files
            continue
        rows.append(_entry_row(key, st, prefix, None))
        nbytes += st.st_size if (st.st_mode & 0o170000) == 0o100000 else 0
    table = S.from_rows(rows, S.SOURCE_INVENTORY)
    if table.num_rows:
        write_spool(table, spool_path)
    return {"count": table.num_rows, "pending": [], "dirs": 0, "ops": len(keys),
            "bytes": nbytes, "spool": spool_path if table.num_rows else None,
            "files_from": {"files_from_absent_on_source": absent,
                           "files_from_directories": dirs}}


def list_dirs(target: S3Target, dirs: list[str], names: list[list[str]],
              spool_base: str) -> dict:
    """One non-recursive listing per directory, keeping the listed names (a Dask task)."""
    out = {"count": 0, "markers": 0, "requests": 0, "spool": None, "spools": [],
           "error": None, "bytes": 0}
    for i, (d, wanted) in enumerate(zip(dirs, names, strict=True)):
        rel = f"{d}/" if d else ""
        res = S3LIST.list_prefix(target, rel, True, f"{spool_base}-{i:03d}.parquet",
                                 only=set(f"{rel}{n}" for n in wanted))
        out["requests"] += res["requests"]
        out["markers"] += res["markers"]
        if res["error"]:
            out["error"] = res["error"]
            return out
        if res["spool"]:
            out["spools"].append((res["spool"], res["count"]))
            out["count"] += res["count"]
            out["bytes"] += res["bytes"]
    return out


@dataclass
class FilesFromSourceJob(Job):
    keys: list[bytes]
    kind: ClassVar[str] = "files-from"

    def submit(self, ctx: JobContext, n: int) -> Future:
        return ctx.client.submit(lstat_keys, ctx.root, self.keys,
                                 ctx.spool_base("fsrc", n) + ".arrow", ctx.target.prefix,
                                 pure=False, key=ctx.key("files-from", n))

    def tally(self, res: dict, ctx: JobContext, inv: Spooled) -> list[Job]:
        totals = inv.stats.setdefault("ingest", {})
        for k, v in res["files_from"].items():
            totals[k] = totals.get(k, 0) + v
        return tally_source(res, ctx, inv)


@dataclass
class FilesFromDestJob(Job):
    dirs: list[str]
    names: list[list[str]]
    kind: ClassVar[str] = "files-from-dest"

    def submit(self, ctx: JobContext, n: int) -> Future:
        return ctx.client.submit(list_dirs, ctx.target, self.dirs, self.names,
                                 ctx.spool_base("fdst", n), pure=False,
                                 key=ctx.key("files-from-dest", n))

    def tally(self, res: dict, ctx: JobContext, inv: Spooled) -> list[Job]:
        tally_dest(res, inv)
        inv.dst.extend(res["spools"])
        return []


def files_from_jobs(keys: list[bytes]) -> tuple[list[Job], dict]:
    """The source and destination jobs for the listed keys, and what to note in the summary."""
    jobs: list[Job] = [FilesFromSourceJob(keys[i:i + KEYS_PER_TASK])
                       for i in range(0, len(keys), KEYS_PER_TASK)]
    by_dir: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        d, _, name = K.display_key(key).rpartition("/")
        by_dir[d].append(name)
    dirs = sorted(by_dir)
    batch_dirs: list[str] = []
    batch_names: list[list[str]] = []
    held = 0
    for d in dirs:
        batch_dirs.append(d)
        batch_names.append(by_dir[d])
        held += len(by_dir[d])
        if len(batch_dirs) >= DIRS_PER_TASK or held >= KEYS_PER_TASK:
            jobs.append(FilesFromDestJob(batch_dirs, batch_names))
            batch_dirs, batch_names, held = [], [], 0
    if batch_dirs:
        jobs.append(FilesFromDestJob(batch_dirs, batch_names))
    return jobs, {"files_from_keys": len(keys), "files_from_directories_listed": len(dirs)}
