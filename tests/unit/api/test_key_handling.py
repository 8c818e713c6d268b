"""Where keys are refused or exposed: /version behind the key, an empty key refused at start, and a key
on the command line (visible to every user in `ps`) warned about, with the environment and the keys
file as the ways that are not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from api_harness import assert_openai_error

from hxp_enterprise_llm.schemas.configuration.model_schemas import ConfigError
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789abcdef"
HXP_LLM = Path(sys.executable).parent / "hxp-llm"


async def test_version_needs_the_key_like_every_api_route(serve_app) -> None:
    async with serve_app(api_key=KEY) as served:
        refused = await served.client.get("/version")
        answered = await served.client.get("/version", headers={"Authorization": f"Bearer {KEY}"})
    assert_openai_error(refused, 401, code="invalid_api_key")
    assert answered.status_code == 200
    assert answered.json()["model"] == "openchat-3.5"


@pytest.mark.parametrize("empty", ["", "   ", "\t"])
def test_an_empty_api_key_is_refused_at_start_naming_the_key(empty: str, tmp_path: Path) -> None:
    # An empty key would be a key: `Authorization: Bearer ` (nothing after it) would open the API.
    for origin in ({"cli_overrides": {"api_key": empty}}, {"environ": {"OPENCHAT_3_5_API_KEY": empty}}):
        with pytest.raises(ConfigError, match=r"service\.api_key = .*empty"):
            OpenChat35Config.load(None, **origin)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f'service:\n  api_key: "{empty}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"service\.api_key"):
        OpenChat35Config.load(config_file, environ={})


def _serve_until_model_check(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`hxp-llm serve` on a model directory that is not in the lock: it logs its start-up warnings, then
    refuses the model (exit 3) before any engine code runs."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENCHAT_3_5_")}
    model_dir = cwd / "not-locked"
    model_dir.mkdir(exist_ok=True)
    return subprocess.run([str(HXP_LLM), "serve", "--model-path", str(model_dir), *args], capture_output=True,
                          text=True, timeout=120, env={**clean, **env}, cwd=cwd)


@pytest.mark.skipif(not HXP_LLM.exists(), reason="the hxp-llm console script is not installed")
def test_a_key_on_the_command_line_is_warned_about_and_the_environment_is_not(tmp_path: Path) -> None:
    flagged = _serve_until_model_check("--api-key", KEY, env={}, cwd=tmp_path)
    assert flagged.returncode == 3, flagged.stderr
    (warning,) = [line for line in flagged.stderr.splitlines() if "--api-key" in line]
    for said in ("`ps`", "OPENCHAT_3_5_API_KEY", "api_keys_file", "WARNING"):
        assert said in warning, warning
    assert KEY not in flagged.stderr

    from_env = _serve_until_model_check(env={"OPENCHAT_3_5_API_KEY": KEY}, cwd=tmp_path)
    assert from_env.returncode == 3, from_env.stderr
    assert "--api-key" not in from_env.stderr, from_env.stderr
