"""Live progress of a run: files and bytes per stage, rate and ETA.

A verification of 30M files runs for hours, and whoever watches it (an
operator at a terminal, or someone tailing a SLURM output file) needs to see
that it moves and when it will end.  Two renderings of the same counters:

* on a terminal, one status line redrawn in place (carriage return) twice a
  second, with the run's own messages printed above it;
* in batch (not a TTY: SLURM output files, cron mail, CI logs), a plain line
  every ``interval`` seconds and never a carriage return, so the file stays
  readable with ``less`` and ``grep``.

The driver feeds the counters: inventory and partition results come back to it
anyway, and digest work units report their bytes through a Dask event topic
(:func:`unit_done` on the worker, :meth:`Progress.watch` on the driver), so the
bytes hashed are seen while a partition is still running.  Progress never fails
a run: every hook swallows its own errors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from wiseverify.core.units import human_bytes

#: seconds between plain progress lines in batch mode (overridden by the env variable)
DEFAULT_BATCH_INTERVAL = 30.0
TTY_INTERVAL = 0.5
ENV_INTERVAL = "WISEVERIFY_PROGRESS_INTERVAL"


@dataclass
class StageSnapshot:
    """The counters of one stage at one moment (what a progress line is made of)."""

    name: str
    unit: str
    files: int
    nbytes: int
    total_files: int | None
    total_bytes: int | None
    elapsed: float
    note: str = ""


def human_duration(seconds: float) -> str:
    """H:MM:SS; runs last hours, so seconds alone are unreadable."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def eta_seconds(s: StageSnapshot) -> float | None:
    """Remaining time from the average rate since the stage started.

    Bytes decide when a byte total is known (hashing time follows bytes, not
    files); otherwise files; without a total (a walk of unknown size) there is
    no ETA.
    """
    if s.elapsed <= 0:
        return None
    if s.total_bytes and s.nbytes > 0:
        return max(0.0, (s.total_bytes - s.nbytes) / (s.nbytes / s.elapsed))
    if s.total_files and s.files > 0:
        return max(0.0, (s.total_files - s.files) / (s.files / s.elapsed))
    return None


