#!/usr/bin/env bash
# Install everything the tests need into .venv and run lint, the stale-proto check and the tests.
# The README's second quick-start command, and what CI runs (.ci/run calls this file).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv dev
# tritonclient for the "unmodified Triton client" tests (gRPC and HTTP). It pins protobuf < 7 and
# registers its own `inference` protos, so it lives in its own --target folder that only those
# tests' subprocesses see. The stamp names the extras, so an older gRPC-only folder is refreshed.
TRITON_DIR="$VENV/tritonclient"
if [ ! -f "$TRITON_DIR/.installed-grpc-http" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade --target "$TRITON_DIR" "tritonclient[grpc,http]>=2.40" \
    && touch "$TRITON_DIR/.installed-grpc-http" || echo "could not install tritonclient; its tests are skipped"
fi
[ -f "$TRITON_DIR/.installed-grpc-http" ] && export EDGELOOP_TRITONCLIENT_PATH="$TRITON_DIR"
# A real broker for the MQTT tests: Mosquitto from Debian when we may install it; the fixtures
# fall back to the pure-Python amqtt broker when it is absent.
if ! command -v mosquitto >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null) \
    || echo "could not install mosquitto; tests use the embedded amqtt broker"
fi
# nginx for the artifact-URL tests (tests/controller/test_artifact_urls.py starts its own on a free
# port with deploy/nginx/edgeloop-artifacts.conf; they skip without it).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null) \
    || echo "could not install nginx; the artifact-URL tests are skipped"
fi
# haproxy for the load-balancer test (tests/controller/test_load_balancer.py starts its own on free
# ports with deploy/haproxy/edgeloop.cfg in front of two controllers; it skips without it).
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null) \
    || echo "could not install haproxy; the load-balancer test is skipped"
fi
# Headless Chromium for the dashboard test (tests/controller/test_dashboard.py skips without it).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium; the dashboard test is skipped"
fi
# GStreamer's RTSP server for the stream tests' loopback camera (tests/stream/test_stream_rtsp.py skips
# without it): run by the system python3 with PyGObject (scripts/rtsp_test_server.py).
if ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-gi \
      gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
      gstreamer1.0-plugins-ugly >/dev/null) || echo "could not install the GStreamer RTSP server; its test is skipped"
fi
# FFmpeg as the RTSP recorder the stream tests push the annotated video to.
if ! command -v ffmpeg >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
    || echo "could not install ffmpeg; the RTSP push test is skipped"
fi
# PostgreSQL for the controller's database tests: the one on 127.0.0.1:5432 when it answers, else
# Debian's, installed and started here when we may; without either, those tests skip with the reason
# (tests/conftest.py also tries a testcontainer when a Docker engine is reachable).
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && [ -z "${EDGELOOP_TEST_POSTGRES_URL:-}" ] \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      && service postgresql start >/dev/null \
      && su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'edgeloop-test'\"" >/dev/null; then
    export EDGELOOP_TEST_POSTGRES_URL="postgresql+psycopg://postgres:edgeloop-test@127.0.0.1:5432/postgres"
  else
    echo "could not install or start PostgreSQL; its tests are skipped"
  fi
fi
# Linters for deploy/ and edge_images/ that are not wheels (systemd-analyze, docker compose).
bash scripts/install_deploy_tools.sh
echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== import contracts (pyproject.toml [tool.importlinter])"
"$VENV/bin/lint-imports" --no-cache
echo "== types (pyproject.toml [tool.mypy])"
"$VENV/bin/mypy"
echo "== generated protos"
"$VENV/bin/python" protos/generate.py --check
echo "== pytest"
# Two worker processes, one test file each at a time (--dist loadfile keeps a file's module
# fixtures in one process). EDGELOOP_TEST_WORKERS=0 runs everything in this process.
"$VENV/bin/python" -m pytest -n "${EDGELOOP_TEST_WORKERS:-2}" --dist loadfile "$@"
