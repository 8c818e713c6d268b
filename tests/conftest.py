"""Test tiers by folder: tests/unit -> unit, tests/engine -> engine, tests/container -> container."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from support.server_process import MODELS_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
TIERS = ("unit", "engine", "container")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = REPO_ROOT / "tests"
    outside = []
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(tests_dir).parts
        if parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
        else:
            outside.append(item.nodeid)
    # scripts/test runs tiers by marker: a test outside the tier folders would never run there.
    if outside:
        raise pytest.UsageError(f"tests outside tests/{{{','.join(TIERS)}}}/ belong to no tier: {outside}")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Where scripts/setup builds the demo models (HXP_MODELS_DIR overrides)."""
    return MODELS_DIR


@pytest.fixture(scope="session")
def demo_model_dir(models_dir: Path) -> Callable[[str], Path]:
    """The directory of a built demo model; a missing one fails (scripts/setup builds them), never skips."""

    def find(name: str) -> Path:
        path = models_dir / name
        if not (path / "config.json").is_file():
            pytest.fail(f"demo model {path} is missing: run scripts/setup "
                        f"(or scripts/fetch-demo-models)")
        return path

    return find


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures tests measured, and where the screenshots of browser tests went (test-artifacts/)."""
    from support.browser import SAVED
    from support.figures import RECORDED

    if RECORDED:
        terminalreporter.write_sep("-", "figures measured")
        for line in RECORDED:
            terminalreporter.write_line(line)
    if SAVED:
        terminalreporter.write_sep("-", "test artifacts")
        for path in SAVED:
            terminalreporter.write_line(str(path))
