"""The benchmark's Markdown report: one row per metric, one column per server, ratios hotspare/peer.

Ratios are hotspare's value over the peer's: above 1 is better for throughput, below 1 is better for
times. Each unit's line below the table says how much of the CPU other processes took while it ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Measured:
    """One workload on one server: its result (None on error) and the CPU share other processes
    took meanwhile (0..1), with the load average when it started."""

    value: Any
    foreign_share: float
    load: str
    error: str | None = None


def percentile(values: list[float] | tuple[float, ...], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


Results = dict[str, dict[str, Measured]]
Getter = Callable[[Any], float]


class _Table:
    def __init__(self, results: Results, names: list[str]) -> None:
        self.results = results
        self.names = names
        self.peers = [n for n in names if n != "hotspare"] if "hotspare" in names else []
        head = ["", *names, *(f"hotspare / {p}" for p in self.peers)]
        self.lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def add(self, workload: str, label: str, get: Getter, fmt: str) -> None:
        values: dict[str, float] = {}
        for name, measured in self.results.get(workload, {}).items():
            if measured.value is not None:
                try:
                    values[name] = get(measured.value)
                except (KeyError, TypeError):
                    continue
        if not values:
            return
        cells = [fmt.format(values[n]) if n in values else "–" for n in self.names]
        ratios = [
            f"{values['hotspare'] / values[p]:.2f}" if "hotspare" in values and values.get(p) else "–"
            for p in self.peers
        ]
        self.lines.append("| " + " | ".join([label, *cells, *ratios]) + " |")


def _level(level: int, field: str, scale: float = 1.0) -> Getter:
    def get(value: Any) -> float:
        return float(getattr(value[level], field)) * scale

    return get


def _ctx(tokens: int, field: str) -> Any:
    def get(v: Any) -> float:
        # JSON round trips turn the int keys into strings
        got = v.get(tokens, v.get(str(tokens))) if isinstance(v, dict) else None
        return float(getattr(got, field) if not isinstance(got, dict) else got[field])

    return get


def report(results: Results, names: list[str], levels: list[int], hotspare_mode: str) -> str:
    table = _Table(results, names)
    for lv in levels:
        table.add("streams", f"{lv} streams: tok/s (median)", _level(lv, "tokens_per_s"), "{:.1f}")
        table.add("streams", f"{lv} streams: TTFT p50 s", _level(lv, "ttft_p50_s"), "{:.2f}")
        table.add("streams", f"{lv} streams: TTFT p95 s", _level(lv, "ttft_p95_s"), "{:.2f}")
        table.add("streams", f"{lv} streams: inter-token p95 ms", _level(lv, "itl_p95_s", 1e3), "{:.0f}")
    table.add("shared", "shared ~2.2k prefix: TTFT cold s", lambda v: v.cold_ttft_s, "{:.2f}")
    table.add("shared", "shared ~2.2k prefix: TTFT warm ms", lambda v: v.warm_ttft_s * 1e3, "{:.0f}")
    table.add(
        "shared",
        "shared ~2.2k prefix: TTFT same request again ms",
        lambda v: v.repeat_ttft_s * 1e3,
        "{:.0f}",
    )
    table.add(
        "agent",
        "agent: TTFT per turn p50 ms",
        lambda v: percentile(v["agent"].warm_ttfts_s, 50) * 1e3,
        "{:.0f}",
    )
    table.add(
        "agent",
        "agent: TTFT per turn p95 ms",
        lambda v: percentile(v["agent"].warm_ttfts_s, 95) * 1e3,
        "{:.0f}",
    )
    table.add("agent", "1 stream after agent: tok/s", lambda v: v["after"].tokens_per_s, "{:.1f}")
    for tokens in (2000, 4000, 6000):
        speed = _ctx(tokens, "decode_tokens_per_s")
        table.add("context", f"1 stream at ~{tokens} ctx: decode tok/s", speed, "{:.1f}")
        table.add("context", f"1 stream at ~{tokens} ctx: TTFT s", _ctx(tokens, "ttft_s"), "{:.2f}")
    table.add("idle8", "8 streams after a 6k conversation: tok/s", lambda v: v.tokens_per_s, "{:.1f}")
    lines = [*table.lines, "", *_notes(results, hotspare_mode), "", *_targets(results)]
    return "\n".join(lines)


def _value(results: Results, workload: str, name: str) -> Any:
    measured = results.get(workload, {}).get(name)
    return measured.value if measured is not None else None


def _targets(results: Results) -> list[str]:
    """The issue's targets, checked against this run (skipped where a number is missing)."""
    lines = ["Targets (issue 3):"]
    ours, peer = _value(results, "streams", "hotspare"), _value(results, "streams", "llama-server")
    if ours and peer and 8 in ours and 8 in peer:
        tput = ours[8].tokens_per_s / peer[8].tokens_per_s
        ttft = ours[8].ttft_p95_s / peer[8].ttft_p95_s
        lines.append(f"- 8 streams: throughput {tput:.2f}x llama-server's (>= 1.3: {_ok(tput >= 1.3)})")
        lines.append(f"- 8 streams: TTFT p95 {ttft:.2f}x llama-server's (<= 1: {_ok(ttft <= 1)})")
    if shared := _value(results, "shared", "hotspare"):
        # The issue set 60 ms beside raw llama.cpp reusing a cached 2.3k-token prefix and feeding one
        # token (28 ms): that is the same request again. A new question computes its tokens on top.
        again, warm = shared.repeat_ttft_s * 1e3, shared.warm_ttft_s * 1e3
        lines.append(
            f"- shared ~2.2k prefix warm TTFT, whole prompt cached {again:.0f} ms"
            f" (< 60 ms: {_ok(again < 60)}); with a new question after it {warm:.0f} ms"
        )
    ours = _value(results, "agent", "hotspare")
    for name in ("llama-server", "llama-server-pinned"):
        peer = _value(results, "agent", name)
        if ours and peer:
            ratio = percentile(ours["agent"].warm_ttfts_s, 50) / percentile(peer["agent"].warm_ttfts_s, 50)
            lines.append(f"- agent TTFT per turn p50 {ratio:.2f}x {name}'s (<= 0.5: {_ok(ratio <= 0.5)})")
    if failover := _value(results, "failover", "hotspare"):
        worst = max(failover.warm_ttfts_s) * 1e3
        lines.append(
            f"- failover TTFT, warmed conversation, worst {worst:.0f} ms (< 250 ms: {_ok(worst < 250)})"
        )
    return lines


