"""Engine tier: the real vLLM CPU engine on the demo models, through the real `hxp-llm serve` process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.server_process import DEMO_MODEL, ServerProcess, require_model


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tier: SmolLM2 demo config, engine health checked every 2 s.

    Deadlines are generous: these tests check behaviour, not speed, and a busy CI machine must not
    turn a slow answer into a timeout (the deadlines themselves are tested in the unit tier).
    """
    require_model(DEMO_MODEL)
    server = ServerProcess(tmp_path_factory.mktemp("server") / "serve.log", "--health-check-interval", "2",
                           "--connection-timeout-seconds", "600", "--queue-timeout-seconds", "300")
    try:
        server.wait_ready(timeout=600)  # a start takes 30 s alone, minutes beside other engines
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"server did not exit cleanly on SIGTERM ({code}):\n{server.log_text()[-3000:]}"
