"""The command line: ``wiseverify verify | demo | report | audit | diff | runs``."""
