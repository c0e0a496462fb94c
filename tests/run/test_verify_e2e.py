"""End to end: every status from a real run against the S3 endpoint on a real Dask cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wiseverify.core import schema as S
from wiseverify.demo.locals3 import put_multipart
from wiseverify.demo.tree import build_fixture

from ..s3proxy import Faults, S3Proxy

MiB = 1 << 20


@pytest.fixture(scope="module")
def demo_fixture(s3, tmp_path_factory):
    """The demo tree and its upload, shared by the stored and readback runs."""
    root = tmp_path_factory.mktemp("demo") / "source"
    bucket = "demo-e2e"
    expect = build_fixture(root, s3, bucket, "wise/")
    return root, bucket, expect


def _statuses(table):
    return {k: r["status"] for k, r in table.items()}


def test_stored_mode_gives_every_expected_status(demo_fixture, run_verify):
    root, bucket, expect = demo_fixture
    summary, table = run_verify(root, f"s3://{bucket}/wise")
    assert _statuses(table) == expect
    for status in (S.MATCH, S.MISSING_IN_DEST, S.EXTRA_IN_DEST, S.SIZE_MISMATCH,
                   S.CONTENT_MISMATCH, S.METADATA_MISMATCH, S.NAME_MISMATCH,
                   S.NAME_UNMAPPABLE, S.SKIPPED):
        assert summary["counts"][status] > 0, status
    # evidence is chosen per object by cost
    assert table["docs/section1/note_001.txt"]["verified_by"] == "etag-md5"
    assert table["big/matrix.bin"]["verified_by"] == "crc64nvme"
    assert table["big/multipart_ok.bin"]["verified_by"] == "etag-multipart"
    assert table["big/multipart_ok.bin"]["dst_parts"] == 3
    assert table["big/multipart_ok.bin"]["dst_part_size"] == 5 * MiB
    assert table["big/sha_composite.bin"]["verified_by"] == "sha256-composite"
    flip = table["big/multipart_flip.bin"]
    assert flip["status"] == S.CONTENT_MISMATCH and flip["verified_by"] == "etag-multipart"
    assert "metadata differs: mode" in table["meta/perm.bin"]["detail"]
    assert table["meta/good.bin"]["metadata_checked"] is True
    # never a MATCH without content evidence
    for r in table.values():
        if r["status"] == S.MATCH:
            assert r["verified_by"] and r["src_digest"]
    # strictly under the prefix: wise-old/ and the folder marker are not rows
    assert not any(k.startswith("-old") or "stale" in k for k in table)
    assert "docs/" not in table and "docs" not in table
    # the non-UTF-8 name is shown with backslashreplace and its bytes kept
    row = table["data/caf\\xe9.txt"]
    assert row["key_bytes"] == b"data/caf\xe9.txt"
    assert "UTF-8" in row["detail"]


def test_readback_mode_gives_the_same_statuses(demo_fixture, run_verify):
    root, bucket, expect = demo_fixture
    summary, table = run_verify(root, f"s3://{bucket}/wise", mode="readback")
    assert _statuses(table) == expect
    matched = [r for r in table.values() if r["status"] == S.MATCH]
    assert matched and all(r["verified_by"] == "readback" for r in matched)
    assert table["big/multipart_flip.bin"]["verified_by"] == "readback"
    assert summary["bytes_read_destination"] > 40 * MiB


def test_run_directory_outputs(demo_fixture, run_verify, tmp_path):
    root, bucket, expect = demo_fixture
    summary, table = run_verify(root, f"s3://{bucket}/wise")
    run_dir = tmp_path / "run0"
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["verdict"] == "FAIL" and on_disk["keys"] == len(expect)
    assert sum(on_disk["counts"].values()) == len(expect)
    combined = (run_dir / "combined.txt").read_text().splitlines()
    sig = {line[2:]: line[0] for line in combined}
    assert sig["data/missing.csv"] == "+"
    assert sig["data/extra.csv"] == "-"
    assert sig["big/multipart_flip.bin"] == "*"
    assert sig["big/matrix.bin"] == "="
    assert "data/pipe" not in sig  # skipped keys are not rclone lines
    csv = (run_dir / "discrepancies.csv").read_text()
    assert "big/multipart_flip.bin" in csv and "big/matrix.bin" not in csv


def test_all_match_tree_passes(s3, bucket, run_verify, tmp_path):
    root = tmp_path / "src"
    (root / "a" / "b").mkdir(parents=True)
    c = s3.client()
    for i in range(20):
        p = root / "a" / "b" / f"f{i}.dat"
        p.write_bytes(os.urandom(i * 1000))
        c.put_object(Bucket=bucket, Key=f"p/a/b/f{i}.dat", Body=p.read_bytes())
    summary, table = run_verify(root, f"s3://{bucket}/p/")
    assert summary["verdict"] == "PASS"
    assert summary["counts"][S.MATCH] == 20 == summary["content_verified"]


def test_kms_etag_is_unverified_and_403_is_dest_error(s3, bucket, tmp_path, dask_client):
    """An SSE-KMS ETag is no MD5 (UNVERIFIED); a HEAD answered 403 is a DEST_ERROR row."""
    from wiseverify.core.config import VerifyConfig
    from wiseverify.run.driver import verify

    from ..conftest import read_table

    root = tmp_path / "src"
    root.mkdir()
    c = s3.client()
    data = os.urandom(1000)
    (root / "kms.bin").write_bytes(data)
    c.put_object(Bucket=bucket, Key="x/kms.bin", Body=data, ServerSideEncryption="aws:kms")
    big = os.urandom(11 * MiB)
    (root / "forbidden.bin").write_bytes(big)
    put_multipart(c, bucket, "x/forbidden.bin", big, 5 * MiB)
    (root / "ok.bin").write_bytes(data)
    c.put_object(Bucket=bucket, Key="x/ok.bin", Body=data)
    faults = Faults(deny_keys=("forbidden",), etags={"kms.bin": "0" * 32})
    with S3Proxy(s3.url, faults) as proxy:
        cfg = VerifyConfig(source=str(root), dest=f"s3://{bucket}/x", out=str(tmp_path / "r"),
                           endpoint_url=proxy.url)
        summary = verify(cfg, dask_client, log=None)
    table = read_table(tmp_path / "r")
    assert table["kms.bin"]["status"] == S.UNVERIFIED
    assert "aws:kms" in table["kms.bin"]["detail"]
    assert table["forbidden.bin"]["status"] == S.DEST_ERROR
    assert "403" in table["forbidden.bin"]["detail"]
    assert table["ok.bin"]["status"] == S.MATCH
    assert summary["verdict"] == "FAIL"
    assert proxy.mutating() == []


def _without_dac_override(cmd: list[str]) -> list[str]:
    """As root, drop the capabilities that let root ignore file permissions (CI runs as root)."""
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]


def test_unreadable_file_is_source_error(s3, bucket, tmp_path):
    """Without permission to read (root's override dropped), a 000 file is a SOURCE_ERROR row."""
    root = tmp_path / "src"
    root.mkdir()
    c = s3.client()
    for name in ("secret.txt", "open.txt"):
        (root / name).write_bytes(b"payload " + name.encode())
        c.put_object(Bucket=bucket, Key=f"u/{name}", Body=(root / name).read_bytes())
    os.chmod(root / "secret.txt", 0)
    locked = root / "locked"
    locked.mkdir()
    (locked / "inner.txt").write_bytes(b"x")
    os.chmod(locked, 0)
    out = tmp_path / "run"
    cmd = _without_dac_override(
        [sys.executable, "-m", "wiseverify.cli", "verify", str(root), f"s3://{bucket}/u",
         "--out", str(out), "--endpoint-url", s3.url, "--workers", "1", "--quiet"],
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    from ..conftest import read_table

    table = read_table(out)
    assert table["secret.txt"]["status"] == S.SOURCE_ERROR
    assert "Permission denied" in table["secret.txt"]["detail"]
    assert table["locked/"]["status"] == S.SOURCE_ERROR
    assert "cannot list directory" in table["locked/"]["detail"]
    assert table["open.txt"]["status"] == S.MATCH


def test_read_only_is_enforced_at_the_client(s3, bucket):
    """A mutating call through any client the tool makes is refused before it is sent."""
    import pytest as _pytest

    from wiseverify.core.s3 import ReadOnlyViolation, S3Target

    with S3Proxy(s3.url) as proxy:
        target = S3Target.parse(f"s3://{bucket}/ro/", endpoint_url=proxy.url)

        async def put():
            client = await target.client()
            await client.put_object(Bucket=bucket, Key="ro/x", Body=b"x")

        with _pytest.raises(ReadOnlyViolation, match="refusing S3 PutObject"):
            target.run(put)
        with _pytest.raises(ReadOnlyViolation, match="refusing S3 DeleteObject"):
            target.fs().rm(f"{bucket}/ro/x")

        async def head():
            client = await target.client()
            return await client.head_bucket(Bucket=bucket)

        target.run(head)  # reads still go out
    assert proxy.mutating() == []
    assert any(m == "HEAD" for m, _ in proxy.requests)
