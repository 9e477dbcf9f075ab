"""The loop's HTML report: what each device class runs, and why.

Input is a ``LoopRecord`` (``controller/loop/record.py``). Sections carry stable ids
(``accuracy-vs-fps``, ``rollout-timeline``, ``lineage``, ``speedup``, ``emulation``) that the
end-to-end test checks.
"""

from __future__ import annotations

import html
import json
import textwrap
from pathlib import Path

from controller.loop.record import ClassSummary, LineageNode, LoopRecord
from controller.loop.selection import pareto_front


def _plot_class(record: LoopRecord, summary: ClassSummary, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [m for m in record.measurements if m.device_class == summary.device_class]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for precision, marker in (("fp32", "o"), ("fp16", "s"), ("int8", "^")):
        sel = [m for m in pts if m.precision == precision]
        if sel:
            ax.scatter(
                [m.fps for m in sel], [m.accuracy for m in sel], marker=marker, label=precision, alpha=0.75
            )
    if front:
        ax.plot([m.fps for m in front], [m.accuracy for m in front], "k--", lw=1, label="Pareto front")
    chosen = [
        m
        for m in pts
        if (m.model_version, m.backend, m.precision)
        == (summary.chosen_version, summary.chosen_backend, summary.chosen_precision)
    ]
    if chosen:
        c = chosen[0]
        ax.scatter(
            [c.fps], [c.accuracy], s=260, facecolors="none", edgecolors="red", linewidths=2, label="chosen"
        )
        ax.annotate(
            c.model_version, (c.fps, c.accuracy), textcoords="offset points", xytext=(6, -12), fontsize=8
        )
    goal = summary.goal
    if goal.get("min_fps"):
        ax.axvline(goal["min_fps"], color="grey", lw=1, ls=":", label="FPS goal")
    if goal.get("min_speedup") and summary.baseline_fps:
        floor = goal["min_speedup"] * summary.baseline_fps
        ax.axvline(floor, color="grey", lw=1, ls=":", label=f"FPS goal ({goal['min_speedup']}x baseline)")
    if summary.baseline_accuracy:
        ax.axhline(
            summary.baseline_accuracy - goal.get("max_accuracy_drop", 1.0),
            color="orange",
            lw=1,
            ls=":",
            label="accuracy floor",
        )
    ax.set_xscale("log")
    ax.set_xlabel("measured throughput on the device (images/s, log)")
    ax.set_ylabel("\n".join(textwrap.wrap(record.metric_name, 36)), fontsize=8)
    ax.set_title(f"{summary.device_class}: every candidate measured")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = out / f"accuracy_vs_fps_{summary.device_class}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_timeline(record: LoopRecord, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = sorted({e.device_id or e.device_class for e in record.timeline})
    fig, ax = plt.subplots(figsize=(8, 0.5 * max(3, len(devices)) + 1.2), dpi=110)
    colors = {
        "switched": "green",
        "succeeded": "green",
        "rolled_back": "red",
        "failed": "red",
        "skipped": "orange",
        "benchmarked": "steelblue",
        "deploy": "grey",
    }
    for e in record.timeline:
        y = devices.index(e.device_id or e.device_class)
        ax.scatter([e.t], [y], color=colors.get(e.event, "black"), s=25)
        if e.event in ("switched", "succeeded", "rolled_back", "failed"):
            ax.annotate(e.model_version, (e.t, y), textcoords="offset points", xytext=(3, 5), fontsize=7)
    ax.set_yticks(range(len(devices)), devices)
    ax.set_xlabel("seconds since the loop started")
    ax.set_title("timeline (blue: benchmark, green: deployed, red: failed / rolled back)")
    ax.grid(alpha=0.3)
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


def render_report(record: LoopRecord, out: Path) -> Path:
    """Write record.json, the PNG plots and index.html into ``out``; returns index.html."""
    out.mkdir(parents=True, exist_ok=True)
    record.save(out / "record.json")
    esc = html.escape
    parts: list[str] = [
        "<!doctype html><html><head><meta charset='utf-8'><title>edgeloop report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}"
        ".ok{color:#080}.miss{color:#b00}img{max-width:100%}</style></head><body>",
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
    parts.append("</table><h2 id='accuracy-vs-fps'>Accuracy vs FPS per device class</h2>")
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
