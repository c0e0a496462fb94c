"""Faults of a long distributed run: a killed worker, a flaky endpoint. Same table, no lost row."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from wiseverify.core import schema as S
from wiseverify.core.config import VerifyConfig
from wiseverify.demo.locals3 import put_multipart
from wiseverify.run.driver import verify

from ..conftest import read_table
from ..s3proxy import Faults, S3Proxy

MiB = 1 << 20
RUN_SPECIFIC = {"evidence_run", "partition"}


def comparable(table: dict) -> dict:
    return {k: {c: v for c, v in r.items() if c not in RUN_SPECIFIC} for k, r in table.items()}


@pytest.fixture(scope="module")
def fault_tree(s3, tmp_path_factory):
    """Enough files and bytes that a run spends seconds in the digest stage."""
    root = tmp_path_factory.mktemp("faults") / "src"
    bucket = "faults-tree"
    plain, crc = s3.client(), s3.client(checksums=True)
    plain.create_bucket(Bucket=bucket)
    rng = random.Random(5)
    for i in range(300):
        p = root / f"d{i % 10}" / f"f{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(0, 64 * 1024))
        p.write_bytes(data)
        (crc if i % 3 == 0 else plain).put_object(
            Bucket=bucket, Key=f"t/d{i % 10}/f{i:03d}.bin", Body=data,
            **({"ChecksumAlgorithm": "CRC64NVME"} if i % 3 == 0 else {}))
    for j in range(8):
        data = rng.randbytes(24 * MiB + j)
        p = root / "big" / f"m{j}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        if j == 3:
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        put_multipart(plain, bucket, f"t/big/m{j}.bin", data, 5 * MiB)
    return root, bucket


@pytest.fixture(scope="module")
def clean_table(fault_tree, dask_client, s3, tmp_path_factory):
    root, bucket = fault_tree
    out = tmp_path_factory.mktemp("clean") / "run"
    verify(VerifyConfig(str(root), f"s3://{bucket}/t", str(out), endpoint_url=s3.url),
           dask_client, log=None)
    table = read_table(out)
    assert table["big/m3.bin"]["status"] == S.CONTENT_MISMATCH
    assert sum(r["status"] == S.MATCH for r in table.values()) == 307
    return comparable(table)


def test_flaky_endpoint_gives_the_same_table(fault_tree, clean_table, dask_client, s3,
                                             tmp_path):
    root, bucket = fault_tree
    # 5% answered 500/503 SlowDown, 2% connections reset, 2% slow (every Nth request)
    faults = Faults(error_every=20, reset_every=50, slow_every=45, slow_seconds=0.3)
    with S3Proxy(s3.url, faults) as proxy:
        for mode in ("stored", "readback"):
            out = tmp_path / mode
            verify(VerifyConfig(str(root), f"s3://{bucket}/t", str(out), endpoint_url=proxy.url,
                                mode=mode), dask_client, log=None)
            table = comparable(read_table(out))
            if mode == "stored":
                assert table == clean_table
            else:
                assert {k: r["status"] for k, r in table.items()} == {
                    k: r["status"] for k, r in clean_table.items()}
    print(f"faults injected over {len(proxy.requests)} requests: {proxy.injected}")
    assert proxy.injected["error"] > 0 and proxy.injected["reset"] > 0
    assert proxy.mutating() == []


def test_worker_killed_mid_digest(fault_tree, clean_table, s3, tmp_path):
    """kill -9 a worker while digest tasks run: the run completes with the clean table."""
    from distributed import Client, LocalCluster

    root, bucket = fault_tree
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        out = tmp_path / "run"
        box: dict = {}

        def run():
            try:
                box["summary"] = verify(
                    VerifyConfig(str(root), f"s3://{bucket}/t", str(out), endpoint_url=s3.url),
                    client, log=None)
            except BaseException as exc:  # surfaced below
                box["error"] = exc

        t = threading.Thread(target=run)
        t.start()
        killed = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and t.is_alive():
            processing = client.processing()
            busy = [w for w, keys in processing.items()
                    if any(str(k).startswith("digest-") for k in keys)]
            if busy:
                pids = client.run(os.getpid, workers=[busy[0]])
                killed = pids[busy[0]]
                os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.02)
        t.join(300)
        assert killed is not None, "no digest task was seen running"
        assert "error" not in box, box.get("error")
        assert comparable(read_table(out)) == clean_table
