"""Small source files hashed while the destination is still being listed.

The listing waits on the object store and the walk is long done; the digests the
planner will ask of a small single-part object (its ETag's MD5, plus the CRC64NVME
of every pass) do not depend on the listing, so idle workers compute them early.
Speculative work: it stops when told and never fails the run.
"""

from __future__ import annotations

import os

import pyarrow as pa

from wiseverify.core import schema as S
from wiseverify.core.runio import write_atomic
from wiseverify.digest.hashing import prehash_files
from wiseverify.inventory import hsm
from wiseverify.inventory.spool import read_spool


def prehash_job(root: str, spool: str, start: int, count: int, out: str, max_size: int,
                 stop_flag: str) -> dict:
    """:func:`_prehash_spool`, whose failure only means the digest stage reads the files."""
    try:
        return _prehash_spool(root, spool, start, count, out, max_size, stop_flag)
    except Exception:  # speculative work never fails the run
        return {"side": "pre", "files": 0, "bytes": 0, "spool": None}


def _prehash_spool(root: str, spool: str, start: int, count: int, out: str, max_size: int,
                   stop_flag: str) -> dict:
    """Hash the small regular files among ``count`` source rows of a walk spool.

    Speculative work that only fills the time the destination listing takes: it
    stops as soon as ``stop_flag`` exists.  The rows that may be HSM-released
    (fewer blocks than bytes) are left alone, as is anything the match stage
    will not hash (links, special files, unmappable names, listing errors).
    """
    cols = ["key_bytes", "nkey", "kind", "size", "mtime_ns", "blocks", "error", "name_problem"]
    rows = read_spool(spool, columns=cols).slice(start, count).to_pylist()
    broot = os.fsencode(root)
    keep = [r for r in rows
            if r["kind"] == S.KIND_FILE and r["error"] is None and r["name_problem"] is None
            and 0 <= r["size"] < max_size and not hsm.may_be_released(r["size"], r["blocks"])]
    by_path = {broot + b"/" + r["key_bytes"]: r for r in keep}
    done = prehash_files(((p, r["size"], r["mtime_ns"]) for p, r in by_path.items()),
                           stop=lambda: os.path.exists(stop_flag))
    if not done:
        return {"side": "pre", "files": 0, "bytes": 0, "spool": None}
    table = pa.table({
        "nkey": [by_path[d[0]]["nkey"] for d in done],
        "key_bytes": [by_path[d[0]]["key_bytes"] for d in done],
        "size": [d[1] for d in done],
        "mtime_ns": [d[2] for d in done],
        "md5": [d[3] for d in done],
        "crc64nvme": [d[4] for d in done],
    }, schema=S.PREHASH)
    write_atomic(table, out)
    return {"side": "pre", "files": len(done), "bytes": sum(d[1] for d in done), "spool": out}
