"""README.md and docs/*.md match the code: links and anchors resolve, every `hxp-llm ...` command and
`scripts/...` named exists and answers --help, every config key documented is a setting and every
setting is documented. The checker itself is tested on planted documents (tests/support/docs_check.py).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hxp_enterprise_llm.cli import build_parser
from hxp_enterprise_llm.schemas.configuration.model_schemas import SECTION_OF_KEY, ModelConfigSchema
from support.docs_check import (
    Doc,
    command_problems,
    config_key_problems,
    default_problems,
    env_name_problems,
    link_problems,
    load,
    module_problems,
    path_problems,
    script_file_problems,
    script_options_named,
    scripts_named,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENV_PREFIX = ModelConfigSchema.env_prefix
ENV_EXTRA = {ENV_PREFIX + "CONFIG_FILE"}  # names the YAML file, not a setting


def schema_sections() -> dict[str, str]:
    return {key: SECTION_OF_KEY.get(key, "(no section)") for key in ModelConfigSchema.model_fields}


def all_problems(check: Callable[[Doc], list[str]]) -> list[str]:
    return [p for path in DOCS for p in check(load(path))]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_and_anchors_resolve(path: Path) -> None:
    assert link_problems(load(path), ROOT) == []


def repo_top_dirs() -> list[str]:
    # models/ holds what scripts/setup builds (git-ignored): its paths exist only after a set-up.
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name not in {"models", "build", "dist"} and not p.name.endswith(".egg-info"))


def test_every_repository_path_named_exists() -> None:
    assert all_problems(lambda doc: path_problems(doc, ROOT, repo_top_dirs())) == []


def test_every_hxp_llm_command_named_exists_and_answers_help() -> None:
    parser = build_parser()
    assert all_problems(lambda doc: command_problems(doc, parser)) == []


def test_every_python_module_named_exists() -> None:
    assert all_problems(module_problems) == []


def test_configuration_md_documents_exactly_the_schemas_keys() -> None:
    assert config_key_problems(load(ROOT / "docs" / "configuration.md"), schema_sections()) == []


def test_configuration_md_gives_the_schemas_defaults() -> None:
    defaults = {key: info.default for key, info in ModelConfigSchema.model_fields.items()}
    assert default_problems(load(ROOT / "docs" / "configuration.md"), defaults) == []


def test_every_setting_variable_named_is_a_setting() -> None:
    keys = ModelConfigSchema.model_fields
    assert all_problems(lambda doc: env_name_problems(doc, keys, ENV_PREFIX, ENV_EXTRA)) == []


def _git_status() -> str | None:
    result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else None


def test_every_script_named_exists_is_executable_and_help_has_no_side_effects(tmp_path: Path) -> None:
    named = scripts_named(load(p) for p in DOCS)
    assert named, "the docs name no scripts/...: the pattern is broken"
    assert script_file_problems(named, ROOT) == []

    cache = tmp_path / "cache"  # every script keeps its state under HXP_CACHE_DIR: it must stay absent
    env = {**os.environ, "HXP_CACHE_DIR": str(cache), "HOME": str(tmp_path / "home")}
    before = _git_status()

    def run_help(script: str) -> tuple[str, int, str]:
        # The timeout only stops a script that ignores --help and starts working; it is not a measure.
        result = subprocess.run([str(ROOT / script), "--help"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=180, stdin=subprocess.DEVNULL)
        return script, result.returncode, result.stdout + result.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run_help, sorted(named)))
    failed = [f"{s}: exit {code}: {out[-300:]}" for s, code, out in results if code != 0 or not out.strip()]
    assert failed == []
    helps = {script: out for script, _, out in results}
    unknown_options = [f"{script} {option} (named at {where})"
                       for script, options in script_options_named(load(p) for p in DOCS).items()
                       for option, where in options.items() if option not in helps.get(script, "")]
    assert unknown_options == []
    assert not cache.exists()
    assert not (tmp_path / "home").exists()
    assert _git_status() == before


# --- the checker fails where it should

PLANTED = """# Planted

## A heading

See [setup](setup.md), [the heading](#a-heading), [a gone page](environment.md) and
[a wrong anchor](#no-such-heading); openchat-facts.md is cited too.

```bash
hxp-llm serve --config config/demo-cpu.yaml
hxp-llm model fetch-demo --only x
hxp-llm serve --no-such-flag 3
hxp-llm model verify <dir>
python -m hxp_enterprise_llm.no_such_module
```

`OPENCHAT_3_5_PORT` and `OPENCHAT_3_5_NO_SUCH_KEY`; `scripts/setup --only-x` and `scripts/no-such-script`.
`config/demo-cpu.yaml`, `config/*.env`, `config/no-such.yaml`.
"""


def planted(tmp_path: Path, text: str) -> Doc:
    (tmp_path / "setup.md").write_text("# Setup\n")
    path = tmp_path / "planted.md"
    path.write_text(text)
    return load(path)


def test_the_checker_reports_planted_dead_links_and_anchors(tmp_path: Path) -> None:
    problems = link_problems(planted(tmp_path, PLANTED), tmp_path)
    assert len(problems) == 3, problems
    assert "dead link 'environment.md'" in problems[0]
    assert "no heading with the anchor '#no-such-heading'" in problems[1]
    assert "'openchat-facts.md' is named" in problems[2]
    assert path_problems(planted(tmp_path, PLANTED), ROOT, ["config"]) == [
        "planted.md:17: config/no-such.yaml does not exist"]


def test_the_checker_reports_planted_unknown_commands_options_and_modules(tmp_path: Path) -> None:
    doc = planted(tmp_path, PLANTED)
    problems = command_problems(doc, build_parser())
    assert len(problems) == 3, problems
    assert "no command 'hxp-llm model fetch-demo'" in problems[0]
    assert "'hxp-llm serve' has no option --no-such-flag" in problems[1]
    assert "'hxp-llm model verify' takes no argument like '<dir>'" in problems[2]
    assert module_problems(doc) == [
        "planted.md:13: `python -m hxp_enterprise_llm.no_such_module`: no such module"]


def test_the_checker_reports_planted_unknown_and_undocumented_keys(tmp_path: Path) -> None:
    sections = {"port": "service", "max_n": "performance", "dtype": "model"}
    doc = planted(tmp_path, "# Configuration\n\n## service\n| key | default |\n|---|---|\n"
                            "| `port`, `no_such_key` | 1 |\n| `max_n` | 8 |\n")
    assert config_key_problems(doc, sections) == [
        "planted.md:6: key 'no_such_key' is not a setting of the schema",
        "planted.md:7: key 'max_n' is documented under 'service', the schema puts it in 'performance'",
        "planted.md: setting 'model.dtype' is not documented",
    ]
    assert default_problems(doc, {"port": 11402, "max_n": 8}) == [
        "planted.md:6: 'port' is documented with default '1', the schema's is '11402'"]
    env_problems = env_name_problems(planted(tmp_path, PLANTED), ["port"], ENV_PREFIX, ENV_EXTRA)
    assert env_problems == ["planted.md:16: OPENCHAT_3_5_NO_SUCH_KEY is not a setting's variable"]


def test_the_checker_reports_a_planted_missing_script_and_collects_script_options(tmp_path: Path) -> None:
    doc = planted(tmp_path, PLANTED)
    named = scripts_named([doc])
    assert set(named) == {"scripts/setup", "scripts/no-such-script"}
    assert script_file_problems(named, ROOT) == ["planted.md:16: scripts/no-such-script does not exist"]
    assert script_options_named([doc]) == {"scripts/setup": {"--only-x": "planted.md:16"}}
