"""The audit trail on real runs: manifests, tamper detection, the hash chain and HMAC."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wiseverify.cli.main import main as cli_main
from wiseverify.demo.locals3 import FAKE_CREDENTIALS
from wiseverify.report import audit as AUDIT
from wiseverify.report import manifest as AUD

from ..demo_runs import copy_run


def wv(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wiseverify.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def flip_byte(path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def run_copy(demo_run, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv(AUD.ENV_KEY, raising=False)
    return copy_run(demo_run, tmp_path)


def test_manifest_records_the_run(demo_run):  # noqa: F811
    m = AUDIT.load_manifest(demo_run)
    summary = json.loads((demo_run / "summary.json").read_text())
    assert m["run_id"] == summary["run_id"]
    assert m["counts"] == summary["counts"] and m["verdict"] == "FAIL"
    assert m["started"] == summary["started"] and m["finished"] == summary["finished"]
    for name in ("summary.json", "combined.txt", "discrepancies.csv", "report.html",
                 "run.json", "reconciliation/part-00000.parquet"):
        assert m["files"][name]["sha256"] == AUD.sha256_file(demo_run / name), name
    for side in ("src", "dst"):
        inv = m["inventories"][side]
        assert inv["files"] >= 1 and inv["rows"] > 0
        assert any(n.startswith(f"inventory/{side}/") for n in m["files"])
    assert m["software"]["packages"]["pyarrow"] and m["software"]["packages"]["distributed"]
    assert len(m["hosts"]["cluster"]["workers"]) == 2 and m["hosts"]["driver"]
    assert m["previous"] is None  # the first run under its parent
    # secrets never reach the manifest
    text = (demo_run / AUD.MANIFEST).read_text()
    for secret in FAKE_CREDENTIALS.values():
        assert secret not in text


def test_intact_run_passes_and_report_rebuild_keeps_it(run_copy, capsys):
    res = AUDIT.audit(run_copy)
    assert res.ok, res.problems
    assert res.files_checked == len(AUDIT.load_manifest(run_copy)["files"])
    # `wiseverify report` rebuilds the outputs byte for byte
    assert cli_main(["report", str(run_copy)]) == 1  # the demo run has discrepancies
    assert cli_main(["audit", str(run_copy)]) == 0
    assert "wiseverify audit INTACT" in capsys.readouterr().out


@pytest.mark.parametrize("victim", ["reconciliation", "inventory/src", "inventory/dst"])
def test_one_flipped_byte_in_a_parquet_file_is_detected(run_copy, victim):
    target = sorted((run_copy / victim).rglob("*.parquet"))[0]
    rel = target.relative_to(run_copy).as_posix()
    flip_byte(target)
    res = AUDIT.audit(run_copy)
    assert not res.ok
    assert any(p.startswith(f"modified: {rel}") for p in res.problems), res.problems
    proc = wv("audit", str(run_copy))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"PROBLEM modified: {rel}" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("wiseverify audit FAILED")


def test_missing_and_added_files_are_detected(run_copy):
    (run_copy / "discrepancies.csv").unlink()
    (run_copy / "reconciliation" / "part-00099.parquet").write_bytes(b"not evidence")
    res = AUDIT.audit(run_copy)
    assert "missing: discrepancies.csv" in res.problems
    assert any(p.startswith("unlisted: reconciliation/part-00099.parquet") for p in res.problems)
    # the JSON form for scripts
    proc = wv("audit", "--json", str(run_copy))
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["ok"] is False


def test_no_manifest_is_a_usage_error(tmp_path):
    proc = wv("audit", str(tmp_path))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr


def test_runs_form_a_chain_and_a_broken_link_is_detected(run_verify, s3, bucket, tmp_path,
                                                         monkeypatch):
    monkeypatch.delenv(AUD.ENV_KEY, raising=False)
    src = tmp_path / "tree"
    src.mkdir()
    (src / "a.txt").write_bytes(b"alpha\n")
    s3.client().put_object(Bucket=bucket, Key="c/a.txt", Body=b"alpha\n")
    first, _ = run_verify(src, f"s3://{bucket}/c/")
    # the second run is signed: the key comes from the environment
    monkeypatch.setenv(AUD.ENV_KEY, "chain-test-key")
    second, _ = run_verify(src, f"s3://{bucket}/c/")
    run0, run1 = tmp_path / "run0", tmp_path / "run1"
    m1 = AUDIT.load_manifest(run1)
    assert m1["previous"]["run_id"] == first["run_id"]
    assert m1["previous"]["path"] == "../run0"
    assert m1["previous"]["manifest_sha256"] == AUD.sha256_file(run0 / AUD.MANIFEST)
    assert m1["signature"]["algorithm"] == "HMAC-SHA256"
    res = AUDIT.audit(run1, key=b"chain-test-key")
    assert res.ok, res.problems
    assert res.chain == [second["run_id"], first["run_id"]]
    assert res.signature == "valid"

    # rewriting the older run's manifest (e.g. to hide a tampered file) breaks the link
    m0 = json.loads((run0 / AUD.MANIFEST).read_text())
    m0["counts"]["MATCH"] += 1
    (run0 / AUD.MANIFEST).write_text(json.dumps(m0, indent=2, sort_keys=True) + "\n")
    res = AUDIT.audit(run1, key=b"chain-test-key")
    assert not res.ok
    assert any(p.startswith("broken chain link") and "was modified" in p for p in res.problems)
    proc = wv("audit", str(run1))
    assert proc.returncode == 1 and "broken chain link" in proc.stdout

    # deleting the older run breaks it too
    (run0 / AUD.MANIFEST).unlink()
    res = AUDIT.audit(run1, key=b"chain-test-key")
    assert any("broken chain link" in p and "is missing" in p for p in res.problems)


def test_hmac_signature(run_copy, monkeypatch):
    key = b"s3cr3t-audit-key"
    AUD.write_manifest(run_copy, key=key)
    m = AUDIT.load_manifest(run_copy)
    assert m["signature"]["algorithm"] == "HMAC-SHA256"
    assert key.decode() not in (run_copy / AUD.MANIFEST).read_text()
    assert AUDIT.audit(run_copy, key=key).signature == "valid"
    assert AUDIT.audit(run_copy, key=key).ok

    wrong = AUDIT.audit(run_copy, key=b"another key")
    assert wrong.signature == "invalid" and not wrong.ok
    assert any("signed with another key" in p for p in wrong.problems)

    unchecked = AUDIT.audit(run_copy)
    assert unchecked.ok and unchecked.signature == "unchecked"
    assert not AUDIT.audit(run_copy, require_signature=True).ok

    # a manifest edited to match a tampered file no longer verifies
    target = run_copy / "reconciliation" / "part-00000.parquet"
    flip_byte(target)
    m["files"]["reconciliation/part-00000.parquet"]["sha256"] = AUD.sha256_file(target)
    (run_copy / AUD.MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=True))
    forged = AUDIT.audit(run_copy, key=key)
    assert forged.signature == "invalid" and not forged.ok

    # the CLI reads the key from the environment
    env = dict(os.environ, **{AUD.ENV_KEY: key.decode()})
    proc = wv("audit", str(run_copy), env=env)
    assert proc.returncode == 1 and "signature does not verify" in proc.stdout


def test_redact_removes_secrets():
    cfg = {
        "endpoint_url": "https://user:pa55@s3.example.internal:9000/",
        "dest": "s3://bucket/prefix/",
        "extra": {"aws_secret_access_key": "abc", "session_token": "t0k",
                  "presigned": "https://h/o?X-Amz-Signature=ff&X-Amz-Credential=AKIDEXAMPLE"},
        "head_min_size": 4194304,
    }
    red = AUD.redact(cfg)
    text = json.dumps(red)
    for secret in ("pa55", "abc", "t0k", "X-Amz-Signature=ff", "AKIDEXAMPLE"):
        assert secret not in text, secret
    assert red["dest"] == "s3://bucket/prefix/" and red["head_min_size"] == 4194304
    assert red["endpoint_url"].endswith("s3.example.internal:9000/")
