from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from model_fixtures import LockedModel

from hxp_enterprise_llm.models.lockfile import LockError
from hxp_enterprise_llm.models.serving_check import resolve_lock_path, verify_model_for_serving
from hxp_enterprise_llm.models.stamps import VerifiedStamps
from hxp_enterprise_llm.models.verify import ModelIntegrityError, UnlockedModelError
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config

REPO_ROOT = Path(__file__).resolve().parents[3]


def config(**overrides: object) -> OpenChat35Config:
    loaded = OpenChat35Config.load(cli_overrides=overrides, environ={})
    assert isinstance(loaded.config, OpenChat35Config)
    return loaded.config


def test_the_entry_named_like_the_directory_is_verified(locked_model: LockedModel) -> None:
    entry = verify_model_for_serving(config(model_path=locked_model.model_dir, models_lock=locked_model.lock_path))
    assert entry is not None
    assert entry.name == "fixture-model"


def test_the_model_name_finds_the_entry_when_the_directory_is_named_otherwise(
        locked_model: LockedModel, tmp_path: Path) -> None:
    renamed = shutil.move(locked_model.model_dir, tmp_path / "weights")
    entry = verify_model_for_serving(config(model_path=Path(renamed), model_name="test/fixture-model",
                                            models_lock=locked_model.lock_path))
    assert entry is not None
    assert entry.name == "fixture-model"
    with pytest.raises(LockError, match="no entry for model directory 'weights' nor model 'other/model'"):
        verify_model_for_serving(config(model_path=Path(renamed), model_name="other/model",
                                        models_lock=locked_model.lock_path))


def test_a_tampered_model_refuses_with_a_one_line_error(locked_model: LockedModel) -> None:
    (locked_model.model_dir / "tokenizer_config.json").write_text('{"eos_token": "</s>"}\n')
    with pytest.raises(ModelIntegrityError) as caught:
        verify_model_for_serving(config(model_path=locked_model.model_dir, models_lock=locked_model.lock_path))
    assert "tokenizer_config.json" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_real_openchat_entry_is_refused_until_locked(tmp_path: Path) -> None:
    model_dir = tmp_path / "openchat-3.5-0106"
    model_dir.mkdir()
    with pytest.raises(UnlockedModelError, match="hxp-llm model lock openchat-3.5-0106 --revision 9619fb7d"):
        verify_model_for_serving(config(model_path=model_dir, models_lock=REPO_ROOT / "models.lock"))


def test_off_skips_the_check_and_says_so_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        result = verify_model_for_serving(config(model_path=tmp_path / "absent", model_verification="off",
                                                 models_lock=tmp_path / "absent.lock"))
    assert result is None
    assert "MODEL VERIFICATION IS OFF" in caplog.text


def test_stamp_mode_hashes_once_then_trusts_the_stamp(locked_model: LockedModel, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    stamps = VerifiedStamps(tmp_path / "state")
    settings = config(model_path=locked_model.model_dir, models_lock=locked_model.lock_path,
                      model_verification="stamp")
    with caplog.at_level(logging.INFO, logger="hxp_enterprise_llm.models.serving_check"):
        verify_model_for_serving(settings, stamps=stamps)
        verify_model_for_serving(settings, stamps=stamps)
    assert "hashed in" in caplog.records[0].getMessage()
    assert "verified-stamp trusted" in caplog.records[1].getMessage()


def test_a_relative_lock_path_is_taken_from_the_cwd_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No fallback to the package's location: in the image that would be a path inside the venv.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LockError, match=f"{tmp_path}/models.lock not found"):
        resolve_lock_path(Path("models.lock"))
    (tmp_path / "models.lock").write_text("version = 1\n")
    assert resolve_lock_path(Path("models.lock")) == tmp_path / "models.lock"
    assert resolve_lock_path(tmp_path / "models.lock") == tmp_path / "models.lock"
