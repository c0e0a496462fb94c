"""``wiseverify report RUN_DIR --only DIR``: one directory's report, for its owner to sign.

In a GxP migration each study's owner signs off their own directory, not the
whole namespace.  The scoped report holds only the keys at or below ``DIR``,
its own counts and verdict, and the SHA-256 of the run's ``manifest.json``, so
the signature is tied to the one audited run it was cut from.  It is written
next to the run directory (``RUN_DIR-only-<dir>/``), never inside it: the run
directory holds exactly what its manifest lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wiseverify.core import schema as S
from wiseverify.core.runio import write_bytes, write_text
from wiseverify.core.units import human_bytes
from wiseverify.report.charts import STATUS_COLORS, _e
from wiseverify.report.manifest import MANIFEST
from wiseverify.report.summary import reconciliation_files

#: discrepancies listed in the scoped page (the full list is the run's discrepancies.csv)
SHOWN = 1000


def scoped_dir(run_dir: str | os.PathLike, prefix: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", prefix.strip("/")) or "root"
    run_dir = Path(run_dir).absolute()
    return run_dir.parent / f"{run_dir.name}-only-{slug}"


def scope_summary(run_dir: str | os.PathLike, prefix: str) -> tuple[dict, list[dict]]:
    """Counts, bytes and verdict of the keys at or below ``prefix``; and its discrepancies."""
    run_dir = Path(run_dir)
    p = prefix.strip("/")
    counts: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    disc: list[dict] = []
    cols = ["key", "status", "detail", "src_size", "dst_size"]
    for f in reconciliation_files(run_dir):
        for b in pq.ParquetFile(f).iter_batches(batch_size=1 << 16, columns=cols):
            key = b.column("key")
            inside = pc.or_(pc.equal(key, p), pc.starts_with(key, p + "/")) if p else None
            t = b.filter(inside) if inside is not None else b
            if not t.num_rows:
                continue
            size = pc.coalesce(t.column("src_size"), t.column("dst_size"), 0)
            for st, n, s in zip(*_agg(t.column("status"), size), strict=True):
                counts[st] = counts.get(st, 0) + n
                nbytes[st] = nbytes.get(st, 0) + s
            if len(disc) < SHOWN:
                bad = t.filter(pc.invert(pc.is_in(t.column("status"),
                                                  value_set=_clean())))
                disc += bad.slice(0, SHOWN - len(disc)).to_pylist()
    summary = json.loads((run_dir / "summary.json").read_text())
    manifest = run_dir / MANIFEST
    bad_total = sum(n for st, n in counts.items() if st not in S.CLEAN_STATUSES)
    out = {
        "scope": p or "/", "run_id": summary.get("run_id"), "run_dir": str(run_dir.absolute()),
        "source": summary.get("source"), "destination": summary.get("destination"),
        "run_verdict": summary.get("verdict"),
        "run_manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()
        if manifest.is_file() else None,
        "keys": sum(counts.values()), "counts": counts, "bytes": nbytes,
        "discrepancies": bad_total,
        "verdict": "PASS" if bad_total == 0 and counts else ("FAIL" if counts else "EMPTY"),
        "generated": datetime.now(UTC).isoformat(),
        "filters": (summary.get("filters") or {}).get("rules"),
    }
    return out, disc


def _agg(status, size):
    t = pa.table({"s": status, "b": size}).group_by("s").aggregate([("b", "count"),
                                                                     ("b", "sum")])
    return t.column("s").to_pylist(), t.column("b_count").to_pylist(), \
        [int(x or 0) for x in t.column("b_sum").to_pylist()]


def _clean():
    return pa.array(sorted(S.CLEAN_STATUSES), pa.string())


def write_scoped(run_dir: str | os.PathLike, prefix: str,
                 out: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Write ``report.html`` and ``scope.json`` for one directory; returns the page's path."""
    summ, disc = scope_summary(run_dir, prefix)
    dest = Path(out) if out else scoped_dir(run_dir, prefix)
    dest.mkdir(parents=True, exist_ok=True)
    write_text(dest / "scope.json", json.dumps(summ, indent=2) + "\n")
    rows = "".join(
        f'<tr><td><span class="sw" style="background:{STATUS_COLORS.get(st, "#999")}"></span>'
        f"{_e(st)}</td><td class=\"n\">{summ['counts'][st]:,}</td><td class=\"n\">"
        f"{human_bytes(summ['bytes'].get(st, 0))}</td></tr>"
        for st in S.STATUSES if summ["counts"].get(st))
    drows = "".join(
        f"<tr><td>{_e(r['status'])}</td><td class=\"k\">{_e(r['key'])}</td>"
        f"<td>{_e(r.get('detail') or '')}</td></tr>" for r in disc)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>wiseverify sign-off: {_e(summ['scope'])} ({_e(summ['verdict'])})</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:3px 8px}}
.n{{text-align:right}}.k{{font-family:monospace}}.sw{{display:inline-block;width:10px;
height:10px;margin-right:6px}}.verdict{{font-size:1.4em;font-weight:700}}
dt{{font-weight:600}}</style></head><body>
<h1>Directory sign-off: <code>{_e(summ['scope'])}</code></h1>
<p class="verdict" id="verdict">{_e(summ['verdict'])}: {summ['keys']:,} keys,
{summ['discrepancies']:,} discrepancies</p>
<table><tr><th>status</th><th>keys</th><th>bytes</th></tr>{rows}</table>
<h2>Discrepancies in this directory</h2>
{f'<table><tr><th>status</th><th>key</th><th>detail</th></tr>{drows}</table>' if disc
 else '<p>None.</p>'}
<h2>Cut from</h2><dl>
<dt>run</dt><dd>{_e(summ['run_id'])} ({_e(summ['run_dir'])}), whole-run verdict
{_e(summ['run_verdict'])}</dd>
<dt>source → destination</dt><dd>{_e(summ['source'])} → {_e(summ['destination'])}</dd>
<dt>SHA-256 of the run's manifest.json</dt><dd class="k" id="manifest">
{_e(summ['run_manifest_sha256'] or 'none: the run has no manifest')}</dd>
<dt>generated</dt><dd>{_e(summ['generated'])}</dd></dl>
<p>Check the run with <code>wiseverify audit {_e(summ['run_dir'])}</code> before signing:
it verifies every file of the run against that manifest.</p>
</body></html>
"""
    path = dest / "report.html"
    write_bytes(path, page.encode("utf-8"))
    return path, summ
