"""Ingest instead of listing: listing files and S3 reports stand in for the walk, the
ListObjectsV2 listing and the HEADs.

Why: at 30 million files the walk costs an ``lstat`` per file on an MDS shared by
thousands of users, the destination listing costs 30,000 ListObjectsV2 round trips,
and every object with a stored checksum costs a HEAD.  Sites usually have these facts
already: a policy scan writes an ``lfs find`` listing every night, S3 Inventory
delivers the bucket's object list every day, and an S3 Batch Operations
*compute checksum* job makes S3 hash every object at rest.  Three inputs replace
three stages:

* ``--source-listing FILE``: ``lfs find``/GNU ``find`` ``-printf`` output, parsed by
  Dask tasks on byte ranges of the file (split on record separators) into the same
  SOURCE_INVENTORY spool files the walk writes.
* ``--dest-inventory MANIFEST``: an S3 Inventory report (``manifest.json`` with
  ``fileSchema`` and ``files``; CSV, Parquet or ORC), one task per data file, into
  DEST_INVENTORY spool files.
* ``--checksum-report REPORT``: a compute-checksum completion report, into
  ``inventory/checksums/part=NNNNN/`` with the partitioning of the inventories, so
  the planning of a partition reads only its own slice; an object with a usable
  entry gets its evidence from the report: no HEAD and no byte read from S3.

Everything the driver touches is small (a manifest, the first MiB of a listing);
rows only exist inside tasks and in Parquet.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from wiseverify.core.s3 import S3Target
from wiseverify.inventory.checksum_report import report_plan
from wiseverify.inventory.files_from import files_from_jobs, read_files_from
from wiseverify.inventory.jobs import Job, ListJob, WalkJob
from wiseverify.inventory.listing_file import (
    check_listing,
    listing_jobs,
    parse_format,
)
from wiseverify.inventory.s3_inventory import inventory_plan
from wiseverify.inventory.sources import IngestError

if TYPE_CHECKING:

    from wiseverify.core.config import VerifyConfig
#: job kinds the pipeline hands to :func:`submit`


# --- driver glue: what verify() calls ---------------------------------------------------------


def check(cfg: VerifyConfig, root: str, target: S3Target) -> None:
    """Validate the ingest options before any task runs (IngestError -> exit code 2)."""
    if getattr(cfg, "source_listing", None):
        check_listing(cfg.source_listing, root, cfg.listing_format)
    elif getattr(cfg, "listing_format", None):
        raise IngestError("--listing-format describes a --source-listing; none was given")
    if getattr(cfg, "dest_inventory", None):
        inventory_plan(cfg.dest_inventory, target)
    listed = getattr(cfg, "files_from", None) or getattr(cfg, "files_from0", None)
    if listed:
        if getattr(cfg, "source_listing", None) or getattr(cfg, "dest_inventory", None):
            raise IngestError("--files-from checks the listed keys on the source and the "
                              "bucket themselves; it cannot be combined with "
                              "--source-listing or --dest-inventory")
        if getattr(cfg, "include", None) or getattr(cfg, "exclude", None) or \
                getattr(cfg, "filter_from", None):
            raise IngestError("--files-from checks exactly the listed keys; it cannot be "
                              "combined with --include, --exclude or --filter-from")
        read_files_from(listed, nul=bool(getattr(cfg, "files_from0", None)))
    if getattr(cfg, "checksum_report", None):
        if cfg.mode == "readback":
            raise IngestError("--checksum-report is evidence for --mode stored; readback reads "
                              "every object back instead")
        report_plan(cfg.checksum_report, target)


def replace_jobs(cfg: VerifyConfig, target: S3Target, jobs: list[Job],
                 stats: dict) -> list[Job]:
    """The inventory stage's first jobs, with ingest jobs in place of walk or listing.

    ``jobs`` are the usual walk and listing jobs; a listing file replaces the walk,
    an inventory report the listing, ``--files-from`` both, and a checksum report
    adds its own.  What was
    ingested is noted in ``stats``.
    """
    info: dict = {}
    out = list(jobs)
    if getattr(cfg, "source_listing", None):
        out = [j for j in out if not isinstance(j, WalkJob)]
        out += listing_jobs(cfg.source_listing, cfg.listing_format)
        st = os.stat(cfg.source_listing)
        info.update(source_listing=cfg.source_listing,
                    listing_format=" ".join(parse_format(cfg.listing_format)),
                    listing_bytes=st.st_size, listing_mtime_ns=st.st_mtime_ns)
    if getattr(cfg, "dest_inventory", None):
        out = [j for j in out if not isinstance(j, ListJob)]
        inv, more = inventory_plan(cfg.dest_inventory, target)
        info.update(inv)
        out += more
    listed = getattr(cfg, "files_from", None) or getattr(cfg, "files_from0", None)
    if listed:
        out = [j for j in out if not isinstance(j, WalkJob | ListJob)]
        more, noted = files_from_jobs(read_files_from(
            listed, nul=bool(getattr(cfg, "files_from0", None))))
        info.update(files_from=listed, **noted)
        out += more
    if getattr(cfg, "checksum_report", None):
        rep, more = report_plan(cfg.checksum_report, target)
        info.update(rep)
        out += more
    if info:
        stats.setdefault("ingest", {}).update(info)
    return out
