"""The demo-model builder installs from its build cache only what models.lock pins, and fails loudly otherwise.

No model is built here: a cache entry is laid out by hand (as a finished build leaves it), which also
proves that a cache hit needs neither torch nor the network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hxp_enterprise_llm.models.lockfile import LockEntry, ModelsLock, read_lock, write_lock
from hxp_tools import demo_models

NAME = "openchat-3.5-tiny"


@pytest.fixture
def cached_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HXP_CACHE_DIR", str(tmp_path / "cache"))
    recipe = demo_models.RECIPES[NAME]
    build = tmp_path / "cache" / "models" / f"{NAME}-{recipe.recipe_hash()}"
    build.mkdir(parents=True)
    (build / "config.json").write_text('{"vocab_size": 32002}\n')
    (build / "tokenizer.model").write_bytes(b"\x00" * 100)
    return build


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    path = tmp_path / "models.lock"
    other = LockEntry(name="openchat-3.5-0106", repo_id="openchat/openchat-3.5-0106", revision="a" * 40)
    write_lock(ModelsLock([other]), path)
    return path


def test_update_lock_writes_the_entry_and_keeps_the_others(cached_build: Path, lock_path: Path,
                                                          tmp_path: Path) -> None:
    demo_models.fetch_demo_models(tmp_path / "models", lock_path, only=[NAME], update_lock=True)
    lock = read_lock(lock_path)
    assert [e.name for e in lock.models] == ["openchat-3.5-0106", NAME]
    entry = lock.find(NAME)
    assert entry.revision == demo_models.RECIPES[NAME].revision
    assert entry.revision.startswith(f"built:{NAME}@")
    assert [(f.path, f.size) for f in entry.files] == [("config.json", 22), ("tokenizer.model", 100)]
    assert (tmp_path / "models" / NAME / "tokenizer.model").read_bytes() == b"\x00" * 100


def test_matching_build_installs_once_then_is_up_to_date(cached_build: Path, lock_path: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    demo_models.fetch_demo_models(tmp_path / "models", lock_path, only=[NAME], update_lock=True)
    demo_models.fetch_demo_models(tmp_path / "models", lock_path, only=[NAME])
    assert "up to date" in capsys.readouterr().out
    installed = tmp_path / "models" / NAME / "config.json"
    installed.write_text("edited\n")
    demo_models.fetch_demo_models(tmp_path / "models", lock_path, only=[NAME])
    assert installed.read_text() == '{"vocab_size": 32002}\n'
    assert (cached_build / "config.json").read_text() == '{"vocab_size": 32002}\n'  # a copy, not a link


def test_build_whose_bytes_differ_from_the_lock_fails_naming_the_file(cached_build: Path, lock_path: Path,
                                                                     tmp_path: Path) -> None:
    demo_models.fetch_demo_models(tmp_path / "models", lock_path, only=[NAME], update_lock=True)
    (cached_build / "config.json").write_text('{"vocab_size": 32003}\n')
    with pytest.raises(demo_models.DemoModelError, match=r"(?s)config\.json.*non-reproducible"):
        demo_models.fetch_demo_models(tmp_path / "dest2", lock_path, only=[NAME])
    assert not (tmp_path / "dest2" / NAME).exists()


def test_missing_lock_entry_fails_and_says_how_to_fix(cached_build: Path, lock_path: Path,
                                                     tmp_path: Path) -> None:
    with pytest.raises(demo_models.DemoModelError, match="(?s)no entry 'openchat-3.5-tiny'.*--update-lock"):
        demo_models.fetch_demo_models(tmp_path / "models", lock_path, only=[NAME])


def test_lock_from_another_recipe_fails(cached_build: Path, lock_path: Path, tmp_path: Path) -> None:
    demo_models.fetch_demo_models(tmp_path / "models", lock_path, only=[NAME], update_lock=True)
    lock = read_lock(lock_path)
    stale = lock.find(NAME)
    lock.upsert(LockEntry(name=NAME, repo_id=stale.repo_id, revision=f"built:{NAME}@0000000000000000",
                          files=stale.files, note=stale.note))
    write_lock(lock, lock_path)
    with pytest.raises(demo_models.DemoModelError, match="models.lock pins built:openchat-3.5-tiny@0000"):
        demo_models.fetch_demo_models(tmp_path / "models", lock_path, only=[NAME])


def test_main_reports_failures_as_exit_code_1(cached_build: Path, lock_path: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = demo_models.main(["--dest", str(tmp_path / "models"), "--lock", str(lock_path), "--only", NAME])
    assert code == 1
    assert "error:" in capsys.readouterr().err


def test_committed_lock_pins_both_demo_models_by_recipe() -> None:
    lock = read_lock(Path(__file__).resolve().parents[3] / "models.lock")
    for name, recipe in demo_models.RECIPES.items():
        entry = lock.find(name)
        assert entry.revision == recipe.revision, f"{name}: run scripts/fetch-demo-models --update-lock"
        assert entry.repo_id == recipe.repo_id
        assert all(f.locked and f.size for f in entry.files)
