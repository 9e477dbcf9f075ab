"""The agent's settings: the environment, the command line over it, and refusals that name the
problem. Parsed with the real `edgeloop agent` parser; nothing patches os.environ."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent import cli
from agent.config import AgentSettings

ENV = {
    "EDGELOOP_AGENT_DIR": "/var/lib/edgeloop/agent",
    "EDGELOOP_AGENT_THREADS": "2",
    "EDGELOOP_HARDWARE_CLASS": "cpu-2t",
    "EDGELOOP_MQTT_URL": "mqtt://broker:1883",
    "EDGELOOP_CONTROLLER": "ctl:50051",
    "EDGELOOP_ENROLLMENT_TOKEN": "tok",
    "EDGELOOP_AGENT_TAGS": "lab, a,,b",
}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgeloop agent")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_environment() -> None:
    s = AgentSettings.from_env(ENV)
    assert s.agent_dir == Path("/var/lib/edgeloop/agent") and s.cache_dir == s.agent_dir / "engines"
    assert (s.threads, s.hardware_class, s.mqtt_url) == (2, "cpu-2t", "mqtt://broker:1883")
    assert (s.controller, s.enrollment_token, s.tags) == ("ctl:50051", "tok", ("lab", "a", "b"))
    empty = AgentSettings.from_env({})
    assert empty.controller == "127.0.0.1:50051" and empty.mqtt_url is None and empty.serve_port == 8001
    with pytest.raises(ValueError, match="EDGELOOP_AGENT_THREADS must be an integer, got 'two'"):
        AgentSettings.from_env({"EDGELOOP_AGENT_THREADS": "two"})


def test_run_flags_over_the_environment() -> None:
    args = parse("run", "--controller", "other:1", "--agent-dir", "/tmp/a", "--tags", "x,y", "--threads", "1",
                 "--mqtt", "mqtt://m:1", "--serve-port", "-1", "--batch-delay-ms", "2", "--max-batch", "4",
                 "--name", "edge-1", "--hardware-class", "cpu-1t")  # fmt: skip
    s = AgentSettings.from_env(ENV).override(**vars(args))
    assert (s.controller, s.agent_dir, s.tags, s.threads) == ("other:1", Path("/tmp/a"), ("x", "y"), 1)
    assert (s.mqtt_url, s.serve_port, s.serves_grpc) == ("mqtt://m:1", -1, False)
    assert (s.batch_delay_ms, s.max_batch, s.name, s.hardware_class) == (2.0, 4, "edge-1", "cpu-1t")
    assert s.enrollment_token == "tok"  # not on the command line: the environment's


def test_flags_left_out_keep_the_environment() -> None:
    s = AgentSettings.from_env(ENV).override(**vars(parse("run", "--threads", "0", "--hardware-class", "")))
    assert s == AgentSettings.from_env(ENV)  # 0 threads and an empty class mean "not set"


def test_serve_flags() -> None:
    args = parse("serve", "m.onnx", "--host", "127.0.0.1", "--port", "0", "--mqtt-url", "mqtt://x:1",
                 "--cache-dir", "/tmp/c", "--metrics-interval", "0.5", "--batch-delay-ms", "1")  # fmt: skip
    s = AgentSettings.from_env({}).override(**vars(args))
    assert (s.serve_host, s.serve_port, s.mqtt_url, s.cache_dir) == (
        "127.0.0.1",
        0,
        "mqtt://x:1",
        Path("/tmp/c"),
    )
    assert (s.metrics_interval_s, s.batch_delay_ms, s.max_batch) == (0.5, 1.0, 8)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serve_port": 70000}, "serve port must be 0-65535"),
        ({"serve_port": -2}, "or -1 \\(off\\), got -2"),
        ({"batch_delay_ms": -1.0}, "batch delay must be >= 0 ms"),
        ({"max_batch": 0}, "max batch must be >= 1"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"metrics_interval_s": 0.0}, "metrics interval must be > 0"),
    ],
)
def test_bad_values_are_refused_by_name(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AgentSettings().override(**values)


def test_serve_refuses_no_port(model_path, capsys) -> None:
    assert cli.run(parse("serve", str(model_path), "--port", "-1")) == 1
    assert "serve needs a port" in capsys.readouterr().err
