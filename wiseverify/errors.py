"""The errors that end a run before it starts: one line on the terminal, exit code 2."""

from __future__ import annotations


class ConfigError(Exception):
    """A usage or configuration problem: reported in one line, exit code 2."""


class ClusterError(Exception):
    """The cluster could not be started or reached (exit code 2)."""
