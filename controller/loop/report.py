"""The loop's HTML report: what each device class runs, and why.

Input is a ``LoopRecord`` (``controller/loop/record.py``). Sections carry stable ids
(``accuracy-vs-fps``, ``rollout-timeline``, ``lineage``, ``speedup``, ``emulation``) that the
end-to-end test checks.
"""

from __future__ import annotations

import html
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

from controller.loop.record import ClassSummary, LineageNode, LoopRecord
from controller.loop.selection import pareto_front


@dataclass(frozen=True)
class AccuracyAxis:
    """The accuracy range a class's plot shows, and where its accuracy floor is."""

    low: float
    high: float
    floor: float | None
    floor_shown: bool  # False: the floor is off the axis and marked at its edge instead

    @property
    def floor_side(self) -> str:
        return "below" if self.floor is not None and self.floor < self.low else "above"


def accuracy_axis(accuracies: list[float], floor: float | None) -> AccuracyAxis:
    """Clip the axis to the measured accuracies with a margin, so a large allowed drop (a floor
    at -80 %) does not squash every point into one line. The floor joins the axis when that at
    most doubles the range; farther away it is marked at the edge."""
    lo, hi = min(accuracies), max(accuracies)
    span = max(hi - lo, 1.0)
    margin = 0.1 * span + 0.2
    low, high = lo - margin, hi + margin
    if floor is None:
        return AccuracyAxis(low, high, None, False)
    if low - span <= floor <= high + span:
        return AccuracyAxis(min(low, floor - margin), max(high, floor + margin), floor, True)
    return AccuracyAxis(low, high, floor, False)


# timeline marker per event: (marker, colour, legend label); device rows and class rows differ
TIMELINE_STYLE: dict[str, tuple[str, str, str]] = {
    "benchmarked": ("o", "steelblue", "benchmark on the canary"),
    "stream_capacity": ("s", "purple", "stream scenario on the canary"),
    "switched": ("o", "green", "deployed (gate passed)"),
    "succeeded": ("o", "green", "deployed (gate passed)"),
    "deploy": ("o", "grey", "deploy sent"),
    "skipped": ("o", "orange", "skipped"),
    "failed": ("o", "red", "failed / rolled back"),
    "rolling_back": ("o", "red", "failed / rolled back"),
    "rolled_back": ("o", "red", "failed / rolled back"),
    "rollout_started": (">", "black", "class rollout started"),
    "rollout_succeeded": ("*", "green", "class rollout succeeded"),
    "rollout_aborted": ("X", "red", "class rollout aborted / rolled back"),
    "rollout_rolled_back": ("X", "red", "class rollout aborted / rolled back"),
}


def timeline_style(event: str) -> tuple[str, str, str]:
    return TIMELINE_STYLE.get(event, ("d", "grey", event.replace("_", " ")))


def _plain_log_ticks(axis) -> None:  # noqa: ANN001 - a matplotlib Axis
    """1-2-5 ticks as plain numbers: the default log minor labels overlap on a narrow range."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _plot_class(record: LoopRecord, summary: ClassSummary, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    pts = [m for m in record.measurements if m.device_class == summary.device_class]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(8.4, 4.2), dpi=110)
    for precision, marker in (("fp32", "o"), ("fp16", "s"), ("int8", "^")):
        sel = [m for m in pts if m.precision == precision]
        if sel:
            ax.scatter(
                [m.fps for m in sel], [m.accuracy for m in sel], marker=marker, label=precision, alpha=0.75
            )
    if front:
        ax.plot([m.fps for m in front], [m.accuracy for m in front], "k--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    chosen = [
        m
        for m in pts
        if (m.model_version, m.backend, m.precision)
        == (summary.chosen_version, summary.chosen_backend, summary.chosen_precision)
    ]
    goal = summary.goal
    if goal.get("min_fps"):
        ax.axvline(goal["min_fps"], color="grey", lw=1, ls=":", label="FPS goal")
    if goal.get("min_speedup") and summary.baseline_fps:
        floor = goal["min_speedup"] * summary.baseline_fps
        ax.axvline(floor, color="grey", lw=1, ls=":", label=f"FPS goal ({goal['min_speedup']}x baseline)")
    drop = goal.get("max_accuracy_drop")
    acc_floor = None
    if summary.baseline_accuracy:
        acc_floor = summary.baseline_accuracy - (1.0 if drop is None else drop)
    if pts:
        yaxis = accuracy_axis([m.accuracy for m in pts], acc_floor)
        ax.set_ylim(yaxis.low, yaxis.high)
        if yaxis.floor is not None and yaxis.floor_shown:
            ax.axhline(yaxis.floor, color="orange", lw=1, ls=":", label=f"accuracy floor ({yaxis.floor:.1f})")
        elif yaxis.floor is not None:  # off the axis: say so at its edge and in the legend
            ax.annotate(
                f"accuracy floor {yaxis.floor:.1f} ({yaxis.floor_side} this axis)",
                xy=(0.99, 0.01 if yaxis.floor_side == "below" else 0.99),
                xycoords="axes fraction",
                ha="right",
                va="bottom" if yaxis.floor_side == "below" else "top",
                fontsize=7,
                color="darkorange",
            )
            ax.add_line(
                Line2D(
                    [], [], color="orange", lw=1, ls=":", label=f"accuracy floor {yaxis.floor:.1f}: off axis"
                )
            )
    if chosen:
        c = chosen[0]
        ax.scatter(
            [c.fps], [c.accuracy], s=260, facecolors="none", edgecolors="red", linewidths=2, label="chosen"
        )
        lo_x, hi_x = ax.get_xlim()
        right_half = c.fps > (lo_x * hi_x) ** 0.5  # label towards the middle, inside the axes
        ax.annotate(
            c.model_version,
            (c.fps, c.accuracy),
            textcoords="offset points",
            xytext=(-10 if right_half else 10, -14),
            ha="right" if right_half else "left",
            fontsize=8,
        )
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("measured throughput on the device (images/s, log)")
    ax.set_ylabel("\n".join(textwrap.wrap(record.metric_name, 36)), fontsize=8)
    ax.set_title(f"{summary.device_class}: every candidate measured")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path = out / f"accuracy_vs_fps_{summary.device_class}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def timeline_rows(record: LoopRecord) -> list[tuple[str, str]]:
    """(device class, device or "") per row: each class's rollout row, then its devices."""
    rows = {(e.device_class, e.device_id) for e in record.timeline}
    return sorted(rows, key=lambda r: (r[0], r[1] != "", r[1]), reverse=True)  # top of the plot first


