"""Where the workers come from: a local cluster, a SLURM allocation, job files.

:mod:`.cluster` opens a client, :mod:`.slurmcluster` starts workers through
dask-jobqueue, :mod:`.slurm` runs inside ``sbatch slurm/verify.sh`` and
:mod:`.jobfile` reads the YAML job files of scheduled dry runs.
"""
