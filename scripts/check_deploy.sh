#!/usr/bin/env bash
# Lint and test deploy/ and edge_images/ alone (CI runs the same tests inside scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv dev
bash scripts/install_deploy_tools.sh
exec "$VENV/bin/python" -m pytest tests/deploy -ra "$@"
