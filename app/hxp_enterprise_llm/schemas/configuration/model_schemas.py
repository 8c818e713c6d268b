"""The validated service configuration and its loading: defaults < YAML < environment < CLI.

`ModelConfigSchema` holds every key with its default and allowed range. A model's settings class
(`OpenChat35Config`) adds the environment prefix. `load_config` merges the four layers into one
mapping, validates it once, and remembers where each value came from, for `hxp-llm config show`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import NoDecode

# The spec's YAML is nested by concern; the settings themselves are flat. Each YAML key lives in
# exactly one section, so `service.port` and `OPENCHAT_3_5_PORT` name the same setting.
YAML_SECTIONS: dict[str, tuple[str, ...]] = {
    "service": (
        "host", "port", "workers", "forwarded_allow_ips", "keep_alive_seconds", "log_level", "log_dir", "api_key",
        "api_keys_file", "served_model_name",
        "model_aliases", "memory_gb", "cpu_cores", "web_ui_enabled",
    ),
    "model": (
        "model_path", "model_name", "models_lock", "model_verification", "prompt_format", "dtype",
        "max_model_len", "tensor_parallel_size", "gpu_memory_utilization", "swap_space",
        "enforce_eager", "kv_cache_space_gb", "model_load_timeout_seconds",
    ),
    "performance": (
        "max_num_batched_tokens", "max_num_seqs", "enable_chunked_prefill", "enable_prefix_caching",
        "target_latency_ms", "target_throughput_rps", "default_temperature", "default_top_p", "max_n",
        "scheduling_policy", "engine_nice",
    ),
    "realtime": (
        "streaming_enabled", "concurrent_users", "response_chunk_size", "low_latency_mode",
        "connection_timeout_seconds", "max_queue_size", "queue_timeout_seconds",
        "stream_flush_interval_ms", "stream_ping_seconds", "max_request_body_bytes",
        "max_header_bytes", "body_timeout_seconds", "max_messages", "max_message_chars",
        "drain_timeout_seconds",
    ),
    "monitoring": (
        "metrics_port", "metrics_host", "health_check_interval", "metrics_collection_interval",
        "usage_log_file", "usage_log_max_bytes", "usage_log_backups", "otel_traces_endpoint",
    ),
}
SECTION_OF_KEY = {key: section for section, keys in YAML_SECTIONS.items() for key in keys}

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
C = TypeVar("C", bound="ModelConfigSchema")


class ConfigError(ValueError):
    """A configuration that cannot start the service; the message names the key and the value."""


class ModelConfigSchema(BaseModel):
    """Every setting of the service, with the spec's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    # The environment variables' prefix; a settings class (OpenChat35Config) reads them with it.
    env_prefix: ClassVar[str] = "OPENCHAT_3_5_"

    # --- service (spec)
    host: str = "0.0.0.0"
    port: int = Field(11402, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=1, description="server processes: 1, the process that owns the engine "
                         "(scale out with replicas: docs/scaling.md)")
    log_level: LogLevel = "INFO"
    memory_gb: float = Field(8, gt=0, le=4096, description="memory budget: the container limit (compose, quadlet), "
                             "openchat_memory_limit_bytes for alerts, and a start-up warning on CPU hosts when "
                             "weights + KV cache + runtime exceed it")
    cpu_cores: float = Field(4, gt=0, le=1024, description="CPU cores: the container limit (compose, quadlet) and, "
                             "on CPU hosts, the cores vLLM's compute threads are bound to")
    # --- model (spec)
    model_path: Path = Path("/opt/models/openchat-3.5-0106")
    model_name: str = "openchat/openchat-3.5-0106"
    max_model_len: int = Field(4096, ge=16, le=1_048_576)
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    gpu_memory_utilization: float = Field(0.7, gt=0, le=1)
    swap_space: float = Field(0, ge=0, le=0, description="the spec's key; only 0: vLLM 0.32 has no CPU swap space "
                              "for the KV cache (a preempted request is recomputed)")
    enforce_eager: bool = False
    # --- performance (spec)
    max_num_batched_tokens: int = Field(2048, ge=16, le=1_048_576)
    max_num_seqs: int = Field(64, ge=1, le=4096)
    target_latency_ms: float = Field(1000, gt=0, le=600_000, description="the e2e latency SLO: goodput counters, "
                                     "/metrics/streaming attainment, alert rules, scripts/validate's target")
    target_throughput_rps: float = Field(50, gt=0, le=1_000_000, description="the request rate the deployment is "
                                         "sized for: openchat_slo_target_throughput_rps, scripts/validate's target")
    # --- realtime (spec)
    streaming_enabled: bool = True
    concurrent_users: int = Field(50, ge=1, le=100_000, description="generation slots: sequences generating at "
                                  "once (a request with n choices takes n)")
    response_chunk_size: int = Field(10, ge=1, le=4096)
    low_latency_mode: bool = True
    connection_timeout_seconds: float = Field(30, gt=0, le=86_400)
    # --- monitoring (spec)
    metrics_port: int = Field(11403, ge=1, le=65535)
    health_check_interval: float = Field(15, gt=0, le=3600)
    metrics_collection_interval: float = Field(10, gt=0, le=3600, description="seconds between the service's "
                                               "samples of its own gauges (resident memory) and refreshes of the "
                                               "live dashboard page")

    # --- our extensions (not in the spec)
    served_model_name: str = Field("openchat-3.5", min_length=1, description="model id in the API")
    model_aliases: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="other model ids requests may name (comma-separated)")
    api_key: SecretStr | None = Field(None, description="Bearer key for the API routes; None (and no "
                                      "api_keys_file) = open. Give it by environment or api_keys_file: a "
                                      "command-line flag is visible to every user in `ps`")
    api_keys_file: Path | None = Field(None, description="more Bearer keys, one per line (# comments); re-read "
                                       "on SIGHUP and when it changes, so keys rotate without a restart")
    metrics_host: str | None = Field(None, description="address the metrics port binds to; None = host")
    forwarded_allow_ips: str | None = Field(None, description="proxies (comma-separated addresses, or *) whose "
                                            "X-Forwarded-For gives the client address in the request log; "
                                            "None = 127.0.0.1")
    # Whole seconds: uvicorn's timeout_keep_alive is an int (0.5 became 0, keep-alive off).
    keep_alive_seconds: int = Field(5, ge=1, le=3600, description="idle keep-alive connections close after "
                                    "this many seconds; behind a proxy that reuses connections, set it above the "
                                    "proxy's idle time")
    default_temperature: float | None = Field(None, ge=0, le=2, description="temperature of requests that "
                                              "send none; None = the model's generation_config.json, else 1")
    default_top_p: float | None = Field(None, gt=0, le=1, description="top_p of requests that send none; "
                                        "None = the model's generation_config.json, else 1")
    max_n: int = Field(8, ge=1, le=128, description="most choices (`n`) one request may ask for")
    max_messages: int = Field(1024, ge=1, le=1_000_000, description="most messages in one chat request")
    max_message_chars: int = Field(200_000, ge=1, le=100_000_000, description="most characters in one message")
    max_header_bytes: int = Field(16_384, ge=1024, le=1 << 20, description="largest request head (request line "
                                  "and headers); larger is refused with 431 before the body is read")
    body_timeout_seconds: float = Field(10, gt=0, le=3600, description="a request body must arrive within "
                                        "this (slow-body clients are cut off with 408)")
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
    enable_prefix_caching: bool = Field(True, description="vLLM reuses the KV cache of a prompt prefix it has "
                                        "seen (a conversation's earlier turns, a shared system prompt); usage "
                                        "reports the reused tokens as prompt_tokens_details.cached_tokens")
    max_queue_size: int = Field(100, ge=0, le=1_000_000, description="sequences waiting for a slot (a request "
                                "with n choices counts n)")
    queue_timeout_seconds: float = Field(10, gt=0, le=86_400)
    stream_flush_interval_ms: float = Field(
        50, gt=0, le=60_000, description="low-latency mode: the longest a streamed token waits for company")
    stream_ping_seconds: float = Field(15, gt=0, le=3600)
    max_request_body_bytes: int = Field(1_048_576, ge=1024, le=1 << 30)
    drain_timeout_seconds: float = Field(30, ge=0, le=3600)
    web_ui_enabled: bool = Field(True, description="serve the chat and dashboard page at /ui")
    # --- tenants: usage accounting and traces (docs/operations.md)
    scheduling_policy: Literal["fcfs", "priority"] = Field(
        "fcfs", description="vLLM's own scheduler: fcfs, or priority (requests of interactive keys before batch "
        "keys' inside the engine too, when more than max_num_seqs are admitted)")
    engine_nice: int = Field(0, ge=0, le=19, description="on CPU hosts, how much lower the CPU priority of "
                             "vLLM's engine processes is than the API process's (nice); 0 leaves it equal. More "
                             "tokens a second on 2 cores, less generation under a flood of requests")
    usage_log_file: Path | None = Field(None, description="JSON-lines usage log, one line per finished request "
                                        "(key name, tokens, outcome, timings) for billing; None = off")
    usage_log_max_bytes: int = Field(100 * 1024 * 1024, ge=4096, le=1 << 40, description="the usage log "
                                     "rotates at this size")
    usage_log_backups: int = Field(10, ge=1, le=10_000, description="rotated usage logs kept (.1 newest)")
    otel_traces_endpoint: str | None = Field(None, description="OTLP/HTTP traces URL (e.g. http://collector:4318"
                                             "/v1/traces): one trace per request; None = tracing off")

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("empty: a blank key would be a key anyone can send; leave api_key unset for an "
                             "open API, or set a real key")
        return value

    @field_validator("model_path", "api_keys_file", "log_dir", "models_lock", "usage_log_file", mode="before")
    @classmethod
    def _path_not_empty(cls, value: Any) -> Any:
        # An empty value (a blanked line in an env file, `--log-dir ""`) would become Path("."): the
        # current directory, where a log file cannot be opened and nothing was meant to go.
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty: give a path, or leave the setting out")
        return value

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _split_aliases(cls, value: Any) -> Any:
        # "a,b" from an env file or flag; a YAML list arrives as a list already.
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("otel_traces_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (OTLP over HTTP), e.g. "
                             "http://collector:4318/v1/traces")
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
    def env_name(cls, key: str) -> str:
        return f"{cls.env_prefix}{key}".upper()


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

    def __init__(self, config: ModelConfigSchema, origins: dict[str, str],
                 shadowed: dict[str, str] | None = None) -> None:
        self.config = config
        self.origins = origins
        # key -> "'<yaml value>' from yaml:<file>": YAML values an environment variable replaced with another
        # (the image sets some OPENCHAT_3_5_* itself), said at start so that the YAML's is not lost unseen.
        self.shadowed = shadowed or {}

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
    cls: type[C],
    config_file: Path | None = None,
    cli_overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Merge defaults < YAML < environment < CLI into one mapping and validate it once; or raise ConfigError.

    `environ` is read as given (the process environment by default) and never written.
    """
    environ = os.environ if environ is None else environ
    cli = {k: v for k, v in (cli_overrides or {}).items() if v is not None}
    yaml_values = read_yaml_config(config_file) if config_file is not None else {}
    env_values = {key: environ[cls.env_name(key)] for key in cls.model_fields if cls.env_name(key) in environ}

    origins: dict[str, str] = {}
    for key in cls.model_fields:
        if key in cli:
            origins[key] = "cli"
        elif key in env_values:
            origins[key] = f"env:{cls.env_name(key)}"
        elif key in yaml_values:
            origins[key] = f"yaml:{config_file}"
        else:
            origins[key] = "default"

    # Exact names only: a variable in another case is not read above, so it must not pass as known either.
    prefix = cls.env_name("")
    known_env = {cls.env_name(key) for key in (*cls.model_fields, "config_file")}
    unknown_env = sorted(name for name in environ if name.upper().startswith(prefix) and name not in known_env)
    if unknown_env:
        raise ConfigError(f"unknown environment variable(s) {', '.join(unknown_env)} "
                          f"(known keys: see `hxp-llm config show`)")

    try:
        # Validated by the plain schema (a settings class would read the process environment again),
        # then given the settings class's type without a second validation.
        validated = ModelConfigSchema.model_validate({**yaml_values, **env_values, **cli})
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(cls, exc, origins)) from None
    config = cls.model_construct(_fields_set=validated.model_fields_set,
                                 **{key: getattr(validated, key) for key in cls.model_fields})
    _check_kv_cache_variable(config, origins, environ)
    shadowed = {key: f"{yaml_values[key]!r} from yaml:{config_file}" for key in env_values
                if key in yaml_values and key not in cli and str(yaml_values[key]).lower() != env_values[key].lower()}
    return LoadedConfig(config, origins, shadowed)


def _check_kv_cache_variable(config: ModelConfigSchema, origins: Mapping[str, str], environ: Mapping[str, str]) -> None:
    # vLLM's CPU platform sizes the KV cache from VLLM_CPU_KVCACHE_SPACE when it is set, over the engine's
    # arguments: the memory check and every report would describe a cache the engine does not have.
    value = environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip()
    if not value:
        return
    try:
        same = float(value) == config.kv_cache_space_gb
    except ValueError:
        same = False
    if not same:
        raise ConfigError(f"VLLM_CPU_KVCACHE_SPACE={value} is set: vLLM would size the KV cache from it instead of "
                          f"kv_cache_space_gb={config.kv_cache_space_gb:g} ({origins['kv_cache_space_gb']}); unset "
                          f"it, and give the size as {type(config).env_name('kv_cache_space_gb')} or kv_cache_space_gb")


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
