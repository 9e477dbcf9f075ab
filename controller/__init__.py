"""The fleet controller: registry, gRPC control plane, artifacts, rollouts, telemetry, REST API."""

__version__ = "0.1.0"
