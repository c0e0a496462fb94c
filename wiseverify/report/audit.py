"""Audit trail: ``manifest.json`` per run, and ``wiseverify audit RUN_DIR`` to check it.

In a GxP setting a validator must show, months later, that a report is exactly
what a run produced and that no run was quietly removed from the history.  So
every run writes a manifest with

* the run id, the configuration (secrets removed), software versions, the
  driver host and every worker, start and end, counts per status;
* the SHA-256 and size of every file of the run directory, including both
  inventories (``inventory/src`` and ``inventory/dst``), plus one digest per
  inventory over its files;
* the SHA-256 of the previous run's manifest (the newest earlier run under the
  same parent directory, or one named explicitly), so the runs form a hash
  chain: editing or deleting an older run breaks the link of the next one;
* optionally an HMAC-SHA256 over the manifest with a key from
  ``WISEVERIFY_AUDIT_HMAC_KEY``, so the manifest itself cannot be rewritten by
  someone without the key.

:func:`audit` recomputes all of it and lists every modified, missing or
unlisted file and every broken chain link.  ``wiseverify report`` rebuilds the
outputs byte for byte, so it does not invalidate a manifest.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from wiseverify.report.manifest import (
    ENV_KEY,
    FORMAT,
    MANIFEST,
    SIG_ALGORITHM,
    _inventory_digest,
    key_from_env,
    run_files,
    sha256_file,
    sign,
)

# --- checking --------------------------------------------------------------------------


@dataclass
class AuditResult:
    """What :func:`audit` found: ``problems`` fail the audit, ``notes`` do not."""

    run_dir: str
    run_id: str | None = None
    files_checked: int = 0
    chain: list[str] = field(default_factory=list)  # run ids walked, newest first
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    signature: str = "absent"  # absent | valid | invalid | unchecked

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"run_dir": self.run_dir, "run_id": self.run_id, "ok": self.ok,
                "files_checked": self.files_checked, "chain": self.chain,
                "signature": self.signature, "problems": self.problems, "notes": self.notes}


def load_manifest(run_dir: str | os.PathLike) -> dict:
    """Read ``RUN_DIR/manifest.json``; FileNotFoundError or ValueError when unusable."""
    data = json.loads((Path(run_dir) / MANIFEST).read_text())
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{MANIFEST} is not a {FORMAT} manifest")
    return data


def _check_files(run_dir: Path, manifest: dict, res: AuditResult, label: str = "") -> None:
    recorded: dict[str, dict] = manifest.get("files", {})
    present = set(run_files(run_dir))
    for rel in sorted(recorded):
        want = recorded[rel]
        p = run_dir / rel
        if rel not in present:
            res.problems.append(f"{label}missing: {rel}")
            continue
        got = sha256_file(p)
        res.files_checked += 1
        if got != want.get("sha256"):
            res.problems.append(f"{label}modified: {rel} (sha256 {got}, manifest "
                                f"{want.get('sha256')})")
    for rel in sorted(present - set(recorded)):
        res.problems.append(f"{label}unlisted: {rel} (not in the manifest)")
    for side in ("src", "dst"):
        want = manifest.get("inventories", {}).get(side, {}).get("sha256")
        got = _inventory_digest(recorded, side)["sha256"]
        if want is not None and want != got:
            res.problems.append(f"{label}inventory/{side} digest in the manifest does not match "
                                f"its file list")


def _check_counts(run_dir: Path, manifest: dict, res: AuditResult) -> None:
    """Recount statuses from the reconciliation table: the numbers a report quotes."""
    counts: dict[str, int] = {}
    for f in sorted((run_dir / "reconciliation").glob("part-*.parquet")):
        try:
            col = pq.read_table(f, columns=["status"]).column("status").to_pylist()
        except Exception as exc:
            res.problems.append(f"unreadable: {f.relative_to(run_dir).as_posix()} ({exc})")
            return
        for st in col:
            counts[st] = counts.get(st, 0) + 1
    want = {k: v for k, v in manifest.get("counts", {}).items() if v}
    if counts != want:
        diff = sorted(k for k in set(counts) | set(want) if counts.get(k, 0) != want.get(k, 0))
        res.problems.append("counts per status differ from the reconciliation table: " + ", ".join(
            f"{k} manifest {want.get(k, 0)} table {counts.get(k, 0)}" for k in diff))


def _check_signature(manifest: dict, key: bytes | None, require: bool, res: AuditResult) -> None:
    sig = manifest.get("signature")
    if not sig:
        res.signature = "absent"
        if key is not None or require:
            res.problems.append("manifest is not signed (a signing key is in use)")
        return
    if key is None:
        res.signature = "unchecked"
        msg = f"manifest is signed (key id {sig.get('key_id')}); set {ENV_KEY} to check it"
        (res.problems if require else res.notes).append(msg)
        return
    want = sign(manifest, key)
    if sig.get("algorithm") == SIG_ALGORITHM and hmac.compare_digest(
            str(sig.get("value", "")), want["value"]):
        res.signature = "valid"
    else:
        res.signature = "invalid"
        extra = "" if sig.get("key_id") == want["key_id"] else " (signed with another key)"
        res.problems.append(f"manifest signature does not verify{extra}")


def _walk_chain(run_dir: Path, manifest: dict, res: AuditResult, deep: bool) -> None:
    seen = {run_dir.resolve()}
    cur_dir, cur = run_dir, manifest
    while cur.get("previous"):
        link = cur["previous"]
        prev_dir = (cur_dir / link.get("path", "")).resolve()
        who = f"run {cur.get('run_id')} -> {link.get('run_id')}"
        if prev_dir in seen:
            res.problems.append(f"broken chain link: {who} loops back to {prev_dir}")
            return
        seen.add(prev_dir)
        pm = prev_dir / MANIFEST
        if not pm.is_file():
            res.problems.append(f"broken chain link: {who}: {pm} is missing")
            return
        got = sha256_file(pm)
        if got != link.get("manifest_sha256"):
            res.problems.append(f"broken chain link: {who}: {pm} was modified (sha256 {got}, "
                                f"recorded {link.get('manifest_sha256')})")
            return
        try:
            prev = load_manifest(prev_dir)
        except (OSError, ValueError) as exc:
            res.problems.append(f"broken chain link: {who}: {exc}")
            return
        res.chain.append(str(prev.get("run_id")))
        if deep:
            _check_files(prev_dir, prev, res, label=f"[{prev.get('run_id')}] ")
        cur_dir, cur = prev_dir, prev


def audit(run_dir: str | os.PathLike, *, key: bytes | None = None,
          require_signature: bool = False, chain: bool = True, deep: bool = False,
          trusted: set[str] | None = None) -> AuditResult:
    """Recompute every hash of a run (and walk its chain); problems make the audit fail.

    ``deep`` also re-hashes the files of every earlier run in the chain.
    """
    run_dir = Path(run_dir).absolute()
    res = AuditResult(run_dir=str(run_dir))
    manifest = load_manifest(run_dir)
    res.run_id = manifest.get("run_id")
    res.chain.append(str(res.run_id))
    _check_signature(manifest, key, require_signature, res)
    _check_files(run_dir, manifest, res)
    _check_counts(run_dir, manifest, res)
    _check_signoffs(run_dir, res, trusted)
    if chain:
        _walk_chain(run_dir, manifest, res, deep)
    if not manifest.get("previous"):
        res.notes.append("first run of its chain (no previous manifest)")
    return res


def _check_signoffs(run_dir: Path, res: AuditResult, trusted: set[str] | None) -> None:
    """Every sign-off record (signoff.py); a run changed since it was signed voids them."""
    from wiseverify.report.signoff import verify_all

    changed = list(res.problems)
    problems, notes = verify_all(run_dir, trusted)
    res.problems += problems
    for n in notes:
        if changed:  # the files no longer match the manifest the signature covers
            who = n.split(": valid", 1)[0]
            res.problems.append(f"{who}: no longer covers the run, which changed after it "
                                f"was signed ({changed[0]})")
        else:
            res.notes.append(n)


def format_audit(res: AuditResult) -> str:
    """Human-readable audit result; the last line is one grep-able verdict."""
    lines = [f"audit of {res.run_dir} (run {res.run_id})",
             f"files re-hashed: {res.files_checked:,}",
             f"signature: {res.signature}",
             f"chain: {' <- '.join(res.chain)}"]
    lines += [f"PROBLEM {p}" for p in res.problems]
    lines += [f"note: {n}" for n in res.notes]
    verdict = "INTACT" if res.ok else f"FAILED ({len(res.problems)} problems)"
    lines.append(f"wiseverify audit {verdict} run={res.run_id}")
    return "\n".join(lines)


def main_audit(run_dir: str, *, require_signature: bool = False, deep: bool = False,
               as_json: bool = False, out=None, trusted_keys: str | None = None) -> int:
    """``wiseverify audit``: 0 intact, 1 any problem, 2 no usable manifest."""
    out = out or sys.stdout
    trusted = None
    if trusted_keys:
        from wiseverify.report.signoff import read_trusted

        try:
            trusted = read_trusted(trusted_keys)
        except OSError as exc:
            print(f"wiseverify: error: --trusted-keys {trusted_keys}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    try:
        res = audit(run_dir, key=key_from_env(), require_signature=require_signature,
                    deep=deep, trusted=trusted)
    except FileNotFoundError:
        print(f"wiseverify: error: {run_dir} has no {MANIFEST}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"wiseverify: error: {run_dir}/{MANIFEST}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(res.to_dict(), indent=2) if as_json else format_audit(res), file=out)
    return 0 if res.ok else 1

