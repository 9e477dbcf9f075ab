"""Domain errors of the agent. Library code raises these; protocol layers map them to status
codes in one place (``agent.server.STATUS_OF``), so model and backend code never see gRPC."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent reports on purpose."""


class InvalidInput(AgentError):
    """A request that does not match the model's input spec (name, dtype, shape, size)."""


class ModelNotFound(AgentError):
    """No model of that name (or version) is loaded."""


class ModelNotReady(AgentError):
    """The model exists but cannot answer yet (no active slot)."""


class BackendUnavailable(AgentError):
    """The backend (or the precision/device asked of it) cannot run on this host; says why."""


class BuildError(AgentError):
    """An engine could not be built from the ONNX model."""


class CalibrationError(AgentError):
    """INT8 calibration needs data it does not have, or the data cannot be read."""


class ArtifactError(AgentError):
    """An artifact that is missing, corrupt (sha256 mismatch) or inconsistent with its manifest."""


class HealthCheckFailed(AgentError):
    """A candidate model that loaded but did not pass its health check."""


class Refused(AgentError):
    """A request the agent's state does not allow now (unload the only model it serves)."""
