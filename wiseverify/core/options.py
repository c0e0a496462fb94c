"""The options of ``wiseverify verify``, declared once.

One table gives the command line (:func:`add_verify_options`), the keys a job file
may set (:func:`job_keys`), the :class:`~wiseverify.core.config.VerifyConfig` a
parsed command line becomes (:func:`config_from_args`) and the bounds every value
is held to (declared on the config field, ``metadata["lo"]``), so that a flag, its job-file key, its default and its
range cannot drift apart.  Defaults of settings that reach the run are the
``VerifyConfig`` field defaults: they are written nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wiseverify.core.config import VerifyConfig

_FIELDS = {f.name: f for f in dataclasses.fields(VerifyConfig)}


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line naming the option, like every configuration error (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_size(text: str) -> int:
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


def size_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        v = parse_size(text)
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo} byte{'s' * (lo != 1)}, "
                                             f"got {text!r}")
        return v
    return parse


def int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {text}")
        return v
    return parse


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return v


@dataclass(frozen=True)
class Option:
    """One ``wiseverify verify`` flag.

    ``kind``: ``str``, ``int`` or ``size`` (with ``lo``, the smallest value
    accepted), ``float`` (greater than 0), ``flag`` (on/off), ``choice`` or
    ``list`` (repeatable; a list in a job file).
    ``default`` is only for options that do not reach :class:`VerifyConfig`
    (how Dask runs, how progress shows); the others take the field's default.
    ``job``: a job file may set it (where Dask runs is the runner's business).
    """

    flag: str
    kind: str
    help: str | None = None
    metavar: str | None = None
    lo: int | None = None
    choices: tuple[str, ...] = ()
    default: Any = None
    group: str | None = None
    job: bool = True
    config: bool = True

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def in_config(self) -> bool:
        return self.config and self.dest in _FIELDS

    @property
    def bound(self) -> int | None:
        """The smallest value accepted: the config field's, else the option's own."""
        if self.in_config:
            return _FIELDS[self.dest].metadata.get("lo")
        return self.lo

    def default_value(self) -> Any:
        if not self.in_config:
            return self.default
        f = _FIELDS[self.dest]
        return f.default if f.default is not dataclasses.MISSING else None

    def parser(self) -> Callable[[str], Any] | None:
        if self.kind == "int":
            return int_at_least(self.bound if self.bound is not None else -(1 << 62))
        if self.kind == "size":
            return size_at_least(self.bound or 0)
        if self.kind == "float":
            return positive_float
        return None


_CLUSTER = "cluster"  # --scheduler and --workers exclude each other
_INGEST = "ingest instead of listing"
_FILTERS = "filters"
_SELECT = "files-from"  # --files-from and --files-from0 exclude each other

VERIFY_OPTIONS: tuple[Option, ...] = (
    Option("--job", "str", metavar="FILE", job=False,
           help="take SOURCE, DEST, the run directory and options from a job file "
           "(jobs/*.yaml); flags given on the command line override it"),
    Option("--resume", "str", metavar="RUN_DIR", job=False, config=False,
           help="continue an interrupted run with its own settings; finished "
           "partitions and digest units are kept"),
    Option("--full", "flag",
           help="re-hash everything instead of reusing the previous run's evidence "
           "for files and objects that did not change"),
    Option("--endpoint-url", "str",
           help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 or AWS)"),
    Option("--profile", "str", help="AWS profile name"),
    Option("--region", "str", help="AWS region"),
    Option("--scheduler", "str", metavar="ADDRESS", group=_CLUSTER, job=False,
           help="attach to a running Dask scheduler (tcp://host:8786 or a scheduler file path)"),
    Option("--workers", "int", lo=1, metavar="N", group=_CLUSTER, job=False,
           help="worker processes of the embedded local cluster (default: cores)"),
    Option("--threads-per-worker", "int", lo=1, default=2, metavar="N"),
    Option("--cluster", "choice", choices=("local", "slurm"), default="local", job=False,
           help="local: an embedded Dask cluster on this machine (default); slurm: "
           "worker jobs submitted with sbatch, scaled between --min-jobs and "
           "--max-jobs (settings: dask config wiseverify.slurm)"),
    Option("--min-jobs", "int", lo=0, metavar="N", job=False,
           help="--cluster slurm: worker jobs always kept (default 1)"),
    Option("--max-jobs", "int", lo=1, metavar="N", job=False,
           help="--cluster slurm: most worker jobs at once (default 4)"),
    Option("--mode", "choice", choices=("stored", "readback"),
           help="stored: compare with stored checksums/ETags (default); readback: "
           "read the objects back with ranged GETs and hash them"),
    Option("--metadata", "choice", choices=("auto", "all", "off"),
           help="compare stored POSIX metadata (file-mtime/owner/group/permissions): "
           "auto = HEAD a sample of each top-level prefix and, where it carries any, "
           "HEAD and compare every object there; all = HEAD every object; off"),
    Option("--partitions", "int", metavar="N",
           help="hash partitions (default: one per 250,000 keys)"),
    Option("--max-metadata-ops", "float", metavar="PER_SEC",
           help="cap on source lstat/readdir calls per second across the cluster"),
    Option("--max-open-files", "int", metavar="N",
           help="cap on source files open at once across the cluster (digest units "
           "reading at once; a Dask semaphore)"),
    Option("--unit-bytes", "size", metavar="SIZE",
           help="bytes per digest work unit (default 256MiB; small partitions use "
           "smaller units so every thread gets work)"),
    Option("--head-min-size", "size", metavar="SIZE",
           help="single-part objects at least this big get a HEAD for a stored CRC "
           "instead of an MD5 of the ETag (default 4MiB)"),
    Option("--source-listing", "str", metavar="FILE", group=_INGEST,
           help="source inventory from a listing instead of a walk; SOURCE is still the "
           "root its paths start with and where files are read. Make it with: lfs find "
           "SOURCE --printf '%%s %%T@ %%U %%G %%m %%y %%b %%p\\n' > FILE, or, NUL-"
           "separated so that names containing newlines stay intact, find SOURCE "
           "-printf '%%s %%T@ %%U %%G %%m %%y %%b %%p\\0' > FILE (the separator is "
           "detected)"),
    Option("--listing-format", "str", metavar="FMT", group=_INGEST,
           help="the -printf directives of --source-listing, single spaces, %%p last "
           "(default '%%s %%T@ %%U %%G %%m %%y %%b %%p'; %%C@ %%i %%n are also read)"),
    Option("--dest-inventory", "str", metavar="MANIFEST", group=_INGEST,
           help="destination objects from an S3 Inventory report (its manifest.json; "
           "CSV, Parquet or ORC) instead of ListObjectsV2"),
    Option("--checksum-report", "str", metavar="REPORT", group=_INGEST,
           help="content evidence from an S3 Batch Operations compute-checksum "
           "completion report (its manifest.json or one result CSV): the objects it "
           "covers need no HEAD and no GET"),
    Option("--exclude", "list", metavar="PATTERN", group=_FILTERS,
           help="leave out paths matching PATTERN (repeatable)"),
    Option("--include", "list", metavar="PATTERN", group=_FILTERS,
           help="check only paths matching PATTERN (repeatable; everything else is left out)"),
    Option("--filter-from", "list", metavar="FILE", group=_FILTERS,
           help="rules from FILE, one '- PATTERN' or '+ PATTERN' per line, first match wins "
           "(repeatable)"),
    Option("--files-from", "str", metavar="FILE", group=_SELECT,
           help="check exactly the keys listed in FILE, one path relative to SOURCE per "
           "line (e.g. lists/differ.txt of an earlier run): no walk, one listing per "
           "directory of the listed keys; a key found on neither side is NOT_FOUND"),
    Option("--files-from0", "str", metavar="FILE", group=_SELECT,
           help="as --files-from, NUL-separated (lists/*.nul; names with newlines)"),
    Option("--slice", "str", metavar="K/N", group=_FILTERS,
           help="check only the keys in hash slice K of N (stable across runs): seven "
           "nightly runs of --slice 1/7 .. 7/7 cover every key once a week"),
    Option("--rollup-depth", "int", metavar="N",
           help="rollup.parquet and the report's per-directory table: one row per directory "
           "N levels deep (default 2), with its keys, bytes, statuses and verdict"),
    Option("--sample", "str", metavar="SPEC",
           help="stored mode: also read back a random sample of the content-verified keys "
           "(a count, 20000, or a fraction, 0.5%%), size-stratified, and state the upper "
           "bound on wrong stored checksums it proves (Clopper-Pearson, 95%% and 99%%)"),
    Option("--sample-seed", "int", metavar="N",
           help="seed of the --sample draw (default 0): the same seed draws the same keys"),
    Option("--fail-on", "choice", choices=("any", "corruption"), default="any", config=False,
           help="exit 1 for any discrepancy (default), or only for corruption: a cause of "
           "source-older-than-copy or stored-checksum-wrong (stale copies of files changed "
           "since the last sync then exit 0; the verdict and the lists still name them)"),
    Option("--list-match", "flag",
           help="also write lists/match.txt and lists/match.nul (every MATCH key; the other "
           "remediation lists in RUN_DIR/lists/ are always written)"),
    Option("--previous-run", "str", metavar="RUN_DIR",
           help="run whose manifest this run's audit manifest links to (default: the "
           "newest earlier run under the same parent directory)"),
    Option("--progress", "choice", choices=("auto", "tty", "plain"), default="auto",
           help="auto: a live line on a terminal, a plain line every "
           "WISEVERIFY_PROGRESS_INTERVAL seconds (default 30) otherwise"),
    Option("--quiet", "flag", help="no progress lines"),
    Option("--debug", "flag", help="show tracebacks"),
)

_GROUP_HELP = {
    _FILTERS: "Which paths the run covers, in rclone's filter syntax (see docs/selection.md): "
    "'*' within a path segment, '**' across '/', '?', '[...]', '{a,b}'; a leading '/' "
    "anchors at the root, a trailing '/' matches directories. --include rules apply "
    "first, then --exclude, then --filter-from files. The same rules apply to the source "
    "walk and to the destination; an excluded directory is not walked.",
    _INGEST: "Read what a site already has instead of walking the source, listing the bucket "
    "or HEADing objects. The S3 reports may be local paths or s3:// URLs (read with DEST's "
    "endpoint and credentials); the listing must be readable by every worker.",
}

def add_verify_options(p: argparse.ArgumentParser) -> None:
    """The ``verify`` arguments: SOURCE, DEST, ``--out`` and the table's flags."""
    p.add_argument("source", nargs="?", help="local directory or file:// URL (the Lustre tree)")
    p.add_argument("dest", nargs="?", help="s3://bucket/prefix")
    p.add_argument("--out", metavar="RUN_DIR",
                   help="run directory to create (on storage all workers can reach)")
    groups: dict[str, Any] = {}
    for o in VERIFY_OPTIONS:
        if o.group is None:
            where: Any = p
        elif o.group not in groups:
            where = groups[o.group] = (
                p.add_mutually_exclusive_group() if o.group in (_CLUSTER, _SELECT)
                else p.add_argument_group(o.group, _GROUP_HELP.get(o.group)))
        else:
            where = groups[o.group]
        if o.kind == "flag":
            where.add_argument(o.flag, action="store_true", help=o.help)
            continue
        if o.kind == "list":
            where.add_argument(o.flag, action="append", default=None, metavar=o.metavar,
                               help=o.help)
            continue
        kw: dict[str, Any] = {"help": o.help, "default": o.default_value()}
        if o.metavar:
            kw["metavar"] = o.metavar
        if o.choices:
            kw["choices"] = list(o.choices)
        if o.parser() is not None:
            kw["type"] = o.parser()
        where.add_argument(o.flag, **kw)


def verify_parser() -> OneLineParser:
    """A parser of the ``verify`` arguments alone (the SLURM runner's ranks use it)."""
    p = OneLineParser(prog="wiseverify verify")
    add_verify_options(p)
    return p


def job_keys() -> dict[str, Option]:
    """The options a job file may set, by key (``unit_bytes``, ``mode``, ...)."""
    return {o.dest: o for o in VERIFY_OPTIONS if o.job}


def config_from_args(args: argparse.Namespace) -> VerifyConfig:
    """The run settings a parsed ``verify`` command line asks for."""
    conf = {o.dest: getattr(args, o.dest) for o in VERIFY_OPTIONS if o.in_config}
    for o in VERIFY_OPTIONS:
        if o.kind == "list" and o.in_config:
            conf[o.dest] = list(conf[o.dest] or [])
    return VerifyConfig(source=args.source, dest=args.dest, out=args.out, **conf)
