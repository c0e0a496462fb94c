"""Stage 3, digest: read the bytes and hash them, on both sides, in units sized for a task.

:mod:`.units` groups the files and ranges; :mod:`.hashing` reads the source with
one pass per byte and the destination by ranged GETs signed by :mod:`.getrange`.
"""
