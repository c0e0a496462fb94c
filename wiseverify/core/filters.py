"""Which paths a run covers: rclone's filter rules, for the walk and every destination list.

A migration team leaves out snapshots, scratch space and temporary files, or
checks one study's directory, and expects the rules it already writes for
``rclone``.  The syntax (rclone.org/filtering):

* a rule is ``- PATTERN`` (exclude) or ``+ PATTERN`` (include); the first rule
  that matches a path decides, and a path no rule matches is included;
* ``*`` matches within one path segment, ``**`` across ``/``, ``?`` one
  character of a segment, ``[...]`` a character class, ``{a,b}`` alternatives,
  ``\\`` escapes the next character;
* a pattern starting with ``/`` is anchored at the root; otherwise it matches
  the end of the path (``*.tmp`` matches ``a/b/x.tmp``);
* a pattern ending with ``/`` matches directories only, and so everything in
  them.

Like rclone, ``--include`` rules come first, then ``--exclude`` rules, then the
lines of ``--filter-from`` files, and ``--include`` adds a final ``- **``
(everything else is left out).  In a filter file ``#`` and ``;`` start comments
and ``!`` clears the rules read so far.

The same rules decide for the source walk, the destination listing, an S3
Inventory and a listing file, so an excluded path is never ``EXTRA_IN_DEST``.
A directory is *pruned* (never listed, its entries never stat'ed) when a rule
excludes everything under it and no earlier include rule could match anything
below it; entries are then decided column-wise on each spool table
(:meth:`Filters.decide`, RE2 through pyarrow), counted per rule.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from wiseverify.core.errors import ConfigError

IMPLICIT = "implicit (after --include)"


class FilterError(ConfigError):
    """A pattern or a filter file that cannot be used (exit 2, one line)."""


@dataclass(frozen=True)
class Rule:
    include: bool
    pattern: str  # as written
    origin: str  # "--exclude", "--include", "FILE:LINE" or "implicit"
    regex: str  # over the relative path; a directory's path ends with "/"
    anchored: bool
    covers_below: bool  # a match of "dir/" means every path below "dir/" matches too

    @property
    def text(self) -> str:
        return f"{'+' if self.include else '-'} {self.pattern}"


def _glob_body(pat: str, where: str) -> str:
    """The regex of a glob (without anchors); FilterError names what is wrong."""
    out: list[str] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "\\":
            if i + 1 >= n:
                raise FilterError(f"{where}: pattern {pat!r} ends with a lone backslash")
            out.append(re.escape(pat[i + 1]))
            i += 2
        elif c == "*":
            if i + 1 < n and pat[i + 1] == "*":
                out.append(".*")
                i += 2
            else:
                out.append("[^/]*")
                i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pat[j] in "!^":
                j += 1
            if j < n and pat[j] == "]":
                j += 1
            while j < n and pat[j] != "]":
                j += 1
            if j >= n:
                raise FilterError(f"{where}: pattern {pat!r} has an unclosed '['")
            inner = pat[i + 1:j]
            neg = inner[:1] in ("!", "^")
            inner = inner[1:] if neg else inner
            inner = inner.replace("\\", "\\\\")
            out.append(f"[{'^' if neg else ''}{inner}]")
            i = j + 1
        elif c == "{":
            depth, j = 1, i + 1
            while j < n and depth:
                if pat[j] == "\\":
                    j += 2
                    continue
                depth += {"{": 1, "}": -1}.get(pat[j], 0)
                j += 1
            if depth:
                raise FilterError(f"{where}: pattern {pat!r} has an unclosed '{{'")
            alts, cur, d, k = [], [], 0, i + 1
            while k < j - 1:
                ch = pat[k]
                if ch == "\\" and k + 1 < j - 1:
                    cur.append(pat[k:k + 2])
                    k += 2
                    continue
                if ch == "{":
                    d += 1
                elif ch == "}":
                    d -= 1
                if ch == "," and d == 0:
                    alts.append("".join(cur))
                    cur = []
                else:
                    cur.append(ch)
                k += 1
            alts.append("".join(cur))
            out.append("(?:" + "|".join(_glob_body(a, where) for a in alts) + ")")
            i = j
        elif c == "}":
            raise FilterError(f"{where}: pattern {pat!r} has a '}}' without its '{{'")
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_rule(include: bool, pattern: str, origin: str) -> Rule:
    """One rule in rclone's syntax; :class:`FilterError` for a pattern that cannot be."""
    if not pattern.strip():
        raise FilterError(f"{origin}: empty pattern")
    anchored = pattern.startswith("/")
    body = pattern[1:] if anchored else pattern
    if not body:
        raise FilterError(f"{origin}: pattern {pattern!r} names nothing")
    dir_only = body.endswith("/") and not body.endswith("\\/")
    if dir_only:
        body = body[:-1]
        if not body:
            raise FilterError(f"{origin}: pattern {pattern!r} names no directory")
    rx = _glob_body(body, origin)
    if dir_only:
        rx += "/.*"  # the directory, and everything in it
    regex = ("^" if anchored else "(?:^|/)") + rx + "$"
    try:
        re.compile(regex)
        pc.match_substring_regex(pa.array(["x"]), regex)  # and RE2, which decides columns
    except (re.error, pa.ArrowInvalid) as exc:
        raise FilterError(f"{origin}: pattern {pattern!r} is not valid ({exc})") from None
    return Rule(include, pattern, origin, regex, anchored, covers_below=rx.endswith(".*"))


