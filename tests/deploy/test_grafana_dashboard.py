"""deploy/grafana/edgeloop-dashboard.json references only metrics that exist: the agent's
``/metrics`` (agent.metrics.metric_names(), which tests/agent/test_agent_http.py checks against
a real page) and the controller's registry (controller.metrics.Metrics)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agent.metrics import metric_names
from controller.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "edgeloop-dashboard.json"
METRIC = re.compile(r"\b(edgeloop_[a-z0-9_]+)\b")


def controller_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_every_panel_queries_metrics_that_exist() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    known = metric_names() | controller_names()
    used: set[str] = set()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        exprs = [t["expr"] for t in panel["targets"]]
        names = {n for e in exprs for n in METRIC.findall(e)}
        assert names, f"panel {panel['title']!r} queries no edgeloop metric"
        unknown = names - known
        assert not unknown, f"panel {panel['title']!r} queries metrics nothing exports: {sorted(unknown)}"
        used |= names
    # the dashboard shows both sides: the agents' serving and the controller's fleet
    assert {"edgeloop_agent_inference_requests_total", "edgeloop_agent_batch_executions_total"} <= used
    assert {"edgeloop_devices", "edgeloop_device_fps"} <= used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_the_checker_catches_a_made_up_metric() -> None:
    """The check above can fail: a metric no code exports is not in the known set."""
    assert "edgeloop_agent_made_up_total" not in metric_names() | controller_names()
    assert "edgeloop_device_fps" in controller_names() and "edgeloop_reports_total" in controller_names()
