"""MQTT telemetry in: the agents' state, metrics and events (docs/CONVENTIONS.md).

A paho-mqtt client subscribes to ``{prefix}/devices/+/state|metrics|events``. The retained state
topic (with the agents' last-will) is what says online/offline. Metrics feed Prometheus gauges
at once and per-device one-minute aggregates that are written to the DB in batches; events are
stored as they come. Messages are parsed on paho's thread and written by one flusher thread, so
a burst of telemetry never holds up the broker connection.

Several controllers share the telemetry with an MQTT shared subscription
(``$share/<group>/...``, ``share_group``): the broker gives each message to one of them. A
device's one-minute window is then filled by several processes, so each writes only what it
added since its last write, merged into the row under a row lock (``_write_window``): sample
counts add up, maxima take the larger, means are weighted by the samples.

Nothing sent at QoS 1 is lost while the controller is down or killed: the session is persistent
(a fixed client id, no clean start), so the broker keeps what arrives meanwhile, and a message
is acknowledged (manual PUBACK) only after the DB transaction that stores it has committed; one
not acknowledged is delivered again. An event keeps the time in its payload (``ts``), and one
delivered twice (acknowledged by the DB but not yet by the broker when the controller died) is
stored once.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select, update

from controller import crud
from controller.db import session_scope
from controller.metrics import Metrics
from controller.models import Device, DeviceEvent, TelemetryAggregate
from protos.redact import redact_url

log = logging.getLogger(__name__)
WINDOW_S = 60
LOOKUPS_PER_S = 20  # DB look-ups of ids not known yet, per second (forged ids are dropped)
OPEN_WINDOW_WRITE_S = 10  # the window still filling is written this often (upserted), not only when it closes


def _stream_fps(streams: object) -> float | None:
    """Frames/s of every source of every video pipeline in a metrics payload (``streams``, a list
    of pipeline stats); None when the device runs no pipeline. Malformed entries count as 0."""
    if not isinstance(streams, list) or not streams:
        return None
    total = 0.0
    for pipeline in streams[:64]:
        sources = pipeline.get("sources") if isinstance(pipeline, dict) else None
        for source in sources[:256] if isinstance(sources, list) else []:
            fps = _num(source.get("fps")) if isinstance(source, dict) else None
            total += fps if fps is not None and fps >= 0 else 0.0
    return total


@dataclass
class _Window:
    start: datetime
    samples: int = 0
    fps_sum: float = 0.0
    fps_n: int = 0
    cpu_sum: float = 0.0
    cpu_n: int = 0
    p99_max: float | None = None
    mem_max: int | None = None
    temp_max: float | None = None
    stream_sum: float = 0.0
    stream_n: int = 0
    requests: int = 0
    active_version: str = ""
    written: tuple[int, float, int, float, int, float, int] = (
        0,
        0.0,
        0,
        0.0,
        0,
        0.0,
        0,
    )  # sums already in the row

    def sums(self) -> tuple[int, float, int, float, int, float, int]:
        return (
            self.samples,
            self.fps_sum,
            self.fps_n,
            self.cpu_sum,
            self.cpu_n,
            self.stream_sum,
            self.stream_n,
        )


def _text(value: object, limit: int = 200) -> str:
    return str(value)[:limit] if value is not None else ""


def pipelines_view(reported: list) -> list[dict]:
    """What the API shows of a device's reported pipelines (agent.stream's ``stats()``): the
    fields the dashboard uses, typed and bounded, so a device cannot fill the controller's memory."""
    out = []
    for p in reported[:32]:
        if not isinstance(p, dict):
            continue
        sources: list[dict[str, Any]] = []
        total = 0.0
        for src in (p.get("sources") or [])[:64]:
            if not isinstance(src, dict):
                continue
            raw = src.get("latency_ms")
            lat: dict = raw if isinstance(raw, dict) else {}
            fps = _num(src.get("fps")) or 0.0
            total += fps
            sources.append({"source_id": _text(src.get("source_id"), 64), "state": _text(src.get("state"), 32),
                            "fps": fps, "dropped": int(_num(src.get("dropped")) or 0),
                            "reconnects": int(_num(src.get("reconnects")) or 0),
                            "latency_p99_ms": _num(lat.get("p99")), "last_error": _text(src.get("last_error"))})  # fmt: skip
        view = _text(p.get("view"), 300)
        out.append({"pipeline": _text(p.get("pipeline"), 64), "model_version": _text(p.get("model_version")),
                    "view": view if view.startswith(("http://", "https://")) else "",
                    "fps": round(total, 2), "sources": sources})  # fmt: skip
    return out


