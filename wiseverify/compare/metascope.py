"""Whose POSIX metadata must be compared: ``--metadata auto`` decided from a sample.

A destination copied by DataSync or FSx for Lustre stores the source's POSIX
metadata as ``file-mtime``/``file-owner``/``file-group``/``file-permissions``
user metadata on every object; a Snowball import stores none.  The listing
cannot tell the two apart: only a HeadObject returns user metadata.  Comparing
metadata only where a HEAD happened to be made for another reason hid a wrong
``file-mtime`` on every small single-part object under a MATCH.

So before any partition's evidence is planned, a sample of the destination is
HEADed and its answers decide (:func:`probe`), **per top-level prefix**:

* *why per prefix*: a mixed destination is mixed by prefix - a DataSync task
  or a Snowball import each target one - while hash partitions cut across
  every prefix.  A decision per partition would HEAD every Snowball-imported
  object as soon as a DataSync object shares its partition.
* *the sample*: up to :data:`SAMPLE_PER_PREFIX` objects of each prefix, those
  of smallest key hash (``keys.sample_by_prefix``): uniform over the prefix,
  the same on every run of the same listing, and drawn while the listing is
  compacted, so it costs no extra pass.  One sample for the whole run: the
  number of HEADs does not grow with the partitions.
* a prefix whose sample shows the keys on any object is ``with`` metadata:
  every candidate under it is HEADed and compared;
* a prefix whose answered sample shows none is ``without``: its MATCH rows
  keep ``metadata_checked=false``, and the run says on how many sampled
  objects it found no POSIX metadata;
* a prefix whose sampled HEADs all failed is ``failed``: its candidates are
  DEST_ERROR rows naming the error (``--metadata off`` waives the
  comparison), rather than a HEAD of every object that would fail the same
  way a million times over.

:func:`scope` applies a decision to one partition.  Called without one (a
partition planned on its own, in a test or a notebook), it samples that
partition's candidates with the same functions.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from wiseverify.core import keys as K
from wiseverify.core.bursts import gather_limited
from wiseverify.core.s3 import S3Target, error_text
from wiseverify.core.sigv4 import head_reader

#: the user-metadata keys the FSx for Lustre / DataSync layout writes
POSIX_KEYS = frozenset({"file-mtime", "file-owner", "file-group", "file-permissions"})
#: sampled objects per top-level prefix: a few dozen
SAMPLE_PER_PREFIX = 32
#: prefixes named in summary.json (the counts are always complete)
MAX_NAMED = 50

WITH, WITHOUT, FAILED = "with", "without", "failed"


def has_posix(meta: dict | None) -> bool:
    """Whether user metadata carries any of the ``file-*`` POSIX keys."""
    return bool(meta) and any(k.lower() in POSIX_KEYS for k in meta)


def merge_samples(samples: list[dict[str, list[tuple[int, str]]]],
                  k: int = SAMPLE_PER_PREFIX) -> dict[str, list[str]]:
    """The ``k`` keys of smallest hash per prefix over several groups' samples."""
    pooled: dict[str, list[tuple[int, str]]] = {}
    for s in samples:
        for prefix, items in s.items():
            pooled.setdefault(prefix, []).extend(items)
    return {p: [key for _, key in heapq.nsmallest(k, items)] for p, items in pooled.items()}


@dataclass
class Decision:
    """Per top-level prefix: ``with``, ``without`` or ``failed`` metadata; and what it cost."""

    state: dict[str, str] = field(default_factory=dict)
    reason: dict[str, str] = field(default_factory=dict)  # the DEST_ERROR text of failed ones
    sampled: int = 0
    sampled_without: int = 0  # answered sample objects without any file-* key
    sample_errors: int = 0

    def counts(self) -> dict:
        named = {s: sorted(p for p, v in self.state.items() if v == s)[:MAX_NAMED]
                 for s in (WITH, WITHOUT, FAILED)}
        return {"sampled": self.sampled, "sampled_without_metadata": self.sampled_without,
                "sample_errors": self.sample_errors,
                "prefixes_with_metadata": named[WITH],
                "prefixes_without_metadata": named[WITHOUT],
                "prefixes_not_sampled": named[FAILED]}

    def to_json(self) -> dict:
        return {"state": self.state, "reason": self.reason, "sampled": self.sampled,
                "sampled_without": self.sampled_without, "sample_errors": self.sample_errors}

    @classmethod
    def from_json(cls, d: dict) -> Decision:
        return cls(dict(d["state"]), dict(d["reason"]), d["sampled"], d["sampled_without"],
                   d["sample_errors"])