def _counts(values: tuple[int | None, ...]) -> str:
    return "not reported" if all(v is None for v in values) else " ".join(str(v) for v in values)


def _ok(met: bool) -> str:
    return "met" if met else "NOT met"


def _notes(results: Results, hotspare_mode: str) -> list[str]:
    lines = [f"hotspare measured {'through `hotspare serve`' if hotspare_mode == 'http' else 'in-process'}."]
    for workload, by_server in results.items():
        for name, m in by_server.items():
            line = f"- {workload} on {name}: others used {m.foreign_share:.0%} of the CPU (load {m.load})"
            if m.error:
                line += f"; FAILED: {m.error}"
            elif workload == "streams":
                line += "; completion tokens per answer " + ", ".join(
                    f"{lv}: {r.min_completion_tokens}-{r.max_completion_tokens}"
                    + ("" if r.is_counted else " (chunks; no usage reported)")
                    + f" (others {r.foreign_share:.0%})"
                    + (
                        " tok/s by round " + "/".join(f"{t:.0f}" for t in r.rounds_tokens_per_s)
                        if len(r.rounds_tokens_per_s) > 1
                        else ""
                    )
                    for lv, r in m.value.items()
                )
            elif workload == "agent":
                a = m.value["agent"]
                line += (
                    f"; prompts {min(a.prompt_tokens)}-{max(a.prompt_tokens)} tokens, first (cold) TTFT"
                    f" {a.ttfts_s[0]:.2f} s, all TTFTs (s) {' '.join(f'{t:.2f}' for t in a.ttfts_s)}"
                    f"; prompt tokens computed {_counts(a.uncached_tokens)}"
                )
            elif workload == "shared":
                line += (
                    f"; {m.value.prompt_tokens}-token system prompt; prompt tokens computed per warm"
                    f" request {_counts(m.value.warm_uncached_tokens)}, per repeated request"
                    f" {_counts(m.value.repeat_uncached_tokens)}"
                )
            elif workload == "failover":
                f = m.value
                line += (
                    f"; {f.conversation_tokens}-token conversation, warmed in {f.warm_s:.1f} s; next-turn"
                    f" TTFT warm {', '.join(f'{t * 1e3:.0f}' for t in f.warm_ttfts_s)} ms (prompt tokens"
                    f" computed {_counts(f.warm_uncached_tokens)}), never-seen conversation of the same"
                    f" size {f.cold_ttft_s:.2f} s"
                )
            lines.append(line)
    return lines
