"""``python -m wiseverify.cli``: the same as the ``wiseverify`` command."""

from wiseverify.cli.main import run

run()
