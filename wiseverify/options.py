"""The ``wiseverify`` command line: every subcommand, option, bound and help text.

Kept apart from :mod:`wiseverify.cli` (which runs the commands) so that the
job-file reader and the SLURM runner can read the options without importing
what runs them.
"""

from __future__ import annotations

import argparse


class _Parser(argparse.ArgumentParser):
    """A usage error is one line naming the option, like every configuration error (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _size(text: str) -> int:
    """Parse sizes like 8MiB, 4M, 1GB, 123."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (e.g. 256MiB, 4M, 1GB, 123)") from None


def _size_at_least(lo: int):
    def parse(text: str) -> int:
        v = _size(text)
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo} byte{'s' * (lo != 1)}, "
                                             f"got {text!r}")
        return v
    return parse


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {text}")
        return v
    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="wiseverify",
        description="Prove a POSIX/Lustre tree arrived intact in S3: inventory both sides, "
        "checksum on a Dask cluster, write a reconciliation table.",
        epilog="Exit codes: 0 all MATCH/SKIPPED, 1 discrepancies, 2 usage/configuration "
        "error, 3 run failure.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser(
        "verify",
        help="verify SOURCE against DEST and write RUN_DIR",
        description="Verify that every file under SOURCE is in DEST with the same content. "
        "Credentials come from the standard AWS chain (environment, profile, instance role).",
        epilog="Exit codes: 0 all MATCH/SKIPPED, 1 discrepancies, 2 usage/configuration "
        "error, 3 run failure.",
    )
    v.add_argument("source", nargs="?", help="local directory or file:// URL (the Lustre tree)")
    v.add_argument("dest", nargs="?", help="s3://bucket/prefix")
    v.add_argument("--out", metavar="RUN_DIR",
                   help="run directory to create (on storage all workers can reach)")
    v.add_argument("--job", metavar="FILE",
                   help="take SOURCE, DEST, the run directory and options from a job file "
                   "(jobs/*.yaml); flags given on the command line override it")
    v.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run with its own settings; finished "
                   "partitions and digest units are kept")
    v.add_argument("--full", action="store_true",
                   help="re-hash everything instead of reusing the previous run's evidence "
                   "for files and objects that did not change")
    v.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 "
                   "or AWS)")
    v.add_argument("--profile", help="AWS profile name")
    v.add_argument("--region", help="AWS region")
    g = v.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="attach to a running Dask scheduler (tcp://host:8786 or a "
                   "scheduler file path)")
    g.add_argument("--workers", type=_int_at_least(1), metavar="N",
                   help="worker processes of the embedded local cluster (default: cores)")
    v.add_argument("--threads-per-worker", type=_int_at_least(1), default=2, metavar="N")
    v.add_argument("--cluster", choices=["local", "slurm"], default="local",
                   help="local: an embedded Dask cluster on this machine (default); slurm: "
                   "worker jobs submitted with sbatch, scaled between --min-jobs and "
                   "--max-jobs (settings: dask config wiseverify.slurm)")
    v.add_argument("--min-jobs", type=_int_at_least(0), metavar="N",
                   help="--cluster slurm: worker jobs always kept (default 1)")
    v.add_argument("--max-jobs", type=_int_at_least(1), metavar="N",
                   help="--cluster slurm: most worker jobs at once (default 4)")
    v.add_argument("--mode", choices=["stored", "readback"], default="stored",
                   help="stored: compare with stored checksums/ETags (default); readback: "
                   "read the objects back with ranged GETs and hash them")
    v.add_argument("--metadata", choices=["auto", "all", "off"], default="auto",
                   help="compare stored POSIX metadata (file-mtime/owner/group/permissions): "
                   "auto = HEAD a sample of each top-level prefix and, where it carries any, "
                   "HEAD and compare every object there; all = HEAD every object; off")
    v.add_argument("--partitions", type=_int_at_least(1), metavar="N",
                   help="hash partitions (default: one per 250,000 keys)")
    v.add_argument("--max-metadata-ops", type=_positive_float, metavar="PER_SEC",
                   help="cap on source lstat/readdir calls per second across the cluster")
    v.add_argument("--max-open-files", type=_int_at_least(1), metavar="N",
                   help="cap on source files open at once across the cluster (digest units "
                   "reading at once; a Dask semaphore)")
    v.add_argument("--unit-bytes", type=_size_at_least(1), default=256 << 20, metavar="SIZE",
                   help="bytes per digest work unit (default 256MiB; small partitions use "
                   "smaller units so every thread gets work)")
    v.add_argument("--head-min-size", type=_size_at_least(0), default=4 << 20, metavar="SIZE",
                   help="single-part objects at least this big get a HEAD for a stored CRC "
                   "instead of an MD5 of the ETag (default 4MiB)")
    ig = v.add_argument_group(
        "ingest instead of listing",
        "Read what a site already has instead of walking the source, listing the bucket or "
        "HEADing objects. The S3 reports may be local paths or s3:// URLs (read with DEST's "
        "endpoint and credentials); the listing must be readable by every worker.")
    ig.add_argument("--source-listing", metavar="FILE",
                    help="source inventory from a listing instead of a walk; SOURCE is still the "
                    "root its paths start with and where files are read. Make it with: lfs find "
                    "SOURCE --printf '%%s %%T@ %%U %%G %%m %%y %%b %%p\\n' > FILE, or, NUL-"
                    "separated so that names containing newlines stay intact, find SOURCE "
                    "-printf '%%s %%T@ %%U %%G %%m %%y %%b %%p\\0' > FILE (the separator is "
                    "detected)")
    ig.add_argument("--listing-format", metavar="FMT",
                    help="the -printf directives of --source-listing, single spaces, %%p last "
                    "(default '%%s %%T@ %%U %%G %%m %%y %%b %%p'; %%C@ %%i %%n are also read)")
    ig.add_argument("--dest-inventory", metavar="MANIFEST",
                    help="destination objects from an S3 Inventory report (its manifest.json; "
                    "CSV, Parquet or ORC) instead of ListObjectsV2")
    ig.add_argument("--checksum-report", metavar="REPORT",
                    help="content evidence from an S3 Batch Operations compute-checksum "
                    "completion report (its manifest.json or one result CSV): the objects it "
                    "covers need no HEAD and no GET")
    v.add_argument("--previous-run", metavar="RUN_DIR",
                   help="run whose manifest this run's audit manifest links to (default: the "
                   "newest earlier run under the same parent directory)")
    v.add_argument("--progress", choices=["auto", "tty", "plain"], default="auto",
                   help="auto: a live line on a terminal, a plain line every "
                   "WISEVERIFY_PROGRESS_INTERVAL seconds (default 30) otherwise")
    v.add_argument("--quiet", action="store_true", help="no progress lines")
    v.add_argument("--debug", action="store_true", help="show tracebacks")

    df = sub.add_parser("diff", help="what changed between two runs: status transitions, "
                        "keys added/removed, readiness (exit 1 when a MATCH regressed)")
    df.add_argument("run_a", help="the older run directory")
    df.add_argument("run_b", help="the newer run directory")
    df.add_argument("--out", metavar="DIR", help="also write diff.json and diff.parquet here")
    df.add_argument("--json", action="store_true", help="print the result as JSON too")

    rn = sub.add_parser("runs", help="list the completed runs under an output root and write "
                        "its runs.json index")
    rn.add_argument("root")

    r = sub.add_parser("report", help="rebuild combined.txt, discrepancies.csv, report.html "
                       "and the summary table of RUN_DIR")
    r.add_argument("run_dir")

    a = sub.add_parser(
        "audit", help="re-hash every file of RUN_DIR against its manifest.json and walk the "
        "chain of earlier runs",
        description="Recompute the SHA-256 of every file of a run, the counts per status and "
        "the chain of previous manifests; check the HMAC signature when "
        "WISEVERIFY_AUDIT_HMAC_KEY is set.",
        epilog="Exit codes: 0 intact, 1 modified/missing/unlisted file, bad signature or "
        "broken chain link, 2 no usable manifest.",
    )
    a.add_argument("run_dir")
    a.add_argument("--deep", action="store_true",
                   help="also re-hash the files of every earlier run in the chain")
    a.add_argument("--require-signature", action="store_true",
                   help="fail when the manifest is unsigned or its signature cannot be checked")
    a.add_argument("--json", action="store_true", help="machine-readable result")

    d = sub.add_parser("demo", help="build a demo tree, start a local S3 endpoint, upload "
                       "with injected discrepancies and verify it")
    d.add_argument("--out", default="demo-run", metavar="DIR",
                   help="working directory for the demo (default ./demo-run)")
    d.add_argument("--workers", type=_int_at_least(1), metavar="N")
    return p
