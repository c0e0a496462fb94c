"""The audit manifest: every output of a run hashed, signed and chained.

Written last, so it covers report.html too; chained to the previous run of the same
root and destination so that a run that was removed or altered is noticed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import platform
import re
import socket
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.parquet as pq

from wiseverify import __version__
from wiseverify.core.runio import write_text

MANIFEST = "manifest.json"
FORMAT = "wiseverify-manifest/1"
ENV_KEY = "WISEVERIFY_AUDIT_HMAC_KEY"
SIG_ALGORITHM = "HMAC-SHA256"

#: packages whose versions decide what a run computed
PACKAGES = ("dask", "distributed", "pandas", "pyarrow", "numpy", "fsspec", "s3fs",
            "aiobotocore", "botocore", "boto3", "awscrt", "dask-jobqueue", "pyyaml")

_SECRET_NAME = re.compile(
    r"(secret|passw|token|credential|private|hmac|signature|session|access.?key|api.?key|auth)",
    re.IGNORECASE,
)
_SECRET_QUERY = re.compile(r"(signature|credential|token|secret|key)", re.IGNORECASE)
REDACTED = "***"


# --- hashing ---------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike, bufsize: int = 8 << 20) -> str:
    """Hex SHA-256 of a file, streamed (inventories of a large run are gigabytes)."""
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _hash_files(run_dir: Path, names: list[str]) -> dict[str, dict]:
    """``{name: {sha256, size}}`` of every file, several at a time.

    hashlib lets go of the GIL while it hashes, so the run's outputs (a few
    hundred megabytes per million keys: inventories, reconciliation, lists) are
    hashed on every core of the driver's host instead of one: the manifest is
    the last step of a run, and nothing else is running then.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(rel: str) -> dict:
        p = run_dir / rel
        return {"sha256": sha256_file(p), "size": p.stat().st_size}

    if len(names) < 2:
        return {rel: one(rel) for rel in names}
    # the largest first, so no big file starts last
    order = sorted(names, key=lambda rel: -(run_dir / rel).stat().st_size)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(names))) as pool:
        got = dict(zip(order, pool.map(one, order), strict=True))
    return {rel: got[rel] for rel in names}


def run_files(run_dir: str | os.PathLike) -> list[str]:
    """Every file the run left, relative and ``/``-separated, except the manifest itself.

    Hidden names are in-progress temp files of atomic writes, never outputs.
    """
    root = Path(run_dir)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not os.path.isfile(os.path.join(dirpath, name)) or \
                    os.path.islink(os.path.join(dirpath, name)):
                continue  # a FIFO or socket would block a hash; a link is not an output
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if rel not in (MANIFEST, "signatures.jsonl"):  # both are written after the run
                out.append(rel)
    return sorted(out)


def _inventory_digest(files: dict[str, dict], side: str) -> dict:
    """One digest over an inventory's files (name and hash), so one line names a side."""
    prefix = f"inventory/{side}/"
    names = sorted(n for n in files if n.startswith(prefix))
    h = hashlib.sha256()
    for n in names:
        h.update(f"{n[len(prefix):]}\0{files[n]['sha256']}\n".encode())
    return {"files": len(names), "sha256": h.hexdigest()}


def _parquet_rows(run_dir: Path, names: list[str]) -> int:
    rows = 0
    for n in names:
        # a damaged file is reported by its hash, not here
        with contextlib.suppress(Exception):
            rows += pq.read_metadata(run_dir / n).num_rows
    return rows


# --- secrets ---------------------------------------------------------------------------


def _scrub_url(text: str) -> str:
    if "://" not in text:
        return text
    try:
        u = urlsplit(text)
    except ValueError:
        return text
    netloc = u.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    query = u.query
    if query and _SECRET_QUERY.search(query):
        query = REDACTED
    return urlunsplit((u.scheme, netloc, u.path, query, u.fragment))


