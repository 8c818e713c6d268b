"""`hxp-llm model ...`: download, lock, verify, export-sha256.

Each subcommand parser carries `func(args) -> exit code`. Exit codes: 0 success, 1 the model
files do not match the lock or the Hub's published hashes (or the download failed), 2 a lock or
usage problem (missing entry, unlocked entry, bad revision), 3 the Hub's metadata is inconsistent
(with its bytes, or with models.lock). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hxp_enterprise_llm.cli_args import positive_int
from hxp_enterprise_llm.models.lockfile import LockEntry, LockError, ModelsLock, read_lock, write_lock
from hxp_enterprise_llm.models.stamps import VerifiedStamps
from hxp_enterprise_llm.models.verify import (
    ModelIntegrityError,
    UnlockedModelError,
    refuse_unlocked,
    verify_model_dir,
)

if TYPE_CHECKING:
    from hxp_enterprise_llm.models.download import DownloadMismatch

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
    _quiet_http_logs()
    if args.revision:
        return _download_and_lock(args)
    from hxp_enterprise_llm.models.hub import download_model

    try:
        entry = read_lock(_lock_path(args)).find(args.name)
        refuse_unlocked(entry)  # before fetching 14 GB that could not be verified
    except UnlockedModelError as exc:
        return _fail(f"{exc}; or download and lock in one step: `hxp-llm model download {args.name} "
                     f"--revision {entry.revision}`", EXIT_LOCK)
    except LockError as exc:
        return _fail(f"{exc}; download and lock it: `hxp-llm model download {args.name} --revision <commit>`",
                     EXIT_LOCK)
    dest = _dest(args, entry.name)
    print(f"downloading {entry.repo_id}@{entry.revision} ({len(entry.files)} files) into {dest}",
          file=sys.stderr)
    try:
        download_model(entry, dest, endpoint=args.endpoint, max_workers=args.max_workers)
    except LockError as exc:
        return _fail(str(exc), EXIT_LOCK)
    except Exception as exc:  # huggingface_hub raises many types; all mean "download failed, re-run resumes"
        return _download_failed(exc, entry.repo_id, entry.revision, dest)
    from hxp_enterprise_llm.models.download import DownloadMismatch, reject_mismatched_files

    try:
        report = verify_model_dir(dest, entry, raise_on_problem=False)
        reject_mismatched_files(report, "models.lock's sha256")
    except DownloadMismatch as exc:
        return _report_rejected(exc)
    except ModelIntegrityError as exc:
        return _report_integrity_error(exc, dest)
    print(f"ok: {report.summary()}")
    return 0


def _dest(args: argparse.Namespace, name: str) -> Path:
    return Path(args.dest) if args.dest else _models_root(args) / name


def _download_failed(exc: Exception, repo_id: str, revision: str, dest: Path) -> int:
    return _fail(f"download of {repo_id}@{revision} into {dest} failed: "
                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; files already "
                 "complete are kept, re-run the same command to continue", EXIT_MISMATCH)


def _report_rejected(exc: DownloadMismatch) -> int:
    for rejected in exc.rejected:
        print(f"error: {rejected.describe(exc.model_dir)}", file=sys.stderr)
    return EXIT_MISMATCH


def _download_and_lock(args: argparse.Namespace) -> int:
    """`download NAME --revision R`: every file checked against the Hub's published hashes, then locked."""
    from hxp_enterprise_llm.models.download import DownloadMismatch, fetch_and_lock
    from hxp_enterprise_llm.models.hub import HubMetadataError

    try:
        lock_path, lock, existing, (name, repo_id, note) = _lock_target(args)
    except LockError as exc:
        return _fail(str(exc), EXIT_LOCK)
    dest = _dest(args, name)
    print(f"downloading {repo_id}@{args.revision} into {dest}; each file is checked against the Hub's "
          "published sha256 (LFS) or git blob id before models.lock is written", file=sys.stderr)
    try:
        entry = fetch_and_lock(name, repo_id, args.revision, dest, note=note, previous=existing,
                               endpoint=args.endpoint, max_workers=args.max_workers)
    except HubMetadataError as exc:
        return _fail(str(exc), EXIT_HUB)
    except DownloadMismatch as exc:
        return _report_rejected(exc)
    except ModelIntegrityError as exc:
        return _report_integrity_error(exc, dest)
    except LockError as exc:
        return _fail(str(exc), EXIT_LOCK)
    except Exception as exc:  # as in cmd_download: the transfer failed, a re-run resumes
        return _download_failed(exc, repo_id, args.revision, dest)
    changed = _describe_change(existing, entry)
    lock.upsert(entry)
    write_lock(lock, lock_path)
    print(f"ok: {dest} holds {entry.repo_id}@{entry.revision}: {len(entry.files)} files, "
          f"{sum(f.size or 0 for f in entry.files) / 1e9:.2f} GB, each equal to the Hub's published hash; "
          f"locked {entry.name} in {lock_path} ({changed})")
    return 0


