"""Logging: one JSON line per request (never the prompt or the key), to stderr and optionally a file."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.orchestration.request_record import RequestRecord

REQUEST_LOGGER = "hxp_enterprise_llm.requests"
# Set by the serving process for the engine-core and worker processes vLLM spawns (their log level).
CHILD_LOG_LEVEL_ENV = "HXP_LLM_CHILD_LOG_LEVEL"


# torch gives its loggers a stderr handler of its own (not propagating) whose one setting is this
# %-format string; records carry their fields JSON-encoded already (`_with_json_fields`), so torch's
# handler writes our shape too.
TORCH_LOGS_FORMAT = ('{"ts": %(json_ts)s, "level": "%(levelname)s", "logger": %(json_name)s, '
                     '"message": %(json_message)s}')


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, log_dir: Path | None = None) -> None:
    """JSON lines to stderr, and to `<log_dir>/service.log` (rotated at 50 MB, 5 kept) when set."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            log_dir / "service.log", maxBytes=50 * 1024 * 1024, backupCount=5, encoding="utf-8"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's access log would repeat our request line without the figures that matter.
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)  # warnings become log lines, not stray text on stderr
    route_torch_logs()
    route_vllm_logs(level)


def route_torch_logs() -> None:
    """torch's own log lines in our JSON shape (before torch is imported: it reads the format then)."""
    os.environ.setdefault("TORCH_LOGS_FORMAT", TORCH_LOGS_FORMAT)
    base = logging.getLogRecordFactory()

    def with_json_fields(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format call: logging reports those when it emits, not here
            message = str(record.msg)
        record.json_ts = json.dumps(_timestamp(record))
        record.json_name = json.dumps(record.name)
        record.json_message = json.dumps(message, ensure_ascii=False)
        return record

    logging.setLogRecordFactory(with_json_fields)


def route_vllm_logs(level: str) -> None:
    """vLLM's loggers, in this process and in the engine-core and worker processes it spawns, in our format.

    vLLM applies the dictConfig named by VLLM_LOGGING_CONFIG_PATH when it is imported, in every
    process; so the file is written before vLLM is imported, and the environment carries it to the
    children. Only the `vllm` logger is configured (to stderr: a rotating file must have one writer),
    so this process's own handlers stay as they are. An operator's own file wins.
    """
    os.environ[CHILD_LOG_LEVEL_ENV] = level
    if "VLLM_LOGGING_CONFIG_PATH" in os.environ:
        return
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{JsonFormatter.__module__}.{JsonFormatter.__qualname__}"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "loggers": {"vllm": {"handlers": ["stderr"], "level": level, "propagate": False}},
    }
    fd, path = tempfile.mkstemp(prefix="hxp-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        json.dump(config, stream)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = path
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
    # torch's C++ side prints warnings (NUMA) straight to stderr; only errors are worth that.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


class RequestLog:
    """Observer that writes the request line when the orchestrator closes a record."""

    def __init__(self, model: str) -> None:
        self._logger = logging.getLogger(REQUEST_LOGGER)
        self._model = model

    def on_finished(self, record: RequestRecord) -> None:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 1)

        self._logger.info("request", extra={"fields": {
            "event": "request",
            "request_id": record.request_id,
            "engine_request_id": record.engine_request_id,
            "model": self._model,
            "route": record.route,
            "status": record.status,
            "outcome": record.outcome,
            "error_code": record.error.code if record.error is not None else None,
            "stream": record.stream,
            "finish_reason": record.finish_reason,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "queue_ms": ms(record.queue_wait),
            "ttft_ms": ms(record.ttft),
            "latency_ms": ms(record.e2e),
            "client": record.client,
            "key": record.key.name,  # the key's name from the keys file, never the key
            "end_user": record.end_user,
        }})


def configure_spawned_process_logging() -> None:
    """In a process vLLM spawned for the service: JSON on stderr from its first line.

    vLLM applies its logging file only once its engine starts; what a child logs or warns while
    importing (Triton's CPU notice, library deprecation warnings, torch's own log lines) would
    otherwise reach stderr as plain text.
    """
    level = os.environ.get(CHILD_LOG_LEVEL_ENV)
    if level is None:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    route_torch_logs()
