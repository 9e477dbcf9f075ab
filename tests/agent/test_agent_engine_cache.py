"""Engine cache: hit, miss, rebuild of a corrupt entry, new key on a new runtime or device."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agent.backends import get_backend
from agent.engine_cache import ENTRY_FILE
from agent.engines import build_engine
from agent.errors import CalibrationError
from agent.model_spec import resolve_model


def test_miss_then_hit(model_path, profile, cache) -> None:
    model = resolve_model(model_path)
    first = build_engine(model, profile=profile, cache=cache, precision="fp32")
    again = build_engine(model, profile=profile, cache=cache, precision="fp32")
    assert not first.cache_hit and again.cache_hit
    assert first.key == again.key
    assert again.build_time_s == 0 and first.build_time_s > 0
    assert len(cache.entries()) == 1


@pytest.mark.parametrize("damage", ["payload", "record", "truncate", "missing"])
def test_corrupt_entry_is_rebuilt_never_loaded(model_path, profile, cache, damage) -> None:
    model = resolve_model(model_path)
    built = build_engine(model, profile=profile, cache=cache, precision="fp32")
    path = cache.path_for(built.key)
    payload = path / "model.onnx"
    if damage == "payload":
        data = bytearray(payload.read_bytes())
        data[len(data) // 2] ^= 0xFF
        payload.write_bytes(bytes(data))
    elif damage == "record":
        (path / ENTRY_FILE).write_text("{not json", encoding="utf-8")
    elif damage == "truncate":
        payload.write_bytes(payload.read_bytes()[:100])
    else:
        payload.unlink()
    assert not cache.validate(built.key)[0]
    rebuilt = build_engine(model, profile=profile, cache=cache, precision="fp32")
    assert not rebuilt.cache_hit
    assert cache.validate(rebuilt.key) == (True, "")
    assert rebuilt.engine.run({"images": __import__("numpy").zeros((1, 3, 16, 16), "float32")})[
        "logits"
    ].shape == (1, 3)


def test_new_runtime_version_or_hardware_builds_anew(model_path, profile, cache, monkeypatch) -> None:
    model = resolve_model(model_path)
    base = build_engine(model, profile=profile, cache=cache, precision="fp32")
    ort_backend = get_backend("onnxruntime")
    monkeypatch.setattr(type(ort_backend), "runtime_version", lambda self: "99.0.0")
    upgraded = build_engine(model, profile=profile, cache=cache, precision="fp32")
    assert not upgraded.cache_hit and upgraded.key.runtime_version == "99.0.0"
    monkeypatch.undo()
    other = type(profile)()
    other.CopyFrom(profile)
    other.fingerprint = "0123456789abcdef"
    moved = build_engine(model, profile=other, cache=cache, precision="fp32")
    assert not moved.cache_hit
    assert len({base.key.digest(), upgraded.key.digest(), moved.key.digest()}) == 3
    # and the entry record must match its key exactly: a record for another key is not loaded
    record = json.loads((cache.path_for(base.key) / ENTRY_FILE).read_text())
    record["key"]["fingerprint"] = "elsewhere"
    (cache.path_for(base.key) / ENTRY_FILE).write_text(json.dumps(record))
    assert not build_engine(model, profile=profile, cache=cache, precision="fp32").cache_hit


def test_int8_calibration_is_part_of_the_key(model_path, profile, cache, images, tmp_path) -> None:
    from agent_testkit import colour_folder

    model = resolve_model(model_path)
    a = build_engine(model, profile=profile, cache=cache, precision="int8", calib_dir=images)
    assert a.calibration_time_s > 0 and a.key.calibration_id
    hit = build_engine(model, profile=profile, cache=cache, precision="int8", calib_dir=images)
    assert hit.cache_hit and hit.key == a.key
    other = colour_folder(tmp_path / "other", per_class=2, seed=7)
    b = build_engine(model, profile=profile, cache=cache, precision="int8", calib_dir=other)
    assert not b.cache_hit and b.key != a.key


def test_int8_without_calibration_fails_clearly(model_path, profile, cache) -> None:
    with pytest.raises(CalibrationError, match="--calib"):
        build_engine(resolve_model(model_path), profile=profile, cache=cache, precision="int8")


def test_key_fields(model_path, profile, cache) -> None:
    built = build_engine(resolve_model(model_path), profile=profile, cache=cache, precision="fp16")
    key = dataclasses.asdict(built.key)
    assert key["sha256"] == resolve_model(model_path).manifest.sha256
    assert key["backend"] == "onnxruntime" and key["precision"] == "fp16"
    assert key["fingerprint"] == profile.fingerprint and key["runtime_version"]


def test_thread_limit_reaches_the_session(model_path, cache) -> None:
    """EDGELOOP_AGENT_THREADS (emulated device classes) ends up as ORT's intra-op threads."""
    from agent.probe import probe_hardware

    one = probe_hardware(threads=1, hardware_class=None)
    built = build_engine(resolve_model(model_path), profile=one, cache=cache, precision="fp32")
    assert built.engine.session.get_session_options().intra_op_num_threads == 1
    two = probe_hardware(threads=2, hardware_class=None)
    other = build_engine(resolve_model(model_path), profile=two, cache=cache, precision="fp32")
    assert other.engine.session.get_session_options().intra_op_num_threads == 2
    assert other.key.fingerprint != built.key.fingerprint and not other.cache_hit


def test_prune_removes_least_recently_used_but_keeps_loaded(model_path, profile, cache, images) -> None:
    import os
    import time

    model = resolve_model(model_path)
    old = build_engine(model, profile=profile, cache=cache, precision="fp32")
    mid = build_engine(model, profile=profile, cache=cache, precision="fp16")
    new = build_engine(model, profile=profile, cache=cache, precision="int8", calib_dir=images)
    for i, built in enumerate((old, mid, new)):  # distinct last-use times
        t = time.time() - 100 + i
        os.utime(cache.path_for(built.key) / ENTRY_FILE, (t, t))
    build_engine(model, profile=profile, cache=cache, precision="fp32")  # a hit refreshes last use
    one_entry = max(sum(f.stat().st_size for f in cache.path_for(b.key).rglob("*")) for b in (old, mid, new))
    removed = cache.prune(max_bytes=one_entry + 1, keep={new.key.digest()})
    assert mid.key.digest() in removed and new.key.digest() not in removed
    assert cache.validate(new.key)[0] and not cache.validate(mid.key)[0]
