"""The scale profile's HAProxy config, run for real (Debian's haproxy) in front of two local stand-in
replicas: a session key keeps a conversation on one replica, a request without one is balanced by least
connections, and a replica that drains moves only its own sessions (consistent hashing): the others'
conversations keep their warm caches.

The config is deploy/haproxy/haproxy.cfg with only the addresses changed (loopback ports for the
listeners, two fixed servers instead of the DNS-discovered template).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from support.server_process import free_port

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
WAIT_S = 20.0

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None,
                                reason="haproxy is not installed (scripts/setup installs it as root)")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """HAProxy's health checks reset their connection once they have the status line: not an error."""


class Replica:
    """Answers /health (200, or 503 while draining) and chat requests, counting them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.draining = False
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._answer(503 if replica.draining else 200, {"status": "draining" if replica.draining else "ok"})

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer(200, {"replica": replica.name})

            def _answer(self, status: int, body: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def local_config(api_port: int, stats_port: int, admin_port: int, replicas: list[Replica]) -> str:
    text = HAPROXY_CFG.read_text(encoding="utf-8")
    text = text.replace("    bind :11402\n", f"    bind 127.0.0.1:{api_port}\n")
    text = text.replace("    bind :8404\n", f"    bind 127.0.0.1:{stats_port}\n")
    text = re.sub(r"stats socket \S+", f"stats socket ipv4@127.0.0.1:{admin_port}", text)
    text = text.replace(" resolvers docker init-addr none resolve-prefer ipv4", "")
    servers = "".join(f"    server {r.name} 127.0.0.1:{r.port}\n" for r in replicas)
    text, count = re.subn(r"    server-template .*\n", servers, text)
    assert count == 2, "expected a server-template in each backend"
    return text


@dataclass(frozen=True)
class Balancer:
    url: str  # the API frontend
    replicas: list[Replica]
    stats_csv: str  # the stats page as CSV, as scripts/rolling-restart reads it
    admin_port: int  # the Runtime API (stats socket), on loopback


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    replicas = [Replica(f"replica{n}") for n in (1, 2, 3)]
    api_port, stats_port, admin_port = free_port(), free_port(), free_port()
    config = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
    config.write_text(local_config(api_port, stats_port, admin_port, replicas), encoding="utf-8")
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{api_port}"
    try:
        until(lambda: pool_size(url) == 3, "every replica in the pool")
        yield Balancer(url, replicas, f"http://127.0.0.1:{stats_port}/stats;csv", admin_port)
    finally:
        process.terminate()
        process.wait(timeout=10)
        for replica in replicas:
            replica.server.shutdown()


def pool_size(url: str) -> int:
    """Replicas seen answering 9 keyless requests; 0 while HAProxy is not listening yet."""
    try:
        return len({served_by(url, {}) for _ in range(9)})
    except httpx.TransportError:
        return 0


def served_by(url: str, headers: dict[str, str]) -> str:
    response = httpx.post(f"{url}/v1/chat/completions", json={"messages": []}, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["x-served-by"] == response.json()["replica"]
    return response.json()["replica"]


def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.2)


def sessions(url: str, count: int = 16) -> dict[str, str]:
    return {key: served_by(url, {"X-Session-ID": key}) for key in (f"conversation-{i}" for i in range(count))}


def test_a_session_stays_on_one_replica_and_sessions_spread(balancer) -> None:
    url = balancer.url
    placement = sessions(url)
    assert set(placement.values()) == {"replica1", "replica2", "replica3"}
    for _ in range(3):
        assert sessions(url) == placement


def test_the_api_key_is_the_session_key_without_the_header(balancer) -> None:
    url = balancer.url
    for key in ("Bearer key-a", "Bearer key-b", "Bearer key-c"):
        assert len({served_by(url, {"Authorization": key}) for _ in range(6)}) == 1


def test_without_a_key_requests_are_balanced(balancer) -> None:
    url = balancer.url
    assert {served_by(url, {}) for _ in range(12)} == {"replica1", "replica2", "replica3"}


def test_a_draining_replica_moves_only_its_own_sessions(balancer) -> None:
    url, replicas = balancer.url, balancer.replicas
    before = sessions(url)
    replicas[0].draining = True
    try:
        until(lambda: "replica1" not in sessions(url).values(), "replica1 out of the pool")
        during = sessions(url)
        assert {key: r for key, r in during.items() if before[key] != "replica1"} == \
            {key: r for key, r in before.items() if r != "replica1"}
    finally:
        replicas[0].draining = False
    until(lambda: sessions(url) == before, "every session back where it was")


def rolling_restart_module() -> types.ModuleType:
    """scripts/rolling-restart (a script without .py) loaded as a module, to call its HAProxy steps."""
    path = HAPROXY_CFG.parents[2] / "scripts" / "rolling-restart"
    loader = importlib.machinery.SourceFileLoader("rolling_restart", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_rolling_restart_drains_a_replica_in_every_backend_and_puts_it_back(balancer, monkeypatch) -> None:
    """The script's own HAProxy steps against this real HAProxy: it finds the replica's servers in both
    backends from the stats CSV, and its drain keeps new sessions and keyless requests off the replica;
    only the transport differs (a loopback socket here, `docker exec` into the balancer in compose)."""
    script = rolling_restart_module()

    def runtime_api(lb_container: str, command: str) -> str:
        with socket.create_connection(("127.0.0.1", balancer.admin_port), timeout=5) as admin:
            admin.sendall(f"{command}\n".encode())
            return b"".join(iter(lambda: admin.recv(4096), b"")).decode().strip()

    monkeypatch.setattr(script, "runtime_api", runtime_api)
    url, replica = balancer.url, balancer.replicas[0]
    servers = script.servers_of(balancer.stats_csv, f"127.0.0.1:{replica.port}")
    assert sorted(servers) == ["replicas/replica1", "sessions/replica1"]
    args = argparse.Namespace(lb_container="haproxy-under-test")
    before = sessions(url)
    script.set_state(args, servers, "drain")
    try:
        during = sessions(url)
        assert "replica1" not in during.values()
        assert {key: r for key, r in during.items() if before[key] != "replica1"} == \
            {key: r for key, r in before.items() if r != "replica1"}
        assert "replica1" not in {served_by(url, {}) for _ in range(9)}
        with pytest.raises(script.Failure, match="refused state sleepy"):
            script.set_state(args, servers, "sleepy")
    finally:
        script.set_state(args, servers, "ready")
    assert sessions(url) == before
