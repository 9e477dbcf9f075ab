"""Bad input refused at the door with a message naming the problem, and nothing stored: unknown
fields and enum values in REST bodies, unknown trainer tasks, a model whose manifest contradicts
its ONNX graph, an upload over the size limit."""

from __future__ import annotations

import json
from pathlib import Path

import harness as h


def test_rest_refuses_unknown_fields_values_and_contradicting_models(tmp_path: Path) -> None:
    good, _, _, _ = h.colour_models(tmp_path)
    ctl = h.controller(tmp_path / "ctl", extra_env={"EDGELOOP_MAX_UPLOAD_BYTES": "4096"}).start()
    api = ctl.api()
    try:
        rollout = {"model_version": "colour:1", "selector": {"tags": ["rel"]}}
        cases = [
            ("/rollouts/", rollout | {"stratgy": {"waves": 1}}, "stratgy"),
            ("/rollouts/", rollout | {"strategy": {"canary": 0.5}}, "canary"),
            ("/rollouts/", rollout | {"strategy": {"mode": "yolo"}}, "mode"),
            ("/rollouts/", rollout | {"precision": "int3"}, "precision"),
            ("/rollouts/", rollout | {"selector": {"tags": ["rel"], "tagz": ["x"]}}, "tagz"),
            ("/devices/some-id/benchmark", {"model_version": "colour:1", "precisions": ["int3"]}, "int3"),
            ("/devices/some-id/benchmark", {"model_version": "colour:1", "scenarios": ["fast"]}, "fast"),
            ("/devices/some-id/calibrate", {"model_version": "colour:1", "precision": "int4"}, "int4"),
            ("/devices/some-id/switch", {"model_version": "colour:1", "force": True}, "force"),
            ("/jobs/", {"task": "segmentation", "action": "train"}, "unknown task 'segmentation'"),
            ("/jobs/", {"action": "train", "epochs": 3}, "epochs"),
        ]
        for path, body, named in cases:
            r = api.post(path, json=body)
            assert r.status_code == 422, (path, body, r.status_code, r.text)
            assert named in r.text, (path, body, r.text)
        # a manifest that contradicts its graph (the colour models take "images", 3 channels)
        manifest = json.loads((good.parent / "manifest.json").read_text())
        manifest["inputs"][0]["name"] = "pixels"
        with open(good, "rb") as fh:
            r = api.post("/models/import", files={"onnx": fh, "manifest": ("m.json", json.dumps(manifest))})
        assert r.status_code == 422 and "contradicts the ONNX graph" in r.text and "pixels" in r.text, r.text
        # an upload over the limit (4 KiB here) is refused with the limit, and not stored
        manifest_text = (good.parent / "manifest.json").read_text()
        r = api.post(
            "/models/import",
            files={"onnx": ("big.onnx", b"\0" * 10_000), "manifest": ("m.json", manifest_text)},
        )
        assert r.status_code == 413 and "4096" in r.text, r.text
        r = api.post("/artifacts/shards", files={"file": ("big.tar", b"x" * 10_000)})
        assert r.status_code == 413, r.text
        assert api.get("/rollouts/").json()["count"] == 0
        assert api.get("/jobs/").json()["count"] == 0
        assert api.get("/models").json()["count"] == 0
        store = tmp_path / "ctl" / "artifacts"
        assert not [p for p in store.rglob("*") if p.is_file()] if store.exists() else True
    finally:
        api.close()
        ctl.stop()
