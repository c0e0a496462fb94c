"""qualification.html: the traceability matrix, self-contained (archived with the record)."""

from __future__ import annotations

from html import escape


def _e(v) -> str:
    return escape(str(v), quote=True)


def render(rec: dict) -> str:
    checks = {c["id"]: c for c in rec["checks"]}
    ok = rec["verdict"] == "PASS"
    rows = []
    for rid, text in rec["requirements"].items():
        ids = rec["matrix"].get(rid, [])
        res = "PASS" if ids and all(checks[i]["result"] == "PASS" for i in ids) else "FAIL"
        ev = "<br>".join(f'<code>{_e(f)}</code> <span class="h">{_e(h[:16])}…</span>'
                         for i in ids for f, h in checks[i]["evidence"].items())
        rows.append(f'<tr><td class="id">{_e(rid)}</td><td>{_e(text)}</td>'
                    f'<td>{_e(", ".join(ids) or "none")}</td>'
                    f'<td class="{res.lower()}">{res}</td><td>{ev}</td></tr>')
    crow = "".join(
        f'<tr><td class="id">{_e(c["id"])}</td><td>{_e(c["title"])}</td>'
        f'<td>{_e(", ".join(c["requirements"]))}</td><td class="{c["result"].lower()}">'
        f'{_e(c["result"])}</td><td>{_e(c["detail"])}</td><td class="n">{c["seconds"]}</td></tr>'
        for c in rec["checks"])
    env = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rec["environment"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>wiseverify qualification: {_e(rec['verdict'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}
table{{border-collapse:collapse;margin-bottom:18px}}td,th{{border:1px solid #ccc;padding:4px 8px;
vertical-align:top}}th{{background:#f2f2f2}}.pass{{background:#e6f4ea;font-weight:700}}
.fail{{background:#fce8e6;font-weight:700;color:#a50e0e}}.id{{font-family:monospace;
white-space:nowrap}}.h{{color:#777;font-family:monospace}}.n{{text-align:right}}
.verdict{{font-size:1.6em;font-weight:700;color:{'#1e7e34' if ok else '#a50e0e'}}}</style>
</head><body>
<h1>wiseverify {_e(rec['version'])}: installation and operational qualification</h1>
<p class="verdict" id="verdict">{_e(rec['verdict'])}</p>
<p>{sum(c['result'] == 'PASS' for c in rec['checks'])} of {len(rec['checks'])} checks passed,
{_e(rec['started'])} to {_e(rec['finished'])}.</p>
<h2>Traceability matrix</h2>
<table id="matrix"><tr><th>requirement</th><th>statement</th><th>checks</th><th>result</th>
<th>evidence (SHA-256)</th></tr>{''.join(rows)}</table>
<h2>Checks</h2>
<table><tr><th>check</th><th>what</th><th>requirements</th><th>result</th><th>detail</th>
<th>s</th></tr>{crow}</table>
<h2>Environment</h2><dl>{env}</dl>
<p>The files named here are in this directory, and <code>manifest.json</code> holds the
SHA-256 of every one. PQ, on the team's own data and under its procedures, stays the
team's.</p>
</body></html>
"""
