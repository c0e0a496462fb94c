"""wiseverify: prove that a POSIX/Lustre tree arrived intact in S3.

Stages (each callable on its own): :mod:`~wiseverify.inventory`,
:mod:`~wiseverify.match`, :mod:`~wiseverify.evidence` + :mod:`~wiseverify.digest`,
:mod:`~wiseverify.reconcile`, :mod:`~wiseverify.report`; :mod:`~wiseverify.pipeline`
drives them on a Dask cluster from :mod:`~wiseverify.cluster`.
"""

__version__ = "0.1.0"
