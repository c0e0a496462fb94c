"""What a run leaves behind and how it is read: summary, lists, HTML, audit, history.

These modules read run directories through :mod:`wiseverify.core` only, so a report
can be rebuilt (``wiseverify report``) and audited without the pipeline.
"""
