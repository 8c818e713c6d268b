"""The demo-model builder installs from its build cache only what models.lock pins, and fails loudly otherwise.

No model is built here: a cache entry is laid out by hand (as a finished build leaves it), which also
proves that a cache hit needs neither torch nor the network.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hxp_enterprise_llm.models.lockfile import HOST_LOCK_NAME, LockEntry, ModelsLock, read_lock, write_lock
from hxp_enterprise_llm.models.serving_check import entry_verified_here
from hxp_enterprise_llm.models.verify import ModelIntegrityError, verify_model_dir
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
    (build / "model.safetensors").write_bytes(b"weights as this machine computed them")
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
    assert [(f.path, f.size) for f in entry.files] == [("config.json", 22), ("model.safetensors", 37),
                                                      ("tokenizer.model", 100)]
    assert entry.host_built == ("model.safetensors",)
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
        assert entry.host_built == recipe.host_built


# --- host-built files: the reference build's hashes in models.lock, each machine's own build checked


def _plant_other_hosts_weights(lock_path: Path) -> None:
    """Rewrite the entry's host-built hashes as a machine with other float kernels would have locked them."""
    lock = read_lock(lock_path)
    entry = lock.find(NAME)
    other = tuple(replace(f, sha256="f" * 64) if f.path in entry.host_built else f for f in entry.files)
    lock.upsert(replace(entry, files=other))
    write_lock(lock, lock_path)


@pytest.fixture
def other_hosts_lock(cached_build: Path, lock_path: Path, tmp_path: Path) -> Path:
    """A lock written from this build, whose host-built hashes are then another machine's; no host record."""
    demo_models.fetch_demo_models(tmp_path / "scratch", lock_path, only=[NAME], update_lock=True)
    demo_models.host_record_path().unlink()
    _plant_other_hosts_weights(lock_path)
    return lock_path


def test_weights_built_differently_elsewhere_install_and_verify_here(
        other_hosts_lock: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    demo_models.fetch_demo_models(models, other_hosts_lock, only=[NAME])

    assert "first build on this machine" in capsys.readouterr().out
    record = read_lock(demo_models.host_record_path()).find(NAME)
    assert [f.path for f in record.files] == ["model.safetensors"]
    entry = entry_verified_here(read_lock(other_hosts_lock), models / NAME, NAME)
    assert verify_model_dir(models / NAME, entry, progress=None).ok
    # The lock itself still names the reference build.
    assert read_lock(other_hosts_lock).find(NAME).file("model.safetensors").sha256 == "f" * 64


def test_installed_weights_changed_after_the_build_are_refused(other_hosts_lock: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    demo_models.fetch_demo_models(models, other_hosts_lock, only=[NAME])
    (models / NAME / "model.safetensors").write_bytes(b"weights as this machine computed thex")

    entry = entry_verified_here(read_lock(other_hosts_lock), models / NAME, NAME)
    with pytest.raises(ModelIntegrityError, match="model.safetensors.*altered"):
        verify_model_dir(models / NAME, entry, progress=None)


def test_weights_copied_from_another_machine_without_its_record_are_refused(
        other_hosts_lock: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    demo_models.fetch_demo_models(models, other_hosts_lock, only=[NAME])
    (models / HOST_LOCK_NAME).unlink()  # the model directory alone, without this machine's record

    entry = entry_verified_here(read_lock(other_hosts_lock), models / NAME, NAME)
    with pytest.raises(ModelIntegrityError, match="model.safetensors.*altered"):
        verify_model_dir(models / NAME, entry, progress=None)


def test_a_rebuild_here_must_reproduce_this_machines_first_build(
        other_hosts_lock: Path, cached_build: Path, tmp_path: Path) -> None:
    demo_models.fetch_demo_models(tmp_path / "models", other_hosts_lock, only=[NAME])
    (cached_build / "model.safetensors").write_bytes(b"weights computed differently the second time")

    with pytest.raises(demo_models.DemoModelError, match="(?s)model.safetensors.*not reproducible on this machine"):
        demo_models.fetch_demo_models(tmp_path / "dest2", other_hosts_lock, only=[NAME])
    assert not (tmp_path / "dest2" / NAME).exists()


def test_files_that_are_not_host_built_are_still_checked_against_the_lock(
        other_hosts_lock: Path, cached_build: Path, tmp_path: Path) -> None:
    (cached_build / "tokenizer.model").write_bytes(b"\x01" * 100)
    with pytest.raises(demo_models.DemoModelError, match="(?s)tokenizer.model: built.*locked"):
        demo_models.fetch_demo_models(tmp_path / "models", other_hosts_lock, only=[NAME])


def test_a_host_record_of_another_recipe_does_not_count(other_hosts_lock: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    demo_models.fetch_demo_models(models, other_hosts_lock, only=[NAME])
    record = read_lock(models / HOST_LOCK_NAME)
    stale = record.find(NAME)
    record.upsert(replace(stale, revision=f"built:{NAME}@0000000000000000"))
    write_lock(record, models / HOST_LOCK_NAME)

    entry = entry_verified_here(read_lock(other_hosts_lock), models / NAME, NAME)
    with pytest.raises(ModelIntegrityError, match="model.safetensors"):
        verify_model_dir(models / NAME, entry, progress=None)
