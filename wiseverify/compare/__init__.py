"""Stage 2, compare: which keys pair up, and what evidence each pair needs.

Matching (:mod:`.match`), carrying a previous run's verdict (:mod:`.carry`), the
evidence plan per object with its HEADs (:mod:`.evidence`), the ``--metadata auto``
sample (:mod:`.metascope`) and the metadata comparison (:mod:`.metadata`).
"""
