"""One real demo run per test session, shared by the report, audit and notebook tests.

Built with the demo builder (every kind of discrepancy) against the session's
moto server and verified on the session's Dask cluster.  ``conftest.demo_run``
is the session fixture; the module-level cache keeps what it made for
:func:`demo_details`.  Tests that change files work on a copy (:func:`copy_run`).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from wiseverify.core.config import VerifyConfig
from wiseverify.demo.tree import build_fixture
from wiseverify.run.driver import verify

_CACHE: dict[str, object] = {}


def make_demo_run(s3, dask_client, tmp_path_factory) -> Path:
    """RUNS_ROOT/dryrun-1: a finished run of the demo tree (FAIL, 9 discrepancies)."""
    if "run" not in _CACHE:
        src = tmp_path_factory.mktemp("demo-source") / "source"
        bucket = "demo-" + uuid.uuid4().hex[:10]
        expect = build_fixture(src, s3, bucket, "wise/")
        root = tmp_path_factory.mktemp("runs")
        out = root / "dryrun-1"
        verify(VerifyConfig(source=str(src), dest=f"s3://{bucket}/wise/", out=str(out),
                            endpoint_url=s3.url), dask_client, log=None)
        _CACHE.update(run=out, source=src, bucket=bucket, expect=expect)
    return _CACHE["run"]  # type: ignore[return-value]


def demo_details() -> dict:
    """Source tree, bucket and expected statuses of the demo run (after ``demo_run``)."""
    return dict(_CACHE)


def copy_run(run_dir: Path, dest_parent: Path, name: str | None = None) -> Path:
    """A copy of a run directory to tamper with (the manifest's paths are relative)."""
    dest = dest_parent / (name or run_dir.name)
    shutil.copytree(run_dir, dest)
    return dest
