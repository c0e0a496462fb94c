"""Stage 4, reconcile: one partition planned, digested and given its verdicts.

:mod:`.plan` decides per partition what to compute, :mod:`.settle` applies the
evidence rules column-wise, :mod:`.checkpoint` runs digest units resumably,
:mod:`.finish` gives each key its status and :mod:`.assemble` writes the table.
"""
