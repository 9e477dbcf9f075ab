"""Read the deploy files the way their tools do, so tests use what the files say, never a copy.

- Dockerfiles: ENV, ENTRYPOINT, CMD, HEALTHCHECK, USER, VOLUME (exec/JSON forms only).
- deploy/compose.yaml: YAML anchors and merge keys, then `${VAR}`, `${VAR:-default}`,
  `${VAR:?message}` interpolation from deploy/.env.example (what `docker compose config` does).
- the systemd unit: [Service] keys, ``Environment=`` and the ``EnvironmentFile=`` example.
- docs/CONVENTIONS.md: the environment variable table.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EDGE_IMAGES = ROOT / "edge_images"
COMPOSE_FILE = DEPLOY / "compose.yaml"
COMPOSE_ENV_EXAMPLE = DEPLOY / ".env.example"
SYSTEMD_UNIT = DEPLOY / "systemd" / "edgeloop-agent.service"
SYSTEMD_ENV_EXAMPLE = DEPLOY / "systemd" / "agent.env.example"
K8S_DIR = DEPLOY / "k8s"
CONVENTIONS = ROOT / "docs" / "CONVENTIONS.md"
HARDWARE_CLASSES = ("cpu", "dgpu", "jetson")
DOCKERFILES = [EDGE_IMAGES / c / "Dockerfile" for c in HARDWARE_CLASSES] + [
    DEPLOY / "controller" / "Dockerfile"
]

ENV_NAME = re.compile(r"\bEDGELOOP_[A-Z0-9_]*[A-Z0-9]\b")


def tool(name: str) -> str | None:
    """A linter binary on PATH or in this interpreter's venv (the `dev` extra installs there)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


# ---- docs/CONVENTIONS.md ----
def convention_env_vars() -> dict[str, str]:
    """name -> "used by" column of the environment variable table."""
    text = CONVENTIONS.read_text(encoding="utf-8")
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    names: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for name in ENV_NAME.findall(cells[0]):
            names[name] = cells[1]
    return names


# ---- Dockerfiles ----
@dataclass
class Dockerfile:
    path: Path
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    user: str = ""
    volumes: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def argv(self) -> list[str]:
        return self.entrypoint + self.cmd


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse_dockerfile(path: Path) -> Dockerfile:
    text = path.read_text(encoding="utf-8")
    df = Dockerfile(path=path, text=text)
    final_stage: list[str] = []
    for line in _logical_lines(text):
        if line.upper().startswith("FROM "):
            final_stage = []
        final_stage.append(line)
    for line in final_stage:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                df.env[key] = value
        elif instr == "ENTRYPOINT":
            df.entrypoint = json.loads(rest)
        elif instr == "CMD":
            df.cmd = json.loads(rest)
        elif instr == "HEALTHCHECK":
            _, _, cmd = rest.partition(" CMD ")
            df.healthcheck = json.loads(cmd.strip())
        elif instr == "USER":
            df.user = rest
        elif instr == "VOLUME":
            df.volumes += json.loads(rest)
    return df


# ---- compose ----
_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def _interpolate(value: object, env: dict[str, str]) -> object:
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        current = env.get(name)
        if op in (":-", "-"):
            return current if current not in (None, "") else (arg or "")
        if op in (":?", "?") and not current:
            raise KeyError(f"compose needs {name}: {arg}")
        return current or ""

    return _INTERP.sub(sub, value)


def compose_config(env: dict[str, str] | None = None) -> dict:
    """deploy/compose.yaml resolved: anchors, merge keys (PyYAML does both) and interpolation."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    env = read_env_file(COMPOSE_ENV_EXAMPLE) if env is None else env
    config = _interpolate(raw, env)
    assert isinstance(config, dict)
    for service in config["services"].values():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        service["environment"] = {k: "" if v is None else str(v) for k, v in environment.items()}
    return config


def compose_binary() -> list[str] | None:
    """`docker compose` (plugin) or a standalone Docker Compose v2 binary, if one works here."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = tool("docker-compose")
    if standalone:
        out = subprocess.run([standalone, "version"], capture_output=True, text=True)
        if out.returncode == 0 and "v2." in out.stdout:
            return [standalone]
    return None


