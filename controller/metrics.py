"""Prometheus metrics of one controller, on its own registry (two controllers in one process,
as in the restart tests, do not collide). Served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class _WithoutDeviceSeries:
    """A view of a registry without the families labelled by device id (public /metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        for family in self.registry.collect():
            if any("device_id" in sample.labels for sample in family.samples):
                continue
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.streams = Gauge("edgeloop_control_streams", "open agent control streams", registry=r)
        self.bytes_served = Counter(
            "edgeloop_artifact_bytes_served", "artifact bytes sent to agents", registry=r
        )
        self.reports = Counter("edgeloop_reports", "measured reports received", registry=r)
        self.devices = Gauge("edgeloop_devices", "enrolled devices by state", ["state"], registry=r)
        self.telemetry_messages = Counter(
            "edgeloop_telemetry_messages", "MQTT telemetry messages", ["kind"], registry=r
        )
        self.device_fps = Gauge(
            "edgeloop_device_fps", "last reported inference fps", ["device_id", "hardware_class"], registry=r
        )
        self.device_latency_p99 = Gauge(
            "edgeloop_device_latency_p99_ms",
            "last reported p99 latency",
            ["device_id", "hardware_class"],
            registry=r,
        )
        self.device_cpu = Gauge(
            "edgeloop_device_cpu_percent",
            "last reported CPU use",
            ["device_id", "hardware_class"],
            registry=r,
        )
        self.rollout_deployments = Gauge(
            "edgeloop_rollout_deployments",
            "deployments of active rollouts",
            ["rollout_id", "state"],
            registry=r,
        )

    def public_view(self) -> _WithoutDeviceSeries:
        """What /metrics shows without the API token: no series that names a device."""
        return _WithoutDeviceSeries(self.registry)
