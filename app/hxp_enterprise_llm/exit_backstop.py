"""`exit_later(seconds, code)`: end the process with `code` after `seconds`, even if Python cannot run.

The last resort after an engine failure. A Python thread (or a SIGALRM handler) needs the GIL, and a
thread stuck in C code that holds it, or an interpreter already finalizing, never lets it run; the
kernel's default SIGALRM action does end the process, but as "killed by signal 14" (142, -14), not
with the documented exit code. A POSIX timer with SIGEV_THREAD notification has libc itself start a
thread that calls `_exit(code)`: no Python involved. Where that is unavailable (not glibc on
x86-64/aarch64 Linux), SIGALRM remains the backstop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import signal
import sys

logger = logging.getLogger(__name__)

CLOCK_MONOTONIC = 1
SIGEV_THREAD = 2
# What the process is killed with when the timer cannot be made (the exit status is then 128 + 14).
FALLBACK_SIGNAL = signal.SIGALRM


class _SigEvent(ctypes.Structure):
    """glibc's struct sigevent on 64-bit Linux (64 bytes): value, signo, notify, then the thread fields."""

    _fields_ = [("sigev_value", ctypes.c_void_p), ("sigev_signo", ctypes.c_int), ("sigev_notify", ctypes.c_int),
                ("sigev_notify_function", ctypes.c_void_p), ("sigev_notify_attributes", ctypes.c_void_p),
                ("_pad", ctypes.c_int * 8)]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("it_interval", _TimeSpec), ("it_value", _TimeSpec)]


# Kept alive for the life of the process: libc reads them when the timer fires.
_armed: list[object] = []


def exit_later(seconds: int, code: int) -> str:
    """Arm the backstop; returns how ("libc timer" or "SIGALRM")."""
    try:
        _arm_libc_timer(seconds, code)
        return "libc timer"
    except (OSError, AttributeError, ValueError) as exc:
        logger.warning("exit backstop: no libc timer (%s); SIGALRM in %d s instead", exc, seconds)
        signal.alarm(seconds)
        return "SIGALRM"


def _arm_libc_timer(seconds: int, code: int) -> None:
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        raise ValueError(f"no struct sigevent layout for {sys.platform}/{platform.machine()}")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    event = _SigEvent()
    # The notify function receives `union sigval` in the first argument register, as `_exit` takes its int.
    event.sigev_value = code
    event.sigev_notify = SIGEV_THREAD
    event.sigev_notify_function = ctypes.cast(libc._exit, ctypes.c_void_p).value
    timer = ctypes.c_void_p()
    if libc.timer_create(CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) != 0:
        raise OSError(ctypes.get_errno(), "timer_create failed")
    when = _ITimerSpec(it_value=_TimeSpec(tv_sec=seconds))
    if libc.timer_settime(timer, 0, ctypes.byref(when), None) != 0:
        raise OSError(ctypes.get_errno(), "timer_settime failed")
    _armed.extend((libc, event, timer, when))
