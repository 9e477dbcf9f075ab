"""The agent's list of controller addresses (``--controller a:1,b:2``): parsed strictly, one
enrolment address per controller, and a failover that goes round the list and leaves a
controller only once however many calls fail on it. The stream's failover with real controller
processes is tests/reliability/test_two_controllers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.fleet.client import AgentIdentity, FleetClient, parse_targets
from protos import fleet_pb2


def _client(tmp_path: Path, targets: str, **kw: object) -> FleetClient:
    identity = AgentIdentity(name="d", hardware=fleet_pb2.HardwareProfile())
    return FleetClient(targets, tmp_path, identity, insecure=True, **kw)  # type: ignore[arg-type]


def test_parse_targets() -> None:
    assert parse_targets("a:1") == ["a:1"]
    assert parse_targets(" a:1, b:2 ") == ["a:1", "b:2"]
    for bad in ("", "a:1,", "a:1,,b:2"):
        with pytest.raises(ValueError, match="empty entry"):
            parse_targets(bad)


def test_failover_goes_round_the_list(tmp_path: Path) -> None:
    client = _client(tmp_path, "a:1,b:2,c:3")
    try:
        assert (client.target, client.enroll_target) == ("a:1", "a:2")  # port + 1 for each
        assert client.failover(from_target="a:1") == "b:2"
        assert client.failover(from_target="a:1") == "b:2"  # a second failed call on a: no move
        assert client.failover() == "c:3" and client.enroll_target == "c:4"
        assert client.failover() == "a:1" and client.failovers == 3
    finally:
        client.close()


def test_one_address_never_moves_and_enrolment_addresses_must_match(tmp_path: Path) -> None:
    client = _client(tmp_path, "a:1")
    try:
        assert client.failover() == "a:1" and client.failovers == 0
    finally:
        client.close()
    with pytest.raises(ValueError, match="one enrolment address per controller"):
        _client(tmp_path, "a:1,b:2", enroll_target="a:9")
    client = _client(tmp_path, "a:1,b:2", enroll_target="a:9,b:9")
    try:
        client.failover()
        assert client.enroll_target == "b:9"
    finally:
        client.close()