def parse_filter_file(path: str) -> list[Rule]:
    """The rules of a ``--filter-from`` file (``- pat`` / ``+ pat`` lines, ``!`` clears)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise FilterError(f"--filter-from {path}: cannot read it ({exc.strerror or exc})") \
            from None
    except UnicodeDecodeError:
        raise FilterError(f"--filter-from {path}: not UTF-8 text") from None
    rules: list[Rule] = []
    for no, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        if text == "!":
            rules = []
            continue
        if len(text) < 3 or text[0] not in "+-" or text[1] != " ":
            raise FilterError(f"--filter-from {path}:{no}: {line!r} is not '- PATTERN' or "
                              "'+ PATTERN'")
        rules.append(compile_rule(text[0] == "+", text[2:], f"{path}:{no}"))
    return rules


#: the per-rule counts key of the keys a ``--slice`` leaves to other slices
SLICE = -1


def parse_slice(text: str | None) -> tuple[int, int]:
    """``K/N`` (1 <= K <= N) as ``(K, N)``; ``(0, 0)`` for none."""
    if not text:
        return 0, 0
    k, sep, n = str(text).partition("/")
    try:
        kk, nn = int(k), int(n)
    except ValueError:
        kk = nn = 0
    if not sep or nn < 1 or not 1 <= kk <= nn:
        raise FilterError(f"--slice {text!r}: expected K/N with 1 <= K <= N, e.g. 3/7")
    return kk, nn


@dataclass
class Filters:
    """The run's filter rules, in the order they apply, and its ``--slice`` of the keys.

    A slice ``K/N`` keeps the keys whose stable key hash falls in slice K of N
    (the high 32 bits of :func:`wiseverify.core.keys.key_hash` modulo N, so a
    slice is spread over every hash partition): N runs with K = 1..N cover every
    key exactly once, as rclone's ``--hash-filter`` does.  Directories are never
    pruned by a slice.
    """

    rules: list[Rule] = field(default_factory=list)
    slice_k: int = 0
    slice_n: int = 0
    _compiled: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._compiled = [re.compile(r.regex) for r in self.rules]

    @classmethod
    def build(cls, include: tuple[str, ...] | list[str] = (),
              exclude: tuple[str, ...] | list[str] = (),
              filter_from: tuple[str, ...] | list[str] | str | None = ()) -> Filters:
        """rclone's order: ``--include``, ``--exclude``, filter files, then ``- **`` if included."""
        if isinstance(filter_from, str):
            filter_from = (filter_from,)
        rules = [compile_rule(True, p, "--include") for p in include or ()]
        rules += [compile_rule(False, p, "--exclude") for p in exclude or ()]
        for path in filter_from or ():
            rules += parse_filter_file(path)
        if include:
            rules.append(compile_rule(False, "/**", IMPLICIT))
        return cls(rules)

    @classmethod
    def from_config(cls, cfg) -> Filters:
        f = cls.build(cfg.include, cfg.exclude, cfg.filter_from)
        f.slice_k, f.slice_n = parse_slice(getattr(cfg, "slice", None))
        return f

    def __bool__(self) -> bool:
        return bool(self.rules) or bool(self.slice_n)

    # --- identity --------------------------------------------------------------------
    def describe(self) -> list[str]:
        return [r.text for r in self.rules] + (
            [f"slice {self.slice_k}/{self.slice_n}"] if self.slice_n else [])

    def fingerprint(self) -> str | None:
        """Part of a run's identity: runs with different rules covered different paths."""
        if not self:
            return None
        return hashlib.sha256(json.dumps(self.describe()).encode()).hexdigest()[:16]

    # --- directories -----------------------------------------------------------------
    def prune(self, rel_dir: str) -> int | None:
        """The rule that leaves out everything under directory ``rel_dir``, or None to walk it."""
        path = rel_dir.rstrip("/") + "/"
        for i, (r, rx) in enumerate(zip(self.rules, self._compiled, strict=True)):
            if r.include:
                if _could_match_below(r, path):
                    return None
            elif r.covers_below and rx.search(path):
                return i
        return None

    # --- entries ---------------------------------------------------------------------
    def decide(self, keys: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Per key, the index of the first rule that matches it (null: no rule does)."""
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        n = len(keys)
        first = pa.nulls(n, pa.int32())
        for i in range(len(self.rules) - 1, -1, -1):  # the last assignment is the first rule
            hit = pc.fill_null(pc.match_substring_regex(keys, self.rules[i].regex), False)
            first = pc.if_else(hit, pa.scalar(i, pa.int32()), first)
        return first

    def keep(self, table: pa.Table, key: str = "key", size: str | None = "size",
             counts: dict | None = None) -> pa.Table:
        """``table`` without the rows the rules exclude; what each rule matched into ``counts``."""
        if not self or table.num_rows == 0:
            return table
        if self.slice_n:
            table = self._in_slice(table, size, counts)
            if not self.rules or not table.num_rows:
                return table
        first = self.decide(table.column(key))
        excludes = pa.array([i for i, r in enumerate(self.rules) if not r.include], pa.int32())
        drop = pc.fill_null(pc.is_in(first, value_set=excludes), False)
        if counts is not None:
            matched = pc.is_valid(first)
            if pc.any(matched).as_py():
                m = table.filter(matched)
                cols = {"_rule": first.filter(matched),
                        "_size": m.column(size) if size else pa.nulls(m.num_rows, pa.int64())}
                agg = pa.table(cols).group_by("_rule").aggregate([("_size", "sum"),
                                                                  ("_rule", "count")])
                for row in agg.to_pylist():
                    c = counts.setdefault(int(row["_rule"]), _zero())
                    c["entries"] += int(row["_rule_count"])
                    c["bytes"] += int(row["_size_sum"] or 0)
        return table.filter(pc.invert(drop))

    def _in_slice(self, table: pa.Table, size: str | None, counts: dict | None) -> pa.Table:
        from wiseverify.core.keys import key_hash

        col = "nkey" if "nkey" in table.column_names else "key"
        h = key_hash(table.column(col))
        mine = ((h >> 32) % self.slice_n) == (self.slice_k - 1)
        keep = pa.array(mine)
        if counts is not None and not mine.all():
            c = counts.setdefault(SLICE, _zero())
            c["entries"] += int((~mine).sum())
            if size:
                out = table.column(size).filter(pc.invert(keep))
                c["bytes"] += int(pc.sum(out).as_py() or 0)
        return table.filter(keep)

    def count_pruned(self, rule: int, counts: dict) -> None:
        counts.setdefault(rule, _zero())["directories"] += 1


def _zero() -> dict:
    return {"entries": 0, "bytes": 0, "directories": 0}


def _could_match_below(rule: Rule, dir_path: str) -> bool:
    """Whether include ``rule`` can match a path inside ``dir_path`` (which ends with "/")."""
    if not rule.anchored or "**" in rule.pattern or "{" in rule.pattern:
        return True  # unanchored patterns match at any depth; no cheap proof otherwise
    comps = rule.pattern.strip("/").split("/")
    parts = dir_path.strip("/").split("/") if dir_path.strip("/") else []
    if len(parts) >= len(comps) and not rule.pattern.endswith("/"):
        return False  # the pattern's files sit above this directory
    for p, c in zip(parts, comps, strict=False):
        if not re.fullmatch(_glob_body(c, rule.origin), p):
            return False
    return True


def merge_counts(into: dict, more: dict | None) -> dict:
    """Sum per-rule counts (task results come back with JSON-style string keys)."""
    for k, v in (more or {}).items():
        c = into.setdefault(int(k), _zero())
        for f in ("entries", "bytes", "directories"):
            c[f] += int(v.get(f, 0))
    return into


def summary(filters: Filters, source: dict, dest: dict) -> dict | None:
    """``summary.json``'s ``filters``: every rule, what it matched on each side, unused ones.

    ``entries``/``bytes`` of an exclude rule are what it left out; of an include
    rule, what it let in.  A rule that matched nothing on either side is named
    under ``unused``: usually a typo.
    """
    if not filters:
        return None
    rules = []
    for i, r in enumerate(filters.rules):
        s, d = source.get(i, _zero()), dest.get(i, _zero())
        rules.append({"rule": r.text, "from": r.origin, "source": s, "destination": d})
    unused = [row["rule"] for row, r in zip(rules, filters.rules, strict=True)
              if r.origin != IMPLICIT and not any(
                  row[side][f] for side in ("source", "destination")
                  for f in ("entries", "directories"))]
    ex = [row for row, r in zip(rules, filters.rules, strict=True) if not r.include]
    sliced = None
    if filters.slice_n:
        sliced = {"k": filters.slice_k, "n": filters.slice_n,
                  "source_entries_elsewhere": source.get(SLICE, _zero())["entries"],
                  "destination_objects_elsewhere": dest.get(SLICE, _zero())["entries"]}
    return {"fingerprint": filters.fingerprint(), "rules": rules, "slice": sliced,
            "excluded_source_entries": sum(x["source"]["entries"] for x in ex),
            "excluded_source_bytes": sum(x["source"]["bytes"] for x in ex),
            "pruned_directories": sum(x["source"]["directories"] for x in ex),
            "excluded_destination_objects": sum(x["destination"]["entries"] for x in ex),
            "excluded_destination_bytes": sum(x["destination"]["bytes"] for x in ex),
            "unused": unused}
