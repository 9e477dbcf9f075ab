"""Events through the agent's telemetry client to a real broker (Mosquitto, or the embedded
amqtt when none is installed), on the device's topic tree, one per frame of a file source."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt

from agent.telemetry import Telemetry


def test_events_reach_the_broker_under_the_device_topic(make_pipeline, clip, detector, mqtt_broker) -> None:
    video, gt = clip
    got: list[dict] = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, *_: c.subscribe("edgeloop/devices/+/streams/#", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda _c, _u, msg: got.append({"topic": msg.topic} | json.loads(msg.payload))
    sub.connect(mqtt_broker.host, mqtt_broker.port)
    sub.loop_start()
    telemetry = Telemetry(mqtt_broker.url, "cam-box-1").start(wait_s=10)
    try:
        assert subscribed.wait(10) and telemetry.connected
        p = make_pipeline("name=belt", "sources.0.id=cam", f"sources.0.uri={video}", f"model.path={detector}",
                          "sinks.mqtt.enabled=true", telemetry=lambda: telemetry)  # fmt: skip
        assert p.wait(60)
        deadline = time.monotonic() + 20
        while len(got) < len(gt["frames"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        telemetry.stop()
        sub.loop_stop()
        sub.disconnect()
    assert sorted(e["frame"] for e in got) == list(range(len(gt["frames"])))
    assert {e["topic"] for e in got} == {"edgeloop/devices/cam-box-1/streams/belt/events"}
    e = next(e for e in got if e["objects"])
    assert e["device_id"] == "cam-box-1" and e["source_id"] == "cam" and e["schema_version"] == 1
    assert set(e["objects"][0]) == {"track_id", "label", "class_id", "score", "box"}
