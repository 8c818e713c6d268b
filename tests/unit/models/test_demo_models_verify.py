"""The demo models built by `scripts/fetch-demo-models` pass the same check `serve` runs.

Host-built weights are checked as `serve` checks them: against this machine's own build, recorded in the
models root's models.host.lock (on another CPU they may differ from the reference hashes in models.lock).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hxp_enterprise_llm.models.lockfile import LockEntry, read_lock
from hxp_enterprise_llm.models.serving_check import entry_verified_here
from hxp_enterprise_llm.models.verify import verify_model_dir

REPO_ROOT = Path(__file__).resolve().parents[3]

DEMO_ENTRIES = [e for e in read_lock(REPO_ROOT / "models.lock").models if e.revision.startswith("built:")]


def test_the_lock_has_demo_entries() -> None:
    assert {e.name for e in DEMO_ENTRIES} >= {"smollm2-135m-instruct", "openchat-3.5-tiny"}


@pytest.mark.parametrize("entry", DEMO_ENTRIES, ids=[e.name for e in DEMO_ENTRIES])
def test_a_built_demo_model_matches_its_lock_entry(entry: LockEntry, demo_model_dir: Callable[[str], Path]) -> None:
    model_dir = demo_model_dir(entry.name)
    report = verify_model_dir(model_dir, entry_verified_here(read_lock(REPO_ROOT / "models.lock"), model_dir,
                                                              entry.name), progress=None)
    assert report.ok
    assert report.files_checked == len(entry.files)
