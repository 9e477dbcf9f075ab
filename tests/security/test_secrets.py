"""Finding 6 (secrets in the open) and the /metrics half of finding 1."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import httpx
from ctl_helpers import make_controller, start_agent

from protos.redact import redact_url, without_credentials

TOKEN = "test-enrollment-token"


def test_redact_url_masks_the_password_only() -> None:
    assert redact_url("mqtt://ctl:s3cret@broker:1883") == "mqtt://ctl:***@broker:1883"
    assert redact_url("postgresql+psycopg://u:p%40ss@db/edgeloop") == "postgresql+psycopg://u:***@db/edgeloop"
    assert redact_url("mqtts://u:pw@[::1]:8883/x") == "mqtts://u:***@[::1]:8883/x"
    assert redact_url("mqtt://broker:1883") == "mqtt://broker:1883" and redact_url("") == ""
    assert "pw" not in redact_url("mqtt://u:pw@host:notaport")
    assert without_credentials("mqtt://u:pw@broker:1883") == "mqtt://broker:1883"


def test_no_password_in_the_captured_logs_and_private_files(tmp_path: Path, caplog, capsys) -> None:
    password = "Pa55-never-in-logs"
    caplog.set_level(logging.DEBUG)
    # a broker that is not there: the controller logs its connection attempts and refusals
    url = f"mqtt://controller:{password}@127.0.0.1:1"
    ctl = make_controller(tmp_path / "data", None, mqtt_url=url)
    try:
        agent = start_agent(ctl.grpc_target, tmp_path / "agent", TOKEN)
        agent.stop()
    finally:
        ctl.stop()
    logged = caplog.text + capsys.readouterr().err
    assert "127.0.0.1:1" in logged, "the broker URL is logged (redacted)"
    assert password not in logged
    data = tmp_path / "data"
    private = [data / "edgeloop.db", *(data / "keys").iterdir(), data / "keys"]
    for token_file in ("api_token", "enrollment_token"):
        if (data / token_file).exists():
            private.append(data / token_file)
    for path in private:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}: others may read it"


def test_metrics_name_no_device_without_the_api_token(tmp_path: Path) -> None:
    ctl = make_controller(tmp_path / "data", None, http=True)
    try:
        agent = start_agent(ctl.grpc_target, tmp_path / "agent", TOKEN)
        ctl.ctx.metrics.device_fps.labels(agent.device_id, "cpu-test").set(10.0)  # as telemetry does
        url = f"http://127.0.0.1:{ctl.http_port}/metrics"
        public = httpx.get(url).text
        assert "edgeloop_control_streams" in public and agent.device_id not in public
        wrong = httpx.get(url, headers={"Authorization": "Bearer nope"}).text
        assert agent.device_id not in wrong
        full = httpx.get(url, headers={"Authorization": "Bearer test-api-token"}).text
        assert f'device_id="{agent.device_id}"' in full
        agent.stop()
    finally:
        ctl.stop()


def _make_keys(data: str, barrier, out) -> None:  # noqa: ANN001 - multiprocessing objects
    from controller.core.config import get_settings
    from controller.services.ca import load_or_create_ca
    from controller.services.signing import load_or_create_signer

    settings = get_settings(data_dir=Path(data))
    barrier.wait()  # every process at the empty data dir at the same moment
    settings.resolve_secrets()
    ca = load_or_create_ca(settings.keys_dir)
    signer = load_or_create_signer(settings.keys_dir)
    out.put((ca.fingerprint, signer.public_key_bytes.hex(), settings.api_token, settings.enrollment_token))


def test_controllers_started_at_once_on_one_data_dir_share_one_ca_key_and_tokens(tmp_path: Path) -> None:
    """Several controllers on a shared data dir (docs/deploy.md) starting together: each must use
    the CA, signing key and tokens on disk, never one it made in the same instant."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    n = 4
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_make_keys, args=(str(tmp_path / "data"), barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * n, "a process failed (two writers of one file)"
    seen = [out.get(timeout=5) for _ in procs]
    assert len(set(seen)) == 1, seen
    keys = tmp_path / "data" / "keys"
    assert (keys / "ca_cert.pem").exists() and stat.S_IMODE((keys / ".create.lock").stat().st_mode) == 0o600
