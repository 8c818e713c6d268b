"""Fixture model directories and their lock entries, built by the tests themselves."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from hxp_enterprise_llm.models.lockfile import LockedFile, LockEntry, ModelsLock, write_lock

FIXTURE_FILES: dict[str, bytes] = {
    "config.json": b'{"architectures": ["MistralForCausalLM"], "vocab_size": 32002}\n',
    "tokenizer_config.json": b'{"eos_token": "<|end_of_turn|>"}\n',
    "model-00001-of-00002.safetensors": os.urandom(3 * 1024 * 1024 + 17),
    "model-00002-of-00002.safetensors": os.urandom(1024 * 1024),
    "nested/extra_weights.bin": os.urandom(4096),
}


@dataclass
class LockedModel:
    model_dir: Path
    lock_path: Path
    entry: LockEntry


def entry_for(name: str, files: dict[str, bytes], revision: str = "built:test-fixture",
              repo_id: str = "test/fixture-model") -> LockEntry:
    locked = tuple(LockedFile(path=p, size=len(b), sha256=hashlib.sha256(b).hexdigest())
                   for p, b in sorted(files.items()))
    return LockEntry(name=name, repo_id=repo_id, revision=revision, files=locked)


def write_model_dir(model_dir: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        target = model_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@pytest.fixture
def locked_model(tmp_path: Path) -> LockedModel:
    """A model dir `fixture-model` of five files and a models.lock entry matching it."""
    model_dir = tmp_path / "models" / "fixture-model"
    write_model_dir(model_dir, FIXTURE_FILES)
    entry = entry_for("fixture-model", FIXTURE_FILES)
    lock_path = tmp_path / "models.lock"
    write_lock(ModelsLock([entry]), lock_path)
    return LockedModel(model_dir, lock_path, entry)