def service_dockerfile(service: dict) -> Path:
    build = service["build"]
    return (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve()


def service_argv(service: dict) -> list[str]:
    """What the container runs: compose entrypoint/command over the image's ENTRYPOINT/CMD."""
    df = parse_dockerfile(service_dockerfile(service))
    entrypoint = service.get("entrypoint", df.entrypoint)
    command = service.get("command", df.cmd if "entrypoint" not in service else [])
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    if isinstance(command, str):
        command = shlex.split(command)
    return list(entrypoint) + list(command)


def service_env(service: dict) -> dict[str, str]:
    """The container's environment: the image's ENV, then the compose service's."""
    return {**parse_dockerfile(service_dockerfile(service)).env, **service["environment"]}


# ---- systemd ----
@dataclass
class Unit:
    sections: dict[str, list[tuple[str, str]]]

    def get(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    @property
    def exec_start(self) -> list[str]:
        (line,) = self.get("Service", "ExecStart")
        return shlex.split(line.lstrip("-@:+!"))

    def environment(self, env_file: Path = SYSTEMD_ENV_EXAMPLE) -> dict[str, str]:
        """Environment= assignments, then the EnvironmentFile (the example stands for it)."""
        env: dict[str, str] = {}
        for line in self.get("Service", "Environment"):
            for token in shlex.split(line):
                key, _, value = token.partition("=")
                env[key] = value
        if self.get("Service", "EnvironmentFile"):
            env.update(read_env_file(env_file))
        return env


def parse_unit(path: Path = SYSTEMD_UNIT) -> Unit:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return Unit(sections)


# ---- Kubernetes ----
def k8s_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((path, doc))
    return docs


def k8s_container_env(container: dict) -> dict[str, str | None]:
    """name -> literal value (None when it comes from a Secret or ConfigMap)."""
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# ---- Mosquitto with deploy/mosquitto's config ----
@dataclass
class DeployBroker:
    port: int
    log_path: Path
    proc: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def start_deploy_broker(workdir: Path, users: dict[str, str], port: int) -> DeployBroker | str:
    """A real Mosquitto with deploy/mosquitto/{mosquitto.conf,acl}; only paths and the port move.

    Returns the reason instead when Mosquitto is not installed here.
    """
    import os

    mosquitto, passwd_tool = shutil.which("mosquitto"), shutil.which("mosquitto_passwd")
    if not mosquitto or not passwd_tool:
        return "Mosquitto is not installed here (Debian package mosquitto; scripts/test.sh installs it)"
    workdir.mkdir(parents=True, exist_ok=True)
    passwd = workdir / "passwd"
    passwd.touch(mode=0o600)
    for user, password in users.items():  # as the compose service mosquitto-passwd does
        subprocess.run([passwd_tool, "-b", str(passwd), user, password], check=True)
    (workdir / "data").mkdir(exist_ok=True)
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    replacements = {
        r"^listener 1883$": f"listener {port} 127.0.0.1",
        r"^password_file .*$": f"password_file {passwd}",
        r"^acl_file .*$": f"acl_file {DEPLOY / 'mosquitto' / 'acl'}",
        r"^persistence_location .*$": f"persistence_location {workdir / 'data'}/",
        # stdout into a file is block-buffered; Mosquitto flushes its own log file per line
        r"^log_dest stdout$": f"log_dest file {workdir / 'mosquitto.log'}",
    }
    for pattern, line in replacements.items():
        conf, n = re.subn(pattern, line, conf, flags=re.MULTILINE)
        assert n == 1, f"deploy/mosquitto/mosquitto.conf has no line matching {pattern}"
    if os.geteuid() == 0:  # as root Mosquitto drops to user `mosquitto`, who cannot read workdir
        conf += "\nuser root\n"
    (workdir / "mosquitto.conf").write_text(conf, encoding="utf-8")
    log_path = workdir / "mosquitto.log"
    log_path.touch()
    with open(workdir / "mosquitto.out", "wb") as out:
        proc = subprocess.Popen([mosquitto, "-c", str(workdir / "mosquitto.conf")], stdout=out, stderr=out)
    return DeployBroker(port=port, log_path=log_path, proc=proc)
