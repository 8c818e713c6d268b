"""Progress of hashing a model directory, reported to stderr without flooding logs.

On a terminal one status line is redrawn at most every `tty_interval` seconds; when stderr is
a file or a pipe (systemd, docker logs) a plain line is written every `log_interval` seconds, so
a 14 GB check leaves a handful of lines instead of thousands. Small models print nothing. The
service passes `log_line` instead, so its progress is a log record in the service's JSON format.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

# Below this, hashing takes about a second: a progress display would only be noise.
QUIET_BELOW_BYTES = 256 * 1024 * 1024


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


class HashProgress:
    """Thread-safe byte counter that renders itself, throttled."""

    def __init__(self, stream: TextIO | None = None, *, log_line: Callable[[str], object] | None = None,
                 tty_interval: float = 0.25, log_interval: float = 10.0,
                 quiet_below: int = QUIET_BELOW_BYTES) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._log_line = log_line
        self._is_tty = log_line is None and bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = tty_interval if self._is_tty else log_interval
        self._quiet_below = quiet_below
        self._lock = threading.Lock()
        self._total = 0
        self._done = 0
        self._label = ""
        self._started = 0.0
        self._last_render = 0.0
        self._active = False

    def start(self, total_bytes: int, label: str) -> None:
        with self._lock:
            self._total, self._done, self._label = total_bytes, 0, label
            self._started = self._last_render = time.monotonic()
            self._active = total_bytes >= self._quiet_below

    def advance(self, n: int) -> None:
        with self._lock:
            self._done += n
            if not self._active:
                return
            now = time.monotonic()
            if now - self._last_render >= self._interval:
                self._last_render = now
                self._render(now, final=False)

    def finish(self) -> None:
        with self._lock:
            if self._active:
                self._render(time.monotonic(), final=True)
            self._active = False

    def _render(self, now: float, *, final: bool) -> None:
        elapsed = max(now - self._started, 1e-9)
        percent = 100.0 * self._done / self._total if self._total else 100.0
        line = (f"{self._label}: {_gb(self._done)} / {_gb(self._total)} ({percent:.0f}%), "
                f"{self._done / elapsed / 1e6:.0f} MB/s")
        if self._log_line is not None:
            self._log_line(line)
            return
        if self._is_tty:
            self._stream.write("\r" + line + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
