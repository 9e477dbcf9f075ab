"""``edgeloop fleet``: readable tables from the real REST API, errors with the reason."""

from __future__ import annotations

from pathlib import Path

from ctl_helpers import ScriptedExecutor, make_controller, manifest_json, start_agent, write_onnx

from edgeloop.cli import main


def test_fleet_cli_tables(tmp_path: Path, sqlite_url: str, capsys) -> None:
    ctl = make_controller(tmp_path / "data", sqlite_url, http=True)
    agent = start_agent(
        ctl.grpc_target,
        tmp_path / "a",
        "test-enrollment-token",
        name="cam-7",
        hardware_class="cpu-2t",
        tags=["line-1"],
        executor=ScriptedExecutor(scores={"tiny:1": (81.25, 240.0)}),
    )
    base = ["fleet", "--url", f"http://127.0.0.1:{ctl.http_port}", "--token", "test-api-token"]
    try:
        onnx_path = write_onnx(tmp_path / "m.onnx", "v1")
        manifest = tmp_path / "manifest.json"
        manifest.write_text(manifest_json("tiny:1"), encoding="utf-8")
        assert main([*base, "import", str(onnx_path), str(manifest)]) == 0
        assert (
            main([*base, "rollout-create", "tiny:1", "--class", "cpu-2t", "--canary", "0", "--waves", "1"])
            == 0
        )
        rollout_id = _latest(ctl).id
        ctl.wait_for_rollout(rollout_id, timeout_s=30)
        capsys.readouterr()
        assert main([*base, "devices"]) == 0
        out = capsys.readouterr().out
        header, rule, row = out.splitlines()[:3]
        assert header.split()[:4] == ["device", "name", "class", "online"] and set(rule) <= {"-", " "}
        assert "cam-7" in row and "cpu-2t" in row and "tiny:1" in row and "yes" in row
        assert main([*base, "rollout", rollout_id]) == 0
        out = capsys.readouterr().out
        assert "succeeded" in out and "gate passed" in out
        assert main([*base, "results", "--matrix"]) == 0
        out = capsys.readouterr().out
        assert "cpu-2t" in out and "81.25" in out and "240.00" in out
        assert main([*base, "benchmark", agent.device_id, "tiny:1", "--precision", "int8"]) == 0
        assert "benchmark" in capsys.readouterr().out
        assert main([*base, "jobs"]) == 0 and "(none)" in capsys.readouterr().out
        assert main([*base, "pause", rollout_id]) == 1
        assert "409 rollout is succeeded" in capsys.readouterr().err
        assert main([*base[:-1], "wrong", "devices"]) == 1
        assert "401" in capsys.readouterr().err
    finally:
        agent.stop()
        ctl.stop()


def _latest(ctl):  # noqa: ANN001, ANN202
    from controller import crud

    with ctl.session() as s:
        rows, _ = crud.list_rollouts(session=s)
        return rows[0]
