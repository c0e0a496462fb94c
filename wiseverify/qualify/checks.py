"""The IQ and OQ checks of ``wiseverify qualify``, each naming the requirements it covers.

Before a regulated team relies on a verdict, its validation group needs the tool
shown installed as released (IQ) and working as specified on their own system
(OQ).  Every check here runs the installed package as a user would: the OQ
runs go through ``python -m wiseverify.cli`` in subprocesses, against a local S3
endpoint (moto) started for the purpose and the embedded Dask cluster, on the
demo fixture whose expected status per key is known.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

#: a status forced wrong in the pipeline, honoured only under pytest (the test of a failing OQ)
FORCE_ENV = "WISEVERIFY_TEST_FORCE_STATUS"


@dataclass
class Check:
    id: str
    title: str
    requirements: tuple[str, ...]
    passed: bool = False
    detail: str = ""
    evidence: list[str] = field(default_factory=list)  # files under the output directory
    seconds: float = 0.0


def _sha_b64(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(
        b"=").decode()


# --- IQ --------------------------------------------------------------------------------

def iq_versions(out: Path) -> Check:
    """The package version and the version of every dependency it declares."""
    c = Check("IQ-1", "package and dependency versions", ("WV-013",))
    dist = metadata.distribution("wiseverify")
    rows = {"wiseverify": dist.version}
    missing = []
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        name = re.split(r"[ ;<>=!~\[]", req, maxsplit=1)[0]
        try:
            rows[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    (out / "iq-versions.json").write_text(json.dumps(rows, indent=2) + "\n")
    c.evidence.append("iq-versions.json")
    c.passed = not missing
    c.detail = (f"wiseverify {dist.version}; {len(rows) - 1} dependencies installed"
                + (f"; missing: {', '.join(missing)}" if missing else ""))
    return c


def iq_record(out: Path) -> Check:
    """Every installed file against the SHA-256 the wheel's RECORD lists for it."""
    c = Check("IQ-2", "installed files match the wheel's RECORD", ("WV-013",))
    dist = metadata.distribution("wiseverify")
    # the package's own files (scripts that pip writes into bin/ at install time depend on
    # the installer's layout: left out)
    files = [f for f in dist.files or [] if f.hash is not None and not str(f).startswith("..")]
    ours = [f for f in files if str(f).startswith("wiseverify/")]
    bad, lines = [], []
    for f in files:
        p = Path(f.locate())
        if not p.is_file():
            bad.append(f"{f}: missing")
            continue
        got = _sha_b64(p)
        if f.hash.mode != "sha256" or got != f.hash.value:
            bad.append(f"{f}: modified (sha256 {got} != {f.hash.value})")
        lines.append(f"{f}\t{got}")
    (out / "iq-record.txt").write_text("\n".join(lines) + "\n")
    c.evidence.append("iq-record.txt")
    if not ours:
        c.detail = ("not a release install: RECORD lists no package file (an editable or "
                    "source-tree install); install the wheel to qualify it")
        return c
    c.passed = not bad
    c.detail = f"{len(files)} files checked" + (f"; {'; '.join(bad[:10])}" if bad else "")
    return c


