"""The driver: a verification as a sequence of stage calls on a Dask client.

:mod:`.driver` is ``verify()``; :mod:`.inventory_stage` submits the inventory tasks;
:mod:`.tasks` holds the bodies of the per-partition tasks the workers run.
"""
