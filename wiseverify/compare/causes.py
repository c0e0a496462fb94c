"""Why a key differs: a stale copy, or the bytes changed after they were copied.

During the weeks of sync before a cutover most discrepancies are files that
changed on the source after the last copy; the next sync fixes them.  The rare
real corruption must stand out from them.  Every SIZE_MISMATCH,
CONTENT_MISMATCH and METADATA_MISMATCH gets a ``cause``, decided column-wise
from the facts both sides keep:

* ``source-changed-after-copy``: the source's mtime or ctime is later than the
  object's LastModified, or its mtime is later than the object's stored
  ``file-mtime``.  A stale copy.
* ``source-older-than-copy``: the source was last changed before the object
  was written, and the object's stored ``file-mtime`` equals the source's
  mtime: the copy was made of this very version, and the bytes (or the
  metadata) changed in transit or at rest.  The alarm.
* ``unknown``: a needed fact is absent, and ``detail`` names it.  A Snowball
  import stores no ``file-mtime`` and its LastModified is the import time, so
  LastModified alone cannot tell a copy of this version from a copy of an
  older one.

``stored-checksum-wrong`` is set by the read-back sample (``--sample``) when the
bytes read back disagree with a stored checksum that the source matched.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from wiseverify.core import schema as S

CHANGED, OLDER, UNKNOWN = S.CAUSE_CHANGED, S.CAUSE_OLDER, S.CAUSE_UNKNOWN
STORED_WRONG = S.CAUSE_STORED_WRONG
CAUSED = (S.SIZE_MISMATCH, S.CONTENT_MISMATCH, S.METADATA_MISMATCH)


def add_causes(table: pa.Table) -> pa.Table:
    """``table`` with ``cause`` set, and appended to ``detail``, on every row it applies to.

    Decided on the rows it applies to only, then put back in place: they are
    a handful of a partition's 125,000 rows, and the two dozen column
    operations over every row were a tenth of a warm re-run's partition task.
    """
    if table.num_rows == 0:
        return table
    target = pc.fill_null(pc.is_in(table.column("status").combine_chunks(),
                                   value_set=pa.array(CAUSED, pa.string())), False)
    if not pc.any(target).as_py():
        return table
    sub = table.filter(target)
    cause, why = _decide(sub)
    note = pc.binary_join_element_wise("cause: ", cause, " (", why, ")", "")
    detail = sub.column("detail")
    joined = pc.if_else(pc.is_valid(detail), pc.binary_join_element_wise(detail, note, "; "),
                        note)
    everywhere = pa.nulls(table.num_rows, pa.string())
    table = table.set_column(table.schema.get_field_index("detail"), "detail",
                             pc.replace_with_mask(table.column("detail").combine_chunks(),
                                                  target, joined.combine_chunks()))
    return table.set_column(table.schema.get_field_index("cause"), "cause",
                            pc.replace_with_mask(everywhere, target, cause.combine_chunks()))


def _decide(table: pa.Table) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """The cause of each row of ``table`` and the sentence that says why."""
    mtime = table.column("src_mtime_ns")
    changed = pc.max_element_wise(mtime, table.column("src_ctime_ns"), skip_nulls=True)
    lm = table.column("dst_last_modified_ns")
    fm = table.column("dst_file_mtime_ns")
    # a file-mtime of whole seconds (or a source time of whole seconds) compares to the second
    coarse = pc.or_(pc.equal(fm, pc.multiply(pc.divide(fm, 1_000_000_000), 1_000_000_000)),
                    pc.equal(mtime, pc.multiply(pc.divide(mtime, 1_000_000_000),
                                                 1_000_000_000)))
    m_cmp = pc.if_else(coarse, pc.divide(mtime, 1_000_000_000), mtime)
    f_cmp = pc.if_else(coarse, pc.divide(fm, 1_000_000_000), fm)
    # LastModified has whole seconds: a change within its second is not "after" it
    sec = 1_000_000_000
    changed_s, lm_s = pc.divide(changed, sec), pc.divide(lm, sec)
    after_lm = pc.fill_null(pc.greater(changed_s, lm_s), False)
    after_fm = pc.fill_null(pc.greater(m_cmp, f_cmp), False)
    same_fm = pc.fill_null(pc.equal(m_cmp, f_cmp), False)
    before_lm = pc.fill_null(pc.less_equal(changed_s, lm_s), False)
    older = pc.and_(same_fm, before_lm)
    cause = pc.if_else(after_lm, CHANGED, pc.if_else(after_fm, CHANGED,
                                                     pc.if_else(older, OLDER, UNKNOWN)))
    why = pc.if_else(
        after_lm, "the source changed (mtime/ctime) after the object was written",
        pc.if_else(after_fm, "the source mtime is later than the object's file-mtime",
                   pc.if_else(older, "the source is unchanged since the object was written "
                              "and its file-mtime matches: the copy changed",
                              pc.if_else(pc.is_null(lm), "the object's LastModified is not "
                                         "known",
                                         pc.if_else(pc.is_null(fm),
                                                    "no file-mtime stored on the object, and "
                                                    "LastModified alone does not date the "
                                                    "copy of this version",
                                                    "the object's file-mtime is later than "
                                                    "the source mtime")))))
    return cause, why
