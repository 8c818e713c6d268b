"""scripts/torch-source: where pip takes torch 2.13.0+cpu from, chosen explicitly and said out loud.

Runs the real script with pip's configuration switched off (a user's machine has none of ours) and no
index (nothing leaves the machine): a folder holding a minimal torch wheel stands for a wheelhouse.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "torch-source"
WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def _wheelhouse(folder: Path) -> Path:
    """A folder with a wheel pip accepts as torch 2.13.0+cpu (metadata only; it is never installed)."""
    folder.mkdir()
    info = "torch-2.13.0+cpu.dist-info"
    with zipfile.ZipFile(folder / WHEEL, "w") as wheel:
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                                        "Tag: cp311-cp311-manylinux_2_28_x86_64\n")
        wheel.writestr(f"{info}/RECORD", "")
    return folder


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "HXP_TORCH_"))}
    clean.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", **env)
    return subprocess.run([str(SCRIPT)], env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_a_wheel_folder_named_by_the_variable_is_used_and_named_in_the_log(tmp_path: Path) -> None:
    folder = _wheelhouse(tmp_path / "wheels")
    result = _run(tmp_path, HXP_TORCH_FIND_LINKS=str(folder))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["--find-links", str(folder)]
    assert f"from file://{folder}/torch-2.13.0%2Bcpu" in result.stderr
    assert "via HXP_TORCH_FIND_LINKS" in result.stderr


def test_without_any_source_it_falls_back_to_pytorchs_index_and_says_what_to_set(tmp_path: Path) -> None:
    result = _run(tmp_path)  # no configuration, no variable, no index reachable
    assert result.returncode == 1
    assert "https://download.pytorch.org/whl/cpu" in result.stderr
    assert "HXP_TORCH_INDEX_URL" in result.stderr
    assert "HXP_TORCH_FIND_LINKS" in result.stderr
    assert result.stdout == ""


def test_a_folder_without_the_wheel_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _run(tmp_path, HXP_TORCH_FIND_LINKS=str(tmp_path / "empty"))
    assert result.returncode == 1
    assert "cannot find torch==2.13.0+cpu" in result.stderr


def test_help_says_which_variables_choose_the_source(tmp_path: Path) -> None:
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "HXP_TORCH_FIND_LINKS" in result.stdout
    assert "HXP_TORCH_INDEX_URL" in result.stdout
