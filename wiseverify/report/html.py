"""Stage 5, report: ``report.html``, one self-contained page per run.

Managers and validators read a page, not a Parquet file.  The page must open
anywhere, years later, from an archive or an e-mail attachment, so it loads
nothing: styles are inline, the plots are hand-made inline SVG (no plotting
library on the cluster, no JavaScript), and a Content-Security-Policy forbids
the browser to fetch anything.  Links point only to sibling files of the run
directory (discrepancies.csv, combined.txt, summary.json, manifest.json).

The page is a pure function of the run directory (no "generated at" time), so
``wiseverify report RUN_DIR`` rebuilds it byte for byte and the audit manifest
stays valid.  It streams the reconciliation partitions one at a time, like
:mod:`wiseverify.report.summary`, and keeps only per-directory counters.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wiseverify import __version__
from wiseverify.core import schema as S
from wiseverify.core.runio import write_bytes
from wiseverify.core.units import human_bytes
from wiseverify.report.charts import STATUS_COLORS, _e, histogram_svg, legend_html, stacked_bars_svg
from wiseverify.report.summary import metadata_line, reconciliation_files, write_lists

#: discrepancies shown in the page; the rest are in discrepancies.csv
FIRST_N = 200
#: directories shown in the report's per-directory table (all are in rollup.parquet)
ROLLUP_ROWS = 200
#: top-level directories drawn; the others are folded into one bar
TOP_DIRS = 25

#: size classes of the discrepancy histogram: (upper bound exclusive, label)
SIZE_BUCKETS: list[tuple[float, str]] = [
    (1, "0 B"),
    (1e3, "< 1 kB"),
    (1e4, "1–10 kB"),
    (1e5, "10–100 kB"),
    (1e6, "0.1–1 MB"),
    (1e7, "1–10 MB"),
    (1e8, "10–100 MB"),
    (1e9, "0.1–1 GB"),
    (1e10, "1–10 GB"),
    (1e11, "10–100 GB"),
    (float("inf"), "≥ 100 GB"),
]

ROOT_FILES = "(files at the top level)"
OTHER_DIRS = "(other directories)"


def size_bucket(size: int | None) -> int:
    """Index into :data:`SIZE_BUCKETS` for a file size (unknown sizes count as 0 B)."""
    n = size or 0
    for i, (upper, _) in enumerate(SIZE_BUCKETS):
        if n < upper:
            return i
    return len(SIZE_BUCKETS) - 1


def top_dir(key: str) -> str:
    """The first path component: the unit a migration team splits its work by."""
    head, sep, _ = key.partition("/")
    return head if sep else ROOT_FILES


# --- data ---------------------------------------------------------------------------------


def collect(run_dir: str | os.PathLike) -> dict:
    """Per-directory status counts and the discrepancy size histogram, streamed per partition.

    Counted column-wise (a group-by per batch): only discrepancies become Python rows.
    """
    by_dir: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    hist: dict[str, list[int]] = defaultdict(lambda: [0] * len(SIZE_BUCKETS))
    clean = pa.array(sorted(S.CLEAN_STATUSES), pa.string())
    for f in reconciliation_files(run_dir):
        for b in pq.ParquetFile(f).iter_batches(
                batch_size=1 << 16, columns=["key", "status", "src_size", "dst_size"]):
            key, status = b.column("key"), b.column("status")
            head = pc.list_element(pc.split_pattern(key, "/", max_splits=1), 0)
            top = pc.if_else(pc.match_substring(key, "/"), head, ROOT_FILES)
            counts = pa.table({"top": top, "status": status}).group_by(
                ["top", "status"]).aggregate([([], "count_all")])
            for d, st, n in zip(counts.column("top").to_pylist(),
                                counts.column("status").to_pylist(),
                                counts.column("count_all").to_pylist(), strict=True):
                by_dir[d][st] += n
            bad = b.filter(pc.invert(pc.is_in(status, value_set=clean)))
            for st, ss, ds in zip(bad.column("status").to_pylist(),
                                  bad.column("src_size").to_pylist(),
                                  bad.column("dst_size").to_pylist(), strict=True):
                hist[st][size_bucket(ss if ss is not None else ds)] += 1
    return {"by_dir": {d: dict(c) for d, c in by_dir.items()}, "hist": dict(hist)}


def first_discrepancies(run_dir: str | os.PathLike, n: int = FIRST_N) -> tuple[list[dict], bool]:
    """The first ``n`` rows of discrepancies.csv, and whether there are more."""
    path = Path(run_dir) / "discrepancies.csv"
    rows: list[dict] = []
    if not path.exists():
        return rows, False
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if len(rows) == n:
                return rows, True
            rows.append(row)
    return rows, False


def fold_dirs(by_dir: dict[str, dict[str, int]], limit: int = TOP_DIRS) -> list[tuple[str, dict]]:
    """Directories with the most discrepancies (then the most keys) first; the rest folded."""

    def bad(c: dict) -> int:
        return sum(v for k, v in c.items() if k not in S.CLEAN_STATUSES)

    order = sorted(by_dir.items(), key=lambda kv: (-bad(kv[1]), -sum(kv[1].values()), kv[0]))
    if len(order) <= limit:
        return order
    rest: dict[str, int] = defaultdict(int)
    for _, c in order[limit - 1:]:
        for k, v in c.items():
            rest[k] += v
    return order[: limit - 1] + [(f"{OTHER_DIRS} ({len(order) - limit + 1})", dict(rest))]


# --- page ---------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0;color:#1b1b1b;background:#fafafa}
main{max-width:1000px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:28px 0 8px;
 border-bottom:1px solid #ddd;padding-bottom:4px}
.verdict{padding:14px 18px;border-radius:6px;color:#fff;margin:12px 0}
.verdict b{font-size:26px;letter-spacing:1px;margin-right:14px}
.PASS{background:#2e7d32}.FAIL{background:#c62828}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #e0e0e0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums;
 white-space:nowrap}
td.k{font-family:ui-monospace,"DejaVu Sans Mono",monospace;min-width:16em;
 overflow-wrap:anywhere}
.sw{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}
.bar{height:10px;background:#90a4ae;display:inline-block;vertical-align:middle}
.chart{max-width:100%;height:auto;background:#fff;border:1px solid #e0e0e0}
.muted{color:#666}.warn{color:#a33;font-weight:600}.links a{margin-right:16px}
dl{display:grid;grid-template-columns:220px 1fr;gap:2px 12px;background:#fff;
 padding:8px;border:1px solid #e0e0e0}dt{color:#555}dd{margin:0;word-break:break-all}
"""

