"""Stage 1, inventory: both sides listed as Dask tasks and written hash-partitioned.

The walk (:mod:`.walk`), the S3 listing (:mod:`.s3list`) or what a site already has
(:mod:`.listing_file`, :mod:`.s3_inventory`, :mod:`.checksum_report`) write spool
files (:mod:`.spool`); :mod:`.partition` turns them into
``inventory/{src,dst}/part=NNNNN`` so that later stages read one partition at a time.
"""

from wiseverify.inventory.partition import read_partition

__all__ = ["read_partition"]
