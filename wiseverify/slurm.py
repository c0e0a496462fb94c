"""``python -m wiseverify.slurm``: the body of every ``srun`` task of ``slurm/verify.sh``.

The runner is :mod:`wiseverify.deploy.slurm`; the driver rank runs the command line's
``verify``, handed in from here because the command line sits above the deploy layer.
"""

import sys

from wiseverify.cli.main import main as cli_main
from wiseverify.deploy.slurm import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], cli_main))
