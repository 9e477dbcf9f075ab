"""Telemetry over MQTT (paho-mqtt 2.x): state, metrics and events as JSON (docs/CONVENTIONS.md).

Topics under a configurable prefix (default ``edgeloop``):
- ``{prefix}/devices/{device_id}/state``   retained, QoS 1; ``online`` on every (re)connect,
  ``offline`` as the last will (abrupt loss) and on a clean stop;
- ``{prefix}/devices/{device_id}/metrics`` QoS 0, periodic;
- ``{prefix}/devices/{device_id}/events``  QoS 1: built, calibrated, switched, rolled_back,
  deploy_failed, benchmarked;
- ``{prefix}/devices/{device_id}/streams/{pipeline}/events`` QoS 1: video pipeline frame events
  (``stream_event``; schema in docs/stream.md).
Every payload carries ``schema_version``, ``device_id`` and ``ts`` (when it happened). With a
``spool_dir`` (the agent always gives one), QoS 1 messages go through ``agent.spool.Spool``: on
disk until the broker acknowledges them, so neither a broker outage nor an agent restart loses
them (bounded; the oldest is dropped first and counted). Without one, they wait in paho's
memory queue (bounded by ``queue_limit``). Metrics published while away are dropped (the next
period brings fresh ones).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import agent
from agent.spool import Spool

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
EVENTS = ("built", "calibrated", "switched", "rolled_back", "deploy_failed", "benchmarked")


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://[user:password@]host:port`` (``mqtts://`` for TLS) -> (host, port, tls)."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"unsupported MQTT URL scheme {parsed.scheme!r} in {url!r}")
    tls = parsed.scheme in ("mqtts", "ssl")
    return parsed.hostname or "localhost", parsed.port or (8883 if tls else 1883), tls


def mqtt_credentials(url: str) -> tuple[str, str] | None:
    """The ``user:password`` of an MQTT URL (percent-decoded), or None when it has none."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if not parsed.username:
        return None
    return unquote(parsed.username), unquote(parsed.password or "")


def topic(prefix: str, device_id: str, kind: str) -> str:
    return f"{prefix}/devices/{device_id}/{kind}"


