"""A compile cache that cannot be written moves to a temporary place instead of stopping the engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from hxp_enterprise_llm.services.core.compile_cache import ensure_writable_compile_caches


def test_a_cache_path_that_cannot_be_created_moves_to_tmp(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A file where the directory should be: creating it fails for root too (as a read-only root does).
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    environ = {"VLLM_CACHE_ROOT": str(blocker / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    with caplog.at_level(logging.WARNING):
        ensure_writable_compile_caches(environ)
    moved = Path(environ["VLLM_CACHE_ROOT"])
    assert moved.is_dir()
    assert os.access(moved, os.W_OK)
    assert environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")  # writable: kept
    assert "VLLM_CACHE_ROOT" in caplog.text
    assert "lost at restart" in caplog.text
