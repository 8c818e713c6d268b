"""scripts/image-healthcheck (hxp-healthcheck in the image): `ready` probes /health, `live` /health/live."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hxp_tools.servers import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "image-healthcheck"


class _Loading(http.server.BaseHTTPRequestHandler):
    """A service that is alive but still loading its model: /health 503, /health/live 200."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        status = 200 if self.path == "/health/live" else 503
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b'{"status": "alive"}' if status == 200 else b'{"status": "loading"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loading_service() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Loading)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def probe(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env={"OPENCHAT_3_5_PORT": str(port)},
                          capture_output=True, text=True, timeout=30, check=False)


def test_readiness_fails_while_loading_and_liveness_passes(loading_service):
    assert probe(loading_service, "ready").returncode == 1
    assert probe(loading_service).returncode == 1  # readiness is the default (image HEALTHCHECK, compose)
    live = probe(loading_service, "live")
    assert live.returncode == 0, live.stdout
    assert "/health/live: 200" in live.stdout


def test_no_answer_fails_both():
    unused = free_port()  # nothing listens on it
    assert probe(unused, "ready").returncode == 1
    assert probe(unused, "live").returncode == 1


def test_an_unknown_mode_is_a_usage_error(loading_service):
    result = probe(loading_service, "alive")
    assert result.returncode == 2
    assert "usage" in result.stdout
