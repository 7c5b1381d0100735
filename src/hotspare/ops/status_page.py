"""The `/status` page: one self-contained HTML document (inline CSS and SVG, no script, no external
asset, no build step) rendered from the status document, refreshing itself every few seconds.

Colours carry state: a circuit's badge is green (closed), amber (half-open or degraded) or red (open),
so a glance -- or a screenshot -- shows the live state. Every value is HTML-escaped.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

REFRESH_S = 5
GREEN, AMBER, RED, GREY = "#1b873f", "#d68a00", "#d32f2f", "#8a8f98"
ERRORS = "#b0417a"  # the error-rate chart: not the open-circuit red, so a screenshot can tell them apart
CHART_W, CHART_H = 300, 60

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px} h2{font-size:15px;margin:20px 0 8px}
.muted{color:#5b6270} table{border-collapse:collapse;background:#fff;width:100%}
td,th{padding:6px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:middle}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.now{font-size:18px;font-weight:600} .grid{display:flex;gap:16px;flex-wrap:wrap}
.card{background:#fff;padding:10px 14px;border-radius:6px;min-width:120px}
.card b{display:block;font-size:18px} svg{background:#fbfbfc;border:1px solid #e3e6ea}
"""


def render_page(doc: dict[str, Any]) -> str:
    now = escape(time.strftime("%H:%M:%S", time.localtime(doc["generated_at"])))
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        "<title>hotspare status</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<h1>hotspare</h1><div class="muted">mode {escape(doc["mode"])} &middot; updated {now} '
        f"&middot; charts: last {doc['minutes']} minutes in {doc['bucket_s']:g} s steps</div>",
        f'<h2>Serving now</h2><div class="now" id="serving-now">{escape(doc["serving_now"])}</div>',
        _upstreams(doc),
        _local(doc),
        _timeline(doc),
        "</body></html>",
    ]
    return "".join(parts)


def _badge(state: str, health: str = "healthy") -> str:
    colour = {"closed": GREEN, "half_open": AMBER, "open": RED}.get(state, GREY)
    if state == "closed" and health == "degraded":
        colour, state = AMBER, "degraded"
    return f'<span class="badge" style="background:{colour}">{escape(state.replace("_", "-"))}</span>'


def _upstreams(doc: dict[str, Any]) -> str:
    if not doc["upstreams"]:
        return '<h2>Upstreams</h2><p class="muted">none configured: the local model serves everything</p>'
    rows = [
        "<h2>Upstreams</h2><table><tr><th>upstream</th><th>circuit</th><th>error rate</th>"
        "<th>TTFT</th><th>attempts</th><th>errors per 10 s</th><th>TTFT per 10 s</th></tr>"
    ]
    for name, u in doc["upstreams"].items():
        ttft = f"{u['ttft_mean_s'] * 1000:.0f} ms" if u["ttft_mean_s"] is not None else "&ndash;"
        series = u["series"]
        rows.append(
            f'<tr data-upstream="{escape(name)}" data-state="{escape(u["state"])}">'
            f"<td><b>{escape(name)}</b></td><td>{_badge(u['state'], u['health'])}</td>"
            f"<td>{u['error_rate']:.0%}</td><td>{ttft}</td><td>{u['attempts']}</td>"
            f"<td>{_chart(series['error_rate'], ERRORS, 1.0)}</td>"
            f"<td>{_chart(series['ttft_s'], AMBER)}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _attention(attention: dict[str, Any] | None) -> str:
    if not attention:
        return "&ndash;"
    return f"flash {escape(attention['flash_attention'])} ({escape(attention['source'])})"


def _local(doc: dict[str, Any]) -> str:
    local, series = doc["local"], doc["requests"]["series"]
    cards = [
        ("model", escape(local["model"]) + (f" ({escape(note)})" if (note := local.get("weights")) else "")),
        ("state", escape(local["state"]) + (f" -- {escape(why)}" if (why := local.get("failure")) else "")),
        ("attention", _attention(local.get("attention"))),
        ("running", str(local["running"])),
        ("queued", str(local["queue_depth"])),
        ("tokens/s", f"{local['tokens_per_s']:.1f}"),
        ("KV cache used", f"{local['kv_used_ratio']:.0%}"),
        ("prefix cache hits", f"{local['prefix_hit_ratio']:.0%}"),
        ("restarts", str(local["restarts"])),
    ]
    served = ", ".join(f"{escape(k)} {v}" for k, v in doc["requests"]["requests_by_backend"].items())
    return (
        '<h2>Local engine</h2><div class="grid" id="local">'
        + "".join(f'<div class="card"><span class="muted">{k}</span><b>{v}</b></div>' for k, v in cards)
        + "</div><h2>Requests</h2>"
        + f'<div class="muted">by backend: {served or "none yet"}</div><div class="grid">'
        + f"<div>all requests {_chart(series['requests'], GREEN)}</div>"
        + f"<div>served locally {_chart(series['local_requests'], AMBER)}</div>"
        + f"<div>engine running {_chart(series['engine_running'], GREY)}</div></div>"
    )


def _timeline(doc: dict[str, Any]) -> str:
    events = doc["timeline"]
    if not events:
        return '<h2>Timeline</h2><p class="muted" id="timeline">no failovers or circuit changes yet</p>'
    rows = ['<h2>Timeline</h2><table id="timeline">']
    for e in events:
        at = escape(time.strftime("%H:%M:%S", time.localtime(e["at"])))
        rows.append(
            f"<tr><td>{at}</td><td>{escape(e['kind'].replace('_', ' '))}</td>"
            f"<td>{escape(e['subject'])}</td><td class=muted>{escape(e['detail'])}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _chart(
    values: list[float | None] | list[float] | list[int], colour: str, top: float | None = None
) -> str:
    """A small inline SVG bar chart; None is a gap."""
    numbers = [float(v) for v in values if v is not None]
    peak = top or max(numbers, default=0.0) or 1.0
    width = CHART_W / max(1, len(values))
    bars = []
    for i, value in enumerate(values):
        if not value:
            continue
        height = max(1.0, CHART_H * min(1.0, float(value) / peak))
        bars.append(
            f'<rect x="{i * width:.1f}" y="{CHART_H - height:.1f}" width="{max(1.0, width - 1):.1f}" '
            f'height="{height:.1f}" fill="{colour}"/>'
        )
    return (
        f'<svg width="{CHART_W}" height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" role="img">'
        + "".join(bars)
        + "</svg>"
    )