def iq_extensions(out: Path) -> Check:
    """The C extensions present and computing known answers."""
    c = Check("IQ-3", "C extensions present, known answers", ("WV-013", "WV-003"))
    problems, facts = [], {}
    from awscrt import checksums

    crc = checksums.crc64nvme(b"123456789")
    facts["crc64nvme('123456789')"] = f"{crc:016x}"
    if crc != 0xAE8B14860A799888:
        problems.append(f"CRC64NVME of '123456789' is {crc:016x}, not ae8b14860a799888")
    try:
        from wiseverify.core import _md5mb
        from wiseverify.core import md5lanes as M

        vectors = {b"": "d41d8cd98f00b204e9800998ecf8427e",
                   b"abc": "900150983cd24fb0d6963f7d28e17f72",
                   b"message digest": "f96b697d7cb7938d525a2f31aaf161d0",
                   b"1234567890" * 8: "57edf4a22be3c955ac49da2e2107b67a"}
        for k in _md5mb.kernels():
            lanes = _md5mb.MD5Lanes(k)
            first = lanes.new(len(vectors))
            lanes.update([(first + i, v) for i, v in enumerate(vectors)], finish=True)
            got = [lanes.digest(first + i).hex() for i in range(len(vectors))]
            if got != list(vectors.values()):
                problems.append(f"MD5 kernel {k} fails RFC 1321 vectors")
        facts["md5_kernels"] = _md5mb.all_kernels()
        facts["md5_kernel_in_use"] = M.kernel()
    except ImportError:
        problems.append("wiseverify.core._md5mb is not built")
    try:
        import pyarrow as pa
        import pyarrow.compute as pc

        from wiseverify.core import _fastkeys  # noqa: F401
        from wiseverify.core import keys as K

        keys = pa.array(["b", "a/b", "a", "a/b/c", "ä", "A", "a b", "", "zz" * 40])
        if K.sort_order(keys).to_pylist() != pc.sort_indices(keys).to_pylist():
            problems.append("the C key sort disagrees with pyarrow's order")
    except ImportError:
        problems.append("wiseverify.core._fastkeys is not built")
    if sys.platform.startswith("linux"):
        try:
            from wiseverify.inventory import _fastwalk  # noqa: F401
        except ImportError:
            problems.append("wiseverify.inventory._fastwalk is not built")
    (out / "iq-extensions.json").write_text(json.dumps(facts, indent=2) + "\n")
    c.evidence.append("iq-extensions.json")
    c.passed = not problems
    c.detail = "; ".join(problems) or "CRC64NVME, MD5 (every kernel) and key sort as specified"
    return c


def environment() -> dict:
    """Python, OS and CPU, for the record."""
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = sorted(set(line.split(":", 1)[1].split()) &
                                   {"avx2", "avx512f", "sha_ni", "pclmulqdq", "sse4_2"})
                    break
    except OSError:
        pass
    return {"python": sys.version.split()[0], "executable": sys.executable,
            "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "cpu_flags": flags, "hostname": platform.node()}


# --- OQ --------------------------------------------------------------------------------

class Fixture:
    """The demo tree on a local endpoint; and the CLI, as a user runs it."""

    def __init__(self, out: Path, s3, source: Path, bucket: str = "qualify",
                 prefix: str = "oq/", create_bucket: bool = True):
        self.out, self.s3, self.source = out, s3, source
        from wiseverify.demo.tree import build_fixture

        self.bucket, self.prefix = bucket, prefix
        self.expect = build_fixture(source, s3, self.bucket, self.prefix,
                                    create_bucket=create_bucket)
        self.dest = f"s3://{self.bucket}/{self.prefix}"
        self.log_mark = self._log_size()

    def _log_size(self) -> int:
        p = Path(self.s3.log_path) if getattr(self.s3, "log_path", None) else None
        return p.stat().st_size if p and p.is_file() else 0

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "wiseverify.cli", *args],
                              capture_output=True, text=True, timeout=timeout)

    def statuses(self, run: str) -> dict[str, str]:
        import pyarrow.dataset as ds

        t = ds.dataset(self.out / run / "reconciliation").to_table(columns=["key", "status"])
        return dict(zip(t.column("key").to_pylist(), t.column("status").to_pylist(),
                        strict=True))

    def compare(self, run: str) -> list[str]:
        got = self.statuses(run)
        wrong = [f"{k!r}: expected {v}, got {got.get(k)}" for k, v in sorted(self.expect.items())
                 if got.get(k) != v]
        wrong += [f"{k!r}: a row the fixture does not have ({v})" for k, v in got.items()
                  if k not in self.expect]
        return wrong


