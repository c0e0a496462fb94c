"""The ``wiseverify`` command line: every subcommand, option, bound and help text.

The ``verify`` options come from the one table in :mod:`wiseverify.core.options`,
which the job-file reader and the SLURM runner read too.
"""

from __future__ import annotations

import argparse

from wiseverify.core.options import OneLineParser, add_verify_options, int_at_least


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
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
    add_verify_options(v)

    df = sub.add_parser("diff", help="what changed between two runs: status transitions, "
                        "keys added/removed, readiness (exit 1 when a MATCH regressed)")
    df.add_argument("run_a", help="the older run directory")
    df.add_argument("run_b", help="the newer run directory")
    df.add_argument("--out", metavar="DIR", help="also write diff.json and diff.parquet here")
    df.add_argument("--json", action="store_true", help="print the result as JSON too")

    rn = sub.add_parser("runs", help="list the completed runs under an output root and write "
                        "its runs.json index")
    rn.add_argument("root")

    r = sub.add_parser("report", help="rebuild combined.txt, discrepancies.csv, lists/, "
                       "rollup.parquet, report.html and the summary table of RUN_DIR; or, with "
                       "--only DIR, the sign-off report of one directory")
    r.add_argument("run_dir")
    r.add_argument("--only", metavar="DIR",
                   help="a report of the keys at or below DIR alone, with its own verdict and "
                   "the SHA-256 of the run's manifest, written to RUN_DIR-only-DIR/ (the run "
                   "directory itself is left as its manifest lists it)")
    r.add_argument("--out", metavar="DIR", help="with --only: where to write it instead")

    so = sub.add_parser(
        "signoff", help="sign a finished run (Ed25519): who, when (UTC), what it means, and "
        "the manifest hash it signs, appended to RUN_DIR/signatures.jsonl",
        epilog="Exit codes: 0 signed, 2 usage error (no manifest, bad key, bad meaning).")
    so.add_argument("run_dir", nargs="?")
    so.add_argument("--name", help="the person signing, as on their signature manifestation")
    so.add_argument("--meaning", choices=("reviewed", "approved"))
    so.add_argument("--key", metavar="FILE", help="the signer's Ed25519 private key (PEM)")
    so.add_argument("--generate-key", metavar="FILE",
                    help="write a new Ed25519 key pair (FILE, mode 0600, and FILE.pub) and exit")

    q = sub.add_parser(
        "qualify", help="installation and operational qualification (IQ/OQ) of this install: "
        "writes qualification.json, qualification.html and a manifest to --out",
        description="IQ: versions, installed files against the wheel's RECORD, the C "
        "extensions' known answers. OQ: the built-in fixture through the pipeline on a local "
        "S3 endpoint and a local Dask cluster, stored and read-back mode, a killed and "
        "resumed run, an audit of a tampered copy, the request log. Needs the [qualify] "
        "extra (the local endpoint).",
        epilog="Exit codes: 0 every check passed, 1 a check failed, 2 usage error.")
    q.add_argument("--out", metavar="QDIR", required=True,
                   help="a new (or empty) directory for the record")
    q.add_argument("--against", metavar="S3_URL",
                   help="also run the fixture on an empty scratch prefix of your own "
                   "S3-compatible endpoint (s3://bucket/prefix), with your credentials; the "
                   "only mode that writes, and it removes what it wrote")
    q.add_argument("--allow-writes-to", metavar="S3_URL",
                   help="with --against: the prefix it may write to (the same, or above)")
    q.add_argument("--endpoint-url", help="with --against: the endpoint (default: AWS)")

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
    a.add_argument("--trusted-keys", metavar="FILE",
                   help="public keys (base64, one per line) a sign-off must be made with; a "
                   "signature with any other key is a problem")

    d = sub.add_parser("demo", help="build a demo tree, start a local S3 endpoint, upload "
                       "with injected discrepancies and verify it")
    d.add_argument("--out", default="demo-run", metavar="DIR",
                   help="working directory for the demo (default ./demo-run)")
    d.add_argument("--workers", type=int_at_least(1), metavar="N")
    return p
