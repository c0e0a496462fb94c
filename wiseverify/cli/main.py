"""Command line: ``wiseverify verify|report|audit|demo``.

Exit codes (for cron, scrontab and CI alerting):
  0  every key MATCH or SKIPPED
  1  discrepancies found (see RUN_DIR/discrepancies.csv)
  2  usage or configuration error (source, bucket, endpoint, credentials)
  3  the run itself failed
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from wiseverify.cli.options import build_parser
from wiseverify.core.errors import EXIT_CONFIG, EXIT_DIFF, EXIT_FAIL, EXIT_OK


def _err(msg: str) -> None:
    print(f"wiseverify: error: {msg}", file=sys.stderr)


def cmd_verify(args: argparse.Namespace) -> int:
    from wiseverify.deploy.cluster import prestart_local_workers

    # the workers' forkserver starts first: its imports overlap the driver's below
    forkserver = not args.scheduler and args.cluster == "local" and prestart_local_workers()
    from wiseverify.core.config import VerifyConfig
    from wiseverify.core.errors import ConfigError
    from wiseverify.core.options import config_from_args

    if args.resume:
        from wiseverify.run.prepare import resume_config

        run_dir = Path(args.resume).absolute()
        if not (run_dir / "run.json").is_file():
            _err(f"--resume {args.resume}: no interrupted run there (no run.json)")
            return EXIT_CONFIG
        args.out = str(run_dir)
        cfg = resume_config(run_dir, VerifyConfig(source="", dest="", out=str(run_dir),
                                                  endpoint_url=args.endpoint_url,
                                                  profile=args.profile))
    else:
        if not (args.source and args.dest and args.out):
            _err("verify needs SOURCE, DEST and --out RUN_DIR (or --resume RUN_DIR)")
            return EXIT_CONFIG
        cfg = config_from_args(args)
    early = _background_preflight(cfg) if forkserver else None
    from wiseverify.deploy.cluster import ClusterError, open_client
    from wiseverify.report.progress import Progress
    from wiseverify.report.summary import exit_code, format_table, result_line
    from wiseverify.run.driver import verify
    from wiseverify.run.prepare import prepare

    progress = Progress(mode="off" if args.quiet else args.progress)
    log = None if args.quiet else progress.log
    try:
        t0 = time.monotonic()
        if early is not None:  # the destination's verdict comes while the cluster starts
            pending = _PrepareMeanwhile(cfg, early, prepare)
        else:  # fail fast, before a cluster is started (with SLURM: before any job)
            pending = None
            prepared = prepare(cfg)
        t1 = time.monotonic()
        with open_client(args.scheduler, args.workers, args.threads_per_worker,
                         cluster=args.cluster, min_jobs=args.min_jobs, max_jobs=args.max_jobs,
                         run_dir=args.out) as client, \
                progress:
            t2 = time.monotonic()
            if pending is not None:
                prepared = pending.result()  # a refusal leaves here, and the cluster is closed
            setup = {"preflight_s": round(pending.seconds if pending else t1 - t0, 3),
                     "cluster_start_s": round(t2 - t1, 3)}
            summary = verify(cfg, client, log=log, progress=progress, prepared=prepared,
                             setup_timings=setup)
    except (ConfigError, ClusterError) as exc:
        _err(str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_FAIL
    except Exception as exc:
        if args.debug:
            raise
        _err(f"run failed: {type(exc).__name__}: {exc}")
        return EXIT_FAIL
    if not args.quiet:
        print(format_table(summary))
    print(result_line(summary, args.out), flush=True)
    return exit_code(summary, args.fail_on)


class _PrepareMeanwhile:
    """``prepare()`` in a thread, returned from once only the destination's verdict is pending.

    Every settings check still comes first, before any worker starts; the
    network verdict then overlaps the start of the local cluster (0.4 s on this
    machine) instead of preceding it.  A refusal still exits 2 with the same
    line; the cluster it started is closed.
    """

    def __init__(self, cfg, early, prepare) -> None:
        import concurrent.futures
        import threading

        self.seconds = 0.0
        reached = concurrent.futures.Future()

        def check(target) -> None:
            reached.set_result(None)
            early.check(target)

        def timed():
            t = time.monotonic()
            try:
                return prepare(cfg, check)
            finally:
                self.seconds = time.monotonic() - t

        self.future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                self.future.set_result(timed())
            except BaseException as exc:  # noqa: BLE001 - re-raised by result()
                self.future.set_exception(exc)
            if not reached.done():
                reached.set_result(None)

        threading.Thread(target=run, name="wiseverify-prepare", daemon=True).start()
        reached.result()
        if self.future.done():
            self.future.result()  # a settings error: raised before any cluster starts

    def result(self):
        return self.future.result()


def _background_preflight(cfg):
    """The destination's preflight started now, in a process of the workers' forkserver."""
    from wiseverify.core.s3 import S3ConfigError, S3Target
    from wiseverify.deploy.cluster import BackgroundPreflight

    try:
        target = S3Target.parse(cfg.dest, cfg.endpoint_url, cfg.profile, cfg.region)
    except S3ConfigError:
        return None  # prepare() says why, in its turn
    return BackgroundPreflight(target)


def cmd_report(args: argparse.Namespace) -> int:
    from wiseverify.report.html import write_outputs
    from wiseverify.report.summary import exit_code, format_table

    run_dir = Path(args.run_dir)
    sfile = run_dir / "summary.json"
    if not sfile.exists():
        _err(f"{run_dir} is not a completed run directory (no summary.json)")
        return EXIT_CONFIG
    if args.only is not None:
        from wiseverify.report.scoped import write_scoped

        path, scoped = write_scoped(run_dir, args.only, args.out)
        if scoped["verdict"] == "EMPTY":
            _err(f"no key of run {scoped['run_id']} is at or below {args.only!r}")
            return EXIT_CONFIG
        print(f"{scoped['scope']}: {scoped['verdict']} ({scoped['keys']:,} keys, "
              f"{scoped['discrepancies']:,} discrepancies) of run {scoped['run_id']}, "
              f"manifest sha256 {scoped['run_manifest_sha256']}")
        print(f"report: {path}")
        return EXIT_OK if scoped["verdict"] == "PASS" else EXIT_DIFF
    if args.out:
        _err("--out goes with --only")
        return EXIT_CONFIG
    summary = json.loads(sfile.read_text())
    write_outputs(run_dir, summary)  # report.html too
    print(format_table(summary))
    print(f"report: {run_dir / 'report.html'}")
    return exit_code(summary)


def cmd_diff(args: argparse.Namespace) -> int:
    from wiseverify.report.history import diff, format_diff, write_diff

    try:
        result = diff(args.run_a, args.run_b)
    except FileNotFoundError as exc:
        _err(str(exc))
        return EXIT_CONFIG
    print(format_diff(result))
    if args.out:
        j, p = write_diff(result, args.out)
        print(f"diff: {j}, {p}")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}))
    return EXIT_DIFF if result["regression_count"] else EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    from wiseverify.report.history import runs_index

    runs = runs_index(args.root)
    if not runs:
        _err(f"no completed runs under {args.root}")
        return EXIT_CONFIG
    print(f"{'run':<28} {'verdict':<7} {'keys':>10} {'discrepancies':>14} {'to sync (B)':>14}"
          f"  covers")
    for r in runs:
        covers = "; ".join(([f"slice {r['slice']}"] if r.get("slice") else [])
                           + r.get("filters", [])) or "all"
        print(f"{r['run_id']:<28} {r['verdict']:<7} {r['keys']:>10,} {r['discrepancies']:>14,} "
              f"{r['bytes_to_sync']:>14,}  {covers}")
    sliced = [r for r in runs if r.get("slice")]
    if sliced:
        n = int(sliced[-1]["slice"].split("/")[1])
        have = {r["slice"] for r in sliced if r["slice"].endswith(f"/{n}")}
        todo = [f"{k}/{n}" for k in range(1, n + 1) if f"{k}/{n}" not in have]
        print(f"slices of {n}: " + (f"missing {', '.join(todo)}" if todo else
                                    "every slice has a completed run"))
    print(f"index: {Path(args.root) / 'runs.json'}")
    return EXIT_OK


def cmd_qualify(args: argparse.Namespace) -> int:
    missing = [m for m in ("boto3", "moto", "crc32c") if importlib.util.find_spec(m) is None]
    if missing:
        _err(f"qualify needs {', '.join(missing)} for its local S3 endpoint: install "
             "wiseverify[qualify]")
        return EXIT_CONFIG
    from wiseverify.qualify.main import qualify

    if (args.allow_writes_to or args.endpoint_url) and not args.against:
        _err("--allow-writes-to and --endpoint-url go with --against")
        return EXIT_CONFIG
    return qualify(args.out, against=args.against, allow=args.allow_writes_to,
                   endpoint_url=args.endpoint_url)


def cmd_audit(args: argparse.Namespace) -> int:
    from wiseverify.report.audit import main_audit

    return main_audit(args.run_dir, require_signature=args.require_signature, deep=args.deep,
                      as_json=args.json, trusted_keys=args.trusted_keys)


def cmd_signoff(args: argparse.Namespace) -> int:
    from wiseverify.core.errors import ConfigError
    from wiseverify.report.signoff import generate_key, sign

    try:
        if args.generate_key:
            pub = generate_key(args.generate_key)
            print(f"private key: {args.generate_key} (keep it to yourself)\n"
                  f"public key: {args.generate_key}.pub {pub}")
            return EXIT_OK
        if not (args.run_dir and args.name and args.meaning and args.key):
            _err("signoff needs RUN_DIR, --name, --meaning and --key (or --generate-key FILE)")
            return EXIT_CONFIG
        rec = sign(args.run_dir, args.name, args.meaning, args.key)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_CONFIG
    print(f"signed run {rec['run_id']}: {rec['name']}, {rec['meaning']}, {rec['signed_at']}, "
          f"manifest sha256 {rec['manifest_sha256']}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    missing = [m for m in ("boto3", "moto", "crc32c") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"wiseverify: error: the demo needs {', '.join(missing)}: install "
              "wiseverify[demo] (pip install 'wiseverify[demo]')", file=sys.stderr)
        return 2
    from wiseverify.demo.tree import run_demo

    return run_demo(args.out, main, args.workers)


def _expand_job(argv: list[str]) -> list[str]:
    """``verify --job FILE [flags]`` -> the job file's arguments followed by the flags.

    argparse keeps the last value of an option, so flags typed after the job
    file's settings override them.
    """
    if not argv or argv[0] != "verify" or "--job" not in argv:
        return argv
    from wiseverify.deploy.jobfile import JobFileError, load_job, verify_argv

    i = argv.index("--job")
    if i + 1 >= len(argv):
        raise JobFileError("--job needs a job file path")
    rest = argv[1:i] + argv[i + 2 :]
    job = load_job(argv[i + 1])
    from wiseverify.deploy.slurmcluster import apply_job_config

    apply_job_config(job)  # its slurm: and dask: sections size --cluster slurm
    return ["verify", *verify_argv(job), *rest]


def main(argv: list[str] | None = None) -> int:
    from wiseverify.deploy.jobfile import JobFileError

    try:
        argv = _expand_job(list(sys.argv[1:] if argv is None else argv))
    except JobFileError as exc:
        _err(str(exc))
        return EXIT_CONFIG
    args = build_parser().parse_args(argv)
    handler = {"verify": cmd_verify, "report": cmd_report, "audit": cmd_audit, "qualify": cmd_qualify,
               "signoff": cmd_signoff,
               "diff": cmd_diff, "runs": cmd_runs, "demo": cmd_demo}[args.command]
    return handler(args)


def run() -> None:
    """The ``wiseverify`` command: :func:`main`, then an exit without the interpreter's teardown.

    After a run the driver holds pandas, pyarrow and distributed state whose
    orderly destruction took a third of a second of every invocation, after
    every output was already closed.  The exit handlers still run (logging,
    multiprocessing, distributed) and both streams are flushed; only the
    freeing of memory the kernel reclaims anyway is skipped.  Tests and
    notebooks call :func:`main`, which returns.
    """
    import atexit

    try:
        code = main()
    except SystemExit as exc:  # argparse's --help and usage errors: as sys.exit() ends
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if code == 1 and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            code = code or EXIT_FAIL
    os._exit(code)


if __name__ == "__main__":
    run()
