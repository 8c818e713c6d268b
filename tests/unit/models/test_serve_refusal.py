"""`hxp-llm serve` refuses a model that does not match models.lock, before any engine code runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from model_fixtures import LockedModel

HXP_LLM = Path(sys.executable).parent / "hxp-llm"
REPO_ROOT = Path(__file__).resolve().parents[3]
EXIT_MODEL = 3


def serve(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Free ports: the refusal must come before binding, but a stray listener must not mask it either.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCHAT_3_5_")}
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


@pytest.mark.skipif(not HXP_LLM.exists(), reason="the hxp-llm console script is not installed")
def test_serve_exits_3_naming_the_tampered_file_without_loading_the_engine(
        locked_model: LockedModel, tmp_path: Path) -> None:
    weights = locked_model.model_dir / "model-00002-of-00002.safetensors"
    data = bytearray(weights.read_bytes())
    data[0] ^= 0x01
    weights.write_bytes(bytes(data))
    serve_args = ["serve", "--model-path", str(locked_model.model_dir), "--models-lock",
                  str(locked_model.lock_path), "--enforce-eager"]

    result = serve([str(HXP_LLM), *serve_args], tmp_path)

    assert result.returncode == EXIT_MODEL, result.stderr
    assert "model-00002-of-00002.safetensors" in result.stderr
    assert "sha256 expected" in result.stderr
    output = result.stdout + result.stderr
    for engine_line in ("Initializing a V1 LLM engine", "EngineCore", "Loading weights", "Uvicorn running"):
        assert engine_line not in output

    # The same command in a process that reports what it imported: vLLM never was.
    probe = ("import sys; from hxp_enterprise_llm.cli import main; code = main(sys.argv[1:]); "
             "print('vllm imported:', 'vllm' in sys.modules, file=sys.stderr); sys.exit(code)")
    probed = serve([sys.executable, "-c", probe, *serve_args], tmp_path)
    assert probed.returncode == EXIT_MODEL
    assert "vllm imported: False" in probed.stderr


@pytest.mark.skipif(not HXP_LLM.exists(), reason="the hxp-llm console script is not installed")
def test_serve_refuses_an_unlocked_model_with_the_lock_command(tmp_path: Path) -> None:
    model_dir = tmp_path / "openchat-3.5-0106"
    model_dir.mkdir()
    result = serve([str(HXP_LLM), "serve", "--model-path", str(model_dir),
                    "--models-lock", str(REPO_ROOT / "models.lock")], tmp_path)
    assert result.returncode == EXIT_MODEL, result.stderr
    assert "hxp-llm model lock openchat-3.5-0106 --revision 9619fb7d2a8e25fa6b0633c0f57f7f4aa79b45c4" in result.stderr
