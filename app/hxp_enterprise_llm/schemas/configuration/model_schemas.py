"""The validated service configuration and its loading: defaults < YAML < environment < CLI.

`ModelConfigSchema` holds every key with its default and allowed range. A model's settings class
(`OpenChat35Config`) subclasses it to set the environment prefix. `load_config` builds one frozen
instance from the four layers and remembers where each value came from, for `hxp-llm config show`.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

# The spec's YAML is nested by concern; the settings themselves are flat. Each YAML key lives in
# exactly one section, so `service.port` and `OPENCHAT_3_5_PORT` name the same setting.
YAML_SECTIONS: dict[str, tuple[str, ...]] = {
    "service": (
        "host", "port", "workers", "log_level", "log_dir", "api_key", "served_model_name", "model_aliases",
        "memory_gb", "cpu_cores", "web_ui_enabled",
    ),
    "model": (
        "model_path", "model_name", "models_lock", "model_verification", "prompt_format", "dtype",
        "max_model_len", "tensor_parallel_size", "gpu_memory_utilization", "swap_space",
        "enforce_eager", "kv_cache_space_gb", "model_load_timeout_seconds",
    ),
    "performance": (
        "max_num_batched_tokens", "max_num_seqs", "enable_chunked_prefill", "target_latency_ms",
        "target_throughput_rps",
    ),
    "realtime": (
        "streaming_enabled", "concurrent_users", "response_chunk_size", "low_latency_mode",
        "connection_timeout_seconds", "max_queue_size", "queue_timeout_seconds",
        "stream_flush_interval_ms", "stream_ping_seconds", "max_request_body_bytes",
        "drain_timeout_seconds",
    ),
    "monitoring": (
        "metrics_port", "health_check_interval", "metrics_collection_interval",
    ),
}
SECTION_OF_KEY = {key: section for section, keys in YAML_SECTIONS.items() for key in keys}

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ConfigError(ValueError):
    """A configuration that cannot start the service; the message names the key and the value."""


class ModelConfigSchema(BaseSettings):
    """Every setting of the service, with the spec's defaults."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=True)

    # --- service (spec)
    host: str = "0.0.0.0"
    port: int = Field(11402, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=1, description="one process owns the engine; scale with replicas")
    log_level: LogLevel = "INFO"
    memory_gb: float = Field(8, gt=0, le=4096, description="container memory limit (compose, quadlet)")
    cpu_cores: float = Field(4, gt=0, le=1024, description="container CPU limit (compose, quadlet)")
    # --- model (spec)
    model_path: Path = Path("/opt/models/openchat-3.5-0106")
    model_name: str = "openchat/openchat-3.5-0106"
    max_model_len: int = Field(4096, ge=16, le=1_048_576)
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    gpu_memory_utilization: float = Field(0.7, gt=0, le=1)
    swap_space: float = Field(0, ge=0, le=1024, description="accepted for the spec; vLLM 0.32 has no swap space")
    enforce_eager: bool = False
    # --- performance (spec)
    max_num_batched_tokens: int = Field(2048, ge=16, le=1_048_576)
    max_num_seqs: int = Field(64, ge=1, le=4096)
    target_latency_ms: float = Field(1000, gt=0, le=600_000)
    target_throughput_rps: float = Field(50, gt=0, le=1_000_000)
    # --- realtime (spec)
    streaming_enabled: bool = True
    concurrent_users: int = Field(50, ge=1, le=100_000)
    response_chunk_size: int = Field(10, ge=1, le=4096)
    low_latency_mode: bool = True
    connection_timeout_seconds: float = Field(30, gt=0, le=86_400)
    # --- monitoring (spec)
    metrics_port: int = Field(11403, ge=1, le=65535)
    health_check_interval: float = Field(15, gt=0, le=3600)
    metrics_collection_interval: float = Field(10, gt=0, le=3600)

    # --- our extensions (not in the spec)
    served_model_name: str = Field("openchat-3.5", min_length=1, description="model id in the API")
    model_aliases: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="other model ids requests may name (comma-separated)")
    api_key: SecretStr | None = Field(None, description="Bearer key for inference routes; None = open")
    log_dir: Path | None = Field(None, description="also write JSON logs to a rotating file here")
    models_lock: Path = Field(Path("models.lock"), description="lock file the model is verified against")
    model_verification: Literal["full", "stamp", "off"] = Field(
        "full", description="full: hash every file each start; stamp: trust a verified-stamp; off: skip")
    prompt_format: Literal["auto", "openchat", "chat_template"] = Field(
        "auto", description="auto: OpenChat's format when the tokenizer has <|end_of_turn|>")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    kv_cache_space_gb: float = Field(4, gt=0, le=4096, description="KV cache size on CPU hosts")
    model_load_timeout_seconds: float = Field(600, gt=0, le=86_400, description="give up loading after this")
    enable_chunked_prefill: bool = True
    max_queue_size: int = Field(100, ge=0, le=1_000_000, description="requests waiting for a slot")
    queue_timeout_seconds: float = Field(10, gt=0, le=86_400)
    stream_flush_interval_ms: float = Field(50, gt=0, le=60_000, description="low-latency partial chunk flush")
    stream_ping_seconds: float = Field(15, gt=0, le=3600)
    max_request_body_bytes: int = Field(1_048_576, ge=1024, le=1 << 30)
    drain_timeout_seconds: float = Field(30, ge=0, le=3600)
    web_ui_enabled: bool = Field(True, description="serve the chat and dashboard page at /ui")

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _split_aliases(cls, value: Any) -> Any:
        # "a,b" from an env file or flag; a YAML list arrives as a list already.
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @model_validator(mode="after")
    def _check_cross_field(self) -> ModelConfigSchema:
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens={self.max_num_batched_tokens} is smaller than "
                f"max_model_len={self.max_model_len}; with enable_chunked_prefill off a full prompt "
                "must fit one batch: raise max_num_batched_tokens or turn chunked prefill on")
        if self.metrics_port == self.port:
            raise ValueError(f"metrics_port={self.metrics_port} equals port; they must differ")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: CLI (init kwargs) > environment > YAML > defaults.
        return init_settings, env_settings, _YamlLayerSource(settings_cls)

    @classmethod
    def env_name(cls, key: str) -> str:
        return f"{cls.model_config.get('env_prefix', '')}{key}".upper()


