"""The errors that end a run before it starts: one line on the terminal, exit code 2."""

from __future__ import annotations

#: the exit codes of every command (cron, scrontab and CI alert on them):
#: all MATCH/SKIPPED, discrepancies, usage or configuration error, the run failed
EXIT_OK, EXIT_DIFF, EXIT_CONFIG, EXIT_FAIL = 0, 1, 2, 3


class ConfigError(Exception):
    """A usage or configuration problem: reported in one line, exit code 2."""


class ClusterError(Exception):
    """The cluster could not be started or reached (exit code 2)."""
