"""Figures a test measured on the way (start times, request counts): printed once at the end of the run.

A line written to the terminal while a test runs lands in that test's captured output, which pytest
drops when the test passes; the figures of a passing run are the ones worth keeping.
"""

from __future__ import annotations

RECORDED: list[str] = []


def record_figure(line: str) -> None:
    RECORDED.append(line)
