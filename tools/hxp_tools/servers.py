"""Start a server process, wait for its health endpoint, stop it: bounded waits, loopback only."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx


class ServerFailed(RuntimeError):
    """The server exited or did not become healthy in time; the message ends with its log tail."""


class ManagedServer:
    """One server process in its own process group, so stopping it also stops its engine children."""

    def __init__(self, name: str, argv: Sequence[str], health_url: str, log_path: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.health_url = health_url
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)

    def check_running(self) -> None:
        """Raise ServerFailed if the process is gone (crashed, or stopped by someone else)."""
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise ServerFailed(f"{self.name} is not running (exit code {code})\n{self.log_tail()}")

    def wait_healthy(self, timeout_s: float, poll_s: float = 1.0) -> float:
        """Seconds from now until the health URL answered 200; raises ServerFailed otherwise."""
        assert self.process is not None, "start() first"
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited with code {self.process.returncode}\n{self.log_tail()}")
            try:
                if httpx.get(self.health_url, timeout=5.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(poll_s)
        raise ServerFailed(f"{self.name} not healthy after {timeout_s:.0f} s at {self.health_url}\n"
                           f"{self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM the group (graceful drain), SIGKILL it if it has not exited within `timeout_s`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        self._signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        # Children (vLLM's engine core) may outlive the leader by a moment; do not leave them running.
        self._signal_group(process.pid, signal.SIGKILL)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
