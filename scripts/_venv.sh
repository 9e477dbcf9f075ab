# Shared by scripts/*.sh: create .venv once and install the project with one extra into it.
# Torch is pinned by constraints.txt (the versions the tests ran with).
VENV="${EDGELOOP_VENV:-$PWD/.venv}"
ensure_venv() {
  local extra="$1"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  local stamp="$VENV/.installed-$extra"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    echo "== installing edgeloop[$extra] into $VENV (first time: a few minutes)"
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[$extra]"
    touch "$stamp"
  fi
}