def _write_statuses(fx: Fixture, run: str, name: str) -> str:
    rows = [{"key": k, "expected": v, "got": fx.statuses(run).get(k)}
            for k, v in sorted(fx.expect.items())]
    (fx.out / name).write_text(json.dumps(rows, indent=1) + "\n")
    return name


class Endpoint:
    """The team's own S3-compatible endpoint, through the standard AWS credential chain."""

    def __init__(self, url: str | None):
        self.url = url
        self.log_path = None

    def client(self, checksums: bool = False):
        import boto3
        from botocore.config import Config

        cfg = Config(request_checksum_calculation="when_supported" if checksums
                     else "when_required", response_checksum_validation="when_required")
        return boto3.client("s3", endpoint_url=self.url, config=cfg)


def oq_mode(fx: Fixture, mode: str, ids: tuple[str, str] = ("OQ-1", "OQ-2"),
            where: str = "") -> Check:
    reqs = ("WV-001", "WV-002", "WV-003", "WV-004", "WV-005", "WV-006", "WV-007", "WV-008",
            "WV-014") + (("WV-010",) if mode == "readback" else ())
    c = Check(ids[0] if mode == "stored" else ids[1],
              f"the fixture through the pipeline, {mode} mode{where}: every status as expected",
              reqs)
    run = f"run-{mode}" + ("-against" if where else "")
    extra = ("--endpoint-url", fx.s3.url) if fx.s3.url else ()
    proc = fx.cli("verify", str(fx.source), fx.dest, "--out", str(fx.out / run),
                  "--workers", "2", "--quiet", "--mode", mode, *extra)
    return _judge(fx, c, run, proc)


def _judge(fx: Fixture, c: Check, run: str, proc) -> Check:
    summary = json.loads((fx.out / run / "summary.json").read_text()) \
        if (fx.out / run / "summary.json").is_file() else {}
    wrong = fx.compare(run) if summary else [f"no run: {proc.stderr.strip()}"]
    counts = {}
    for v in fx.statuses(run).values() if summary else ():
        counts[v] = counts.get(v, 0) + 1
    if summary and {k: v for k, v in summary["counts"].items() if v} != counts:
        wrong.append(f"summary counts {summary['counts']} != table {counts}")
    if proc.returncode != 1:
        wrong.append(f"exit code {proc.returncode}, expected 1 (the fixture has discrepancies)")
    unearned = [k for k, v in fx.statuses(run).items()
                if v == "MATCH" and not _verified(fx, run, k)] if summary else []
    wrong += [f"{k!r}: MATCH without evidence" for k in unearned]
    c.evidence += [_write_statuses(fx, run, f"oq-{run[4:]}-statuses.json")] \
        if summary else []
    c.evidence += [f"{run}/summary.json", f"{run}/manifest.json"] if summary else []
    c.passed = not wrong
    c.detail = ("; ".join(wrong[:8]) if wrong else
                f"{len(fx.expect)} keys, each with its expected status; "
                f"{summary.get('discrepancies')} discrepancies; exit 1")
    return c


def _verified(fx: Fixture, run: str, key: str) -> bool:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    t = ds.dataset(fx.out / run / "reconciliation").to_table(
        columns=["key", "verified_by"], filter=pc.field("key") == key)
    return t.num_rows == 1 and t.column("verified_by")[0].as_py() is not None


