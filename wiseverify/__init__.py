"""wiseverify: prove that a POSIX/Lustre tree arrived intact in S3.

Subpackages by stage, each callable on its own: :mod:`~wiseverify.inventory`
(both sides listed and partitioned), :mod:`~wiseverify.compare` (pairs and the
evidence each needs), :mod:`~wiseverify.digest` (bytes hashed),
:mod:`~wiseverify.reconcile` (verdicts per partition); :mod:`~wiseverify.run`
drives them on a Dask cluster that :mod:`~wiseverify.deploy` provides, and
:mod:`~wiseverify.report` reads what a run wrote.  :mod:`~wiseverify.core` holds
what they share; :mod:`~wiseverify.cli` is the command line.
"""

__version__ = "0.1.0"
