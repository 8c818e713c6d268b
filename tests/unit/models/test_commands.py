from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from model_fixtures import LockedModel

from hxp_enterprise_llm.cli_model import main


def test_export_sha256_is_accepted_by_real_sha256sum(locked_model: LockedModel, tmp_path: Path) -> None:
    listing = tmp_path / "model.sha256"
    assert main(["model", "export-sha256", "fixture-model", "--lock", str(locked_model.lock_path),
                 "-o", str(listing)]) == 0
    ok = subprocess.run(["sha256sum", "-c", "--strict", str(listing)], cwd=locked_model.model_dir,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": OK") == len(locked_model.entry.files)
    assert "nested/extra_weights.bin: OK" in ok.stdout

    (locked_model.model_dir / "config.json").write_text("{}")
    bad = subprocess.run(["sha256sum", "-c", str(listing)], cwd=locked_model.model_dir,
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "config.json: FAILED" in bad.stdout


def test_export_sha256_to_a_missing_directory_is_one_error_line(locked_model: LockedModel, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "missing" / "model.sha256"
    assert main(["model", "export-sha256", "fixture-model", "--lock", str(locked_model.lock_path),
                 "-o", str(target)]) == 1
    assert capsys.readouterr().err == f"error: cannot write {target}: No such file or directory\n"


@pytest.mark.parametrize("flags", [["verify", "--workers", "-1"], ["verify", "--workers", "0"],
                                   ["download", "x", "--max-workers", "0"]])
def test_worker_counts_below_one_are_refused_by_the_parser(flags: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # -1 once reached ThreadPoolExecutor as it was: a ValueError traceback after the lock was read.
    with pytest.raises(SystemExit) as exited:
        main(["model", *flags])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_export_sha256_refuses_an_unlocked_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "export-sha256", "openchat-3.5-0106"]) == 2
    assert "hxp-llm model lock openchat-3.5-0106" in capsys.readouterr().err


def test_verify_exit_codes_and_messages(locked_model: LockedModel, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["model", "verify", "--model-path", str(locked_model.model_dir), "--lock", str(locked_model.lock_path)]
    assert main(args) == 0
    assert "ok: " in capsys.readouterr().out

    shutil.copy(locked_model.model_dir / "config.json", locked_model.model_dir / "config.json.bak")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "unexpected file 'config.json.bak'" in err
    assert "nothing was changed or deleted" in err
    assert (locked_model.model_dir / "config.json.bak").exists()

    assert main([*args, "--name", "no-such-model"]) == 2
    assert "no entry for 'no-such-model'" in capsys.readouterr().err


def test_download_of_an_unlocked_entry_is_refused_before_any_transfer(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["model", "download", "openchat-3.5-0106", "--models-root", str(tmp_path),
                 "--endpoint", "http://127.0.0.1:9"])  # nothing listens there: no request may be made
    assert code == 2
    assert "hxp-llm model lock openchat-3.5-0106 --revision 9619fb7d" in capsys.readouterr().err
    assert not (tmp_path / "openchat-3.5-0106").exists()
