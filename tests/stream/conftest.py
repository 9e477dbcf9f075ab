"""Fixtures of the stream tests: the conveyor clip (made here, small), the test-made detector,
and a helper that runs a pipeline on them."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
for _name in ("agent",):  # the tests/agent folder must not shadow the package (see tests/agent/conftest.py)
    if getattr(sys.modules.get(_name), "__file__", "") is None:
        del sys.modules[_name]

import pytest  # noqa: E402
from stream_testkit import conveyor_clip, detector_artifact  # noqa: E402

from agent.engine_cache import EngineCache  # noqa: E402
from agent.probe import probe_hardware  # noqa: E402
from agent.stream.infer import build_fixed_engine  # noqa: E402
from agent.stream.pipeline import Pipeline  # noqa: E402
from agent.stream.spec import load_pipeline_spec  # noqa: E402


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip(media: Path) -> tuple[Path, dict]:
    """4 s at 15 FPS, 320x192: 60 frames, two lanes of boards, ground truth beside it."""
    return conveyor_clip(media / "conveyor.mp4")


@pytest.fixture(scope="session")
def detector(media: Path) -> Path:
    return detector_artifact(media / "lanes1")


@pytest.fixture(scope="session")
def profile():
    return probe_hardware(threads=1)


@pytest.fixture
def cache(tmp_path: Path) -> EngineCache:
    return EngineCache(tmp_path / "engines")


@pytest.fixture
def make_pipeline(profile, cache):
    """make_pipeline(overrides..., slots=None, telemetry=...) -> a started Pipeline; stopped after."""
    started: list[Pipeline] = []

    def make(*overrides: str, slots=None, telemetry=lambda: None, start: bool = True) -> Pipeline:
        spec = load_pipeline_spec({"name": "test", "sources": []}, ["batching.max_wait_ms=5", *overrides])
        pipeline = Pipeline(spec, slots=slots, build=lambda s: build_fixed_engine(s, profile, cache, 1),
                            telemetry=telemetry)  # fmt: skip
        if start:
            pipeline.start()
            started.append(pipeline)
        return pipeline

    yield make
    for p in started:
        p.stop()
