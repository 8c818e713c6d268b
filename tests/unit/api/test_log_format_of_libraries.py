"""Libraries that log around our handlers still reach stderr in the service's JSON shape.

Each case runs in a fresh interpreter: torch reads its format when imported, and the spawned-process
path must work before anything else has configured logging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TORCH_WARNS = """
import logging, warnings
{setup}
import torch
logging.getLogger("torch._library.triton").warning('Triton "not" available, find_triton_kernels = []')
warnings.warn("a library's deprecation", FutureWarning)
"""


def _stderr_lines(setup: str, env: dict[str, str] | None = None) -> list[str]:
    result = subprocess.run([sys.executable, "-c", TORCH_WARNS.format(setup=setup)], capture_output=True,
                            text=True, timeout=120, env={**os.environ, **(env or {})}, check=True)
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("setup", [
    "from hxp_enterprise_llm.api.request_log import configure_logging; configure_logging('INFO')",
    "from hxp_enterprise_llm.api.request_log import configure_spawned_process_logging; "
    "configure_spawned_process_logging()",
], ids=["serving process", "process vLLM spawned"])
def test_torch_log_lines_and_python_warnings_are_json(setup: str) -> None:
    lines = _stderr_lines(setup, env={"HXP_LLM_CHILD_LOG_LEVEL": "INFO"})
    entries = [json.loads(line) for line in lines]  # a plain line fails here, naming itself
    by_logger = {entry["logger"]: entry for entry in entries}
    assert by_logger["torch._library.triton"]["message"] == 'Triton "not" available, find_triton_kernels = []'
    assert by_logger["torch._library.triton"]["level"] == "WARNING"
    assert "deprecation" in by_logger["py.warnings"]["message"]


def test_without_the_setup_the_same_lines_are_plain_text() -> None:
    # The check above can fail: this is what the service printed before.
    lines = _stderr_lines("pass", env={"TORCH_LOGS_FORMAT": ""})
    assert any("Triton" in line and not line.startswith("{") for line in lines)
