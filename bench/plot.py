"""Figures for docs/benchmarks.md, as SVG, from bench/results (docs/scaling.md has tables).

Run after the benchmarks: `python -m bench.plot`. Plain SVG written by hand: no
plotting library to install, and the files diff as text.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
IMAGES = REPO / "docs" / "img"
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
WIDTH, HEIGHT, LEFT, BOTTOM, TOP, RIGHT = 640, 360, 70, 50, 40, 170


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 10}" '
        f'text-anchor="middle">{x_label}</text>',
        f'<text x="16" y="{TOP + (HEIGHT - TOP - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + (HEIGHT - TOP - BOTTOM) / 2})">{y_label}</text>',
    ]


def _axes(lines: list[str], y_max: float, ticks: int = 5) -> None:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    lines.append(f'<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>')
    lines.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="black"/>')
    for i in range(ticks + 1):
        value = y_max * i / ticks
        y = bottom - (bottom - TOP) * i / ticks
        lines.append(f'<line x1="{LEFT}" y1="{y}" x2="{right}" y2="{y}" stroke="#ddd"/>')
        lines.append(f'<text x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{value:g}</text>')


def line_chart(
    path: Path,
    title: str,
    x_label: str,
    y_label: str,
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
) -> None:
    """One line per series over the same xs."""
    y_max = _nice(max(max(values) for values in series.values()))
    lines = _frame(title, x_label, y_label)
    _axes(lines, y_max)
    bottom, right, x_max = HEIGHT - BOTTOM, WIDTH - RIGHT, max(xs)

    def point(x: float, y: float) -> str:
        return f"{LEFT + (right - LEFT) * x / x_max:.1f},{bottom - (bottom - TOP) * y / y_max:.1f}"

    for x in xs:
        lines.append(
            f'<text x="{LEFT + (right - LEFT) * x / x_max:.1f}" y="{bottom + 16}" '
            f'text-anchor="middle">{x:,.0f}</text>'
        )
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        points = " ".join(point(x, y) for x, y in zip(xs, values, strict=True))
        lines.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        for x, y in zip(xs, values, strict=True):
            cx, cy = point(x, y).split(",")
            lines.append(f'<circle cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>')
        lines.append(
            f'<text x="{right + 10}" y="{TOP + 16 * index + 10}" fill="{colour}">{name}</text>'
        )
    lines.append("</svg>")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def bar_chart(path: Path, title: str, y_label: str, bars: dict[str, float]) -> None:
    """One horizontal-label bar per entry."""
    y_max = _nice(max(bars.values()))
    lines = _frame(title, "", y_label)
    _axes(lines, y_max)
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT + RIGHT - 20
    step = (right - LEFT) / len(bars)
    for index, (name, value) in enumerate(bars.items()):
        height = (bottom - TOP) * value / y_max
        x = LEFT + step * index + step * 0.15
        lines.append(
            f'<rect x="{x:.1f}" y="{bottom - height:.1f}" width="{step * 0.7:.1f}" '
            f'height="{height:.1f}" fill="{COLOURS[index % len(COLOURS)]}"/>'
        )
        lines.append(
            f'<text x="{x + step * 0.35:.1f}" y="{bottom - height - 4:.1f}" '
            f'text-anchor="middle">{value:,.0f}</text>'
        )
        for line_number, word in enumerate(name.split("\n")):
            lines.append(
                f'<text x="{x + step * 0.35:.1f}" y="{bottom + 14 + 12 * line_number}" '
                f'text-anchor="middle" font-size="10">{word}</text>'
            )
    lines.append("</svg>")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _nice(value: float) -> float:
    for step in (1, 2, 2.5, 5, 10):
        for magnitude in (10**e for e in range(-3, 9)):
            if step * magnitude >= value:
                return float(step * magnitude)
    return value


def _median_per_label(measurements: list[dict[str, Any]], field: str) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for row in measurements:
        if row.get(field) is not None:
            values.setdefault(row["label"], []).append(float(row[field]))
    return {label: statistics.median(v) for label, v in values.items()}


def plot_ingest() -> Path | None:
    """CPU per 20-point request of each path, from ingest.json."""
    source = RESULTS / "ingest.json"
    if not source.exists():
        return None
    document = json.loads(source.read_text(encoding="utf-8"))
    cost = _median_per_label(document["measurements"], "cpu_us_per_req")
    wanted = {
        "Collector\nalone": "collector grpc 20p",
        "previous\ndesign (JSON)": "previous_design legacy-json 20p",
        "bare gRPC\nhop": "bare_hop grpc 20p",
        "gateway\nOTLP/HTTP": "gateway http 20p",
        "gateway\nOTLP/gRPC": "gateway grpc 20p",
    }
    bars = {name: cost[label] for name, label in wanted.items() if label in cost}
    path = IMAGES / "ingest-cpu.svg"
    bar_chart(path, "CPU per request of 20 points, one process (median µs)", "µs", bars)
    return path


def main() -> None:
    """Write every figure whose results exist."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    for made in (plot_ingest(),):
        if made is not None:
            print(f"wrote {made.parent}/{made.stem}*")


if __name__ == "__main__":
    main()
