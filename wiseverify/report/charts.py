"""Inline SVG charts for report.html: no script, no external resource.

The report must open from an archive years later and pass a strict CSP, so charts
are drawn as SVG strings rather than with a plotting library.
"""

from __future__ import annotations

import html

from wiseverify.core import schema as S

STATUS_COLORS: dict[str, str] = {
    S.MATCH: "#2e7d32",
    S.SKIPPED: "#9e9e9e",
    S.MISSING_IN_DEST: "#c62828",
    S.EXTRA_IN_DEST: "#ef6c00",
    S.SIZE_MISMATCH: "#ad1457",
    S.CONTENT_MISMATCH: "#6a1b9a",
    S.METADATA_MISMATCH: "#1565c0",
    S.NAME_MISMATCH: "#00838f",
    S.NAME_UNMAPPABLE: "#6d4c41",
    S.UNVERIFIED: "#f9a825",
    S.SOURCE_ERROR: "#37474f",
    S.DEST_ERROR: "#212121",
    S.NOT_FOUND: "#880e4f",
}

# --- SVG ----------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def stacked_bars_svg(rows: list[tuple[str, dict[str, int]]], title: str,
                     width: int = 900) -> str:
    """Horizontal 100 % bars, one per row, segments coloured by status.

    Proportions, because a healthy directory is almost all MATCH and absolute
    bars would hide its few discrepancies; the exact numbers are printed beside.
    """
    label_w, note_w, bar_h, gap = 230, 250, 18, 8
    bar_w = width - label_w - note_w
    height = 30 + len(rows) * (bar_h + gap)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" class="chart" '
           f'font-family="sans-serif" font-size="12" fill="#222">',
           f"<title>{_e(title)}</title>",
           f'<text x="{label_w}" y="14" font-size="11" fill="#555">0 %</text>',
           f'<text x="{label_w + bar_w}" y="14" font-size="11" fill="#555" text-anchor="end">100 %</text>']
    for i, (name, counts) in enumerate(rows):
        y = 22 + i * (bar_h + gap)
        total = sum(counts.values()) or 1
        shown = name if len(name) <= 32 else name[:31] + "…"
        out.append(f'<text x="{label_w - 8}" y="{y + bar_h - 4}" text-anchor="end">'
                   f"<title>{_e(name)}</title>{_e(shown)}</text>")
        x = float(label_w)
        for st in S.STATUSES:
            c = counts.get(st, 0)
            if not c:
                continue
            w = max(bar_w * c / total, 2.0)  # a single bad key stays visible
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                       f'fill="{STATUS_COLORS[st]}"><title>{_e(name)}: {c:,} {st}</title></rect>')
            x += w
        bad = sum(v for k, v in counts.items() if k not in S.CLEAN_STATUSES)
        note = f"{sum(counts.values()):,} keys" + (f", {bad:,} discrepancies" if bad else "")
        out.append(f'<text x="{label_w + bar_w + 8}" y="{y + bar_h - 4}" '
                   f'fill="{"#c62828" if bad else "#555"}">{_e(note)}</text>')
    out.append("</svg>")
    return "".join(out)


def histogram_svg(hist: dict[str, list[int]], labels: list[str], title: str,
                  width: int = 900, height: int = 300) -> str:
    """Vertical bars per size class, stacked by status."""
    left, bottom, top = 50, 40, 20
    plot_w, plot_h = width - left - 10, height - bottom - top
    n = len(labels)
    totals = [sum(h[i] for h in hist.values()) for i in range(n)]
    peak = max(totals) if totals and max(totals) > 0 else 1
    slot = plot_w / n
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" class="chart" '
           f'font-family="sans-serif" font-size="12" fill="#222">',
           f"<title>{_e(title)}</title>",
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
           f'stroke="#555"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#555"/>',
           f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11" fill="#555">{peak:,}</text>',
           f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="11" fill="#555">0</text>']
    for i, label in enumerate(labels):
        x = left + i * slot + slot * 0.15
        w = slot * 0.7
        y = float(top + plot_h)
        for st in S.STATUSES:
            c = hist.get(st, [0] * n)[i]
            if not c:
                continue
            h = plot_h * c / peak
            y -= h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                       f'fill="{STATUS_COLORS[st]}"><title>{_e(label)}: {c:,} {st}</title></rect>')
        if totals[i]:
            out.append(f'<text x="{x + w / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle" '
                       f'font-size="11" fill="#555">{totals[i]:,}</text>')
        out.append(f'<text x="{x + w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                   f'font-size="11" fill="#555">{_e(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def trend_svg(labels: list[str], values: list[float], title: str, unit: str = "%",
              lo: float = 0.0, hi: float = 100.0, width: int = 900, height: int = 260) -> str:
    """A line with points over runs, e.g. the readiness (% of keys clean) of each dry run.

    The y range is fixed (0–100 % by default) so two charts of different weeks
    compare at a glance.
    """
    left, right, top, bottom = 60, 20, 20, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    span = (hi - lo) or 1.0
    n = len(values)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (plot_w * (i + 0.5) / n if n else 0)
        y = top + plot_h * (1 - (min(max(v, lo), hi) - lo) / span)
        return x, y

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" class="chart" '
           f'font-family="sans-serif" font-size="12" fill="#222">',
           f"<title>{_e(title)}</title>"]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                   f'stroke="#ddd"/><text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                   f'font-size="11" fill="#555">{lo + span * frac:g} {_e(unit)}</text>')
    pts = [xy(i, v) for i, v in enumerate(values)]
    if len(pts) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="#1565c0" stroke-width="2"/>')
    for (x, y), v, label in zip(pts, values, labels, strict=True):
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#1565c0">'
                   f"<title>{_e(label)}: {v:.4g} {_e(unit)}</title></circle>"
                   f'<text x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle" font-size="11" fill="#555">'
                   f"{v:.4g}</text>"
                   f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                   f'font-size="11" fill="#555">{_e(label if len(label) <= 24 else label[:23] + "…")}</text>')
    out.append("</svg>")
    return "".join(out)


def legend_html(statuses: list[str]) -> str:
    """Colour keys for the statuses that appear in a chart."""
    items = "".join(f'<span style="margin-right:14px;white-space:nowrap"><i style="display:'
                    f"inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px;"
                    f'background:{STATUS_COLORS[s]}"></i>{_e(s)}</span>' for s in statuses)
    return f'<div style="margin:6px 0">{items}</div>'
