"""Imported only by the command line's worker forkserver (``cluster.PROJECT_PRELOAD``).

When the driver exits, the forkserver sees its alive pipe close and exits too,
running the interpreter's whole shutdown: a third of a second of tearing down
pandas, pyarrow and botocore objects that no one will use, while the job (a
SLURM step, a caller waiting on the output pipes) is not done until it ends.
Its own exit handlers run first; then it leaves at once.  Processes forked
from it inherit the handler but not the pid, and exit as before.

It also parses the S3 models a client loads (``core.s3.preload_models``), so
that the forked workers share them instead of each parsing its own.
"""

from __future__ import annotations

import atexit
import contextlib
import os

from wiseverify.core.s3 import preload_models

_PID = os.getpid()


def _leave() -> None:
    if os.getpid() == _PID:
        os._exit(0)


atexit.register(_leave)

# the S3 models every worker's first client parses, parsed once here before the forks
# (an error here only leaves each client to load them itself, and to report it)
with contextlib.suppress(Exception):
    preload_models()