def probe(target: S3Target, sample: dict[str, list[str]], concurrency: int = 32) -> Decision:
    """HEAD the sampled objects (keys relative to the prefix) and decide each prefix."""
    jobs = [(p, key) for p, keys in sorted(sample.items()) for key in keys]

    async def _all():
        reader = await head_reader(await target.client(), target.bucket)

        async def one(job):
            try:
                return await reader.head(target.prefix + job[1], checksum_mode=True)
            except Exception as exc:
                return exc

        return await gather_limited(jobs, one, concurrency, endpoint=target)

    got = target.run(_all) if jobs else []
    out = Decision(sampled=len(jobs))
    seen: dict[str, bool] = {}
    errors: dict[str, tuple[int, str]] = {}
    for (prefix, _), h in zip(jobs, got, strict=True):
        if isinstance(h, BaseException):
            out.sample_errors += 1
            n, text = errors.get(prefix, (0, error_text(h, "HeadObject")))
            errors[prefix] = (n + 1, text)
            continue
        posix = has_posix(h.get("Metadata"))
        out.sampled_without += not posix
        seen[prefix] = seen.get(prefix, False) or posix
    for prefix in sample:
        if prefix in seen:
            out.state[prefix] = WITH if seen[prefix] else WITHOUT
            continue
        out.state[prefix] = FAILED
        n, text = errors[prefix]
        out.reason[prefix] = (
            f"POSIX metadata could not be sampled: HeadObject failed on all {n} sampled "
            f"objects under {prefix or 'the prefix root'!r} ({text}); --metadata off waives "
            "the comparison")
    return out


@dataclass
class Scope:
    """One partition's share of a decision.

    ``head`` marks the rows (positions of the matched partition) whose object
    must be HEADed and its metadata compared; ``failed`` maps the rows of
    prefixes that could not be sampled to their DEST_ERROR text.
    """

    head: np.ndarray
    failed: dict[int, str] = field(default_factory=dict)
    requests: int = 0  # sample HEADs made for this partition alone (no run-wide decision)


def scope(target: S3Target, rel: pa.Array | pa.ChunkedArray, positions: np.ndarray, n: int,
          metadata: str, mode: str, decision: Decision | None = None,
          concurrency: int = 32) -> Scope:
    """The metadata scope of a partition of ``n`` rows whose candidates sit at ``positions``.

    ``rel`` holds the candidates' destination keys relative to the prefix, in
    the same order.  ``all`` HEADs every candidate and ``off`` none; a readback
    run compares the metadata every GET returns, so it needs no sample.
    """
    head = np.zeros(n, bool)
    if metadata == "all":
        head[positions] = True
    if metadata != "auto" or mode != "stored" or not len(positions):
        return Scope(head)
    out = Scope(head)
    if decision is None:  # planned on its own: sample this partition's candidates
        hashes = K.key_hash([K.nfc(r) for r in rel.to_pylist()])
        decision = probe(target, merge_samples([K.sample_by_prefix(rel, hashes,
                                                                   SAMPLE_PER_PREFIX)]),
                         concurrency)
        out.requests = decision.sampled
    enc = K.top_prefixes(rel).dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False)
    names = enc.dictionary.to_pylist()
    # a prefix the sample never saw (none should be) is compared, never assumed bare
    states = [decision.state.get(p, WITH) for p in names]
    head[positions[np.isin(codes, [i for i, s in enumerate(states) if s != WITHOUT])]] = True
    for i, s in enumerate(states):
        if s == FAILED:
            reason = decision.reason[names[i]]
            for p in positions[codes == i]:
                out.failed[int(p)] = reason
    return out

