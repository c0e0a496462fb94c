"""Imported only by the command line's worker forkserver (``cluster.PROJECT_PRELOAD``).

When the driver exits, the forkserver sees its alive pipe close and exits too,
running the interpreter's whole shutdown: a third of a second of tearing down
pandas, pyarrow and botocore objects that no one will use, while the job (a
SLURM step, a caller waiting on the output pipes) is not done until it ends.
Its own exit handlers run first; then it leaves at once.  Processes forked
from it inherit the handler but not the pid, and exit as before.
"""

from __future__ import annotations

import atexit
import os

_PID = os.getpid()


def _leave() -> None:
    if os.getpid() == _PID:
        os._exit(0)


atexit.register(_leave)
