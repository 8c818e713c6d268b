"""Configuration: defaults < YAML < environment < CLI, origins, and every bad value named with its range."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hxp_enterprise_llm.schemas.configuration.model_schemas import YAML_SECTIONS, ConfigError
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from support.compose_files import read_env_file

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config"

SPEC_DEFAULTS = {
    "port": 11402, "memory_gb": 8, "cpu_cores": 4, "model_path": Path("/opt/models/openchat-3.5-0106"),
    "model_name": "openchat/openchat-3.5-0106", "max_model_len": 4096, "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.7, "max_num_batched_tokens": 2048, "max_num_seqs": 64,
    "streaming_enabled": True, "concurrent_users": 50, "response_chunk_size": 10, "low_latency_mode": True,
    "target_latency_ms": 1000, "target_throughput_rps": 50, "swap_space": 0, "enforce_eager": False,
    "metrics_port": 11403, "health_check_interval": 15, "connection_timeout_seconds": 30,
    "metrics_collection_interval": 10, "log_level": "INFO", "host": "0.0.0.0", "workers": 1,
}


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load(config_file: Path | None = None, cli: dict[str, object] | None = None,
         env: dict[str, str] | None = None):
    return OpenChat35Config.load(config_file, cli_overrides=cli, environ=env or {})


def rejection(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load(**kwargs)  # type: ignore[arg-type]
    return str(caught.value)


def test_defaults_are_the_specs() -> None:
    loaded = load()
    for key, value in SPEC_DEFAULTS.items():
        assert getattr(loaded.config, key) == value, key
    assert set(loaded.origins.values()) == {"default"}


def test_each_layer_overrides_the_one_below_for_several_keys(tmp_path: Path) -> None:
    config_file = write_yaml(tmp_path, """
service:
  port: 12000
  log_level: DEBUG
model:
  max_model_len: 2048
performance:
  max_num_seqs: 8
realtime:
  response_chunk_size: 3