@dataclass
class TelemetryIngest:
    engine: Engine
    metrics: Metrics
    url: str
    prefix: str = "edgeloop"
    streams: dict[str, dict] | None = None  # latest video pipeline stats by device (the API reads it)
    client_id: str = "edgeloop-controller"  # fixed: the broker keeps this session's messages
    share_group: str = ""  # MQTT shared subscription group of the controllers ("" = all messages here)

    def __post_init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._windows: dict[str, _Window] = {}
        self._classes: dict[str, str] = {}
        # device -> (its hardware class, its fps / cpu / p99 gauge children): ``labels()`` once
        # per device, not three times a message (the largest cost of ingest at 10,000 devices)
        self._gauges: dict[str, tuple[str, Any, Any, Any]] = {}
        self._kind_counters: dict[str, Any] = {}
        self._known: set[str] = set()  # enrolled, not revoked devices: telemetry of others is dropped
        self._lookup_window, self._lookups = 0.0, 0
        self._known_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.dropped = 0  # messages refused (unknown id, id not the topic's, unparsable)
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.connected = threading.Event()
        parsed = urlparse(self.url)
        if parsed.scheme not in ("mqtt", "tcp", "mqtts", "ssl"):
            raise ValueError(f"unsupported MQTT URL {redact_url(self.url)!r}: use mqtt://host:port")
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 1883
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False
        )
        self._client.manual_ack_set(True)  # PUBACK after the DB commit (``_flush``)
        if parsed.username:
            self._client.username_pw_set(parsed.username, parsed.password)
        if parsed.scheme in ("mqtts", "ssl"):
            self._client.tls_set()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)

    # -- lifecycle
    def start(self) -> TelemetryIngest:
        log.info("telemetry from %s", redact_url(self.url))
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()
        self._flusher = threading.Thread(target=self._flush_loop, name="telemetry-flush", daemon=True)
        self._flusher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._client.disconnect()
        self._client.loop_stop()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        self._flush()

    # -- paho callbacks (paho's thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.warning("MQTT connect to %s refused: %s", redact_url(self.url), reason_code)
            return
        for kind, qos in (("state", 1), ("metrics", 0), ("events", 1)):
            topic = f"{self.prefix}/devices/+/{kind}"
            client.subscribe(f"$share/{self.share_group}/{topic}" if self.share_group else topic, qos=qos)
        self.connected.set()
        log.info("telemetry subscribed on %s under %s/", redact_url(self.url), self.prefix)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); paho reconnects", reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        parts = msg.topic.split("/")
        if len(parts) < 3 or parts[-3] != "devices":
            self._client.ack(msg.mid, msg.qos)
            return
        device_id, kind = parts[-2], parts[-1]
        if not self.is_known(device_id):
            self.dropped += 1
            log.debug("telemetry for unknown or revoked device %.64r dropped", device_id)
            self._client.ack(msg.mid, msg.qos)
            return
        try:
            payload = json.loads(msg.payload.decode("utf-8")) if msg.payload else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            self.dropped += 1
            log.warning("unparsable telemetry on %s", msg.topic)
            self._client.ack(msg.mid, msg.qos)  # never storable: do not have it sent again
            return
        if not isinstance(payload, dict) or payload.get("device_id", device_id) != device_id:
            # a payload that names another device than its topic is forged (or broken): neither counts
            self.dropped += 1
            self._client.ack(msg.mid, msg.qos)
            return
        counter = self._kind_counters.get(kind)
        if counter is None:
            counter = self._kind_counters.setdefault(kind, self.metrics.telemetry_messages.labels(kind))
        counter.inc()
        if kind == "state" and payload.get("hardware_class"):
            self._classes[device_id] = str(payload["hardware_class"])
        if kind == "metrics":
            self._on_metrics(device_id, payload)
            self._client.ack(msg.mid, msg.qos)
        elif kind in ("state", "events"):
            self._queue.put((kind, device_id, payload, (msg.mid, msg.qos)))
        else:
            self._client.ack(msg.mid, msg.qos)

    def is_known(self, device_id: str) -> bool:
        """Whether ``device_id`` is an enrolled, not revoked device. A miss is looked up in the
        DB (a device enrolled a moment ago is known at its first message), but at most
        ``LOOKUPS_PER_S`` misses a second are: a flood of forged ids costs a bounded load."""
        now = time.monotonic()
        with self._known_lock:
            if device_id in self._known:
                return True
            if now - self._lookup_window >= 1.0:
                self._lookup_window, self._lookups = now, 0
            if self._lookups >= LOOKUPS_PER_S or len(device_id) > 64:
                return False
            self._lookups += 1
        with session_scope(self.engine) as session:
            device = session.get(Device, device_id)
            known = device is not None and not device.revoked
        if known:
            with self._known_lock:
                self._known.add(device_id)
        return known

    def refresh_known(self) -> None:
        with session_scope(self.engine) as session:
            ids = set(session.exec(select(Device.id).where(col(Device.revoked).is_(False))).all())
        with self._known_lock:
            self._known = ids

    def _on_metrics(self, device_id: str, m: dict) -> None:
        hw = self._classes.get(device_id, "")
        gauges = self._gauges.get(device_id)
        if gauges is None or gauges[0] != hw:
            gauges = self._gauges[device_id] = (
                hw,
                self.metrics.device_fps.labels(device_id, hw),
                self.metrics.device_cpu.labels(device_id, hw),
                self.metrics.device_latency_p99.labels(device_id, hw),
            )
        now = datetime.now(timezone.utc)
        if self.streams is not None and isinstance(m.get("streams"), list):
            self.streams[device_id] = {"ts": now.isoformat(), "pipelines": pipelines_view(m["streams"])}
        start = now.replace(second=0, microsecond=0)  # one-minute windows (WINDOW_S)
        w = self._windows.get(device_id)
        if w is None or w.start != start:
            if w is not None:
                self._queue.put(("aggregate", device_id, w, None))
            w = self._windows[device_id] = _Window(start=start)
        w.samples += 1
        fps, cpu = _num(m.get("fps")), _num(m.get("cpu_percent"))
        raw_lat = m.get("latency_ms")
        lat = raw_lat if isinstance(raw_lat, dict) else {}
        p99, mem = _num(lat.get("p99")), _num(m.get("memory_bytes"))
        if fps is not None:
            w.fps_sum, w.fps_n = w.fps_sum + fps, w.fps_n + 1
            gauges[1].set(fps)
        if cpu is not None:
            w.cpu_sum, w.cpu_n = w.cpu_sum + cpu, w.cpu_n + 1
            gauges[2].set(cpu)
        if p99 is not None:
            w.p99_max = p99 if w.p99_max is None else max(w.p99_max, p99)
            gauges[3].set(p99)
        if mem is not None:
            w.mem_max = int(mem) if w.mem_max is None else max(w.mem_max, int(mem))
        temp = _num(m.get("temperature_c"))
        if temp is not None:
            w.temp_max = temp if w.temp_max is None else max(w.temp_max, temp)
        stream_fps = _stream_fps(m.get("streams"))
        if stream_fps is not None:
            w.stream_sum, w.stream_n = w.stream_sum + stream_fps, w.stream_n + 1
        w.requests = max(w.requests, int(_num(m.get("requests")) or 0))
        w.active_version = str(m.get("active_version") or w.active_version)

    # -- writer (flusher thread)
    def _flush_loop(self) -> None:
        last_classes = last_open = 0.0
        while not self._stop.wait(0.25):
            try:
                if time.monotonic() - last_open > OPEN_WINDOW_WRITE_S:  # the charts' newest point
                    for device_id, w in list(self._windows.items()):
                        self._queue.put(("aggregate", device_id, w, None))
                    last_open = time.monotonic()
                if time.monotonic() - last_classes > 10:
                    with session_scope(self.engine) as session:
                        for device_id, hw in session.exec(select(Device.id, Device.hardware_class)).all():
                            self._classes.setdefault(device_id, hw)
                    self.refresh_known()  # a revoked device's telemetry stops counting
                    last_classes = time.monotonic()
                self._flush()
            except Exception:
                log.exception("telemetry flush failed")

    def flush_windows(self) -> None:
        """Write the open aggregation windows now (tests, shutdown)."""
        for device_id, w in list(self._windows.items()):
            self._queue.put(("aggregate", device_id, w, None))
        self._flush()

    def _flush(self) -> None:
        with self._flush_lock:  # one writer at a time: a window's deltas are counted once
            self._flush_locked()

    def _flush_locked(self) -> None:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not items:
            return
        windows: dict[tuple[str, datetime], _Window] = {}  # a window queued twice is written once
        written: list[tuple[_Window, tuple[int, float, int, float, int, float, int]]] = []
        with session_scope(self.engine) as session:
            for kind, device_id, payload, _ in items:
                if kind == "state":
                    self._write_state(session, device_id, payload)
                elif kind == "events":
                    self._write_event(session, device_id, payload)
                elif kind == "aggregate":
                    windows[(device_id, payload.start)] = payload
            for (device_id, _), w in windows.items():
                written.append((w, self._write_window(session, device_id, w)))
            self._refresh_device_gauge(session)
        for w, sums in written:  # committed: that much of each window is in its row now
            w.written = sums
        for *_, ack in items:  # committed: now the broker may forget them
            if ack is not None:
                self._client.ack(*ack)

    def _write_event(self, session: Session, device_id: str, payload: dict) -> None:
        ts = _event_time(payload.get("ts"))
        event = str(payload.get("event", ""))[:50]
        duplicate = session.exec(
            select(DeviceEvent.id)
            .where(DeviceEvent.device_id == device_id)
            .where(DeviceEvent.event == event)
            .where(DeviceEvent.ts == ts)
        ).first()
        if duplicate is not None:  # delivered again after a crash between commit and PUBACK
            return
        details = payload.get("details")
        session.add(DeviceEvent(device_id=device_id, event=event, ts=ts,
                                model_version=str(payload.get("model_version") or "")[:200],
                                details=details if isinstance(details, dict) else {}))  # fmt: skip

    def _write_state(self, session: Session, device_id: str, payload: dict) -> None:
        state = str(payload.get("state", "")).lower()
        if state not in ("online", "offline"):
            return
        values: dict = {"telemetry_state": state}
        if state == "online":
            values["last_seen"] = datetime.now(timezone.utc)
        session.exec(update(Device).where(col(Device.id) == device_id).values(**values))
        log.info("device %s is %s (telemetry)", device_id, state)

    def _write_window(
        self, session: Session, device_id: str, w: _Window
    ) -> tuple[int, float, int, float, int, float, int]:
        """Merge what this process added to the window since its last write into the row
        (locked: another controller may be merging its share of the same window). Returns the
        sums now written, recorded on the window once the transaction has committed."""
        sums = w.sums()
        was = w.written
        d_samples, d_fps_n, d_cpu_n, d_stream_n = (
            sums[0] - was[0],
            sums[2] - was[2],
            sums[4] - was[4],
            sums[6] - was[6],
        )
        d_fps, d_cpu, d_stream = sums[1] - was[1], sums[3] - was[3], sums[5] - was[5]
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        session.execute(
            insert(TelemetryAggregate)
            .values(device_id=device_id, window_start=w.start, samples=0, requests=0, active_version="")
            .on_conflict_do_nothing(index_elements=["device_id", "window_start"])
        )
        row = session.exec(
            select(TelemetryAggregate)
            .where(TelemetryAggregate.device_id == device_id)
            .where(TelemetryAggregate.window_start == w.start)
            .with_for_update()
        ).one()
        before = row.samples
        row.samples = before + d_samples
        row.fps_mean = _merged_mean(row.fps_mean, before, d_fps, d_fps_n)
        row.cpu_percent_mean = _merged_mean(row.cpu_percent_mean, before, d_cpu, d_cpu_n)
        row.stream_fps_mean = _merged_mean(row.stream_fps_mean, before, d_stream, d_stream_n)
        row.latency_p99_ms_max = _max(row.latency_p99_ms_max, w.p99_max)
        row.memory_bytes_max = _max(row.memory_bytes_max, w.mem_max)
        row.temperature_c_max = _max(row.temperature_c_max, w.temp_max)
        row.requests = max(row.requests or 0, w.requests)
        row.active_version = w.active_version or row.active_version
        session.add(row)
        return sums

    def _refresh_device_gauge(self, session: Session) -> None:
        online, total = crud.count_devices_online(session=session)
        self.metrics.devices.labels("online").set(online)
        self.metrics.devices.labels("offline").set(total - online)


def _merged_mean(mean: float | None, weight: int, added_sum: float, added_n: int) -> float | None:
    """The row's mean (over ``weight`` samples) with ``added_n`` new values summing to
    ``added_sum``. Exact when every sample carried the value (the agents' metrics always do)."""
    if not added_n:
        return mean
    if mean is None or weight <= 0:
        return added_sum / added_n
    return (mean * weight + added_sum) / (weight + added_n)


def _max(a: float | int | None, b: float | int | None):  # noqa: ANN202 - keeps int as int
    return b if a is None else a if b is None else max(a, b)


def _event_time(ts: object) -> datetime:
    """The event's own time (``ts``, epoch seconds, from the agent); arrival time when it has none."""
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and 0 < ts < 1e11:
        return datetime.fromtimestamp(ts, timezone.utc)
    return datetime.now(timezone.utc)


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
