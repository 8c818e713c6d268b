"""compose.yaml's restart policy on a start that no restart can fix: the production settings (config/
openchat-3.5.env) on the CPU image meet models.lock's unlocked OpenChat-3.5-0106 entry, exit 3, and
Compose gives up after its bounded retries instead of looping; every start printed the one line that
names the fix."""

from __future__ import annotations

import os
import time
import tomllib
from typing import Any

from support.compose import ComposeProject
from support.figures import record_figure

from .conftest import IMAGE, REPO_ROOT

EXIT_MODEL = 3
RETRIES = 5  # compose.yaml: restart: ${HXP_LLM_RESTART:-on-failure:5}


def test_an_unlocked_production_model_stops_after_the_bounded_retries(docker_client: Any):
    project = ComposeProject(f"hxp-restart-{os.getpid()}", IMAGE, REPO_ROOT / "models")
    project.env["HXP_LLM_CPU_ENV"] = "config/openchat-3.5.env"
    revision = next(m["revision"] for m in tomllib.loads((REPO_ROOT / "models.lock").read_text(encoding="utf-8"))
                    ["model"] if m["name"] == "openchat-3.5-0106")
    started = time.monotonic()
    try:
        project.up()
        state: dict[str, Any] = {}
        while time.monotonic() - started < 180:
            state = project.inspect()
            if state["State"]["Status"] == "exited" and state["RestartCount"] >= RETRIES:
                break
            time.sleep(0.5)
        given_up = time.monotonic() - started
        time.sleep(5)  # and it stays down
        state = project.inspect()
        lines = [line for line in project.compose("logs", "--no-log-prefix", "--no-color").stdout.splitlines()
                 if line.strip()]
    finally:
        project.down()

    record_figure(f"compose, unlocked model: {state['RestartCount'] + 1} starts in {given_up:.1f} s, then "
                  f"{state['State']['Status']} (exit {state['State']['ExitCode']}) 5 s later")
    assert state["State"]["Status"] == "exited", state["State"]
    assert state["State"]["ExitCode"] == EXIT_MODEL
    assert state["RestartCount"] == RETRIES
    # One line per start, each naming the command that fixes it.
    assert len(lines) == RETRIES + 1, lines
    assert all(f"hxp-llm model lock openchat-3.5-0106 --revision {revision}" in line for line in lines), lines