#: the browser may fetch nothing at all; links to sibling files are navigation, not fetches
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _dur(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def render(run_dir: str | os.PathLike, summary: dict, first_n: int = FIRST_N) -> str:
    """The whole page as a string."""
    run_dir = Path(run_dir)
    data = collect(run_dir)
    disc, more = first_discrepancies(run_dir, first_n)
    run_meta = {}
    if (run_dir / "run.json").exists():
        run_meta = json.loads((run_dir / "run.json").read_text())
    counts, nbytes = summary.get("counts", {}), summary.get("bytes", {})
    verdict = summary.get("verdict", "?")
    keys = summary.get("keys", 0)
    ndisc = summary.get("discrepancies", 0)

    p: list[str] = []
    add = p.append
    add("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
    add(f'<meta http-equiv="Content-Security-Policy" content="{CSP}">')
    add('<meta name="viewport" content="width=device-width,initial-scale=1">')
    add(f"<title>wiseverify {_e(verdict)} — run {_e(summary.get('run_id', ''))}</title>")
    add(f"<style>{CSS}</style></head><body><main>")
    add("<h1>Migration verification report</h1>")
    add(f'<div class="muted">{_e(summary.get("source", ""))} → '
        f'{_e(summary.get("destination", ""))}</div>')
    add(f'<div class="verdict {_e(verdict)}" id="verdict"><b>{_e(verdict)}</b>'
        f"{keys:,} keys checked, {ndisc:,} discrepancies"
        + ("" if ndisc else " — every key is MATCH or SKIPPED") + "</div>")
    add('<div class="links">Files of this run: '
        '<a href="discrepancies.csv">discrepancies.csv</a>'
        '<a href="combined.txt">combined.txt</a><a href="summary.json">summary.json</a>'
        '<a href="manifest.json">manifest.json</a></div>')

    # counts and bytes per status
    add("<h2>Counts and bytes per status</h2><table><tr><th>status</th><th>keys</th>"
        "<th>bytes</th><th>share of keys</th></tr>")
    for st in S.STATUSES:
        c = counts.get(st, 0)
        if not c:
            continue
        share = 100.0 * c / keys if keys else 0.0
        add(f'<tr><td><span class="sw" style="background:{STATUS_COLORS[st]}"></span>'
            f'{_e(st)}</td><td class="n">{c:,}</td><td class="n">'
            f'{human_bytes(nbytes.get(st, 0))}</td><td><span class="bar" '
            f'style="width:{max(share * 3, 1):.0f}px;background:{STATUS_COLORS[st]}"></span> '
            f"{share:.2f} %</td></tr>")
    add(f'<tr><th>total</th><th class="n">{keys:,}</th><th class="n">'
        f"{human_bytes(sum(nbytes.values()))}</th><th></th></tr></table>")
    if summary.get("verified_by"):
        ev = ", ".join(f"{_e(k)} {v:,}" for k, v in summary["verified_by"].items())
        add(f'<p>Content evidence: {summary.get("content_verified", 0):,} keys ({ev}).</p>')
    md = metadata_line(summary.get("metadata"))
    if md:
        add(f'<p id="metadata">{_e(md[0].upper() + md[1:])}.</p>')

    # status by top-level directory
    rows = fold_dirs(data["by_dir"])
    present = [s for s in S.STATUSES if any(c.get(s) for _, c in rows)]
    add("<h2>Status by top-level directory</h2>")
    if rows:
        add(legend_html(present))
        add(stacked_bars_svg(rows, "Status by top-level directory"))
    else:
        add("<p>No keys.</p>")

    # discrepancy size distribution
    add("<h2>Size distribution of discrepancies</h2>")
    if data["hist"]:
        add(legend_html([s for s in S.STATUSES if s in data["hist"]]))
        add(histogram_svg(data["hist"], [lbl for _, lbl in SIZE_BUCKETS],
                          "Discrepancies by file size"))
    else:
        add("<p>No discrepancies.</p>")

    # first N discrepancies
    add(f"<h2>Discrepancies ({ndisc:,})</h2>")
    if disc:
        shown = f"the first {len(disc):,} of {ndisc:,}" if more else f"all {len(disc):,}"
        add(f'<p>Showing {shown}; the complete list is in '
            f'<a href="discrepancies.csv">discrepancies.csv</a>.</p>')
        add("<table><tr><th>status</th><th>key</th><th>source size</th>"
            "<th>dest size</th><th>detail</th></tr>")
        for r in disc:
            add(f"<tr><td>{_e(r.get('status', ''))}</td><td class=\"k\">{_e(r.get('key', ''))}"
                f"</td><td class=\"n\">{_e(_num(r.get('src_size')))}</td><td class=\"n\">"
                f"{_e(_num(r.get('dst_size')))}</td><td>{_e(r.get('detail', ''))}</td></tr>")
        add("</table>")
    else:
        add("<p>None.</p>")

    # what the read-back sample proves
    smp = summary.get("sample")
    if smp:
        cls = ' class="warn"' if smp.get("wrong") else ""
        add(f'<h2 id="sample">Read-back sample</h2><p{cls}>{_e(smp["statement"])}.</p>'
            "<table><tr><th>size stratum</th><th>eligible keys</th><th>read back</th>"
            "<th>wrong</th><th>upper bound, 95%</th><th>upper bound, 99%</th></tr>")
        for r in smp["strata"]:
            add(f'<tr><td>{_e(r["stratum"])}</td><td class="n">{r["eligible_keys"]:,}</td>'
                f'<td class="n">{r["read_back"]:,}</td><td class="n">{r["wrong"]:,}</td>'
                f'<td class="n">{r["upper_95"] * 100:.3g} %</td>'
                f'<td class="n">{r["upper_99"] * 100:.3g} %</td></tr>')
        add(f'</table><p class="muted">{_e(smp["method"])}; seed {smp["seed"]}; '
            f'{smp["archived_excluded"]:,} archived objects left out; '
            f'{smp["inconclusive"]:,} inconclusive (the source changed or a read failed).</p>')

    # causes of the discrepancies
    if summary.get("causes"):
        add('<h2 id="causes">Why keys differ</h2><table><tr><th>cause</th><th>keys</th></tr>')
        for c, n in summary["causes"].items():
            warn = ' class="warn"' if c in S.ALARM_CAUSES else ""
            add(f'<tr><td{warn}>{_e(c)}</td><td class="n">{n:,}</td></tr>')
        add("</table><p class=\"muted\">source-changed-after-copy: a stale copy the next "
            "sync fixes; source-older-than-copy and stored-checksum-wrong: the copy changed "
            "after it was made (corruption); unknown: a fact is missing, named in the "
            "key's detail.</p>")

    # per-directory sign-off table (rollup.parquet)
    rfile = Path(run_dir) / "rollup.parquet"
    if rfile.is_file():
        rt = pq.read_table(rfile)
        depth = (summary.get("rollup") or {}).get("depth")
        add(f'<h2 id="rollup">By directory (depth {_e(depth)})</h2>')
        if rt.num_rows:
            rows = sorted(rt.select(["dir", "keys", "bytes", "discrepancies", "verdict"])
                          .to_pylist(), key=lambda r: (-r["discrepancies"], r["dir"]))
            shown = rows[:ROLLUP_ROWS]
            add(f'<p>{rt.num_rows:,} directories; {sum(r["verdict"] == "FAIL" for r in rows):,}'
                " with discrepancies. Each owner can take a report of their own directory "
                "with <code>wiseverify report RUN_DIR --only DIR</code>"
                + (f"; the first {len(shown):,} are shown, all are in "
                   '<a href="rollup.parquet">rollup.parquet</a>' if len(rows) > len(shown)
                   else "") + ".</p>")
            add("<table><tr><th>directory</th><th>keys</th><th>bytes</th>"
                "<th>discrepancies</th><th>verdict</th></tr>")
            for r in shown:
                add(f'<tr><td class="k">{_e(r["dir"] or "/")}</td><td class="n">{r["keys"]:,}'
                    f'</td><td class="n">{human_bytes(r["bytes"])}</td><td class="n">'
                    f'{r["discrepancies"]:,}</td><td>{_e(r["verdict"])}</td></tr>')
            add("</table>")
        else:
            add("<p>No keys.</p>")

    # filters: what each rule left out, on each side
    filt = summary.get("filters")
    if filt:
        add('<h2 id="filters">Filters</h2><p>This run covered only the paths these rules '
            "let through (first match wins). Excluded paths are neither checked nor "
            "reported as missing or extra.</p><table><tr><th>rule</th><th>from</th>"
            "<th>source entries</th><th>source bytes</th><th>directories not walked</th>"
            "<th>destination objects</th></tr>")
        for r in filt["rules"]:
            src, dst = r["source"], r["destination"]
            add(f'<tr><td class="k">{_e(r["rule"])}</td><td>{_e(r["from"])}</td>'
                f'<td class="n">{src["entries"]:,}</td><td class="n">'
                f'{human_bytes(src["bytes"])}</td><td class="n">{src["directories"]:,}</td>'
                f'<td class="n">{dst["entries"]:,}</td></tr>')
        add("</table>")
        if filt.get("unused"):
            add(f'<p class="warn">No path matched {_e(", ".join(filt["unused"]))}: '
                "check the rule for a typo.</p>")

    # run facts
    timings = summary.get("timings", {})
    inv = summary.get("inventory", {})
    facts = [
        ("run id", summary.get("run_id", "")),
        ("source", summary.get("source", "")),
        ("destination", summary.get("destination", "")),
        ("mode", summary.get("mode", "")),
        ("started", summary.get("started", "")),
        ("finished", summary.get("finished", "")),
        ("duration", _dur(timings.get("total_s", 0.0))),
        ("source entries", f"{inv.get('source_entries', 0):,} in "
                           f"{inv.get('source_directories', 0):,} directories"),
        ("destination objects", f"{inv.get('destination_objects', 0):,} "
                                f"({inv.get('folder_markers', 0):,} folder markers ignored)"),
        ("read from source", human_bytes(summary.get("bytes_read_source", 0))),
        ("read from destination", human_bytes(summary.get("bytes_read_destination", 0))),
        ("partitions", f"{summary.get('partitions', 0):,}"),
        ("driver host", summary.get("driver_host", "")),
        ("workers", f"{len(summary.get('workers', [])):,}"),
        ("wiseverify version", run_meta.get("version", __version__)),
    ]
    add("<h2>Run facts</h2><dl>")
    for k, v in facts:
        add(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>")
    add("</dl>")
    add('<p class="muted">The SHA-256 of every file of this run, and the link to the previous '
        'run, are in <a href="manifest.json">manifest.json</a>; check them with '
        "<code>wiseverify audit RUN_DIR</code>.</p>")
    add("</main></body></html>\n")
    return "".join(p)


def _num(v: str | None) -> str:
    if v in (None, ""):
        return ""
    try:
        return f"{int(v):,}"
    except ValueError:
        return v


def write_html(run_dir: str | os.PathLike, summary: dict, first_n: int = FIRST_N) -> Path:
    """Write ``RUN_DIR/report.html`` atomically and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    write_bytes(path, render(run_dir, summary, first_n).encode("utf-8"))
    return path


def write_outputs(run_dir: str | os.PathLike, summary: dict) -> None:
    """Every output of a run: summary.json, combined.txt, discrepancies.csv, report.html."""
    write_lists(run_dir, summary)
    write_html(run_dir, summary)
