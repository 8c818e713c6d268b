"""`engine_nice` on the real service (CPU host): vLLM's engine processes run that much below the API process, every
thread of them, including those the engine started while it loaded (its compute threads). Off by default."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from support.server_process import DEMO_MODEL, ServerProcess, require_model


def engine_thread_nices(server: ServerProcess) -> dict[int, list[int]]:
    api = psutil.Process(server.process.pid)
    return {child.pid: [os.getpriority(os.PRIO_PROCESS, thread.id) for thread in child.threads()]
            for child in api.children(recursive=True)}


def test_the_engine_runs_at_the_api_processs_priority_by_default(demo_server: ServerProcess) -> None:
    api_nice = os.getpriority(os.PRIO_PROCESS, demo_server.process.pid)
    assert {nice for threads in engine_thread_nices(demo_server).values() for nice in threads} == {api_nice}


def test_engine_nice_runs_every_engine_thread_below_the_api_process(tmp_path: Path) -> None:
    require_model(DEMO_MODEL)
    server = ServerProcess(tmp_path / "serve.log", "--engine-nice", "7")
    try:
        server.wait_ready(timeout=600)
        api_nice = os.getpriority(os.PRIO_PROCESS, server.process.pid)
        engine = engine_thread_nices(server)
        assert engine, "the API process has no engine process"
        assert any(len(threads) > 2 for threads in engine.values()), engine  # its compute threads too
        for threads in engine.values():
            assert threads == [min(19, api_nice + 7)] * len(threads), engine
        api_threads = psutil.Process(server.process.pid).threads()
        assert {os.getpriority(os.PRIO_PROCESS, thread.id) for thread in api_threads} == {api_nice}
        assert "run at nice +7 from the API process" in server.log_text()
    finally:
        code = server.stop()
    assert code == 0, server.log_text()[-3000:]
