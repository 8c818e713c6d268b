"""model_aliases reads the same from every layer: a YAML list, or "a,b" in the environment or a flag."""

from __future__ import annotations

from pathlib import Path

from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from support.compose_files import read_env_file

REPO = Path(__file__).resolve().parents[2]


def test_aliases_from_env_file_style_value() -> None:
    loaded = OpenChat35Config.load(environ={"OPENCHAT_3_5_MODEL_ALIASES": "openchat/openchat-3.5-0106, b"})
    assert loaded.config.model_aliases == ("openchat/openchat-3.5-0106", "b")


def test_aliases_from_yaml_list_and_cli_override() -> None:
    from_yaml = OpenChat35Config.load(REPO / "config" / "demo-cpu.yaml", environ={})
    assert "openchat/openchat-3.5-0106" in from_yaml.config.model_aliases
    from_cli = OpenChat35Config.load(REPO / "config" / "demo-cpu.yaml", {"model_aliases": "x,y"}, environ={})
    assert from_cli.config.model_aliases == ("x", "y")
    assert from_cli.origins["model_aliases"] == "cli"


def test_container_demo_env_file_answers_to_the_production_names() -> None:
    environ = read_env_file(REPO / "config" / "container-cpu.env")
    loaded = OpenChat35Config.load(environ=environ)
    assert loaded.config.model_aliases == ("openchat/openchat-3.5-0106", "openchat-3.5-0106")