def redact(obj: object) -> object:
    """A copy of ``obj`` with secret-looking fields and URL credentials replaced.

    The manifest is kept for years and shown to auditors: nothing in it may
    open a bucket.
    """
    if isinstance(obj, dict):
        return {k: (REDACTED if _SECRET_NAME.search(str(k)) and v not in (None, "")
                    else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return _scrub_url(obj)
    return obj


# --- environment -----------------------------------------------------------------------


def dependency_versions() -> dict[str, str | None]:
    """Installed versions on the driver of the packages that shape the results."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe_cluster(client) -> dict:
    """Scheduler, workers (address, host, threads, memory) and their package versions.

    Workers on other hosts may run other versions than the driver; the manifest
    records each distinct set with the workers that had it.
    """
    out: dict = {}
    try:
        info = client.scheduler_info(n_workers=-1)
        out["scheduler"] = info.get("address")
        out["workers"] = [
            {"address": addr, "host": w.get("host"), "name": str(w.get("name")),
             "nthreads": w.get("nthreads"), "memory_limit": w.get("memory_limit")}
            for addr, w in sorted(info.get("workers", {}).items())
        ]
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    try:
        versions = client.get_versions(check=False)
        groups: dict[str, dict] = {}
        for addr, v in sorted((versions.get("workers") or {}).items()):
            pk = {k: v.get("packages", {}).get(k) for k in ("python", "dask", "distributed",
                                                             "numpy", "pandas")}
            pk["platform"] = " ".join(str(x) for x in (v.get("host", {}).get("OS"),
                                                       v.get("host", {}).get("OS-release")))
            sig = json.dumps(pk, sort_keys=True)
            groups.setdefault(sig, {"packages": pk, "workers": []})["workers"].append(addr)
        out["worker_versions"] = list(groups.values())
    except Exception as exc:
        out["worker_versions_error"] = f"{type(exc).__name__}: {exc}"
    return out


# --- chain and signature ---------------------------------------------------------------


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def find_previous(run_dir: str | os.PathLike, started: str | None) -> Path | None:
    """The newest run under the same parent that started before this one and has a manifest."""
    run_dir = Path(run_dir).absolute()
    me = _parse_time(started)
    best: tuple[datetime, Path] | None = None
    try:
        siblings = list(run_dir.parent.iterdir())
    except OSError:
        return None
    for d in siblings:
        if d == run_dir or not (d / MANIFEST).is_file():
            continue
        try:
            t = _parse_time(json.loads((d / MANIFEST).read_text()).get("started"))
        except (OSError, ValueError):
            continue
        if t is None or (me is not None and t >= me):
            continue
        if best is None or t > best[0]:
            best = (t, d)
    return best[1] if best else None


def _canonical(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _key_id(key: bytes) -> str:
    # names the key without revealing anything the signature does not already
    return hmac.new(key, b"wiseverify audit key id", hashlib.sha256).hexdigest()[:16]


def sign(manifest: dict, key: bytes) -> dict:
    """The signature block for ``manifest`` (HMAC-SHA256 over its canonical JSON)."""
    return {"algorithm": SIG_ALGORITHM, "key_id": _key_id(key),
            "value": hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()}


def key_from_env() -> bytes | None:
    """The signing key from ``WISEVERIFY_AUDIT_HMAC_KEY`` (UTF-8), or None when unset."""
    val = os.environ.get(ENV_KEY)
    return val.encode() if val else None


# --- writing ---------------------------------------------------------------------------


def build_manifest(run_dir: str | os.PathLike, *, previous: str | os.PathLike | None = None,
                   cluster: dict | None = None, key: bytes | None = None) -> dict:
    """The manifest of a finished run directory (summary.json must exist)."""
    run_dir = Path(run_dir).absolute()
    summary = json.loads((run_dir / "summary.json").read_text())
    run_meta = {}
    if (run_dir / "run.json").is_file():
        run_meta = json.loads((run_dir / "run.json").read_text())

    files = _hash_files(run_dir, run_files(run_dir))
    inventories = {}
    for side in ("src", "dst"):
        inv = _inventory_digest(files, side)
        inv["rows"] = _parquet_rows(run_dir, [n for n in files
                                              if n.startswith(f"inventory/{side}/")
                                              and n.endswith(".parquet")])
        inventories[side] = inv

    if previous is not None:
        prev_dir = Path(previous).absolute()
        if prev_dir.name == MANIFEST:
            prev_dir = prev_dir.parent
        if not (prev_dir / MANIFEST).is_file():
            raise FileNotFoundError(f"previous run {previous} has no {MANIFEST}")
    else:
        prev_dir = find_previous(run_dir, summary.get("started"))
    prev = None
    if prev_dir is not None:
        pm = prev_dir / MANIFEST
        prev = {"run_id": json.loads(pm.read_text()).get("run_id"),
                "path": os.path.relpath(prev_dir, run_dir),
                "manifest_sha256": sha256_file(pm)}

    manifest = {
        "format": FORMAT,
        "run_id": summary.get("run_id"),
        "run_dir": run_dir.name,
        "source": summary.get("source"),
        "destination": summary.get("destination"),
        "started": summary.get("started"),
        "finished": summary.get("finished"),
        "manifest_written": datetime.now(UTC).isoformat(),
        "verdict": summary.get("verdict"),
        "keys": summary.get("keys"),
        "discrepancies": summary.get("discrepancies"),
        "counts": summary.get("counts", {}),
        "bytes": summary.get("bytes", {}),
        "config": redact(run_meta.get("config", {})),
        "software": {
            "wiseverify": run_meta.get("version", __version__),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "packages": dependency_versions(),
        },
        "hosts": {
            "driver": summary.get("driver_host") or socket.gethostname(),
            "manifest_host": socket.gethostname(),
            "workers": summary.get("workers", []),
            "cluster": cluster or {},
        },
        "files": files,
        "inventories": inventories,
        "previous": prev,
    }
    if key:
        manifest["signature"] = sign(manifest, key)
    return manifest


def write_manifest(run_dir: str | os.PathLike, *, previous: str | os.PathLike | None = None,
                   cluster: dict | None = None, key: bytes | None = None,
                   use_env_key: bool = True) -> Path:
    """Write ``RUN_DIR/manifest.json`` atomically; signs it when a key is given or in the env."""
    run_dir = Path(run_dir)
    if key is None and use_env_key:
        key = key_from_env()
    manifest = build_manifest(run_dir, previous=previous, cluster=cluster, key=key)
    write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return run_dir / MANIFEST
