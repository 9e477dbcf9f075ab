"""The pipeline spec: the shipped YAML has every key, unknown keys and bad values are refused
naming the key, overrides reach lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from agent.stream.spec import DEFAULT_SPEC, PipelineSpec, SourceKind, SpecError, load_pipeline_spec


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        out.add(prefix + name)
        ann = field.annotation
        inner = [
            a
            for a in (ann, *getattr(ann, "__args__", ()))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if inner:
            out |= _keys(inner[0], f"{prefix}{name}.")
    return out


def _yaml_keys(data, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(data, list):
        for item in data[:1]:
            out |= _yaml_keys(item, prefix)
        return out
    if isinstance(data, dict):
        for k, v in data.items():
            out.add(prefix + k)
            out |= _yaml_keys(v, f"{prefix}{k}.")
    return out


def test_shipped_spec_has_every_key_and_loads() -> None:
    data = yaml.safe_load(DEFAULT_SPEC.read_text())
    assert _yaml_keys(data) == _keys(PipelineSpec)
    spec = load_pipeline_spec(DEFAULT_SPEC)
    assert spec.sources[0].id == "cam0" and spec.batching.max_batch == 8


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("batching.max_bach=4", "batching.max_bach"),
        ("sources.0.url=x.mp4", "sources.0.url"),
        ("sinks.kafka.enabled=true", "sinks.kafka"),
        ("trackr.kind=none", "trackr"),
    ],
)
def test_unknown_key_is_refused_naming_it(override: str, named: str) -> None:
    with pytest.raises(SpecError, match=f"unknown key '{named}'"):
        load_pipeline_spec(DEFAULT_SPEC, [override])


def test_bad_values_are_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="batching.max_batch"):
        load_pipeline_spec(DEFAULT_SPEC, ["batching.max_batch=0"])
    with pytest.raises(SpecError, match="model.precision"):
        load_pipeline_spec(DEFAULT_SPEC, ["model.precision=int4"])
    with pytest.raises(SpecError, match="unique"):
        load_pipeline_spec(DEFAULT_SPEC, ["sources.1.id=cam0", "sources.1.uri=b.mp4"])
    with pytest.raises(SpecError, match="source id"):
        load_pipeline_spec(DEFAULT_SPEC, ["sources.0.id=a/b"])
    with pytest.raises(SpecError, match="not found"):
        load_pipeline_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="key.sub=value"):
        load_pipeline_spec(DEFAULT_SPEC, ["justakey"])


def test_overrides_add_sources_and_kinds_follow_the_uri(tmp_path: Path) -> None:
    spec = load_pipeline_spec(DEFAULT_SPEC, ["sources.1.id=door", "sources.1.uri=rtsp://cam/1",
                                             "sources.2.id=dir", f"sources.2.uri={tmp_path}"])  # fmt: skip
    kinds = [s.resolved_kind() for s in spec.sources]
    assert kinds == [SourceKind.FILE, SourceKind.RTSP, SourceKind.IMAGES]
    assert [s.is_live() for s in spec.sources] == [False, True, False]
