"""``python -m wiseverify.cli``: the same as the ``wiseverify`` command."""

import sys

from wiseverify.cli.main import main

sys.exit(main())