# The YAML layer of the config being built; a context variable so that concurrent loads (tests)
# cannot see each other's files.
_yaml_layer: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "_yaml_layer", default=MappingProxyType({}))


class _YamlLayerSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _yaml_layer.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_layer.get())


@contextmanager
def _yaml_values(values: Mapping[str, Any]) -> Iterator[None]:
    token = _yaml_layer.set(values)
    try:
        yield
    finally:
        _yaml_layer.reset(token)


def read_yaml_config(path: Path) -> dict[str, Any]:
    """Flatten the spec's sectioned YAML file; unknown sections and keys are errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror or exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path}:{where}: YAML syntax error: {problem}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: expected sections {sorted(YAML_SECTIONS)}, got a "
                          f"{type(document).__name__}")
    flat: dict[str, Any] = {}
    for section, values in document.items():
        if section not in YAML_SECTIONS:
            raise ConfigError(f"config file {path}: unknown section '{section}' "
                              f"(allowed: {', '.join(YAML_SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: section '{section}' must be a mapping")
        for key, value in values.items():
            if SECTION_OF_KEY.get(key) != section:
                hint = (f"; it belongs in section '{SECTION_OF_KEY[key]}'" if key in SECTION_OF_KEY
                        else f" (allowed in '{section}': {', '.join(YAML_SECTIONS[section])})")
                raise ConfigError(f"config file {path}: unknown key '{section}.{key}'{hint}")
            flat[key] = value
    return flat


def _allowed_range(info: FieldInfo) -> str:
    bounds: dict[str, Any] = {}
    for meta in info.metadata:
        for name in ("ge", "gt", "le", "lt", "min_length"):
            if getattr(meta, name, None) is not None:
                bounds[name] = getattr(meta, name)
    if not bounds:
        return ""
    low = f"{bounds['ge']} <= " if "ge" in bounds else f"{bounds['gt']} < " if "gt" in bounds else ""
    high = f" <= {bounds['le']}" if "le" in bounds else f" < {bounds['lt']}" if "lt" in bounds else ""
    return f" (allowed: {low}{'value'}{high})" if (low or high) else ""


class LoadedConfig:
    """A validated config and the origin of each value ("default", "yaml:<file>", "env:<NAME>", "cli")."""

    def __init__(self, config: ModelConfigSchema, origins: dict[str, str]) -> None:
        self.config = config
        self.origins = origins

    def rows(self) -> list[tuple[str, str, Any, str]]:
        """(section, key, value, origin) for every setting, secrets masked."""
        rows = []
        for key in type(self.config).model_fields:
            value = getattr(self.config, key)
            if isinstance(value, SecretStr):
                value = "********"
            rows.append((SECTION_OF_KEY.get(key, "-"), key, value, self.origins[key]))
        return rows


def load_config(
    cls: type[ModelConfigSchema],
    config_file: Path | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Build the frozen config from defaults < YAML < environment < CLI, or raise ConfigError."""
    environ = os.environ if environ is None else environ
    cli = {k: v for k, v in (cli_overrides or {}).items() if v is not None}
    yaml_values = read_yaml_config(config_file) if config_file is not None else {}

    origins: dict[str, str] = {}
    for key in cls.model_fields:
        if key in cli:
            origins[key] = "cli"
        elif cls.env_name(key) in environ:
            origins[key] = f"env:{cls.env_name(key)}"
        elif key in yaml_values:
            origins[key] = f"yaml:{config_file}"
        else:
            origins[key] = "default"

    prefix = cls.env_name("")
    unknown_env = sorted(name for name in environ if name.startswith(prefix)
                         and name[len(prefix):].lower() not in cls.model_fields
                         and name != cls.env_name("config_file"))
    if unknown_env:
        raise ConfigError(f"unknown environment variable(s) {', '.join(unknown_env)} "
                          f"(known keys: see `hxp-llm config show`)")

    try:
        with _yaml_values(yaml_values), _environment(environ):
            config = cls(**cli)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(cls, exc, origins)) from None
    except SettingsError as exc:  # a value pydantic-settings could not even decode (e.g. bad JSON)
        raise ConfigError(f"invalid configuration: {exc}") from None
    return LoadedConfig(config, origins)


@contextmanager
def _environment(environ: Mapping[str, str]) -> Iterator[None]:
    """Let pydantic-settings read `environ` instead of the process environment (tests pass their own)."""
    if environ is os.environ:
        yield
        return
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _describe_validation_error(cls: type[ModelConfigSchema], exc: ValidationError,
                               origins: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(config)"
        if key in cls.model_fields:
            info = cls.model_fields[key]
            section = SECTION_OF_KEY.get(key, "")
            label = f"{section}.{key}" if section else key
            lines.append(f"invalid configuration: {label} = {error.get('input')!r} from "
                         f"{origins.get(key, 'default')}: {error['msg']}{_allowed_range(info)}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"invalid configuration: {message}")
    return "\n".join(lines)
