"""The building blocks of ``report.html``: the page shell and its style, tables, galleries, SVG charts.

Every string that comes from the data (class names, file names, recipe values) passes through
:func:`esc` (``html.escape`` with quotes), so a class folder named ``<img src=x onerror=alert(1)>``
shows as those characters. The page holds no script at all, and its Content-Security-Policy allows
only inline styles and ``data:`` images: it opens from disk and never fetches anything.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PALETTE = ("#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626")

STYLE = """
:root { --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f5f6fa; --card: #fff;
        --accent: #2563eb; --bad: #dc2626; --good: #16a34a; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: var(--bg); }
header { background: linear-gradient(120deg, #1e3a8a, #2563eb); color: #fff;
         padding: 28px 0 22px; }
header h1 { margin: 0 0 4px; font-size: 26px; font-weight: 650; }
header p { margin: 0; opacity: .85; }
.wrap { max-width: 1220px; margin: 0 auto; padding: 0 24px; }
nav { position: sticky; top: 0; z-index: 2; background: rgba(255,255,255,.94);
      border-bottom: 1px solid var(--line); }
nav .wrap { display: flex; gap: 18px; overflow-x: auto; white-space: nowrap;
           padding-top: 10px; padding-bottom: 10px; }
nav a { color: var(--ink); text-decoration: none; font-weight: 550; font-size: 14px; }
nav a:hover { color: var(--accent); }
section { scroll-margin-top: 48px; background: var(--card); border-radius: 12px;
          box-shadow: 0 1px 3px rgba(0,0,0,.08);
          padding: 20px 24px; margin: 22px 0; }
h2 { margin: 0 0 12px; font-size: 19px; }
h3 { margin: 18px 0 8px; font-size: 16px; }
.muted { color: var(--muted); font-size: 13px; }
.note { background: #fff7ed; border-left: 4px solid #f97316; padding: 8px 12px; border-radius: 6px;
        margin: 10px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
         gap: 14px; margin-top: 18px; }
.card { background: rgba(255,255,255,.14); border-radius: 10px; padding: 12px 14px; }
.card b { display: block; font-size: 24px; font-weight: 650; }
.card span { font-size: 13px; opacity: .9; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: right; }
th { background: #f9fafb; font-weight: 600; }
td.l, th.l { text-align: left; }
.scroll { overflow-x: auto; max-width: 100%; }
.cm td { text-align: center; min-width: 44px; border: 1px solid #fff; padding: 0; }
.cm td a, .cm td span { display: block; padding: 7px 6px; color: inherit; text-decoration: none; }
.cm td a:hover { outline: 2px solid var(--ink); }
.cm th.rot { height: 110px; vertical-align: bottom; white-space: nowrap; }
.cm th.rot div { transform: rotate(-50deg); transform-origin: left bottom; width: 30px; margin-left: 18px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
figure { margin: 0; background: #fafafa; border: 1px solid var(--line); border-radius: 10px; padding: 8px; }
figure img { display: block; width: 100%; aspect-ratio: 1; object-fit: contain; background: #111;
             border-radius: 6px; image-rendering: auto; }
figure .missing { width: 100%; aspect-ratio: 1; display: grid; place-items: center; background: #eee;
                  border-radius: 6px; color: var(--muted); font-size: 12px; }
figcaption { font-size: 12.5px; margin-top: 6px; line-height: 1.35; overflow-wrap: anywhere; }
figcaption .k { display: block; color: var(--muted); font-size: 12px; word-break: break-all; }
figcaption .t { color: var(--good); font-weight: 600; }
figcaption .p { color: var(--bad); font-weight: 600; }
.pairs { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 14px; }
.pair { border: 1px solid var(--line); border-radius: 10px; padding: 10px; background: #fafafa; }
.pair .two { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
.pair figure { border: 0; padding: 0; background: none; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600;
       background: #e0e7ff; color: #3730a3; }
.tag.bad { background: #fee2e2; color: #991b1b; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; }
.chart { flex: 1 1 340px; max-width: 560px; }
svg text { font: 12px system-ui, sans-serif; fill: #4b5563; }
details pre { background: #0f172a; color: #e2e8f0; padding: 14px; border-radius: 8px; overflow-x: auto;
              font-size: 12.5px; }
.cell { scroll-margin-top: 60px; }
footer { color: var(--muted); font-size: 13px; padding: 10px 0 40px; }
"""


def esc(value: object) -> str:
    """Text for the page: ``<``, ``>``, ``&`` and quotes escaped."""
    return html.escape(str(value), quote=True)


@dataclass
class Section:
    """One section of the page: its anchor, its title in the navigation bar, its body HTML."""

    anchor: str
    title: str
    body: str


def page(
    title: str, subtitle: str, cards: Sequence[tuple[str, str]], sections: Sequence[Section], foot: str
) -> str:
    """The whole self-contained page."""
    nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    card_html = "".join(f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for k, v in cards)
    body = "".join(
        f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f'<header><div class="wrap"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p>'
        f'<div class="cards">{card_html}</div></div></header>'
        f'<nav><div class="wrap">{nav}</div></nav><main class="wrap">{body}</main>'
        f'<footer class="wrap">{foot}</footer></body></html>\n'
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1) -> str:
    """A plain table; the first ``left`` columns are left-aligned text (all cells escaped)."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{esc(c)}</td>' for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def figure(uri: str | None, caption_html: str, alt: str) -> str:
    """One thumbnail with its caption (``caption_html`` is built from escaped parts)."""
    img = (
        f'<img src="{uri}" alt="{esc(alt)}" loading="eager">'
        if uri
        else '<div class="missing">not readable</div>'
    )
    return f"<figure>{img}<figcaption>{caption_html}</figcaption></figure>"


def confusion_table(
    counts: Sequence[Sequence[int]], names: Sequence[str], linked: set[tuple[int, int]]
) -> str:
    """The confusion matrix: a cell's colour is its share of the true class; a count opens its images."""
    longest = max((len(n) for n in names), default=0)
    rotate = longest > 3  # short names read fine level; long ones turn, in a row as tall as they need
    tall = f' style="height:{min(240, 30 + 6 * longest)}px"'
    head = "".join(
        f'<th class="rot"{tall}><div>{esc(n)}</div></th>' if rotate else f"<th>{esc(n)}</th>" for n in names
    )
    rows = []
    for i, row in enumerate(counts):
        total = max(sum(row), 1)
        cells = []
        for j, count in enumerate(row):
            share = count / total
            hue = "37,99,235" if i == j else "220,38,38"
            color = "#fff" if share > 0.55 else "inherit"
            style = f"background:rgba({hue},{share:.3f});color:{color}" if count else ""
            title = f"true {names[i]}, predicted {names[j]}: {count} ({share:.0%})"
            inner = (
                f'<a href="#cell-{i}-{j}">{count}</a>' if (i, j) in linked else f"<span>{count or ''}</span>"
            )
            cells.append(f'<td style="{style}" title="{esc(title)}">{inner}</td>')
        rows.append(f'<tr><th class="l">{esc(names[i])}</th>{"".join(cells)}</tr>')
    return (
        '<div class="scroll"><table class="cm"><tr><th class="l">true \\ predicted</th>'
        f"{head}</tr>{''.join(rows)}</table></div>"
    )


def line_chart(series: Sequence[tuple[str, Sequence[tuple[float, float]]]], title: str, ylabel: str) -> str:
    """A small SVG line chart of ``(label, [(x, y), ...])`` series."""
    points = [p for _, s in series for p in s]
    if not points:
        return ""
    w, h, left, bottom, top, right = 520, 280, 52, 36, 26, 14
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def sy(y: float) -> float:
        return h - bottom - (y - y0) / (y1 - y0) * (h - bottom - top)

    parts = [_axes(w, h, left, bottom, top, right, title, "epoch", ylabel)]
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    parts.append(f'<text x="{left}" y="{h - bottom + 16}">{x0:g}</text>')
    parts.append(f'<text x="{w - right}" y="{h - bottom + 16}" text-anchor="end">{x1:g}</text>')
    for n, (label, s) in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2.2" points="{path}"/>')
        legend_x = w - right - 10 - 80 * (len(series) - 1 - n)
        parts.append(
            f'<text x="{legend_x}" y="{top + 16}" text-anchor="end" style="fill:{color}">'
            f"■ {esc(label)}</text>"
        )
    return f'<div class="chart"><svg viewBox="0 0 {w} {h}" role="img">{"".join(parts)}</svg></div>'


def reliability_chart(curves: Sequence[tuple[str, dict, float]], title: str) -> str:
    """Accuracy against confidence per bin (bins with images), for each ``(label, curve, ece)``."""
    w, h, left, bottom, top, right = 340, 320, 46, 36, 34, 14
    side_x, side_y = w - left - right, h - bottom - top
    parts = [_axes(w, h, left, bottom, top, right, title, "confidence", "accuracy")]
    parts.append(
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{top}" '
        'stroke="#9ca3af" stroke-dasharray="4 4"/>'
    )
    for k in (0, 0.5, 1):
        parts.append(
            f'<text x="{left - 6}" y="{h - bottom - k * side_y + 4:.1f}" text-anchor="end">{k:g}</text>'
        )
        parts.append(
            f'<text x="{left + k * side_x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{k:g}</text>'
        )
    for n, (label, curve, ece) in enumerate(curves):
        color = PALETTE[n % len(PALETTE)]
        pts = [
            (c, a)
            for c, a, m in zip(curve["confidence"], curve["accuracy"], curve["count"], strict=True)
            if m
        ]
        path = " ".join(f"{left + c * side_x:.1f},{h - bottom - a * side_y:.1f}" for c, a in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2.2" points="{path}"/>')
        parts += [
            f'<circle cx="{left + c * side_x:.1f}" cy="{h - bottom - a * side_y:.1f}" r="3" fill="{color}"/>'
            for c, a in pts
        ]
        parts.append(
            f'<text x="{left + 8}" y="{top + 16 + 16 * n}" style="fill:{color}">'
            f"■ {esc(label)} (ECE {ece:.3f})</text>"
        )
    svg = f'<svg viewBox="0 0 {w} {h}" role="img">{"".join(parts)}</svg>'
    return f'<div class="chart" style="max-width:380px">{svg}</div>'


def _axes(w: int, h: int, left: int, bottom: int, top: int, right: int, title: str, xl: str, yl: str) -> str:
    middle = top + (h - bottom - top) / 2
    return (
        f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - bottom - top}" fill="#fafafa" '
        f'stroke="#e5e7eb"/><text x="{w - right}" y="{h - 4}" text-anchor="end">{esc(xl)}</text>'
        f'<text x="{left}" y="14" style="font-weight:600">{esc(title)}</text>'
        f'<text x="12" y="{middle:.0f}" transform="rotate(-90 12 {middle:.0f})" '
        f'text-anchor="middle">{esc(yl)}</text>'
    )
