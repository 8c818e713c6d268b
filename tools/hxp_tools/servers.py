"""Start a server process, wait for its health endpoint, stop it: bounded waits, loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from hxp_enterprise_llm.bench.runner import LoadOptions, LoadRun, run_load
from hxp_tools import ROOT


def free_port() -> int:
    """A free loopback port (the one such helper, shared by tools and tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerFailed(RuntimeError):
    """The server exited or did not become healthy in time; the message ends with its log tail."""


def poll_health(url: str, *, timeout_s: float, still_running: Callable[[], str | None], poll_s: float = 1.0,
                on_answer: Callable[[int, str], None] | None = None) -> float:
    """Seconds until `url` answers 200: the one "wait for a server to turn healthy" loop.

    `still_running()` returns None while the server lives, or why it stopped (then ServerFailed);
    `on_answer(status, body)` sees every answer on the way (e.g. to record the `loading` states).
    """
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < timeout_s:
        stopped = still_running()
        if stopped is not None:
            raise ServerFailed(stopped)
        try:
            response = httpx.get(url, timeout=5.0)
            if on_answer is not None:
                on_answer(response.status_code, response.text)
            if response.status_code == 200:
                return time.monotonic() - started
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"  # not listening yet
        time.sleep(poll_s)
    raise ServerFailed(f"not healthy after {timeout_s:.0f} s at {url} (last: {last})")


class ManagedServer:
    """One server process in its own process group, so stopping it also stops its engine children."""

    def __init__(self, name: str, argv: Sequence[str], health_url: str, log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.health_url = health_url
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, cwd=self.cwd, start_new_session=True)

    def check_running(self) -> None:
        """Raise ServerFailed if the process is gone (crashed, or stopped by someone else)."""
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise ServerFailed(f"{self.name} is not running (exit code {code})\n{self.log_tail()}")

    def run_load(self, options: LoadOptions, what: str) -> LoadRun:
        """`hxp-llm bench`'s load against this server; ServerFailed (with the log) if it cannot run."""
        self.check_running()
        try:
            return asyncio.run(run_load(options))
        except Exception as exc:  # e.g. /v1/models unreachable: the server died under us
            raise ServerFailed(f"{self.name}: {what} could not run: {type(exc).__name__}: {exc}\n"
                               f"{self.log_tail()}") from exc

    def wait_healthy(self, timeout_s: float, poll_s: float = 1.0,
                     on_answer: Callable[[int, str], None] | None = None) -> float:
        """Seconds from now until the health URL answered 200; raises ServerFailed otherwise."""
        process = self.process
        assert process is not None, "start() first"

        def still_running() -> str | None:
            if process.poll() is None:
                return None
            return f"{self.name} exited with code {process.returncode}\n{self.log_tail()}"

        try:
            return poll_health(self.health_url, timeout_s=timeout_s, still_running=still_running, poll_s=poll_s,
                               on_answer=on_answer)
        except ServerFailed as exc:
            if process.poll() is not None:
                raise
            raise ServerFailed(f"{self.name}: {exc}\n{self.log_tail()}") from None

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM the server (graceful drain), SIGKILL its group if it has not exited within `timeout_s`.

        Only the leader gets SIGTERM, as `docker stop` through tini gives it: the server stops its
        own engine processes in order; signalling them too would kill the engine mid-drain.
        """
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is not None:
            self._signal_group(process.pid, signal.SIGKILL)  # leftovers of a server that died
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
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


def hxp_llm_serve(name: str, config: str | Path, port: int, metrics_port: int, log_path: Path, *extra: str,
                  env: Mapping[str, str] | None = None) -> ManagedServer:
    """`hxp-llm serve` of this venv on loopback, run from the checkout (configs name paths relative to it)."""
    argv = [str(Path(sys.executable).parent / "hxp-llm"), "serve", "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--metrics-port", str(metrics_port), *extra]
    return ManagedServer(name, argv, f"http://127.0.0.1:{port}/health", log_path, env=env, cwd=ROOT)


def machine_description() -> str:
    """CPU, cores, memory and load: figures from a shared 2-core machine mean little without them."""
    import platform

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; load average {load}")
