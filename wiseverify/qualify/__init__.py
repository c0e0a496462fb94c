"""``wiseverify qualify``: installation and operational qualification evidence (IQ/OQ)."""
