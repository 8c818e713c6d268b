"""Developer tooling: the managed server process and the ours/peer comparison table."""

from __future__ import annotations

from pathlib import Path

import pytest

from hxp_enterprise_llm.bench.client import RequestResult
from hxp_enterprise_llm.bench.stats import summarize


def _result(e2e: float) -> RequestResult:
    return RequestResult(ok=True, status=200, e2e=e2e, ttft=None, output_tokens=10, error=None)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_managed_server_waits_for_health_and_stops_its_process(tmp_path: Path) -> None:
    import sys

    from hxp_tools.servers import ManagedServer

    port = _free_port()
    server = ManagedServer("static", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                           f"http://127.0.0.1:{port}/", tmp_path / "static.log")
    with server:
        server.wait_healthy(timeout_s=60, poll_s=0.05)
        process = server.process
        assert process is not None
        assert process.poll() is None
    assert process.poll() is not None


def test_managed_server_reports_an_early_exit_with_its_log(tmp_path: Path) -> None:
    import sys

    from hxp_tools.servers import ManagedServer, ServerFailed

    argv = [sys.executable, "-c", "print('model missing'); raise SystemExit(3)"]
    with ManagedServer("broken", argv, "http://127.0.0.1:9/health", tmp_path / "b.log") as server, \
            pytest.raises(ServerFailed, match=r"(?s)exited with code 3.*model missing"):
        server.wait_healthy(timeout_s=60, poll_s=0.05)
    server.start()
    assert server.process is not None
    server.process.wait(timeout=60)
    with pytest.raises(ServerFailed, match=r"(?s)not running \(exit code 3\).*model missing"):
        server.check_running()
    server.stop()


def test_comparison_table_gives_ours_over_peer() -> None:
    from hxp_tools.peer_compare import ServerRun, comparison_table

    ours = ServerRun("ours", 20.0, {"s": summarize([_result(0.5), _result(0.5)], 1.0)}, {})
    peer = ServerRun("vllm serve", 80.0, {"s": summarize([_result(1.0), _result(1.0)], 2.0)}, {})
    table = comparison_table(ours, peer)
    assert "0.25  lower" in table  # ready 20 s vs 80 s
    assert "2.00  higher" in table  # 2 req/s vs 1 req/s
    assert "0.50  lower" in table  # E2E 500 ms vs 1000 ms
    assert "TTFT" not in table  # neither run streamed: no TTFT rows

