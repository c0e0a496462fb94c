"""Whose POSIX metadata must be compared: ``--metadata auto`` decided from a sample.

A destination copied by DataSync or FSx for Lustre stores the source's POSIX
metadata as ``file-mtime``/``file-owner``/``file-group``/``file-permissions``
user metadata on every object; a Snowball import stores none.  The listing
cannot tell the two apart: only a HeadObject returns user metadata.  Comparing
metadata only where a HEAD happened to be made for another reason hid a wrong
``file-mtime`` on every small single-part object under a MATCH.

So before a partition's evidence is planned, :func:`scope` HEADs a
deterministic sample of its candidates and looks for the ``file-*`` keys:

* **decision unit: the top-level prefix within a partition.**  A mixed
  destination is mixed by prefix - each DataSync task or Snowball import
  targets a prefix - while hash partitions cut across every prefix.  Deciding
  per partition would HEAD every Snowball-imported object as soon as any
  DataSync object shares its partition; deciding per top-level prefix keeps
  the HEADs where the metadata is.  Every partition samples each prefix
  afresh, so across a run a prefix is sampled ``partitions`` times over.
* **sample:** up to :data:`SAMPLE_PER_GROUP` candidates per prefix, evenly
  spaced over its keys in key order (all of them when fewer): the same
  objects on every run of the same inventory.
* a prefix whose sample shows the keys on any object gets a HEAD for every
  candidate, and each is compared;
* a prefix whose sampled HEADs all failed cannot be decided: its candidates
  are DEST_ERROR rows naming the error (``--metadata off`` waives the
  comparison), rather than a HEAD of every object that would fail the same
  way a million times over;
* a prefix whose answered sample shows none keeps ``metadata_checked=false``
  on its MATCH rows, and the run says on how many sampled objects it found
  no POSIX metadata.

The sampled answers are handed to the evidence plan, so a sampled object
costs one HEAD, not two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .s3 import S3Target, error_text, gather_limited

#: the user-metadata keys the FSx for Lustre / DataSync layout writes
POSIX_KEYS = frozenset({"file-mtime", "file-owner", "file-group", "file-permissions"})
#: sampled candidates per (partition, top-level prefix): a few dozen
SAMPLE_PER_GROUP = 32
#: prefixes named in a partition's result (the counts are always complete)
MAX_NAMED = 50


def has_posix(meta: dict | None) -> bool:
    """Whether user metadata carries any of the ``file-*`` POSIX keys."""
    return bool(meta) and any(k.lower() in POSIX_KEYS for k in meta)


@dataclass
class Scope:
    """One partition's metadata decision.

    ``head`` marks the rows (positions of the matched partition) whose object
    must be HEADed and its metadata compared; ``heads`` holds the sampled
    answers by position, for the evidence plan to reuse.
    """

    head: np.ndarray
    heads: dict[int, dict] = field(default_factory=dict)
    #: rows of prefixes whose every sampled HEAD failed, and the error text to report
    failed: dict[int, str] = field(default_factory=dict)
    sampled: int = 0
    sampled_without: int = 0  # answered sample objects without any file-* key
    sample_errors: int = 0
    requests: int = 0
    with_metadata: list[str] = field(default_factory=list)  # top-level prefixes
    without_metadata: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        return {"sampled": self.sampled, "sampled_without_metadata": self.sampled_without,
                "sample_errors": self.sample_errors,
                "prefixes_with_metadata": self.with_metadata[:MAX_NAMED],
                "prefixes_without_metadata": self.without_metadata[:MAX_NAMED]}


def top_prefixes(rel: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The top-level prefix of each relative key: ``"a/"`` for ``a/b/c``, ``""`` for ``c``."""
    slash = pc.fill_null(pc.match_substring(rel, "/"), False)
    head = pc.replace_substring_regex(rel, r"(?s)/.*", "/", max_replacements=1)
    out = pc.if_else(slash, head, "")
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def sample_rows(groups: np.ndarray, k: int = SAMPLE_PER_GROUP) -> np.ndarray:
    """Indices into ``groups`` (group codes in key order): up to ``k`` spread over each group."""
    picked: list[np.ndarray] = []
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    for members in np.split(order, bounds):
        n = len(members)
        if n <= k:
            picked.append(members)
        else:  # the middle of each of k equal slices of the group's key range
            picked.append(members[(np.arange(k) * n + n // 2) // k])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def decide(groups: np.ndarray, names: list[str], sample: np.ndarray,
           answers: list[dict | None]) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """Which groups are HEADed in full, from the sample's answers (None: the HEAD failed).

    Returns (full, failed, with, without): a bool per group code for the groups
    whose sample showed metadata or had no answer at all, and for those with no
    answer; and the codes whose sample showed metadata and showed none.
    """
    ng = len(names)
    seen = np.zeros(ng, bool)
    answered = np.zeros(ng, bool)
    for i, h in zip(sample, answers, strict=True):
        g = groups[i]
        if h is not None:
            answered[g] = True
            if has_posix(h.get("Metadata")):
                seen[g] = True
    present = np.zeros(ng, bool)
    present[groups[sample]] = True
    failed = present & ~answered
    return (seen | failed, failed, [int(g) for g in np.flatnonzero(seen)],
            [int(g) for g in np.flatnonzero(present & answered & ~seen)])


def scope(target: S3Target, rel: pa.Array | pa.ChunkedArray, positions: np.ndarray, n: int,
          metadata: str, mode: str, concurrency: int = 32,
          k: int = SAMPLE_PER_GROUP) -> Scope:
    """The metadata decision for a partition of ``n`` rows whose candidates sit at ``positions``.

    ``rel`` holds the candidates' destination keys relative to the prefix, in
    the same order.  ``all`` HEADs every candidate and ``off`` none; a readback
    run compares the metadata every GET returns, so it samples nothing.
    """
    head = np.zeros(n, bool)
    if metadata == "all":
        head[positions] = True
    if metadata != "auto" or mode != "stored" or not len(positions):
        return Scope(head)
    enc = top_prefixes(rel).dictionary_encode()
    groups = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = enc.dictionary.to_pylist()
    sample = sample_rows(groups, k)
    keys = [target.prefix + r for r in pc.take(rel, pa.array(sample)).to_pylist()]

    async def _all():
        client = await target.client()

        async def one(key):
            try:
                return await client.head_object(Bucket=target.bucket, Key=key,
                                                ChecksumMode="ENABLED")
            except Exception as exc:
                return exc

        return await gather_limited(keys, one, concurrency)

    got = target.run(_all)
    answers = [None if isinstance(h, BaseException) else h for h in got]
    full, failed, with_md, without_md = decide(groups, names, sample, answers)
    head[positions[full[groups]]] = True
    out = Scope(head, sampled=len(sample), requests=len(sample),
                with_metadata=[names[g] for g in with_md],
                without_metadata=[names[g] for g in without_md])
    why: dict[int, str] = {}
    for i, exc in zip(sample, got, strict=True):
        if isinstance(exc, BaseException) and failed[groups[i]]:
            why.setdefault(int(groups[i]), error_text(exc, "HeadObject"))
    for g, text in why.items():
        k = int(np.count_nonzero(groups[sample] == g))
        reason = (f"POSIX metadata could not be sampled: HeadObject failed on all {k} sampled "
                  f"objects under {names[g] or 'the prefix root'!r} ({text}); "
                  "--metadata off waives the comparison")
        for p in positions[groups == g]:
            out.failed[int(p)] = reason
    for i, h in zip(sample, answers, strict=True):
        if h is None:  # reported by its own row (DEST_ERROR), or HEADed again by the plan
            out.sample_errors += 1
            continue
        out.heads[int(positions[i])] = h
        if not has_posix(h.get("Metadata")):
            out.sampled_without += 1
    return out
