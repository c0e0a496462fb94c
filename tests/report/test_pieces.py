"""The lists rendered per partition by the workers are the lists the driver would render."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow.parquet as pq

from wiseverify.core.config import VerifyConfig
from wiseverify.demo.tree import build_fixture
from wiseverify.report import pieces as P
from wiseverify.report import summary as REP
from wiseverify.run import driver as DRIVER

from ..demo_runs import copy_run

OUTPUTS = ("combined.txt", "discrepancies.csv", "rollup.parquet")


def _outputs(run: Path) -> dict[str, bytes]:
    files = [*OUTPUTS, *(f"lists/{p.name}" for p in sorted((run / "lists").iterdir()))]
    return {f: (run / f).read_bytes() for f in files}


def test_worker_rendered_lists_equal_driver_rendered(tmp_path, s3, dask_client):
    """Stage by stage: after reconcile every partition has a usable share; the lists built
    from the shares are byte for byte those rendered from the Parquet files alone."""
    src = tmp_path / "source"
    bucket = "pieces-" + uuid.uuid4().hex[:8]
    build_fixture(src, s3, bucket, "wise/")
    cfg = VerifyConfig(source=str(src), dest=f"s3://{bucket}/wise/", out=str(tmp_path / "run"),
                       endpoint_url=s3.url, partitions=3, list_match=True, rollup_depth=1)
    run = DRIVER.start(cfg, dask_client, None, None, None)
    inv = DRIVER.inventory_stage(run)
    parts = DRIVER.partition_stage(run, inv)
    totals = DRIVER.reconcile_stage(run, parts)
    files = REP.reconciliation_files(run.run_dir)
    assert len(files) == 3
    settings = P.ListSettings(True, bucket, 1)
    assert all(P.usable_piece(f, settings) is not None for f in files)
    # another setting, or a file rewritten since, and the share is not used
    assert P.usable_piece(files[0], P.ListSettings(False, bucket, 1)) is None
    assert P.usable_piece(files[0], P.ListSettings(True, bucket, 2)) is None
    summary = DRIVER.write_outputs(run, inv, parts, totals)
    assert not (run.run_dir / "reconciliation" / P.PIECES).exists()
    assert summary["lists"]["match"]["paths"] == summary["counts"]["MATCH"] > 0
    from_pieces = _outputs(run.run_dir)
    lists_from_pieces = json.loads((run.run_dir / "summary.json").read_text())["lists"]

    again = copy_run(run.run_dir, tmp_path / "again")  # no shares left: all rendered here
    REP.write_lists(again, json.loads((again / "summary.json").read_text()))
    assert _outputs(again) == from_pieces
    assert json.loads((again / "summary.json").read_text())["lists"] == lists_from_pieces
    assert b"\r\n" in from_pieces["discrepancies.csv"]  # csv's own line ends, kept as written


def test_stale_or_foreign_share_is_not_used(demo_run, tmp_path):
    run = copy_run(demo_run, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    settings = P.ListSettings.of_summary(summary)
    before = _outputs(run)
    part = REP.reconciliation_files(run)[0]
    table = pq.read_table(part)
    P.write_piece(table.slice(0, 1), part, settings)  # a share of other rows
    assert P.usable_piece(part, settings) is not None
    st = part.stat()
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the file changed since
    assert P.usable_piece(part, settings) is None
    REP.write_lists(run, summary)
    assert _outputs(run) == before