def format_line(s: StageSnapshot) -> str:
    """One progress line, e.g. ``digest: 40/81 files, 30.0 MB/58.3 MB (51%), ...``."""
    files = f"{s.files:,}/{s.total_files:,}" if s.total_files else f"{s.files:,}"
    nbytes = human_bytes(s.nbytes)
    pct = ""
    if s.total_bytes:
        nbytes += "/" + human_bytes(s.total_bytes)
        pct = f" ({min(100.0, 100.0 * s.nbytes / s.total_bytes):.0f}%)"
    elif s.total_files:
        pct = f" ({min(100.0, 100.0 * s.files / s.total_files):.0f}%)"
    # a stage that moves no bytes (partitioning counts rows) shows none
    has_bytes = bool(s.nbytes or s.total_bytes)
    parts = [f"{s.name}: {files} {s.unit}" + (f", {nbytes}" if has_bytes else "") + pct]
    if s.note:
        parts.append(s.note)
    if s.elapsed > 0:
        parts.append(f"{s.files / s.elapsed:,.0f} {s.unit}/s"
                     + (f", {human_bytes(s.nbytes / s.elapsed)}/s" if has_bytes else ""))
    eta = eta_seconds(s)
    parts.append(f"elapsed {human_duration(s.elapsed)}")
    if eta is not None:
        parts.append(f"ETA {human_duration(eta)}")
    return ", ".join(parts)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counters for the current stage plus a background thread that shows them.

    ``mode`` is ``"auto"`` (terminal or batch, decided by ``stream.isatty()``),
    ``"tty"``, ``"plain"`` or ``"off"`` (counters kept, nothing printed: what
    ``--quiet`` and library callers get).
    """

    def __init__(self, stream: TextIO | None = None, mode: str = "auto",
                 interval: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        if mode == "auto":
            mode = "tty" if _is_tty(self.stream) else "plain"
        if mode not in ("tty", "plain", "off"):
            raise ValueError(f"progress mode must be auto, tty, plain or off, got {mode!r}")
        self.mode = mode
        if interval is None:
            env = os.environ.get(ENV_INTERVAL)
            interval = float(env) if env else (
                TTY_INTERVAL if mode == "tty" else DEFAULT_BATCH_INTERVAL)
        self.interval = max(0.05, interval)
        self._lock = threading.RLock()
        self._stage: dict | None = None
        self._live = False  # a TTY status line is on screen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.history: list[StageSnapshot] = []  # finished stages, for the caller's summary

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the thread that redraws (terminal) or prints (batch) the current stage."""
        if self.mode == "off" or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="wiseverify-progress",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and leave the terminal on a clean line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            self._clear_live()

    # --- what the pipeline calls ----------------------------------------------------------

    def log(self, msg: str) -> None:
        """Print a message of the run above the live line (the ``log`` callable of verify)."""
        if self.mode == "off":
            return
        with self._lock:
            self._clear_live()
            self._write(msg + "\n")
            self._draw_live()

    def dashboard(self, link: str | None) -> None:
        """Print the Dask dashboard link once, at the start, where an operator sees it."""
        if link:
            self.log(f"dashboard: {link}")

    def stage(self, name: str, unit: str = "files", total_files: int | None = None,
              total_bytes: int | None = None) -> None:
        """Begin a stage; the previous one, if any, ends."""
        with self._lock:
            self.end_stage()
            self._stage = {"name": name, "unit": unit, "files": 0, "nbytes": 0,
                           "total_files": total_files, "total_bytes": total_bytes,
                           "t0": time.monotonic(), "note": ""}
            self._draw_live()

    def update(self, files: int = 0, nbytes: int = 0, *, add_total_files: int = 0,
               add_total_bytes: int = 0, total_files: int | None = None,
               total_bytes: int | None = None, note: str | None = None) -> None:
        """Add work done (and, when planning reveals it, work to do) to the current stage."""
        with self._lock:
            st = self._stage
            if st is None:
                return
            st["files"] += files
            st["nbytes"] += nbytes
            if total_files is not None:
                st["total_files"] = total_files
            if total_bytes is not None:
                st["total_bytes"] = total_bytes
            if add_total_files:
                st["total_files"] = (st["total_files"] or 0) + add_total_files
            if add_total_bytes:
                st["total_bytes"] = (st["total_bytes"] or 0) + add_total_bytes
            if note is not None:
                st["note"] = note

    def end_stage(self) -> StageSnapshot | None:
        """Close the current stage; its final counters go to :attr:`history`."""
        with self._lock:
            snap = self.snapshot()
            if snap is not None:
                self.history.append(snap)
            self._stage = None
            self._clear_live()
            return snap

    def snapshot(self) -> StageSnapshot | None:
        """The current stage's counters, or None between stages."""
        with self._lock:
            st = self._stage
            if st is None:
                return None
            return StageSnapshot(
                name=st["name"], unit=st["unit"], files=st["files"], nbytes=st["nbytes"],
                total_files=st["total_files"], total_bytes=st["total_bytes"],
                elapsed=time.monotonic() - st["t0"], note=st["note"],
            )

    def emit(self) -> None:
        """Show the current stage now (the background thread calls this every interval)."""
        with self._lock:
            snap = self.snapshot()
            if snap is None or self.mode == "off":
                return
            if self.mode == "tty":
                self._draw_live(snap)
            else:
                self._write(f"progress: {format_line(snap)}\n")

    # --- digest units report through a Dask event topic ----------------------------------

    def watch(self, client, topic: str) -> Callable[[], None]:
        """Count the events that :func:`unit_done` publishes on ``topic``; returns an unsubscribe.

        Digest units run inside partition tasks, out of the driver's sight; an
        event per finished unit lets the driver count bytes hashed as they happen.
        """

        def handler(event) -> None:
            try:
                _, msg = event
                self.update(files=int(msg.get("files", 0)), nbytes=int(msg.get("bytes", 0)),
                            add_total_files=int(msg.get("plan_files", 0)),
                            add_total_bytes=int(msg.get("plan_bytes", 0)))
            except Exception:  # progress must never disturb the run
                pass

        try:
            client.subscribe_topic(topic, handler)
        except Exception:
            return lambda: None

        def unsubscribe() -> None:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(topic)

        return unsubscribe

    # --- output ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.emit()
            except Exception:  # a closed stream must not kill the run
                return

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _draw_live(self, snap: StageSnapshot | None = None) -> None:
        if self.mode != "tty":
            return
        snap = snap or self.snapshot()
        if snap is None:
            return
        width = shutil.get_terminal_size((100, 20)).columns
        line = format_line(snap)
        if len(line) >= width:
            line = line[: max(10, width - 2)] + "…"
        self._write("\r\x1b[2K" + line)
        self._live = True

    def _clear_live(self) -> None:
        if self._live:
            self._write("\r\x1b[2K")
            self._live = False


def unit_done(topic: str | None, files: int = 0, nbytes: int = 0, plan_files: int = 0,
              plan_bytes: int = 0) -> None:
    """Worker side: publish a finished (or newly planned) piece of digest work on ``topic``.

    Called from inside Dask tasks; outside one (a stage run on its own) it does nothing.
    """
    if not topic:
        return
    try:
        from distributed import get_worker

        get_worker().log_event(topic, {"files": files, "bytes": nbytes,
                                       "plan_files": plan_files, "plan_bytes": plan_bytes})
    except Exception:  # not in a worker, or the scheduler is gone: progress is optional
        pass
