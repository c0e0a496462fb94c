"""Sign-off of a run: a signature verifies, a later change voids it, a wrong key is rejected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def wv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wiseverify.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_signoff(demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    alice, mallory = tmp_path / "alice.pem", tmp_path / "mallory.pem"
    assert wv("signoff", "--generate-key", str(alice)).returncode == 0
    assert wv("signoff", "--generate-key", str(mallory)).returncode == 0
    assert oct(alice.stat().st_mode & 0o777) == "0o600"
    assert wv("signoff", "--generate-key", str(alice)).returncode == 2  # never overwritten
    ok = wv("signoff", str(run), "--name", "Alice Reviewer", "--meaning", "reviewed",
            "--key", str(alice))
    assert ok.returncode == 0, ok.stderr
    rec = json.loads((run / "signatures.jsonl").read_text().splitlines()[0])
    assert rec["name"] == "Alice Reviewer" and rec["meaning"] == "reviewed"
    assert rec["algorithm"] == "ed25519" and rec["signed_at"].endswith("+00:00")
    trusted = tmp_path / "trusted.txt"
    trusted.write_text(Path(f"{alice}.pub").read_text())
    good = wv("audit", str(run), "--trusted-keys", str(trusted))
    assert good.returncode == 0, good.stdout
    assert "signature 1 (Alice Reviewer, reviewed" in good.stdout and "valid" in good.stdout
    # a signature with a key that is not trusted is rejected
    assert wv("signoff", str(run), "--name", "Alice Reviewer", "--meaning", "approved",
              "--key", str(mallory)).returncode == 0
    bad = wv("audit", str(run), "--trusted-keys", str(trusted))
    assert bad.returncode == 1 and "signature 2 (Alice Reviewer, approved" in bad.stdout
    assert "signed with a key that is not trusted" in bad.stdout
    # an altered record does not verify
    lines = (run / "signatures.jsonl").read_text().splitlines()
    (run / "signatures.jsonl").write_text(lines[0].replace("reviewed", "approved") + "\n")
    forged = wv("audit", str(run))
    assert forged.returncode == 1 and "does not verify (the record was altered)" in forged.stdout
    # a byte flipped in the run after signing voids the signature, named
    (run / "signatures.jsonl").write_text(lines[0] + "\n")
    victim = sorted((run / "reconciliation").glob("part-*.parquet"))[0]
    data = bytearray(victim.read_bytes())
    data[100] ^= 1
    victim.write_bytes(bytes(data))
    changed = wv("audit", str(run), "--trusted-keys", str(trusted))
    assert changed.returncode == 1
    assert "signature 1 (Alice Reviewer, reviewed" in changed.stdout
    assert "no longer covers the run, which changed after it was signed" in changed.stdout
    assert victim.name in changed.stdout
    # usage errors are one line
    none = wv("signoff", str(tmp_path / "nowhere"), "--name", "A", "--meaning", "reviewed",
              "--key", str(alice))
    assert none.returncode == 2 and "has no manifest.json" in none.stderr