def oq_resume(fx: Fixture) -> Check:
    c = Check("OQ-3", "a run killed mid-way and resumed gives the same table", ("WV-011",))
    run = fx.out / "run-resume"
    argv = [sys.executable, "-m", "wiseverify.cli", "verify", str(fx.source), fx.dest,
            "--out", str(run), "--endpoint-url", fx.s3.url, "--workers", "2", "--quiet",
            "--partitions", "8"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    killed = False
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        done = list((run / "reconciliation").glob("part-*.parquet"))
        if done:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, at once
            killed = True
            break
        time.sleep(0.05)
    proc.wait()
    n_before = len(list((run / "reconciliation").glob("part-*.parquet")))
    res = fx.cli("verify", "--resume", str(run), "--endpoint-url", fx.s3.url, "--workers",
                 "2", "--quiet")
    wrong = fx.compare("run-resume") if (run / "summary.json").is_file() else [
        f"resume failed: {res.stderr.strip()}"]
    if not killed:
        wrong.append("the run finished before it could be killed: the check proved nothing")
    summary = json.loads((run / "summary.json").read_text()) if not wrong else {}
    reused = (summary.get("resumed") or {}).get("partitions_reused", 0)
    c.passed = not wrong and reused >= 1
    c.evidence += ["run-resume/summary.json"] if summary else []
    c.detail = ("; ".join(wrong[:8]) if wrong else
                f"killed with {n_before} of 8 partitions written; the resumed run kept "
                f"{reused} and every status is as expected")
    return c


def oq_audit(fx: Fixture) -> Check:
    c = Check("OQ-4", "the audit passes on the run and names a file changed after it",
              ("WV-012",))
    clean = fx.cli("audit", str(fx.out / "run-stored"))
    copy = fx.out / "run-tampered"
    shutil.copytree(fx.out / "run-stored", copy)
    victim = sorted((copy / "reconciliation").glob("part-*.parquet"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    tampered = fx.cli("audit", str(copy))
    rel = victim.relative_to(copy).as_posix()
    (fx.out / "oq-audit.txt").write_text(f"$ wiseverify audit run-stored -> {clean.returncode}\n"
                                         f"{clean.stdout}\n$ wiseverify audit run-tampered -> "
                                         f"{tampered.returncode}\n{tampered.stdout}")
    c.evidence.append("oq-audit.txt")
    c.passed = clean.returncode == 0 and tampered.returncode == 1 and rel in tampered.stdout
    c.detail = (f"clean run: exit {clean.returncode}; one bit flipped in {rel}: exit "
                f"{tampered.returncode}" + ("" if c.passed else f"; {tampered.stdout[-300:]}"))
    return c


def oq_read_only(fx: Fixture) -> Check:
    c = Check("OQ-5", "the runs sent only read requests", ("WV-009",))
    log = Path(fx.s3.log_path)
    text = log.read_bytes()[fx.log_mark:].decode("utf-8", "replace")
    methods: dict[str, int] = {}
    for m in re.finditer(r'"(GET|HEAD|PUT|POST|DELETE|PATCH) ', text):
        methods[m.group(1)] = methods.get(m.group(1), 0) + 1
    (fx.out / "oq-requests.json").write_text(json.dumps(methods, indent=2) + "\n")
    c.evidence.append("oq-requests.json")
    writes = {k: v for k, v in methods.items() if k not in ("GET", "HEAD")}
    c.passed = bool(methods) and not writes
    c.detail = (f"requests by method after the fixture was uploaded: {methods}"
                + (f"; WRITES: {writes}" if writes else ""))
    return c


#: every check, in order, and the requirements each covers (read by the test that proves
#: every requirement is exercised)
IQ_CHECKS: tuple[Callable[[Path], Check], ...] = (iq_versions, iq_record, iq_extensions)
COVERAGE = {"IQ-1": ("WV-013",), "IQ-2": ("WV-013",), "IQ-3": ("WV-013", "WV-003"),
            "OQ-1": ("WV-001", "WV-002", "WV-003", "WV-004", "WV-005", "WV-006", "WV-007",
                     "WV-008", "WV-014"),
            "OQ-2": ("WV-001", "WV-002", "WV-003", "WV-004", "WV-005", "WV-006", "WV-007",
                     "WV-008", "WV-014", "WV-010"),
            "OQ-3": ("WV-011",), "OQ-4": ("WV-012",), "OQ-5": ("WV-009",)}
#: with --against, the team's endpoint runs OQ-1 and OQ-2 again as OQ-6 and OQ-7
