"""Stage 3, digest: read the bytes and hash them, on both sides, in units sized for a task.

:mod:`.units` groups the files and ranges; :mod:`.hashing` reads the source with
one pass per byte (:mod:`.source` opens, :mod:`.lanes` hashes MD5s side by side),
:mod:`.smallfiles` hashes small files ahead of the plan, and :mod:`.execute` runs
a unit, reading the destination by ranged GETs signed by :mod:`.getrange`.
"""
