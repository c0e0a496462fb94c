"""``wiseverify qualify`` from a release install: passes clean, fails naming check and requirement."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wiseverify.qualify.checks import COVERAGE
from wiseverify.qualify.main import requirements

REPO = Path(__file__).resolve().parents[2]


def test_every_requirement_is_exercised():
    reqs = requirements()
    covered = {r for rs in COVERAGE.values() for r in rs}
    assert set(reqs) == covered, set(reqs) ^ covered
    assert all(text.endswith(".") and len(text) < 200 for text in reqs.values())


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """The wheel, installed (without its dependencies, which this venv has) into a directory."""
    base = tmp_path_factory.mktemp("release")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(base / "dist"), str(REPO)], check=True, timeout=600)
    (wheel,) = (base / "dist").glob("wiseverify-*.whl")
    site = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, timeout=600)
    return site


def _qualify(site: Path, out: Path, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-m", "wiseverify.cli", "qualify", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=e, cwd=out.parent)


def test_qualify_passes_on_a_release_install(release, tmp_path):
    out = tmp_path / "q"
    proc = _qualify(release, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = json.loads((out / "qualification.json").read_text())
    assert rec["verdict"] == "PASS" and len(rec["checks"]) == 8
    assert all(c["result"] == "PASS" for c in rec["checks"])
    assert all(rec["matrix"][r] for r in rec["requirements"])
    assert list(rec["checks"][0]["evidence"]) == ["iq-versions.json"]
    assert rec["environment"]["python"] == sys.version.split()[0]
    # the record is audit-able: a manifest over every file, and no fixture left behind
    man = json.loads((out / "manifest.json").read_text())
    assert "qualification.json" in man["files"] and "qualification.html" in man["files"]
    assert not any(p.is_fifo() or p.is_socket() for p in out.rglob("*"))
    # the page renders in the headless browser and shows the matrix
    from ..report.test_report_html import browse

    dom = browse(out / "qualification.html", tmp_path, "--dump-dom")
    assert "Traceability matrix" in dom.stdout and "WV-011" in dom.stdout
    assert '<p class="verdict" id="verdict">PASS</p>' in dom.stdout
    shot = tmp_path / "q.png"
    browse(out / "qualification.html", tmp_path, f"--screenshot={shot}",
           "--window-size=1280,1600")
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_qualify_fails_naming_check_and_requirement(release, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(release, site)
    victim = site / "wiseverify" / "core" / "rules.py"
    victim.write_text(victim.read_text() + "\n# changed after installation\n")
    for so in (site / "wiseverify" / "core").glob("_md5mb*.so"):
        so.unlink()  # the extension absent where the build put it
    out = tmp_path / "q"
    proc = _qualify(site, out, WISEVERIFY_TEST_FORCE_STATUS="big/multipart_ok.bin=CONTENT_MISMATCH")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rec = json.loads((out / "qualification.json").read_text())
    by = {c["id"]: c for c in rec["checks"]}
    assert by["IQ-2"]["result"] == "FAIL" and "wiseverify/core/rules.py: modified" in \
        by["IQ-2"]["detail"] and "WV-013" in by["IQ-2"]["requirements"]
    assert "_md5mb" in by["IQ-2"]["detail"] or "_md5mb" in by["IQ-3"]["detail"]
    assert by["IQ-3"]["result"] == "FAIL" and "_md5mb is not built" in by["IQ-3"]["detail"]
    assert by["OQ-1"]["result"] == "FAIL"
    assert "'big/multipart_ok.bin': expected MATCH, got CONTENT_MISMATCH" in by["OQ-1"]["detail"]
    assert "WV-002" in by["OQ-1"]["requirements"]
    assert "IQ-2 FAIL" in proc.stdout and "qualification FAIL" in proc.stdout
    html = (out / "qualification.html").read_text()
    assert '<p class="verdict" id="verdict">FAIL</p>' in html


def test_against_a_scratch_prefix(s3, bucket, tmp_path):
    """--against: refused without consent or on a non-empty prefix; else runs and cleans up."""
    def q(*a):
        return subprocess.run([sys.executable, "-m", "wiseverify.cli", "qualify", *a],
                              capture_output=True, text=True, timeout=900)

    dest = f"s3://{bucket}/scratch/wv"
    no = q("--out", str(tmp_path / "a"), "--against", dest, "--endpoint-url", s3.url)
    assert no.returncode == 2 and "confirm with --allow-writes-to" in no.stderr
    s3.client().put_object(Bucket=bucket, Key="busy/x", Body=b"x")
    busy = q("--out", str(tmp_path / "b"), "--against", f"s3://{bucket}/busy",
             "--allow-writes-to", f"s3://{bucket}/busy", "--endpoint-url", s3.url)
    assert busy.returncode == 2 and "the prefix is not empty" in busy.stderr
    run = q("--out", str(tmp_path / "c"), "--against", dest, "--allow-writes-to",
            f"s3://{bucket}/scratch/", "--endpoint-url", s3.url)
    rec = json.loads((tmp_path / "c" / "qualification.json").read_text())
    by = {c["id"]: c for c in rec["checks"]}
    assert by["OQ-6"]["result"] == by["OQ-7"]["result"] == "PASS", run.stdout
    assert f"on {dest}/" in by["OQ-6"]["title"]
    left = s3.client().list_objects_v2(Bucket=bucket, Prefix="scratch/")
    assert left.get("KeyCount", 0) == 0  # what it wrote is removed
    assert "removed the fixture's" in run.stdout