def _plot_timeline(record: LoopRecord, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = timeline_rows(record)
    fig, ax = plt.subplots(figsize=(9.6, 0.45 * max(3, len(rows)) + 1.4), dpi=110)
    seen: set[str] = set()
    t_end = max((e.t for e in record.timeline), default=0.0)
    for e in record.timeline:
        y = rows.index((e.device_class, e.device_id))
        marker, color, label = timeline_style(e.event)
        big = e.event.startswith("rollout_")
        ax.scatter([e.t], [y], color=color, marker=marker, s=70 if big else 25,
                   label=None if label in seen else label, zorder=3)  # fmt: skip
        seen.add(label)
        if e.event in ("switched", "succeeded", "rolled_back", "failed"):
            late = e.t > 0.75 * t_end  # label to the left near the right edge, inside the axes
            ax.annotate(e.model_version, (e.t, y), textcoords="offset points", xytext=(-4 if late else 3, 5),
                        ha="right" if late else "left", fontsize=7)  # fmt: skip
    ax.set_yticks(range(len(rows)), [f"{c}: rollout" if not d else d for c, d in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("seconds since the loop started")
    ax.set_title("timeline: benchmarks on each class's canary, then one gated rollout per class")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path = out / "rollout_timeline.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _lineage_chain(record: LoopRecord, version: str) -> list[LineageNode]:
    by_version = {n.version: n for n in record.lineage}
    chain: list[LineageNode] = []
    seen: set[str] = set()
    while version and version in by_version and version not in seen:
        seen.add(version)
        chain.append(by_version[version])
        version = by_version[version].parent
    return list(reversed(chain))


def _stream_section(record: LoopRecord, out: Path) -> list[str]:
    """The chosen models' stream capacity per class and the annotated frames (when measured)."""
    measured = [s for s in record.classes if s.chosen_stream_capacity is not None]
    if not measured and not record.stream_frames:
        return []
    esc = html.escape
    clip = f" of {esc(record.stream_clip)}" if record.stream_clip else ""
    parts = [
        "<h2 id='streams'>Stream capacity of the chosen models</h2>",
        f"<p>The benchmark's stream scenario on each class's canary: live copies{clip} through the "
        "device's video pipeline (decode, batching, the engine, events). A count is kept when every "
        "stream sustains at least 95 % of the clip's rate; the capacity is the most streams kept.</p>",
        "<table><tr><th>class</th><th>chosen</th><th>backend / precision</th><th>live streams kept</th>"
        "<th>stream goal</th></tr>",
    ]
    for s in record.classes:
        if s.chosen_stream_capacity is None:
            kept = "not measured"
        elif s.chosen_stream_capacity == 0:
            kept = f"none at {s.chosen_stream_fps:g} FPS (a single stream kept less than 95 % of it)"
        else:
            kept = f"{s.chosen_stream_capacity} at {s.chosen_stream_fps:g} FPS each"
        want = s.goal.get("min_streams")
        goal = f"{want} at {s.goal.get('stream_fps'):g} FPS" if want else "none (reported only)"
        parts.append(
            f"<tr><td>{esc(s.device_class)}</td><td>{esc(s.chosen_version)}</td>"
            f"<td>{esc(s.chosen_backend)} / {esc(s.chosen_precision)}</td><td class='streams'>{esc(kept)}</td>"
            f"<td>{esc(goal)}</td></tr>"
        )
    parts.append("</table>")
    if record.stream_frames:
        parts.append(
            f"<h3 id='annotated-frames'>Annotated frames</h3><p>{esc(record.stream_frames_note)}</p>"
        )
        parts.append("<div class='frames'>")
        parts.extend(
            f"<img class='frame' src='{esc(name)}' alt='annotated frame {i + 1}'>"
            for i, name in enumerate(record.stream_frames)
        )
        parts.append("</div>")
        if (out / "annotated.mp4").is_file():
            parts.append("<p><a href='annotated.mp4'>the whole annotated clip (mp4)</a></p>")
    return parts


def render_report(record: LoopRecord, out: Path) -> Path:
    """Write record.json, the PNG plots and index.html into ``out``; returns index.html."""
    out.mkdir(parents=True, exist_ok=True)
    record.save(out / "record.json")
    esc = html.escape
    parts: list[str] = [
        "<!doctype html><html><head><meta charset='utf-8'><title>edgeloop report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}"
        ".ok{color:#080}.miss{color:#b00}img{max-width:100%}"
        ".frames{display:flex;flex-wrap:wrap;gap:8px}.frame{width:32%;min-width:260px}</style></head><body>",
        f"<h1>edgeloop: {esc(record.task)} loop report</h1>",
        f"<p id='emulation'><b>Devices.</b> {esc(record.emulation_note)}</p>",
        f"<p>{record.rounds} round(s); {len(record.measurements)} measurements, all taken on the devices.</p>",
        "<h2 id='speedup'>What each device class runs</h2><table><tr><th>class</th><th>goal</th><th>chosen</th>"
        "<th>backend / precision</th><th>FPS (baseline → chosen)</th><th>speedup</th>"
        f"<th>{esc(record.metric_name)} (baseline → chosen)</th><th>verdict</th></tr>",
    ]
    for s in record.classes:
        goal = ", ".join(f"{k}={v}" for k, v in s.goal.items() if v is not None)
        verdict = "<span class='ok'>meets goal</span>" if s.meets_goal else "<span class='miss'>MISSES</span>"
        parts.append(
            f"<tr><td>{esc(s.device_class)}</td><td>{esc(goal)}</td><td>{esc(s.chosen_version)}</td>"
            f"<td>{esc(s.chosen_backend)} / {esc(s.chosen_precision)}</td>"
            f"<td>{s.baseline_fps:.1f} → {s.chosen_fps:.1f}</td><td>{s.speedup:.2f}x</td>"
            f"<td>{s.baseline_accuracy:.2f} → {s.chosen_accuracy:.2f}</td><td>{verdict}: {esc(s.reason)}</td></tr>"
        )
    parts.append("</table>")
    parts.extend(_stream_section(record, out))
    parts.append("<h2 id='accuracy-vs-fps'>Accuracy vs FPS per device class</h2>")
    for s in record.classes:
        img = _plot_class(record, s, out)
        parts.append(
            f"<h3>{esc(s.device_class)}</h3><img class='plot' src='{img.name}' alt='{esc(s.device_class)}'>"
        )
    img = _plot_timeline(record, out)
    parts.append(f"<h2 id='rollout-timeline'>Rollout timeline</h2><img class='plot' src='{img.name}'><table>")
    parts.append(
        "<tr><th>t (s)</th><th>class</th><th>device</th><th>event</th><th>model</th><th>detail</th></tr>"
    )
    for e in record.timeline:
        if e.event == "benchmarked":
            continue
        parts.append(
            f"<tr><td>{e.t:.1f}</td><td>{esc(e.device_class)}</td><td>{esc(e.device_id)}</td>"
            f"<td>{esc(e.event)}</td><td>{esc(e.model_version)}</td><td>{esc(e.detail)}</td></tr>"
        )
    parts.append("</table><h2 id='lineage'>Lineage of the chosen models</h2>")
    for s in record.classes:
        chain = _lineage_chain(record, s.chosen_version)
        steps = " → ".join(
            f"<b>{esc(n.version)}</b> ({esc(n.action)}{': ' + esc(n.detail) if n.detail else ''})"
            for n in chain
        )
        parts.append(f"<p class='lineage'>{esc(s.device_class)}: {steps or 'none'}</p>")
    if record.failures:
        parts.append("<h2 id='failures'>What devices could not build or measure</h2><ul>")
        parts.extend(f"<li>{esc(f)}</li>" for f in record.failures)
        parts.append("</ul>")
    if record.round_log:
        parts.append("<h2 id='rounds'>Rounds</h2><ol>")
        for r in record.round_log:
            parts.append(f"<li>{esc(json.dumps(r))}</li>")
        parts.append("</ol>")
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index