def _lock_target(args: argparse.Namespace) -> tuple[Path, ModelsLock, LockEntry | None, tuple[str, str, str]]:
    """The lock file, its content, the entry NAME names (if any) and the (name, repo_id, note) to write."""
    lock_path = _lock_path_or_new(args.lock)
    lock = read_lock(lock_path) if lock_path.exists() else ModelsLock()
    # A name first; a repo id never picks a model built here from it (openchat-3.5-tiny shares OpenChat's).
    existing = (next((e for e in lock.models if e.name == args.name), None)
                or next((e for e in lock.models if e.repo_id == args.name and not _is_built(e)), None))
    if existing is not None and _is_built(existing):
        raise LockError(f"models.lock entry '{existing.name}' is built locally ({existing.revision}) by "
                        "`scripts/fetch-demo-models`, not taken from the Hub; `scripts/fetch-demo-models "
                        "--update-lock` relocks it")
    if existing is not None:
        # A note that says the entry is unlocked (as committed for OpenChat) is false once it is locked.
        note = "" if existing.note.startswith("UNLOCKED") else existing.note
        return lock_path, lock, existing, (existing.name, existing.repo_id, note)
    if "/" in args.name:
        return lock_path, lock, None, (args.name.rsplit("/", 1)[1], args.name, "")
    raise LockError(f"'{args.name}' is not in {lock_path}; give the Hub repo id (owner/name) to add it")


# --- lock

def cmd_lock(args: argparse.Namespace) -> int:
    from hxp_enterprise_llm.models.hub import HubMetadataError, lock_entry_from_hub

    _quiet_http_logs()
    try:
        lock_path, lock, existing, (name, repo_id, note) = _lock_target(args)
    except LockError as exc:
        return _fail(str(exc), EXIT_LOCK)
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


def _is_built(entry: LockEntry) -> bool:
    return entry.revision.startswith("built:")


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
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            return _fail(f"cannot write {args.output}: {exc.strerror or exc}", 1)
    else:
        sys.stdout.write(text)
    return 0


def add_model_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `model` and its subcommands on the top-level CLI's subparsers."""
    model = subparsers.add_parser("model", help="download, lock and verify model weights",
                                  description="Model files and models.lock: download, lock, verify.")
    commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    lock_help = "lock file (default: models.lock in the current directory)"

    download = commands.add_parser(
        "download", help="download a model from the Hub, verify it, and with --revision lock it",
        description="Without --revision: fetch the files models.lock pins and verify them against the lock. "
                    "With --revision R: fetch every file of R, check each against the Hub's published sha256 "
                    "(LFS) or git blob id, and only then write the entry (commit, sizes, sha256) to the lock. "
                    "A file that fails is moved to DEST.rejected/ and the command exits 1.")
    download.add_argument("name", metavar="NAME", help="lock entry name, or Hub repo id (owner/name)")
    download.add_argument("--revision",
                          help="commit (40 hex) or branch/tag to download and lock (pinned as its commit)")
    download.add_argument("--dest", help="target directory (default: MODELS_ROOT/NAME)")
    download.add_argument("--models-root", help=f"default ${MODELS_ROOT_ENV} or {DEFAULT_MODELS_ROOT}")
    download.add_argument("--max-workers", type=positive_int, default=4, help="parallel file downloads")
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
    verify.add_argument("--workers", type=positive_int, help="hashing threads (default: cores, at most 8)")
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
