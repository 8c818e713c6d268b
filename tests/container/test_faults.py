"""Faults outside the engine: a full log disk, and a model directory the service cannot read."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx

from support.clients import chat_body

from .conftest import DEMO_MODEL

LOG_DIR = "/var/log/hxp"


def test_full_log_disk_does_not_stop_the_service(start_service):
    # log_dir on a 1 MB tmpfs owned by the service's user, then filled to the last byte.
    running = start_service(env={"OPENCHAT_3_5_LOG_DIR": LOG_DIR},
                            extra_tmpfs={LOG_DIR: "rw,nosuid,nodev,size=1m,uid=10001,gid=10001,mode=0755"})
    running.wait_healthy()
    fill = running.docker.exec_run(["sh", "-c", f"dd if=/dev/zero of={LOG_DIR}/filler bs=64k 2>&1; df {LOG_DIR}"])
    assert b"No space left on device" in fill.output, fill.output

    answers = [httpx.post(f"{running.api_url}/v1/chat/completions", timeout=120,
                          json=chat_body(f"Name colour number {n}.", max_tokens=8)) for n in range(5)]
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert httpx.get(f"{running.api_url}/health", timeout=10).status_code == 200
    # The request lines still reach stderr (the container log) while the file cannot take them. Polled, not read
    # once: a request's line is written once its response has gone out, and Docker's log copy lags behind that
    # (a CI run read 4 of 5 lines right after the fifth answer).
    def request_lines() -> list[str]:
        return [line for line in running.logs().splitlines() if '"event": "request"' in line]

    deadline = time.monotonic() + 30
    while len(request_lines()) < 5 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(request_lines()) >= 5, running.logs()[-3000:]


def test_unreadable_model_directory_refuses_to_start_naming_the_path(start_service, demo_model_dir,
                                                                     world_readable_tmp: Path):
    copy = world_readable_tmp / DEMO_MODEL
    shutil.copytree(demo_model_dir(DEMO_MODEL), copy)
    copy.chmod(0o700)  # owned by root on the host: the container's uid 10001 cannot read it

    running = start_service(models_root=world_readable_tmp)
    exit_code = running.wait_exit()
    logs = running.logs()
    assert exit_code == 3, logs[-3000:]  # documented: 3, the model cannot be verified
    assert f"/opt/models/{DEMO_MODEL}" in logs, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    # One line says why, in the JSON log or as the refusal message.
    refusal = [line for line in logs.splitlines() if DEMO_MODEL in line]
    assert any("ermission" in line or "readable" in line for line in refusal), refusal
    for line in logs.splitlines():
        if line.startswith("{"):
            json.loads(line)
