"""``wiseverify signoff``: a named person's electronic signature on a run (21 CFR Part 11).

A signature record says who signed, when (UTC), what the signature means
(``reviewed`` or ``approved``) and which run: the SHA-256 of its ``manifest.json``,
which in turn holds the SHA-256 of every file.  It is signed with Ed25519
(``cryptography``) and carries the signer's public key; records are appended
to ``RUN_DIR/signatures.jsonl``, which the manifest does not list (it is written
after it).

``wiseverify audit`` verifies every record: the signature over the record, the
key against ``--trusted-keys`` when given (a record signed with any other key
is rejected), and that the manifest it signed is the run's manifest now.  A
run changed after it was signed fails the audit on the changed file and names
every signature that no longer covers the run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from wiseverify.core.errors import ConfigError
from wiseverify.core.runio import write_bytes

SIGNATURES = "signatures.jsonl"
MEANINGS = ("reviewed", "approved")
_SIGNED_FIELDS = ("run_id", "name", "meaning", "signed_at", "manifest_sha256", "algorithm",
                  "public_key")


def _payload(rec: dict) -> bytes:
    return json.dumps({k: rec[k] for k in _SIGNED_FIELDS}, sort_keys=True,
                      separators=(",", ":")).encode()


def generate_key(path: str | os.PathLike) -> str:
    """A new Ed25519 key: the private key (PEM, mode 0600) at ``path``, the public one
    beside it (``path.pub``); returns the public key (base64)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    if p.exists():
        raise ConfigError(f"{p} exists: a signing key is never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = _public_b64(key)
    Path(f"{p}.pub").write_text(pub + "\n")
    return pub


def _public_b64(key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _load_private(path: str | os.PathLike):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--key {path}: not a readable Ed25519 private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"--key {path}: an Ed25519 key is needed")
    return key


def sign(run_dir: str | os.PathLike, name: str, meaning: str, key_path: str) -> dict:
    """Append a signature record for the run as it is now; returns the record."""
    run_dir = Path(run_dir)
    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"{run_dir} has no manifest.json: only a finished run can be signed")
    if meaning not in MEANINGS:
        raise ConfigError(f"--meaning must be one of {', '.join(MEANINGS)}")
    if not name.strip():
        raise ConfigError("--name must name the person signing")
    key = _load_private(key_path)
    rec = {"run_id": json.loads(manifest.read_text()).get("run_id"), "name": name.strip(),
           "meaning": meaning, "signed_at": datetime.now(UTC).isoformat(),
           "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
           "algorithm": "ed25519", "public_key": _public_b64(key)}
    rec["signature"] = base64.b64encode(key.sign(_payload(rec))).decode()
    path = run_dir / SIGNATURES
    old = path.read_bytes() if path.is_file() else b""
    write_bytes(path, old + (json.dumps(rec, sort_keys=True) + "\n").encode())
    return rec


def verify_all(run_dir: str | os.PathLike, trusted: set[str] | None = None
               ) -> tuple[list[str], list[str]]:
    """(problems, notes) for every signature record of the run."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    run_dir = Path(run_dir)
    path = run_dir / SIGNATURES
    if not path.is_file():
        return [], []
    now = hashlib.sha256((run_dir / "manifest.json").read_bytes()).hexdigest() \
        if (run_dir / "manifest.json").is_file() else None
    problems, notes = [], []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            who = f"signature {no} ({rec['name']}, {rec['meaning']}, {rec['signed_at']})"
            pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(rec["public_key"]))
            pub.verify(base64.b64decode(rec["signature"]), _payload(rec))
        except InvalidSignature:
            problems.append(f"{who}: does not verify (the record was altered)")
            continue
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"signature {no}: unreadable record ({exc})")
            continue
        if trusted is not None and rec["public_key"] not in trusted:
            problems.append(f"{who}: signed with a key that is not trusted")
            continue
        if rec["manifest_sha256"] != now:
            problems.append(f"{who}: signs a manifest that is no longer the run's "
                            "(the run changed after it was signed)")
            continue
        notes.append(f"{who}: valid, covers manifest {now[:16]}…")
    return problems, notes


def read_trusted(path: str | os.PathLike) -> set[str]:
    """Public keys (base64, one per line, ``#`` comments) a signature must be made with."""
    return {ln.split()[0] for ln in Path(path).read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")}