""")
    env = {"OPENCHAT_3_5_PORT": "12001", "OPENCHAT_3_5_MAX_NUM_SEQS": "16",
           "OPENCHAT_3_5_RESPONSE_CHUNK_SIZE": "4"}
    cli = {"port": 12002, "max_num_seqs": None}  # None: the flag was not given

    loaded = load(config_file, cli=cli, env=env)
    config, origins = loaded.config, loaded.origins

    assert (config.port, origins["port"]) == (12002, "cli")
    assert (config.max_num_seqs, origins["max_num_seqs"]) == (16, "env:OPENCHAT_3_5_MAX_NUM_SEQS")
    assert (config.response_chunk_size, origins["response_chunk_size"]) == (
        4, "env:OPENCHAT_3_5_RESPONSE_CHUNK_SIZE")
    assert (config.max_model_len, origins["max_model_len"]) == (2048, f"yaml:{config_file}")
    assert (config.log_level, origins["log_level"]) == ("DEBUG", f"yaml:{config_file}")
    assert (config.metrics_port, origins["metrics_port"]) == (11403, "default")


def test_a_kv_cache_variable_that_vllm_would_obey_instead_is_refused() -> None:
    # vLLM's CPU platform reads VLLM_CPU_KVCACHE_SPACE over the engine's arguments.
    message = rejection(env={"VLLM_CPU_KVCACHE_SPACE": "6", "OPENCHAT_3_5_KV_CACHE_SPACE_GB": "2"})
    assert message == ("VLLM_CPU_KVCACHE_SPACE=6 is set: vLLM would size the KV cache from it instead of "
                       "kv_cache_space_gb=2 (env:OPENCHAT_3_5_KV_CACHE_SPACE_GB); unset it, and give the size as "
                       "OPENCHAT_3_5_KV_CACHE_SPACE_GB or kv_cache_space_gb")
    assert "kv_cache_space_gb=4 (default)" in rejection(env={"VLLM_CPU_KVCACHE_SPACE": "lots"})
    agreeing = load(env={"VLLM_CPU_KVCACHE_SPACE": "2", "OPENCHAT_3_5_KV_CACHE_SPACE_GB": "2"})
    assert agreeing.config.kv_cache_space_gb == 2
    assert load(env={"VLLM_CPU_KVCACHE_SPACE": ""}).config.kv_cache_space_gb == 4  # empty: vLLM ignores it too


def test_yaml_values_the_environment_replaced_are_listed(tmp_path: Path) -> None:
    # As in a container: the image's OPENCHAT_3_5_MODEL_PATH and _ENFORCE_EAGER outrank the operator's YAML.
    config_file = write_yaml(tmp_path, "model:\n  model_path: /models/awq\n  enforce_eager: false\n"
                                       "  max_model_len: 2048\nservice:\n  port: 9000\n")
    loaded = load(config_file, cli={"port": 9100},
                  env={"OPENCHAT_3_5_MODEL_PATH": "/opt/models/openchat-3.5-0106",
                       "OPENCHAT_3_5_ENFORCE_EAGER": "true", "OPENCHAT_3_5_MAX_MODEL_LEN": "2048",
                       "OPENCHAT_3_5_PORT": "9200"})
    assert loaded.shadowed == {"model_path": f"'/models/awq' from yaml:{config_file}",
                               "enforce_eager": f"False from yaml:{config_file}"}  # same value, or the CLI's: none
    assert str(loaded.config.model_path) == "/opt/models/openchat-3.5-0106"


def test_serve_warns_for_each_yaml_value_the_environment_replaced(tmp_path: Path) -> None:
    config_file = write_yaml(tmp_path, "model:\n  model_path: /models/awq\n")
    result = subprocess.run([sys.executable, "-m", "hxp_enterprise_llm.cli", "serve", "--config", str(config_file)],
                            env={**os.environ, "OPENCHAT_3_5_MODEL_PATH": str(tmp_path / "missing")},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0  # no model there: refused after the warning
    assert (f"model_path: the environment's OPENCHAT_3_5_MODEL_PATH={tmp_path / 'missing'} replaces '/models/awq' "
            f"from yaml:{config_file}") in result.stderr


def test_environment_alone_overrides_defaults() -> None:
    loaded = load(env={"OPENCHAT_3_5_GPU_MEMORY_UTILIZATION": "0.5", "OPENCHAT_3_5_ENFORCE_EAGER": "1"})
    assert loaded.config.gpu_memory_utilization == 0.5
    assert loaded.config.enforce_eager is True
    assert loaded.origins["enforce_eager"] == "env:OPENCHAT_3_5_ENFORCE_EAGER"


def test_rows_report_every_key_with_its_section_and_origin(tmp_path: Path) -> None:
    config_file = write_yaml(tmp_path, "monitoring:\n  metrics_port: 9100\n")
    rows = {key: (section, value, origin)
            for section, key, value, origin in load(config_file).rows()}
    assert rows["metrics_port"] == ("monitoring", 9100, f"yaml:{config_file}")
    assert rows["port"] == ("service", 11402, "default")
    assert set(rows) == set(OpenChat35Config.model_fields)


def test_api_key_is_masked_in_rows() -> None:
    rows = {key: value for _, key, value, _ in load(env={"OPENCHAT_3_5_API_KEY": "s3cret"}).rows()}
    assert rows["api_key"] == "********"


def test_port_out_of_range_names_key_value_and_range() -> None:
    message = rejection(cli={"port": 70000})
    assert "service.port" in message
    assert "70000" in message
    assert "1 <= value <= 65535" in message
    assert "cli" in message


def test_gpu_memory_utilization_above_one_names_key_value_and_range() -> None:
    message = rejection(env={"OPENCHAT_3_5_GPU_MEMORY_UTILIZATION": "1.5"})
    assert "model.gpu_memory_utilization" in message
    assert "1.5" in message
    assert "0 < value <= 1" in message
    assert "env:OPENCHAT_3_5_GPU_MEMORY_UTILIZATION" in message


def test_a_variable_in_another_case_is_refused_not_ignored() -> None:
    # It was counted as known (compared in lower case) but read only under its exact upper-case name.
    message = rejection(env={"OPENCHAT_3_5_max_num_seqs": "8"})
    assert "unknown environment variable(s) OPENCHAT_3_5_max_num_seqs" in message


@pytest.mark.parametrize("key", ["log_dir", "usage_log_file", "api_keys_file", "models_lock", "model_path"])
@pytest.mark.parametrize("where", ["env", "cli"])
def test_an_empty_path_is_refused_not_taken_for_the_current_directory(key: str, where: str) -> None:
    given = {"env": {OpenChat35Config.env_name(key): ""}} if where == "env" else {"cli": {key: ""}}
    message = rejection(**given)
    assert key in message
    assert "empty: give a path, or leave the setting out" in message


@pytest.mark.parametrize("value", ["0.5", "65.9", "0"])
def test_keep_alive_is_whole_seconds(value: str) -> None:
    # uvicorn takes whole seconds: 0.5 became 0 (keep-alive off) and 65.9 became 65.
    message = rejection(env={"OPENCHAT_3_5_KEEP_ALIVE_SECONDS": value})
    assert "service.keep_alive_seconds" in message


def test_keep_alive_reaches_uvicorn_as_given() -> None:
    from fastapi import FastAPI

    from hxp_enterprise_llm.server import server_config

    config = load(env={"OPENCHAT_3_5_KEEP_ALIVE_SECONDS": "75"}).config
    assert server_config(FastAPI(), config).timeout_keep_alive == 75


def test_bad_yaml_value_names_the_file(tmp_path: Path) -> None:
    config_file = write_yaml(tmp_path, "performance:\n  max_num_seqs: 0\n")
    message = rejection(config_file=config_file)
    assert "performance.max_num_seqs" in message
    assert f"yaml:{config_file}" in message
    assert "1 <= value <= 4096" in message


def test_unknown_yaml_key_is_rejected(tmp_path: Path) -> None:
    message = rejection(config_file=write_yaml(tmp_path, "service:\n  prot: 8000\n"))
    assert "unknown key 'service.prot'" in message
    assert "port" in message  # the allowed keys are listed


def test_yaml_key_in_the_wrong_section_points_to_the_right_one(tmp_path: Path) -> None:
    message = rejection(config_file=write_yaml(tmp_path, "service:\n  max_num_seqs: 8\n"))
    assert "unknown key 'service.max_num_seqs'" in message
    assert "belongs in section 'performance'" in message


def test_unknown_yaml_section_is_rejected(tmp_path: Path) -> None:
    message = rejection(config_file=write_yaml(tmp_path, "servce:\n  port: 8000\n"))
    assert "unknown section 'servce'" in message


def test_small_batch_without_chunked_prefill_is_rejected() -> None:
    message = rejection(cli={"enable_chunked_prefill": False, "max_num_batched_tokens": 1024,
                             "max_model_len": 4096})
    assert "max_num_batched_tokens=1024" in message
    assert "max_model_len=4096" in message
    assert "chunked prefill" in message


def test_small_batch_with_chunked_prefill_is_accepted() -> None:
    config = load(cli={"max_num_batched_tokens": 1024, "max_model_len": 4096}).config
    assert config.max_num_batched_tokens == 1024


def test_yaml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    config_file = write_yaml(tmp_path, "service:\n  port: 11402\n  host: [unclosed\nmodel:\n  dtype: auto\n")
    message = rejection(config_file=config_file)
    assert str(config_file) in message
    assert "YAML syntax error" in message
    assert "line 4" in message


def test_unknown_openchat_environment_variable_is_rejected() -> None:
    message = rejection(env={"OPENCHAT_3_5_MAX_NUM_SEQ": "8"})
    assert "OPENCHAT_3_5_MAX_NUM_SEQ" in message
    assert "unknown environment variable" in message


def test_other_environment_variables_are_ignored() -> None:
    assert load(env={"OPENCHAT_PORT": "1", "PORT": "2"}).config.port == 11402


def test_config_is_frozen() -> None:
    config = load().config
    with pytest.raises(ValueError, match="frozen"):
        config.port = 1  # type: ignore[misc]


def test_shipped_yaml_has_the_spec_sections_and_defaults() -> None:
    loaded = load(REPO_CONFIG / "openchat-3.5.yaml")
    for key, value in SPEC_DEFAULTS.items():
        assert getattr(loaded.config, key) == value, key
        assert loaded.origins[key].startswith("yaml:"), key
    import yaml

    document = yaml.safe_load((REPO_CONFIG / "openchat-3.5.yaml").read_text(encoding="utf-8"))
    assert list(document) == list(YAML_SECTIONS)


def test_shipped_env_file_sets_every_spec_key_to_its_default() -> None:
    env = read_env_file(REPO_CONFIG / "openchat-3.5.env")
    assert set(env) == {OpenChat35Config.env_name(key) for key in SPEC_DEFAULTS}
    loaded = load(env=env)
    for key, value in SPEC_DEFAULTS.items():
        assert getattr(loaded.config, key) == value, key
        assert loaded.origins[key] == f"env:{OpenChat35Config.env_name(key)}"
