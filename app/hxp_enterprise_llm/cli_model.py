"""`hxp-llm model ...`: download, lock, verify, export-sha256.

Each subcommand parser carries `func(args) -> exit code`. Exit codes: 0 success, 1 the model
files do not match the lock (or the download failed), 2 a lock or usage problem (missing entry,
unlocked entry, bad revision), 3 the Hub's metadata is inconsistent. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hxp_enterprise_llm.models.lockfile import LockEntry, LockError, ModelsLock, read_lock, write_lock
from hxp_enterprise_llm.models.stamps import VerifiedStamps
from hxp_enterprise_llm.models.verify import (
    ModelIntegrityError,
    UnlockedModelError,
    refuse_unlocked,
    verify_model_dir,
)

log = logging.getLogger(__name__)

EXIT_MISMATCH, EXIT_LOCK, EXIT_HUB = 1, 2, 3
MODELS_ROOT_ENV = "HXP_LLM_MODELS_ROOT"
DEFAULT_MODELS_ROOT = Path("/opt/models")


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _lock_path(args: argparse.Namespace) -> Path:
    from hxp_enterprise_llm.models.serving_check import resolve_lock_path

    return resolve_lock_path(args.lock)


def _models_root(args: argparse.Namespace) -> Path:
    if args.models_root is not None:
        return Path(args.models_root)
    return Path(os.environ.get(MODELS_ROOT_ENV) or DEFAULT_MODELS_ROOT)


def _quiet_http_logs() -> None:
    # huggingface_hub's HTTP client logs every request at INFO; its progress bars say enough.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _report_integrity_error(exc: ModelIntegrityError, model_dir: Path) -> int:
    problems = exc.problems
    if len(problems) > 1:
        for problem in problems:
            print(f"error: {problem.describe(model_dir)}", file=sys.stderr)
        print(f"error: {len(problems)} problems; nothing was changed or deleted", file=sys.stderr)
    else:
        print(f"error: {exc}; nothing was changed or deleted", file=sys.stderr)
    return EXIT_MISMATCH


# --- download

def cmd_download(args: argparse.Namespace) -> int:
    from hxp_enterprise_llm.models.hub import download_model

    _quiet_http_logs()
    try:
        entry = read_lock(_lock_path(args)).find(args.name)
    except LockError as exc:
        return _fail(f"{exc}; lock it first: `hxp-llm model lock {args.name} --revision <commit>`", EXIT_LOCK)
    try:
        refuse_unlocked(entry)  # before fetching 14 GB that could not be verified
    except LockError as exc:
        return _fail(str(exc), EXIT_LOCK)
    if args.revision and args.revision != entry.revision:
        return _fail(f"models.lock pins {entry.repo_id} at {entry.revision}, not {args.revision}; to move, "
                     f"run `hxp-llm model lock {entry.name} --revision {args.revision}` first", EXIT_LOCK)
    dest = Path(args.dest) if args.dest else _models_root(args) / entry.name
    print(f"downloading {entry.repo_id}@{entry.revision} ({len(entry.files)} files) into {dest}",
          file=sys.stderr)
    try:
        download_model(entry, dest, endpoint=args.endpoint, max_workers=args.max_workers)
    except LockError as exc:
        return _fail(str(exc), EXIT_LOCK)
    except Exception as exc:  # huggingface_hub raises many types; all mean "download failed, re-run resumes"
        return _fail(f"download of {entry.repo_id}@{entry.revision} into {dest} failed: "
                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; files already "
                     "complete are kept, re-run the same command to continue", EXIT_MISMATCH)
    return _verify_and_print(dest, entry, workers=None)


# --- lock

def cmd_lock(args: argparse.Namespace) -> int:
    from hxp_enterprise_llm.models.hub import HubMetadataError, lock_entry_from_hub

    _quiet_http_logs()
    lock_path = _lock_path_or_new(args.lock)
    try:
        lock = read_lock(lock_path) if lock_path.exists() else ModelsLock()
    except LockError as exc:
        return _fail(str(exc), EXIT_LOCK)
    existing = next((e for e in lock.models if e.matches(args.name)), None)
    if existing is not None:
        name, repo_id, note = existing.name, existing.repo_id, existing.note
    elif "/" in args.name:
        repo_id, name, note = args.name, args.name.rsplit("/", 1)[1], ""
    else:
        return _fail(f"'{args.name}' is not in {lock_path}; give the Hub repo id (owner/name) to add it",
                     EXIT_LOCK)
    try:
        entry = lock_entry_from_hub(name, repo_id, args.revision, note=note, endpoint=args.endpoint)
    except HubMetadataError as exc:
        return _fail(str(exc), EXIT_HUB)
    lock.upsert(entry)
    write_lock(lock, lock_path)
    changed = _describe_change(existing, entry)
    print(f"locked {entry.name} = {entry.repo_id}@{entry.revision}: {len(entry.files)} files, "
          f"{sum(f.size or 0 for f in entry.files) / 1e9:.2f} GB, all hashed from the Hub's metadata "
          f"({changed}); wrote {lock_path}")
    return 0


def _lock_path_or_new(path: Path) -> Path:
    from hxp_enterprise_llm.models.serving_check import resolve_lock_path

    try:
        return resolve_lock_path(path)
    except LockError:
        return Path.cwd() / path  # a first lock creates the file here


def _describe_change(old: LockEntry | None, new: LockEntry) -> str:
    if old is None:
        return "new entry"
    before = {f.path: f for f in old.files}
    changed = sum(1 for f in new.files if before.get(f.path) != f)
    removed = len(set(before) - {f.path for f in new.files})
    return f"{changed} file(s) added or changed, {removed} removed"


# --- verify

def cmd_verify(args: argparse.Namespace) -> int:
    from hxp_enterprise_llm.models.serving_check import entry_verified_here, resolve_lock_path

    try:
        model_path, model_name, lock_file = _verify_targets(args)
        lock = read_lock(resolve_lock_path(lock_file))
        entry = entry_verified_here(lock, model_path, model_name, args.name)
    except (LockError, ValueError) as exc:
        return _fail(str(exc), EXIT_LOCK)
    stamps = VerifiedStamps() if args.stamp else None
    return _verify_and_print(model_path, entry, workers=args.workers, stamps=stamps)


def _verify_targets(args: argparse.Namespace) -> tuple[Path, str, Path]:
    """--model-path/--lock, falling back to the service configuration (file, OPENCHAT_3_5_* env)."""
    from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config

    config = OpenChat35Config.load(args.config).config
    return (Path(args.model_path) if args.model_path else config.model_path,
            args.name or config.model_name,
            args.lock_override if args.lock_override is not None else config.models_lock)


def _verify_and_print(model_dir: Path, entry: LockEntry, *, workers: int | None,
                      stamps: VerifiedStamps | None = None) -> int:
    try:
        report = verify_model_dir(model_dir, entry, workers=workers, stamps=stamps)
    except UnlockedModelError as exc:
        return _fail(str(exc), EXIT_LOCK)
    except ModelIntegrityError as exc:
        return _report_integrity_error(exc, model_dir)
    print(f"ok: {report.summary()}")
    return 0


# --- export-sha256

def cmd_export_sha256(args: argparse.Namespace) -> int:
    try:
        entry = read_lock(_lock_path(args)).find(args.name)
        refuse_unlocked(entry)
    except LockError as exc:
        return _fail(str(exc), EXIT_LOCK)
    text = entry.sha256sum_lines()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def add_model_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `model` and its subcommands on the top-level CLI's subparsers."""
    model = subparsers.add_parser("model", help="download, lock and verify model weights",
                                  description="Model files and models.lock: download, lock, verify.")
    commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    lock_help = "lock file (default: models.lock in the current directory)"

    download = commands.add_parser("download", help="download a locked model from the Hub and verify it")
    download.add_argument("name", metavar="NAME", help="lock entry name or Hub repo id")
    download.add_argument("--revision", help="must equal the revision pinned in models.lock")
    download.add_argument("--dest", help="target directory (default: MODELS_ROOT/NAME)")
    download.add_argument("--models-root", help=f"default ${MODELS_ROOT_ENV} or {DEFAULT_MODELS_ROOT}")
    download.add_argument("--max-workers", type=int, default=4, help="parallel file downloads")
    download.set_defaults(func=cmd_download)

    lock = commands.add_parser("lock", help="fill models.lock from the Hub's metadata for a revision")
    lock.add_argument("name", metavar="NAME",
                      help="lock entry name, or Hub repo id (owner/name) for a new entry")
    lock.add_argument("--revision", required=True,
                      help="commit (40 hex), or a branch/tag to pin as its commit")
    lock.set_defaults(func=cmd_lock)

    verify = commands.add_parser("verify",
                                 help="check a model directory against models.lock (sha256 of every file)")
    verify.add_argument("--model-path", help="model directory (default: the config's model.model_path)")
    verify.add_argument("--name", help="lock entry (default: the directory's name, then model.model_name)")
    verify.add_argument("--config", type=Path, help="service YAML config for the defaults")
    verify.add_argument("--workers", type=int, help="hashing threads (default: cores, at most 8)")
    verify.add_argument("--stamp", action="store_true",
                        help="trust a verified-stamp from an earlier full check if no file changed")
    verify.set_defaults(func=cmd_verify)

    export = commands.add_parser("export-sha256", help="print a `sha256sum -c` list for a locked model")
    export.add_argument("name", metavar="NAME")
    export.add_argument("-o", "--output", help="write to this file instead of stdout")
    export.set_defaults(func=cmd_export_sha256)

    for sub in (download, lock, export):
        sub.add_argument("--lock", type=Path, default=Path("models.lock"), help=lock_help)
    verify.add_argument("--lock", dest="lock_override", type=Path,
                        help=lock_help + "; default model.models_lock")
    for sub in (download, lock):
        sub.add_argument("--endpoint", help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m hxp_enterprise_llm.cli_model model ...`, the same commands without cli.py."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="hxp-llm")
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
