"""The read-only status page on the metrics port (issue #16 item 7): rendered here as plain
HTML with inline SVG, no JavaScript; the browser reloads it every REFRESH_SECONDS.

What it shows, top to bottom: the problems (pegx.ops.health), the exchange's holdings across
the 1,200 peg steps with the supply index marked (reserve below it, liquid from it up; a log
scale, since a standard spread falls by 1 % a step), the supply index and the exchange's
totals over the last cycles, the withdraw pipeline with counts and ages, and the figures.
Every number has an element id (``stage-pending-count``, ``supply-marker``...) so a test can
find it in the DOM. Every string from the daemon is escaped.
"""

from __future__ import annotations

import html
import math
import time

import numpy as np

from pegx.exchange.pipeline import FINISHED, IN_FLIGHT
from pegx.ops.health import duration
from pegx.peg import PEG_SIZE

REFRESH_SECONDS = 10
COIN = 100_000_000
RESERVE_COLOUR = "#c98a06"
LIQUID_COLOUR = "#2f7ed8"
SUPPLY_COLOUR = "#d62728"

STAGE_TITLES = {"pending": "pending", "batched": "batched", "processing": "Processing",
                "complete": "Complete", "failed": "Failed/Declined", "expired": "Expired"}

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 22px 0 6px; }
.sub { color: #666; }
.problems { border-left: 6px solid #c62828; background: #fdecea; padding: 8px 12px; }
.problems li { margin: 2px 0; } .ok { border-left: 6px solid #2e7d32; background: #e8f5e9;
  padding: 8px 12px; }
.flow { display: flex; gap: 10px; align-items: stretch; flex-wrap: wrap; }
.stage { background: #fff; border: 1px solid #ccc; border-radius: 6px; padding: 8px 12px;
  min-width: 120px; } .stage .n { font-size: 24px; font-weight: 600; }
.stage.done { background: #f3f3f3; } .arrow { align-self: center; color: #999; }
table { border-collapse: collapse; background: #fff; } td, th { border: 1px solid #ddd;
  padding: 3px 8px; text-align: right; } th { background: #eee; } td.l, th.l { text-align: left; }
svg { background: #fff; border: 1px solid #ddd; } svg text { font: 11px sans-serif; }
"""


def bay(sat: int) -> str:
    """Exact BAY with thousands separators: 1,234.56780000 BAY."""
    sat = int(sat)
    sign = "-" if sat < 0 else ""
    q, r = divmod(abs(sat), COIN)
    return f"{sign}{q:,d}.{r:08d}"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def peg_chart(holdings: np.ndarray, supply: int, width: int = PEG_SIZE, height: int = 220) -> str:
    """SVG of the exchange's satoshi per peg step (log scale): reserve steps < supply,
    liquid steps >= supply, a marker at the supply index."""
    left, top, bottom = 64, 14, 34
    vals = [int(v) for v in holdings]
    top_exp = max(1, math.ceil(math.log10(max(vals) + 1))) if any(vals) else 1

    def y(v: int) -> float:
        return top + height - (math.log10(v + 1) / top_exp) * height

    def area(lo: int, hi: int) -> str:
        if hi <= lo:
            return ""
        base = top + height
        pts = [f"M{left + lo},{base:.1f}"]
        for i in range(lo, hi):
            yi = y(vals[i])
            pts.append(f"L{left + i},{yi:.1f}L{left + i + 1},{yi:.1f}")
        pts.append(f"L{left + hi},{base:.1f}Z")
        return "".join(pts)

    parts = [(f'<svg id="peg-steps" xmlns="http://www.w3.org/2000/svg" '
             f'width="{left + width + 16}" height="{top + height + bottom}" role="img" '
             f'aria-label="exchange holdings per peg step">')]
    for e in range(top_exp + 1):  # horizontal grid at powers of ten
        yy = top + height - e / top_exp * height
        parts.append(f'<line x1="{left}" x2="{left + width}" y1="{yy:.1f}" y2="{yy:.1f}" '
                     f'stroke="#eee"/><text x="{left - 6}" y="{yy + 4:.1f}" '
                     f'text-anchor="end">1e{e}</text>')
    parts.append(f'<path id="reserve-area" fill="{RESERVE_COLOUR}" d="{area(0, supply)}"/>')
    parts.append(f'<path id="liquid-area" fill="{LIQUID_COLOUR}" '
                 f'd="{area(supply, PEG_SIZE)}"/>')
    for step in range(0, PEG_SIZE + 1, 200):
        parts.append(f'<text x="{left + step}" y="{top + height + 14}" '
                     f'text-anchor="middle">{step}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{top + height + 30}" text-anchor="middle">'
                 f'peg step (satoshi per step, log scale)</text>')
    parts.append(f'<line id="supply-marker" data-step="{supply}" x1="{left + supply}" '
                 f'x2="{left + supply}" y1="{top - 4}" y2="{top + height}" '
                 f'stroke="{SUPPLY_COLOUR}" stroke-width="2"/>')
    anchor = "end" if supply > PEG_SIZE * 0.8 else "start"
    dx = -4 if anchor == "end" else 4
    parts.append(f'<text id="supply-label" x="{left + supply + dx}" y="{top + 8}" '
                 f'text-anchor="{anchor}" fill="{SUPPLY_COLOUR}">supply index {supply}</text>')
    parts.append("</svg>")
    return "".join(parts)


def cycles_chart(points: list[dict], width: int = 560, height: int = 160) -> str:
    """Two SVG panels over the cycles: the supply index, and the exchange's liquid and
    reserve (stacked bars, BAY)."""
    if not points:
        return '<p id="cycles-empty">No cycle recorded yet (a point is kept at each recompute).</p>'
    left, top, bottom = 64, 12, 30
    n = len(points)
    step_w = width / n
    labels = []
    for i, p in enumerate(points):
        if n <= 12 or i % max(1, n // 8) == 0 or i == n - 1:
            labels.append(f'<text x="{left + (i + 0.5) * step_w:.1f}" y="{top + height + 14}" '
                          f'text-anchor="middle">{_e(p["label"])}</text>')
    # supply index line
    lo = min(p["supply"] for p in points)
    hi = max(p["supply"] for p in points)
    lo, hi = max(0, lo - 5), hi + 5

    def ys(v: int) -> float:
        return top + height - (v - lo) / (hi - lo) * height

    line = " ".join(f"{left + (i + 0.5) * step_w:.1f},{ys(p['supply']):.1f}"
                    for i, p in enumerate(points))
    dots = "".join(f'<circle cx="{left + (i + 0.5) * step_w:.1f}" cy="{ys(p["supply"]):.1f}" '
                   f'r="3" fill="{SUPPLY_COLOUR}"><title>{_e(p["label"])}: supply '
                   f'{p["supply"]}</title></circle>' for i, p in enumerate(points))
    total_h = top + height + bottom
    supply_svg = (f'<svg id="supply-history" xmlns="http://www.w3.org/2000/svg" '
                  f'width="{left + width + 10}" height="{total_h}">'
                  f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{hi}</text>'
                  f'<text x="{left - 6}" y="{top + height}" text-anchor="end">{lo}</text>'
                  f'<polyline fill="none" stroke="{SUPPLY_COLOUR}" stroke-width="2" '
                  f'points="{line}"/>{dots}{"".join(labels)}'
                  f'<text x="{left}" y="{top + height + 28}">supply index by cycle</text></svg>')
    # liquid + reserve stacked bars
    peak = max(p["liquid"] + p["reserve"] for p in points) or 1
    bars = []
    for i, p in enumerate(points):
        x = left + i * step_w + step_w * 0.15
        w = step_w * 0.7
        hr = p["reserve"] / peak * height
        hl = p["liquid"] / peak * height
        tip = (f'{_e(p["label"])}: liquid {bay(p["liquid"])} BAY, reserve '
               f'{bay(p["reserve"])} BAY')
        bars.append(f'<rect x="{x:.1f}" y="{top + height - hr:.1f}" width="{w:.1f}" '
                    f'height="{hr:.1f}" fill="{RESERVE_COLOUR}"><title>{tip}</title></rect>'
                    f'<rect x="{x:.1f}" y="{top + height - hr - hl:.1f}" width="{w:.1f}" '
                    f'height="{hl:.1f}" fill="{LIQUID_COLOUR}"><title>{tip}</title></rect>')
    totals_svg = (f'<svg id="totals-history" xmlns="http://www.w3.org/2000/svg" '
                  f'width="{left + width + 10}" height="{total_h}">'
                  f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">'
                  f'{peak / COIN:,.0f}</text>'
                  f'<text x="{left - 6}" y="{top + height}" text-anchor="end">0</text>'
                  f'{"".join(bars)}{"".join(labels)}'
                  f'<text x="{left}" y="{top + height + 28}">exchange liquid (blue) and '
                  f'reserve (amber), BAY</text></svg>')
    return supply_svg + " " + totals_svg


def _pipeline(pipe: dict) -> str:
    stages = pipe["stages"]
    boxes = []
    for i, stage in enumerate(IN_FLIGHT + FINISHED):
        s = stages[stage]
        done = stage in FINISHED
        extra = ""
        if not done:
            age = duration(s["oldest_age"]) if s["oldest_age"] >= 0 else "-"
            extra = (f'<div id="stage-{stage}-amount">{bay(s["amount"])} BAY</div>'
                     f'<div class="sub">oldest <span id="stage-{stage}-age">{age}</span></div>')
        if i:
            boxes.append('<div class="arrow">→</div>' if not done or stage == "complete"
                         else '<div class="arrow">·</div>')
        boxes.append(f'<div class="stage{" done" if done else ""}" id="stage-{stage}">'
                     f'<div>{STAGE_TITLES[stage]}</div>'
                     f'<div class="n" id="stage-{stage}-count">{s["count"]:,d}</div>{extra}</div>')
    rows = "".join(
        f'<tr><td class="l"><code>{_e(w["id"][:16])}</code></td><td class="l">'
        f'{STAGE_TITLES[w["stage"]]}</td><td class="l">{_e(w["style"])}</td>'
        f'<td>{bay(w["amount"])}</td><td>{duration(w["age"])}</td></tr>'
        for w in pipe["oldest"])
    table = ('<p class="sub">No withdraw in flight.</p>' if not rows else
             '<table id="oldest-withdraws"><tr><th class="l">withdraw</th><th class="l">stage'
             '</th><th class="l">style</th><th>BAY</th><th>waiting</th></tr>' + rows + "</table>")
    return f'<div class="flow" id="pipeline">{"".join(boxes)}</div><h3>Waiting longest</h3>{table}'


def render(st: dict, holdings: np.ndarray, cycles: list[dict]) -> str:
    """The whole page from the status report ``st``, the per-step holdings and the cycle
    history (pegx.exchange.cycle.ExchangeCycle.cycle_history)."""
    problems = st["problems"]
    if problems:
        items = "".join(f'<li data-kind="{_e(p["kind"])}">{_e(p["message"])}</li>'
                        for p in problems)
        what = "1 problem needs" if len(problems) == 1 else f"{len(problems)} problems need"
        top = (f'<div class="problems" id="problems"><b>{what} the operator</b>'
               f'<ul>{items}</ul></div>')
    else:
        top = '<div class="ok" id="problems"><b>No problems.</b></div>'
    ex = st["exchange"]
    points = [{"label": f"cycle {c['cycle']}", "supply": c["supply"], "liquid": c["liquid"],
               "reserve": c["reserve"]} for c in cycles]
    points.append({"label": "now", "supply": st["supply"], "liquid": ex["liquid"],
                   "reserve": ex["reserve"]})
    age = duration(st["tip_age"]) if st["tip_age"] >= 0 else "unknown"
    held = int(holdings.sum())
    figures = [
        ("exchange liquid", f'{bay(ex["liquid"])} BAY', "fig-liquid"),
        ("exchange reserve", f'{bay(ex["reserve"])} BAY', "fig-reserve"),
        ("frozen", f'{bay(ex.get("frozen", 0))} BAY', "fig-frozen"),
        ("held on chain (all steps)", f"{bay(held)} BAY", "fig-held"),
        ("accounts", f'{st["users"]:,d}', "fig-accounts"),
        ("exchange inputs", f'{st["inputs"]:,d}', "fig-inputs"),
        ("ledger", f'{st["ledger_bytes"]:,d} bytes, op {st["op_seq"]:,d}', "fig-ledger"),
        ("calls served", f'{st["calls_served"]:,d}', "fig-calls"),
        ("uptime", duration(st["uptime"]), "fig-uptime"),
        ("last cycle error", _e(st["last_error"] or "-"), "fig-last-error"),
    ]
    fig_rows = "".join(f'<tr><td class="l">{k}</td><td id="{i}">{v}</td></tr>'
                       for k, v, i in figures)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pegx status</title>
<meta http-equiv="refresh" content="{REFRESH_SECONDS}"><style>{CSS}</style></head>
<body>
<h1>pegx {_e(st["version"])} on {_e(st["chain"])}</h1>
<div class="sub">height <span id="height">{st["height"]:,d}</span> · cycle
<span id="cycle">{st["cycle"]}</span> · supply index <span id="supply">{st["supply"]}</span>
· last block <span id="tip-age">{age}</span> ago · {stamp}</div>
<h2>Needs the operator</h2>{top}
<h2>The exchange across the {PEG_SIZE:,d} peg steps</h2>
<div class="sub">reserve (amber) below the supply index, liquid (blue) from it up:
{bay(held)} BAY held</div>
{peg_chart(holdings, st["supply"])}
<h2>Supply and exchange totals over the last cycles</h2>
{cycles_chart(points)}
<h2>Withdraws</h2>
{_pipeline(st["pipeline"])}
<h2>Figures</h2><table id="figures">{fig_rows}</table>
</body></html>
"""
