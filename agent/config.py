"""The agent's settings: the one module that reads environment variables.

Every other agent module takes values as arguments; ``AgentSettings.from_env()`` is called by the
CLI (and by the fleet daemon) and passed down, so tests never need to patch the environment.
Names are those of docs/CONVENTIONS.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PREFIX = "edgeloop"


def _int_or_none(value: str | None, name: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {value!r}") from exc
    if number < 1:
        raise ValueError(f"{name} must be >= 1, got {number}")
    return number


@dataclass(frozen=True)
class AgentSettings:
    agent_dir: Path = field(default_factory=lambda: Path.home() / ".edgeloop" / "agent")
    threads: int | None = None  # EDGELOOP_AGENT_THREADS: CPU threads for engines
    hardware_class: str | None = None  # EDGELOOP_HARDWARE_CLASS: operator override
    mqtt_url: str | None = None  # EDGELOOP_MQTT_URL: unset = no telemetry
    telemetry_prefix: str = DEFAULT_PREFIX
    controller: str | None = None  # EDGELOOP_CONTROLLER host:port
    enrollment_token: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def cache_dir(self) -> Path:
        return self.agent_dir / "engines"

    @property
    def slots_dir(self) -> Path:
        return self.agent_dir / "slots"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AgentSettings:
        env = os.environ if environ is None else environ
        agent_dir = env.get("EDGELOOP_AGENT_DIR")
        tags = tuple(t.strip() for t in env.get("EDGELOOP_AGENT_TAGS", "").split(",") if t.strip())
        return cls(
            agent_dir=Path(agent_dir).expanduser() if agent_dir else Path.home() / ".edgeloop" / "agent",
            threads=_int_or_none(env.get("EDGELOOP_AGENT_THREADS"), "EDGELOOP_AGENT_THREADS"),
            hardware_class=env.get("EDGELOOP_HARDWARE_CLASS") or None,
            mqtt_url=env.get("EDGELOOP_MQTT_URL") or None,
            telemetry_prefix=env.get("EDGELOOP_TELEMETRY_PREFIX") or DEFAULT_PREFIX,
            controller=env.get("EDGELOOP_CONTROLLER") or None,
            enrollment_token=env.get("EDGELOOP_ENROLLMENT_TOKEN") or None,
            tags=tags,
        )
