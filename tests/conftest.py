"""Shared fixtures: a real moto S3 server over HTTP and a real Dask LocalCluster (processes)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from wiseverify.demo.locals3 import FAKE_CREDENTIALS, LocalS3


@pytest.fixture(scope="session", autouse=True)
def aws_env():
    """Fake credentials for the local endpoint; set before any worker process starts."""
    saved = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(k, None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> LocalS3:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = LocalS3(log_path=str(log)).start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3) -> str:
    name = "t-" + uuid.uuid4().hex[:12]
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def dask_client(aws_env):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                           host="127.0.0.1", dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def read_table(run_dir: str | Path) -> dict[str, dict]:
    """The reconciliation table of a run as ``{key: row}``."""
    rows = ds.dataset(Path(run_dir) / "reconciliation").to_table().to_pylist()
    return {r["key"]: r for r in rows}


@pytest.fixture
def run_verify(dask_client, s3, tmp_path):
    """Run a whole verification on the shared cluster; returns (summary, {key: row})."""
    from wiseverify.core.config import VerifyConfig
    from wiseverify.run.driver import verify

    counter = iter(range(1000))

    def _run(source, dest, **kw):
        out = tmp_path / f"run{next(counter)}"
        cfg = VerifyConfig(source=str(source), dest=dest, out=str(out),
                           endpoint_url=s3.url, **kw)
        summary = verify(cfg, dask_client, log=None)
        return summary, read_table(out)

    return _run


@pytest.fixture(scope="session")
def demo_run(s3, dask_client, tmp_path_factory) -> Path:
    """One finished run of the demo tree per session (``demo_runs.make_demo_run``)."""
    from .demo_runs import make_demo_run

    return make_demo_run(s3, dask_client, tmp_path_factory)
