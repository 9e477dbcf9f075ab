"""What every part of a running controller shares, in one typed object.

The REST routes, the gRPC servicer, the background workers, the closed loop and the in-process
API all receive a ``ControllerContext``; none of them reaches for the lifecycle
(``controller/runtime.py``) that built it. So the parts depend on this module and on
``controller/services``, never on each other, and there is no import cycle to break.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from controller.broker_auth import BrokerAccounts
from controller.core.config import Settings
from controller.metrics import Metrics
from controller.services.ca import ControllerCA
from controller.services.fleet import TokenCache
from controller.services.hub import SessionHub
from controller.services.signing import Signer
from controller.services.storage import ArtifactStore


@dataclass(frozen=True)
class ControllerContext:
    """The controller's shared state once its database, key and broker are up.

    ``mqtt_url`` is the broker telemetry uses ("" when telemetry is off); agents are told it at
    Register (without its credentials). ``store`` is where agents may fetch artifact bytes by
    URL besides gRPC (``controller/services/storage.py``; None = gRPC only). ``wakeup`` is set by whoever changed something the
    rollout engine must look at (a status, a report, a new or paused rollout)."""

    settings: Settings
    engine: Engine
    signer: Signer
    metrics: Metrics
    hub: SessionHub = field(default_factory=SessionHub)
    tokens: TokenCache = field(default_factory=TokenCache)
    mqtt_url: str = ""
    ca: ControllerCA | None = None  # None = --insecure (plaintext gRPC, metadata tokens)
    broker_accounts: BrokerAccounts | None = None  # the started broker's per-device accounts
    store: ArtifactStore | None = None
    wakeup: threading.Event = field(default_factory=threading.Event)
    # the video pipelines each device last reported in its telemetry metrics (docs/stream.md), by id
    streams: dict[str, dict] = field(default_factory=dict)

    def wake(self) -> None:
        """Something changed (a status, a report, an operator action): run the rollout engine now."""
        self.wakeup.set()
