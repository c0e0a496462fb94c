"""Run the IQ and OQ checks and write the qualification record.

``QDIR`` gets ``qualification.json`` (every check, its requirements, result and
evidence files with their SHA-256), a self-contained ``qualification.html``
(the traceability matrix requirement -> checks -> result -> evidence, the
environment and the verdict) and a ``manifest.json`` in the run manifest's
hash-chained format, so ``wiseverify audit QDIR`` checks the record later.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import yaml

from wiseverify.qualify import checks as Q
from wiseverify.qualify.page import render


def requirements() -> dict[str, str]:
    text = resources.files("wiseverify.qualify").joinpath("requirements.yaml").read_text()
    return {str(k): str(v) for k, v in yaml.safe_load(text).items()}


def _timed(fn, *a) -> Q.Check:
    t0 = time.monotonic()
    try:
        c = fn(*a)
    except Exception as exc:  # a check that cannot run has failed, and says why
        name = getattr(fn, "__name__", "check")
        c = Q.Check(name, name, (), False, f"{type(exc).__name__}: {exc}")
    c.seconds = round(time.monotonic() - t0, 1)
    return c


def check_against(against: str, allow: str | None, endpoint_url: str | None) -> str | None:
    """Why ``--against`` cannot run (None when it can): the only mode that writes."""
    from wiseverify.core.s3 import S3ConfigError, S3Target

    try:
        t = S3Target.parse(against, endpoint_url)
    except S3ConfigError as exc:
        return f"--against: {exc}"
    if not t.prefix:
        return "--against needs a scratch prefix (s3://bucket/prefix), never a whole bucket"
    if not allow or not t.url.startswith(S3Target.parse(allow, endpoint_url).url):
        return (f"--against writes the fixture to {t.url}: confirm with --allow-writes-to "
                f"{t.url} (or a prefix above it)")
    try:
        c = Q.Endpoint(endpoint_url).client()
        page = c.list_objects_v2(Bucket=t.bucket, Prefix=t.prefix.rstrip("/"), MaxKeys=1)
    except Exception as exc:
        from wiseverify.core.s3 import error_text

        return f"--against {t.url}: {error_text(exc, 'ListObjectsV2')}"
    if page.get("KeyCount", 0):
        return f"--against {t.url}: the prefix is not empty; qualify only writes to an empty one"
    return None


def qualify(out: str | os.PathLike, say=print, against: str | None = None,
            allow: str | None = None, endpoint_url: str | None = None) -> int:
    """All checks into ``out`` (created; must not hold files); 0 when every check passed.

    With ``against`` (an empty scratch ``s3://bucket/prefix`` on the team's own
    endpoint, confirmed by ``allow``), the fixture also runs there, stored and
    read-back (OQ-6, OQ-7), with the team's credentials; its objects are deleted
    afterwards.
    """
    out = Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        print(f"wiseverify: error: --out {out} is not empty; qualify writes a new record",
              file=sys.stderr)
        return 2
    if against:
        why = check_against(against, allow, endpoint_url)
        if why:
            print(f"wiseverify: error: {why}", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    reqs = requirements()
    results: list[Q.Check] = []
    for fn in Q.IQ_CHECKS:
        results.append(_timed(fn, out))
        say(f"{results[-1].id} {'PASS' if results[-1].passed else 'FAIL'}  {results[-1].title}"
            f": {results[-1].detail}")
    if against:  # first, with the team's credentials, before the local endpoint's are set
        results += _against(out, against, endpoint_url, say)
    from wiseverify.demo.locals3 import FAKE_CREDENTIALS, LocalS3

    for k, v in FAKE_CREDENTIALS.items():
        os.environ[k] = v  # the local endpoint's; the team's own are never used here
    # the fixture's source tree holds a FIFO, a socket and a symlink: it lives outside the
    # record (which the manifest hashes) and is removed afterwards
    scratch = Path(tempfile.mkdtemp(prefix="wiseverify-qualify-"))
    with LocalS3(log_path=str(out / "endpoint.log")) as s3, \
            contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        fx = Q.Fixture(out, s3, scratch / "source")
        for fn, args in ((Q.oq_mode, ("stored",)), (Q.oq_mode, ("readback",)),
                         (Q.oq_resume, ()), (Q.oq_audit, ()), (Q.oq_read_only, ())):
            results.append(_timed(fn, fx, *args))
            r = results[-1]
            say(f"{r.id} {'PASS' if r.passed else 'FAIL'}  {r.title}: {r.detail}")
    passed = all(r.passed for r in results)
    record = {
        "tool": "wiseverify", "version": _version(), "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(), "verdict": "PASS" if passed else "FAIL",
        "environment": Q.environment(), "requirements": reqs,
        "checks": [{"id": r.id, "title": r.title, "requirements": list(r.requirements),
                    "result": "PASS" if r.passed else "FAIL", "detail": r.detail,
                    "seconds": r.seconds,
                    "evidence": {e: _sha(out / e) for e in r.evidence if (out / e).is_file()}}
                   for r in results],
    }
    record["matrix"] = {rid: [c["id"] for c in record["checks"] if rid in c["requirements"]]
                        for rid in reqs}
    (out / "qualification.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "qualification.html").write_text(render(record), encoding="utf-8")
    # the manifest of a run, over the record: run_id, verdict and every file's SHA-256
    (out / "summary.json").write_text(json.dumps({
        "run_id": f"qualify-{started.strftime('%Y%m%dT%H%M%SZ')}", "verdict": record["verdict"],
        "source": "wiseverify qualify", "destination": "local endpoint",
        "started": record["started"], "finished": record["finished"], "keys": 0,
        "counts": {}}, indent=2) + "\n")
    from wiseverify.report.manifest import write_manifest

    write_manifest(out, previous=None, use_env_key=True)
    say(f"qualification {record['verdict']}: {sum(r.passed for r in results)}/{len(results)} "
        f"checks passed; record in {out / 'qualification.html'}")
    return 0 if passed else 1


def _against(out: Path, against: str, endpoint_url: str | None, say) -> list[Q.Check]:
    from wiseverify.core.s3 import S3Target

    t = S3Target.parse(against, endpoint_url)
    ep = Q.Endpoint(endpoint_url)
    scratch = Path(tempfile.mkdtemp(prefix="wiseverify-qualify-against-"))
    results: list[Q.Check] = []
    fx = None
    try:
        fx = Q.Fixture(out, ep, scratch / "source", t.bucket, t.prefix + "oq/",
                       create_bucket=False)
        for mode in ("stored", "readback"):
            r = _timed(Q.oq_mode, fx, mode, ("OQ-6", "OQ-7"), f" on {t.url}")
            results.append(r)
            say(f"{r.id} {'PASS' if r.passed else 'FAIL'}  {r.title}: {r.detail}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        _clean_scratch(ep, t.bucket, t.prefix, say)
    return results


def _clean_scratch(ep, bucket: str, prefix: str, say) -> None:
    """Delete what the fixture wrote under the scratch prefix (it was empty before)."""
    c = ep.client()
    n = 0
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        if keys:
            c.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            n += len(keys)
    say(f"removed the fixture's {n} objects from s3://{bucket}/{prefix}")


def _version() -> str:
    from importlib import metadata

    return metadata.version("wiseverify")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()
