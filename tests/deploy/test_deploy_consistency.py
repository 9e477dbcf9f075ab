"""The deploy files agree with each other and with docs/CONVENTIONS.md.

Configuration names, images, commands and volumes are written in several files (Dockerfiles,
compose, Kubernetes, systemd); these checks fail when one of them drifts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from deploy_files import (
    COMPOSE_ENV_EXAMPLE,
    DEPLOY,
    DOCKERFILES,
    EDGE_IMAGES,
    ENV_NAME,
    HARDWARE_CLASSES,
    K8S_DIR,
    ROOT,
    SYSTEMD_ENV_EXAMPLE,
    compose_config,
    convention_env_vars,
    k8s_container_env,
    k8s_documents,
    parse_dockerfile,
    parse_unit,
    read_env_file,
    service_argv,
    service_dockerfile,
    service_env,
)

AGENT_ARGV = ["edgeloop", "agent", "run"]
CONTROLLER_ARGV = ["edgeloop", "controller", "serve"]
AGENT_REQUIRED = {"EDGELOOP_CONTROLLER", "EDGELOOP_ENROLLMENT_TOKEN", "EDGELOOP_MQTT_URL"}
AGENT_DIR = "/var/lib/edgeloop/agent"


def _deploy_text_files() -> list[Path]:
    files = [p for p in (*DEPLOY.rglob("*"), *EDGE_IMAGES.rglob("*")) if p.is_file()]
    files.append(ROOT / "docs" / "deploy.md")
    return [p for p in files if p.exists()]


def _used_by(name: str) -> set[str]:
    return {w.strip("` ").split()[0] for w in convention_env_vars()[name].split(",") if w.strip()}


def test_every_edgeloop_variable_is_in_the_conventions_table() -> None:
    table = convention_env_vars()
    assert {"EDGELOOP_DB_URL", "EDGELOOP_CONTROLLER", "EDGELOOP_AGENT_DIR"} <= set(table)
    unknown = {}
    for path in _deploy_text_files():
        for name in ENV_NAME.findall(path.read_text(encoding="utf-8", errors="replace")):
            if name not in table:
                unknown.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not unknown, f"not in docs/CONVENTIONS.md's table: {unknown}"


def _agent_envs() -> dict[str, dict[str, str | None]]:
    envs: dict[str, dict[str, str | None]] = {}
    compose = compose_config()
    for name, service in compose["services"].items():
        if name.startswith("agent-"):
            envs[f"compose:{name}"] = dict(service_env(service))
    envs["systemd"] = dict(parse_unit().environment())
    for path, doc in k8s_documents():
        if doc["kind"] == "DaemonSet":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                envs[f"k8s:{path.name}"] = k8s_container_env(c)
    for hw in HARDWARE_CLASSES:
        envs[f"image:{hw}"] = dict(parse_dockerfile(EDGE_IMAGES / hw / "Dockerfile").env)
    return envs


def _controller_envs() -> dict[str, dict[str, str | None]]:
    compose = compose_config()
    envs: dict[str, dict[str, str | None]] = {"compose": dict(service_env(compose["services"]["controller"]))}
    for path, doc in k8s_documents():
        if doc["kind"] == "Deployment":
            envs[f"k8s:{path.name}"] = k8s_container_env(doc["spec"]["template"]["spec"]["containers"][0])
    return envs


def test_each_side_sets_only_its_own_variables() -> None:
    for where, env in _agent_envs().items():
        for name in env:
            if name.startswith("EDGELOOP_"):
                assert "agent" in _used_by(name), f"{where} sets {name}, which the agent does not read"
    for where, env in _controller_envs().items():
        for name in env:
            if name.startswith("EDGELOOP_"):
                assert "controller" in _used_by(name), (
                    f"{where} sets {name}, which the controller does not read"
                )


def test_agents_everywhere_get_controller_token_broker_and_a_persistent_dir() -> None:
    for where, env in _agent_envs().items():
        if where.startswith("image:"):
            assert env.get("EDGELOOP_AGENT_DIR") == AGENT_DIR, where
            continue
        assert AGENT_REQUIRED <= set(env), f"{where} misses {AGENT_REQUIRED - set(env)}"
        assert env.get("EDGELOOP_AGENT_DIR") == AGENT_DIR, where


def test_commands_are_the_same_entry_points_everywhere() -> None:
    compose = compose_config()
    for name, service in compose["services"].items():
        if name.startswith("agent-"):
            assert service_argv(service)[:3] == AGENT_ARGV, name
    assert service_argv(compose["services"]["controller"]) == CONTROLLER_ARGV
    exec_start = parse_unit().exec_start
    assert Path(exec_start[0]).name == "edgeloop" and exec_start[1:3] == AGENT_ARGV[1:]
    for hw in HARDWARE_CLASSES:
        assert parse_dockerfile(EDGE_IMAGES / hw / "Dockerfile").argv == AGENT_ARGV, hw
    assert parse_dockerfile(DEPLOY / "controller" / "Dockerfile").argv == CONTROLLER_ARGV
    for path, doc in k8s_documents():
        if doc["kind"] not in ("Deployment", "DaemonSet"):
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        image = container["image"].split(":")[0]
        dockerfile = (
            DEPLOY / "controller" / "Dockerfile"
            if image == "edgeloop/controller"
            else EDGE_IMAGES / image.removeprefix("edgeloop/agent-") / "Dockerfile"
        )
        assert dockerfile.exists(), f"{path.name}: no Dockerfile builds {image}"
        df = parse_dockerfile(dockerfile)
        argv = container.get("command", df.entrypoint) + container.get("args", df.cmd)
        expected = CONTROLLER_ARGV if image == "edgeloop/controller" else AGENT_ARGV
        assert argv[: len(expected)] == expected, path.name


def _all_argvs() -> dict[str, list[str]]:
    """Every command line the deploy files run, as argv (the image ENTRYPOINT included)."""
    argvs = {"systemd": parse_unit().exec_start}
    for name, service in compose_config()["services"].items():
        if "build" in service:
            argvs[f"compose:{name}"] = service_argv(service)
    for path, doc in k8s_documents():
        if doc["kind"] in ("Deployment", "DaemonSet"):
            (c,) = doc["spec"]["template"]["spec"]["containers"]
            image = c["image"].split(":")[0]
            dockerfile = (
                DEPLOY / "controller" / "Dockerfile"
                if image == "edgeloop/controller"
                else EDGE_IMAGES / image.removeprefix("edgeloop/agent-") / "Dockerfile"
            )
            df = parse_dockerfile(dockerfile)
            argvs[f"k8s:{path.name}"] = c.get("command", df.entrypoint) + c.get("args", df.cmd)
    return argvs


def test_agents_serve_inference_on_the_same_port_everywhere() -> None:
    """--serve-port is explicit in every file, so the port a file exposes is the one served."""
    ports = {}
    for where, argv in _all_argvs().items():
        if argv[1] == "agent":
            assert "--serve-port" in argv, f"{where}: the inference port is left to a default"
            ports[where] = argv[argv.index("--serve-port") + 1]
    assert set(ports.values()) == {"8001"}, ports
    compose = compose_config()
    for name, service in compose["services"].items():
        if name.startswith("agent-"):
            assert any(p.endswith(":8001") for p in service.get("ports", [])), name
    for path, doc in k8s_documents():
        if doc["kind"] == "DaemonSet":
            (c,) = doc["spec"]["template"]["spec"]["containers"]
            assert {"name": "inference", "containerPort": 8001} in c["ports"], path.name


def test_every_flag_the_files_pass_exists_in_the_real_parsers() -> None:
    """Flags are parsed by the agent's and the controller's own add_arguments."""
    import argparse

    parsers = {}
    for side, module in (("agent", "agent.cli"), ("controller", "controller.cli")):
        mod = pytest.importorskip(module, reason=f"{module} is not in this tree yet")
        parser = argparse.ArgumentParser(prog=f"edgeloop {side}", exit_on_error=False)
        mod.add_arguments(parser)
        parsers[side] = parser
    for where, argv in _all_argvs().items():
        assert Path(argv[0]).name == "edgeloop", where
        side, rest = argv[1], argv[2:]
        if side == "agent":
            assert rest[0] == "run", where
            rest = [a.replace("$(NODE_NAME)", "node-1") for a in rest]
        try:
            parsers[side].parse_args(rest)
        except (argparse.ArgumentError, SystemExit) as exc:
            pytest.fail(f"{where}: {argv} does not parse: {exc}")


def test_daemonsets_select_nodes_by_hardware_class() -> None:
    seen = {}
    for path, doc in k8s_documents():
        if doc["kind"] != "DaemonSet":
            continue
        spec = doc["spec"]["template"]["spec"]
        hw = spec["nodeSelector"]["edgeloop.io/hardware-class"]
        (container,) = spec["containers"]
        assert container["image"].split(":")[0] == f"edgeloop/agent-{hw}", path.name
        assert spec["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert AGENT_DIR in mounts, f"{path.name}: the agent dir is not on a volume"
        if hw in ("dgpu", "jetson"):
            assert spec.get("runtimeClassName") == "nvidia", path.name
        image_health = parse_dockerfile(EDGE_IMAGES / hw / "Dockerfile").healthcheck
        assert container["livenessProbe"]["exec"]["command"] == image_health, path.name
        seen[hw] = path.name
    assert set(seen) == set(HARDWARE_CLASSES)


def test_compose_images_are_built_from_this_repo() -> None:
    compose = compose_config()
    services = compose["services"]
    assert {"controller", "postgres", "mosquitto"} <= set(services)
    agents = [n for n in services if n.startswith("agent-")]
    assert len(agents) == 2
    for name in agents:
        assert service_dockerfile(services[name]) == (EDGE_IMAGES / "cpu" / "Dockerfile").resolve()
        assert services[name]["image"].startswith("edgeloop/agent-cpu:")
        assert any(v.endswith(f":{AGENT_DIR}") for v in services[name]["volumes"]), name
    assert service_dockerfile(services["controller"]) == (DEPLOY / "controller" / "Dockerfile").resolve()
    # Two agents on one host must not share credentials or an engine cache.
    volumes = [services[n]["volumes"][0].split(":")[0] for n in agents]
    assert len(set(volumes)) == len(volumes)


@pytest.mark.parametrize("hw", HARDWARE_CLASSES)
def test_agent_images_install_only_the_agent_extra_as_non_root(hw: str) -> None:
    df = parse_dockerfile(EDGE_IMAGES / hw / "Dockerfile")
    assert df.user and df.user.split(":")[0] not in ("root", "0"), "the agent must not run as root"
    assert df.healthcheck, "HEALTHCHECK missing"
    assert df.volumes == [AGENT_DIR]
    extras = set(re.findall(r"\[(agent|controller|trainer|dev|all)\]", df.text))
    assert extras == {"agent"}, f"{hw} installs extras {extras}"
    assert "import torch" in df.text, "the image build must check that torch is absent"
    for copied in re.findall(r"^COPY (?!--from)(\S+)", df.text, flags=re.MULTILINE):
        assert copied.split("/")[0] not in ("controller", "trainer"), f"{hw} copies {copied}"
    assert (EDGE_IMAGES / hw / "README.md").exists()
    assert (EDGE_IMAGES / hw / "Dockerfile.dockerignore").exists()


def test_every_image_runs_as_non_root_with_healthcheck() -> None:
    for path in DOCKERFILES:
        df = parse_dockerfile(path)
        assert df.user.split(":")[0] not in ("", "root", "0"), path
        assert df.healthcheck, path


def test_mosquitto_configmap_is_the_deploy_mosquitto_files() -> None:
    (cm,) = [
        d for _, d in k8s_documents() if d["kind"] == "ConfigMap" and "mosquitto" in d["metadata"]["name"]
    ]
    for key in ("mosquitto.conf", "acl"):
        assert cm["data"][key] == (DEPLOY / "mosquitto" / key).read_text(encoding="utf-8"), key


def test_broker_accounts_match_the_acl() -> None:
    acl = (DEPLOY / "mosquitto" / "acl").read_text(encoding="utf-8")
    users = set(re.findall(r"^user (\S+)$", acl, flags=re.MULTILINE))
    assert {"controller", "agent"} <= users
    compose = compose_config()
    services = compose["services"]
    assert services["controller"]["environment"]["EDGELOOP_MQTT_URL"].startswith("mqtt://controller:")
    for name in services:
        if name.startswith("agent-"):
            assert services[name]["environment"]["EDGELOOP_MQTT_URL"].startswith("mqtt://agent:"), name
    assert read_env_file(SYSTEMD_ENV_EXAMPLE)["EDGELOOP_MQTT_URL"].startswith("mqtt://agent:")
    (secrets,) = [
        d
        for d in yaml.safe_load_all((K8S_DIR / "secrets.example.yaml").read_text(encoding="utf-8"))
        if d["metadata"]["name"] == "edgeloop-secrets"
    ]
    assert secrets["stringData"]["mqtt-url-controller"].startswith("mqtt://controller:")
    assert secrets["stringData"]["mqtt-url-agent"].startswith("mqtt://agent:")
    # the password file compose writes holds exactly the accounts the URLs use
    init = " ".join(services["mosquitto-passwd"]["command"])
    assert set(re.findall(r'mosquitto_passwd -b "\$f" (\S+)', init)) == {"controller", "agent"}


def test_example_secrets_agree_so_the_examples_work_together() -> None:
    compose_env = read_env_file(COMPOSE_ENV_EXAMPLE)
    systemd_env = read_env_file(SYSTEMD_ENV_EXAMPLE)
    assert systemd_env["EDGELOOP_ENROLLMENT_TOKEN"] == compose_env["EDGELOOP_ENROLLMENT_TOKEN"]
    assert f"agent:{compose_env['MQTT_AGENT_PASSWORD']}@" in systemd_env["EDGELOOP_MQTT_URL"]


def test_ports_are_the_conventions_defaults() -> None:
    compose = compose_config()
    env = compose["services"]["controller"]["environment"]
    assert (env["EDGELOOP_GRPC_PORT"], env["EDGELOOP_HTTP_PORT"]) == ("50051", "8000")
    for name, service in compose["services"].items():
        if name.startswith("agent-"):
            assert service["environment"]["EDGELOOP_CONTROLLER"] == "lb:50051"


def test_compose_load_balancer_reaches_every_controller_on_the_default_ports() -> None:
    """lb (haproxy) publishes the controller ports, and its config's servers are the compose
    controllers, by the names (aliases) they have on the network, on the ports they listen on."""
    services = compose_config()["services"]
    controllers = {n: s for n, s in services.items() if "build" in s and service_argv(s) == CONTROLLER_ARGV}
    assert len(controllers) == 2 and all("ports" not in s for s in controllers.values())
    names: set[str] = set()
    for name, service in controllers.items():
        env = service["environment"]
        assert (env["EDGELOOP_GRPC_PORT"], env["EDGELOOP_HTTP_PORT"]) == ("50051", "8000"), name
        nets = service["networks"]
        aliases = nets["edgeloop"].get("aliases", []) if isinstance(nets, dict) else []
        names |= {name, *aliases}
    assert len({s["environment"]["EDGELOOP_CONTROLLER_ID"] for s in controllers.values()}) == 2
    assert len({s["environment"]["EDGELOOP_TELEMETRY_SHARE_GROUP"] for s in controllers.values()}) == 1
    lb = services["lb"]
    assert lb["image"].startswith("haproxy:")
    assert {p.split(":")[-1] for p in lb["ports"]} >= {"8000", "50051", "50052"}
    (mount,) = [v for v in lb["volumes"] if "haproxy.cfg" in v]
    cfg = (DEPLOY / mount.split(":")[0].removeprefix("./")).read_text(encoding="utf-8")
    servers = re.findall(r"^\s+server \S+ ([\w.-]+):(\d+)", cfg, re.M)
    assert {host for host, _ in servers} <= names and len({host for host, _ in servers}) == 2, servers
    assert {port for _, port in servers} == {"50051", "50052", "8000"}


def test_controller_probes_use_the_path_the_image_healthcheck_uses() -> None:
    """The image's HEALTHCHECK runs against a real controller in test_deploy_commands.py."""
    health = " ".join(parse_dockerfile(DEPLOY / "controller" / "Dockerfile").healthcheck)
    (path,) = re.findall(r"http://127\.0\.0\.1:%s(/\S*?)'", health)
    (deployment,) = [d for _, d in k8s_documents() if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == path, probe


def test_k8s_controller_replicas_share_one_volume_and_have_their_own_ids() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in k8s_documents()}
    deployment = docs[("Deployment", "edgeloop-controller")]
    assert deployment["spec"]["replicas"] >= 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["EDGELOOP_CONTROLLER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["EDGELOOP_TELEMETRY_SHARE_GROUP"]["value"]
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    claim = docs[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every replica mounts the data dir"
    assert docs[("PodDisruptionBudget", "edgeloop-controller")]["spec"]["minAvailable"] == 1
