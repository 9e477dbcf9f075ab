"""The agent's ``/metrics`` page in the Prometheus text format (docs/serving.md lists each metric).

A view, not a second set of counters: every scrape reads the dataplane's model statistics (the
numbers the statistics extension reports), the model slots and the host's gauges, the way
Triton's ``nv_inference_*`` counters are cumulative counts and durations. Rates and averages
are the dashboard's work (``rate(..._duration_seconds_total) / rate(..._requests_total)``).
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agent.dataplane import DataPlane
from agent.telemetry import HostMetrics

PREFIX = "edgeloop_agent"
# host gauge -> HostMetrics key
HOST_GAUGES = {
    "cpu_percent": ("cpu_percent", "CPU use of the host, percent"),
    "memory_bytes": ("memory_bytes", "resident memory of the agent process, bytes"),
    "gpu_util_percent": ("gpu_util_percent", "GPU utilisation, percent (NVML or jetson-stats)"),
    "temperature_celsius": ("temperature_c", "hottest sensor of the host, degrees Celsius"),
    "power_watts": ("power_w", "board power, watts (NVML or jetson-stats)"),
}
_host: HostMetrics | None = None
_host_lock = threading.Lock()


def _host_metrics() -> HostMetrics:
    global _host
    with _host_lock:
        if _host is None:
            _host = HostMetrics()
        return _host


class _Collector:
    def __init__(self, dataplane: DataPlane, host: HostMetrics | None) -> None:
        self.dataplane, self.host = dataplane, host

    def collect(self):
        labels = ["model", "version"]
        requests = CounterMetricFamily(f"{PREFIX}_inference_requests", "inference requests answered, by outcome",
                                       labels=[*labels, "outcome"])  # fmt: skip
        durations = CounterMetricFamily(f"{PREFIX}_inference_request_duration_seconds",
                                        "time spent answering requests (dataplane, end to end), by outcome",
                                        labels=[*labels, "outcome"])  # fmt: skip
        queue = CounterMetricFamily(f"{PREFIX}_inference_queue_duration_seconds",
                                    "time requests waited for dynamic batching", labels=labels)  # fmt: skip
        compute = CounterMetricFamily(f"{PREFIX}_inference_compute_duration_seconds",
                                      "time of the engine phases (input assembly, infer, output split)",
                                      labels=[*labels, "phase"])  # fmt: skip
        images = CounterMetricFamily(f"{PREFIX}_inference_images", "batch rows answered", labels=labels)
        executions = CounterMetricFamily(f"{PREFIX}_inference_executions", "engine runs", labels=labels)
        batches = CounterMetricFamily(f"{PREFIX}_batch_executions", "engine runs by executed batch size",
                                      labels=[*labels, "batch_size"])  # fmt: skip
        for m in self.dataplane.model_stats.snapshot():
            key = [m.name, m.version]
            requests.add_metric([*key, "success"], m.success.count)
            requests.add_metric([*key, "failure"], m.fail.count)
            durations.add_metric([*key, "success"], m.success.ns / 1e9)
            durations.add_metric([*key, "failure"], m.fail.ns / 1e9)
            queue.add_metric(key, m.queue.ns / 1e9)
            for phase in ("input", "infer", "output"):
                compute.add_metric([*key, phase], getattr(m, f"compute_{phase}").ns / 1e9)
            images.add_metric(key, m.inference_count)
            executions.add_metric(key, m.execution_count)
            for size, b in sorted(m.batches.items()):
                batches.add_metric([*key, str(size)], b.compute_infer.count)
        yield from (requests, durations, queue, compute, images, executions, batches)

        ready = GaugeMetricFamily(f"{PREFIX}_ready", "1 when a model is active and answers")
        ready.add_metric([], 1.0 if self.dataplane.ready() else 0.0)
        yield ready
        active = self.dataplane.slots.active
        info = GaugeMetricFamily(f"{PREFIX}_model_active_info", "the active model and its engine",
                                 labels=[*labels, "backend", "precision", "device"])  # fmt: skip
        memory = GaugeMetricFamily(f"{PREFIX}_engine_memory_bytes", "memory the active engine holds",
                                   labels=labels)  # fmt: skip
        if active is not None:
            info.add_metric([active.name, active.version, active.backend, active.precision,
                             active.built.key.device], 1.0)  # fmt: skip
            try:
                memory.add_metric([active.name, active.version], float(active.engine.memory_bytes() or 0))
            except Exception:  # an engine that cannot say: no sample rather than a failed scrape
                pass
        yield info
        yield memory
        if self.host is not None:
            values = self.host.collect()
            for name, (field, doc) in HOST_GAUGES.items():
                gauge = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
                if values.get(field) is not None:
                    gauge.add_metric([], float(values[field]))
                yield gauge


def metric_names() -> set[str]:
    """Every sample name the page can hold (the Grafana dashboard test checks against these)."""
    counters = ["inference_requests", "inference_request_duration_seconds", "inference_queue_duration_seconds",
                "inference_compute_duration_seconds", "inference_images", "inference_executions",
                "batch_executions"]  # fmt: skip
    names = {f"{PREFIX}_{c}_total" for c in counters}
    names |= {f"{PREFIX}_{g}" for g in ("ready", "model_active_info", "engine_memory_bytes", *HOST_GAUGES)}
    return names


def render_metrics(dataplane: DataPlane, host: bool = True) -> bytes:
    """The page; ``host=False`` leaves out the host gauges (tests that compare counts)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(dataplane, _host_metrics() if host else None))
    return generate_latest(registry)
