#!/usr/bin/env bash
# Install edgeloop into .venv and run the whole loop on this machine (the README's first
# quick-start command). Extra arguments go to `edgeloop demo` (for example --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv all
exec "$VENV/bin/edgeloop" demo "$@"
