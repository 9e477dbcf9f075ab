"""nginx for the benchmarks: the same launcher the tests use (tests/controller/nginx_helpers.py,
deploy/nginx/edgeloop-artifacts.conf as shipped), so a benchmark measures the tested config."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "controller"))

from nginx_helpers import NGINX, Nginx, start_nginx  # noqa: E402

__all__ = ["NGINX", "Nginx", "start_nginx"]
