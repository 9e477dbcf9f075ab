"""The video pipelines' numbers on the agent's ``/metrics`` page (Prometheus text format), beside
the inference metrics of ``agent.metrics``: a view of ``StreamManager.stats()``, per pipeline
and source. Counters are cumulative (``rate()`` is the dashboard's work); FPS and latency
percentiles are gauges over the pipeline's own windows (5 s, the last 512 frames)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "edgeloop_agent_stream"
COUNTERS = {"decoded": "frames decoded", "processed": "frames published", "dropped": "live frames dropped",
            "reconnects": "live source reconnects", "errors": "source errors"}  # fmt: skip


class _Collector:
    def __init__(self, streams) -> None:
        self.streams = streams

    def collect(self):
        labels = ["pipeline", "source"]
        counters = {k: CounterMetricFamily(f"{PREFIX}_{k}_frames" if k in ("decoded", "processed", "dropped")
                                           else f"{PREFIX}_{k}", doc, labels=labels)
                    for k, doc in COUNTERS.items()}  # fmt: skip
        fps = GaugeMetricFamily(f"{PREFIX}_fps", "frames published per second (last 5 s)", labels=labels)
        latency = GaugeMetricFamily(f"{PREFIX}_latency_seconds", "capture to event, last 512 frames",
                                    labels=[*labels, "quantile"])  # fmt: skip
        up = GaugeMetricFamily(f"{PREFIX}_source_running", "1 while the source gives frames", labels=labels)
        for p in self.streams.stats():
            for s in p["sources"]:
                key = [p["pipeline"], s["source_id"]]
                for k, family in counters.items():
                    family.add_metric(key, float(s[k]))
                fps.add_metric(key, float(s["fps"]))
                latency.add_metric([*key, "0.5"], s["latency_ms"]["p50"] / 1000)
                latency.add_metric([*key, "0.99"], s["latency_ms"]["p99"] / 1000)
                up.add_metric(key, 1.0 if s["state"] == "running" else 0.0)
        yield from counters.values()
        yield from (fps, latency, up)


def render_stream_metrics(streams) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(streams))
    return generate_latest(registry)