# ---------------------------------------------------------------- host metrics
class HostMetrics:
    """CPU, memory, and where the host exposes them GPU utilisation, temperature and power.
    Sources are probed lazily once: NVML (dGPU), jetson-stats (Jetson), thermal zones."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        psutil.cpu_percent(None)  # prime the counter
        self._nvml: tuple[Any, Any] | None = None
        self._jtop = None
        self._probed = False

    def _probe(self) -> None:
        self._probed = True
        try:
            import pynvml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > 0:
                self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception:
            self._nvml = None
        if Path("/etc/nv_tegra_release").exists():
            try:
                from jtop import jtop  # jetson-stats, only on Jetson

                handle = jtop()
                handle.start()
                self._jtop = handle
            except Exception as exc:
                log.info("jetson-stats unavailable (%s): temperatures from thermal zones", exc)

    def _temperature(self) -> float | None:
        try:
            temps = self._psutil.sensors_temperatures()
        except Exception:
            temps = {}
        values = [t.current for entries in temps.values() for t in entries if t.current]
        if not values:
            for zone in Path("/sys/class/thermal").glob("thermal_zone*/temp"):
                try:
                    values.append(int(zone.read_text().strip()) / 1000)
                except (OSError, ValueError):
                    continue
        return max(values) if values else None

    def collect(self) -> dict:
        if not self._probed:
            self._probe()
        out = {
            "cpu_percent": self._psutil.cpu_percent(None),
            "memory_bytes": int(self._process.memory_info().rss),
            "gpu_util_percent": None,
            "temperature_c": None,
            "power_w": None,
        }
        if self._jtop is not None:
            try:
                stats = self._jtop.stats
                out["gpu_util_percent"] = stats.get("GPU")
                temps = [v for k, v in stats.items() if k.startswith("Temp") and isinstance(v, int | float)]
                out["temperature_c"] = max(temps) if temps else None
                power = stats.get("Power TOT")
                out["power_w"] = power / 1000 if isinstance(power, int | float) else None
            except Exception as exc:
                log.debug("jtop read failed: %s", exc)
        elif self._nvml is not None:
            pynvml, handle = self._nvml
            try:
                out["gpu_util_percent"] = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                out["temperature_c"] = float(
                    pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
                )
                out["power_w"] = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000
            except Exception as exc:
                log.debug("NVML read failed: %s", exc)
        if out["temperature_c"] is None:
            out["temperature_c"] = self._temperature()
        return out

    def close(self) -> None:
        if self._jtop is not None:
            try:
                self._jtop.close()
            except Exception:
                pass


# ---------------------------------------------------------------- publisher
class Telemetry:
    def __init__(
        self,
        url: str,
        device_id: str,
        *,
        prefix: str = "edgeloop",
        hardware_class: str = "",
        queue_limit: int = 1000,
        keepalive_s: int = 10,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        client_id: str | None = None,
        spool_dir: str | Path | None = None,
        spool_limit: int = 10_000,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.host, self.port, tls = parse_mqtt_url(url)
        self.device_id = device_id
        self.prefix = prefix.rstrip("/")
        self.hardware_class = hardware_class
        self.keepalive_s = keepalive_s
        self._dropped = 0
        self.spool = Spool(spool_dir, max_messages=spool_limit) if spool_dir is not None else None
        self._in_flight: dict[int, int] = {}  # paho message id -> spool seq (paho resends these itself)
        self._acked_early: dict[int, float] = {}  # PUBACKs that came before their mid was recorded
        # _send_lock orders our sends (spool, publish, record); _map_lock guards the two dicts
        # and is never held while calling paho: paho calls on_publish holding its own message
        # lock, which publish() also takes (holding one lock around both would deadlock)
        self._send_lock = threading.RLock()
        self._map_lock = threading.Lock()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._metrics_thread: threading.Thread | None = None
        self._mqtt = mqtt
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgeloop-agent-{device_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if tls:
            self.client.tls_set()
        credentials = mqtt_credentials(url)
        if credentials is not None:  # a broker with password auth (deploy/'s Mosquitto)
            self.client.username_pw_set(*credentials)
        self.client.max_queued_messages_set(queue_limit)
        self.client.reconnect_delay_set(
            min_delay=max(1, int(reconnect_min_s)), max_delay=int(reconnect_max_s)
        )
        self.client.will_set(self.state_topic, json.dumps(self._state("offline")), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    # -- topics and payloads
    @property
    def state_topic(self) -> str:
        return topic(self.prefix, self.device_id, "state")

    @property
    def metrics_topic(self) -> str:
        return topic(self.prefix, self.device_id, "metrics")

    @property
    def events_topic(self) -> str:
        return topic(self.prefix, self.device_id, "events")

    def _base(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "device_id": self.device_id, "ts": time.time()}

    def _state(self, state: str) -> dict:
        payload = self._base() | {"state": state}
        if state == "online":
            payload |= {"agent_version": agent.__version__, "hardware_class": self.hardware_class}
        return payload

    # -- connection
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker refused the connection: %s", reason_code)
            return
        self._connected.set()
        client.publish(self.state_topic, json.dumps(self._state("online")), qos=1, retain=True)
        log.info("telemetry connected to %s:%d", self.host, self.port)
        self._send_spooled()

    def _send_spooled(self) -> None:
        """Hand the broker what waits on disk and is not already with paho, oldest first."""
        if self.spool is None:
            return
        with self._send_lock:
            with self._map_lock:
                handed = set(self._in_flight.values())
            waiting = [item for item in self.spool.pending() if item[0] not in handed]
            for seq, topic_name, payload in waiting:
                self._record(self.client.publish(topic_name, payload, qos=1).mid, seq)
        if waiting:
            log.info("telemetry: sent %d spooled messages", len(waiting))

    def _record(self, mid: int, seq: int) -> None:
        """``seq`` went out as paho message ``mid``: forget it at its PUBACK (maybe already in)."""
        with self._map_lock:
            early = self._acked_early.pop(mid, None) is not None
            if not early:
                self._in_flight[mid] = seq
        if early and self.spool is not None:
            self.spool.ack(seq)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if self.spool is None:
            return
        with self._map_lock:
            seq = self._in_flight.pop(mid, None)
            if seq is None:  # not recorded yet (or not a spooled message): remember it a while
                now = time.monotonic()
                self._acked_early[mid] = now
                if len(self._acked_early) > 1000:
                    self._acked_early = {m: t for m, t in self._acked_early.items() if now - t < 60}
        if seq is not None:
            self.spool.ack(seq)

    @property
    def dropped(self) -> int:
        """QoS 1 messages dropped because the spool (or paho's queue) was full."""
        return self._dropped + (self.spool.dropped if self.spool is not None else 0)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning(
                "telemetry lost the broker (%s); queueing QoS 1 messages until it is back", reason_code
            )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, wait_s: float = 0.0) -> Telemetry:
        """Connect in the background (the broker may be down now: we keep retrying)."""
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self.client.loop_start()
        if wait_s:
            self._connected.wait(wait_s)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Clean stop: retained ``offline`` state (the will is not sent on a clean disconnect)."""
        self._stop.set()
        if self._metrics_thread:
            self._metrics_thread.join(timeout=timeout_s)
        if self.connected:
            info = self.client.publish(
                self.state_topic, json.dumps(self._state("offline")), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=timeout_s)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()

    # -- publishing
    def _publish(self, topic_name: str, payload: dict, qos: int, retain: bool = False) -> bool:
        text = json.dumps(payload, default=str)
        if qos == 1 and not retain and self.spool is not None:
            with self._send_lock:
                seq = self.spool.put(topic_name, text)  # on disk before anything else
                if self.connected:
                    self._record(self.client.publish(topic_name, text, qos=1).mid, seq)
            return True  # else sent from the spool on the next connect
        info = self.client.publish(topic_name, text, qos=qos, retain=retain)
        if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
            self._dropped += 1
            log.warning(
                "telemetry queue full: dropped a message for %s (%d dropped)", topic_name, self.dropped
            )
            return False
        return True

    def event(self, event: str, model_version: str = "", details: dict | None = None) -> bool:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; one of {EVENTS}")
        payload = self._base() | {"event": event, "model_version": model_version, "details": details or {}}
        return self._publish(self.events_topic, payload, qos=1)

    def stream_event(self, pipeline: str, payload: dict) -> bool:
        """A video pipeline's frame event (docs/stream.md), QoS 1 on
        ``{prefix}/devices/{device_id}/streams/{pipeline}/events``: queued while the broker is away."""
        return self._publish(topic(self.prefix, self.device_id, f"streams/{pipeline}/events"),
                             payload | {"device_id": self.device_id}, qos=1)  # fmt: skip

    def metrics(self, values: dict) -> bool:
        if not self.connected:
            return False  # periodic: the next sample replaces it
        return self._publish(
            self.metrics_topic, self._base() | values | {"telemetry_dropped": self.dropped}, qos=0
        )

    def start_metrics(self, collect: Callable[[], dict], interval_s: float = 10.0) -> None:
        """Publish ``collect()`` every ``interval_s`` seconds in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.metrics(collect())
                except Exception:
                    log.exception("collecting metrics failed")

        self._metrics_thread = threading.Thread(target=loop, name="telemetry-metrics", daemon=True)
        self._metrics_thread.start()


def metrics_collector(slots, stats, host: HostMetrics | None = None) -> Callable[[], dict]:
    """The metrics payload of CONVENTIONS.md from the model slots, request stats and host."""
    host = host or HostMetrics()

    def collect() -> dict:
        snap = stats.snapshot()
        active = slots.active
        return {
            "active_version": active.version if active else None,
            "requests": snap.requests,
            "failed_requests": snap.failed,
            "fps": round(snap.fps, 3),
            "latency_ms": snap.latency_ms,
        } | host.collect()

    return collect
