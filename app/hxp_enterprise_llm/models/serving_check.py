"""The check `hxp-llm serve` runs before the engine loads: the model directory must match models.lock.

The lock file is `config.models_lock`; a relative path is taken from the current directory (the
image sets an absolute one, /app/models.lock). The lock entry is the one named like the model
directory (`/opt/models/<name>`), else the one whose name or repo id is `config.model_name`. Files
the entry lists as host-built are checked against this machine's own build, recorded in
`models.host.lock` in the models root (the model directory's parent), when it records one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from hxp_enterprise_llm.models.lockfile import (
    LockEntry,
    LockError,
    ModelsLock,
    read_host_lock,
    read_lock,
    with_host_builds,
)
from hxp_enterprise_llm.models.progress import HashProgress
from hxp_enterprise_llm.models.stamps import VerifiedStamps
from hxp_enterprise_llm.models.verify import verify_model_dir

log = logging.getLogger(__name__)


class _ModelSettings(Protocol):
    @property
    def model_path(self) -> Path: ...
    @property
    def model_name(self) -> str: ...
    @property
    def models_lock(self) -> Path: ...
    @property
    def model_verification(self) -> str: ...


def resolve_lock_path(path: Path, cwd: Path | None = None) -> Path:
    """The lock file: an absolute path as is, a relative one from the current directory."""
    resolved = path if path.is_absolute() else (cwd or Path.cwd()) / path
    if not resolved.is_file():
        raise LockError(f"lock file {resolved} not found; set model.models_lock (OPENCHAT_3_5_MODELS_LOCK) "
                        "to its path")
    return resolved


def find_entry_for(lock: ModelsLock, model_path: Path, model_name: str) -> LockEntry:
    for key in (model_path.name, model_name):
        try:
            return lock.find(key)
        except LockError:
            continue
    known = ", ".join(e.name for e in lock.models) or "none"
    raise LockError(f"models.lock has no entry for model directory '{model_path.name}' nor model "
                    f"'{model_name}' (entries: {known}); lock it with `hxp-llm model lock`")


def entry_verified_here(lock: ModelsLock, model_path: Path, model_name: str, name: str | None = None) -> LockEntry:
    """The lock entry for the model directory, host-built files as this machine built them."""
    entry = lock.find(name) if name else find_entry_for(lock, model_path, model_name)
    return with_host_builds(entry, read_host_lock(model_path.parent))


def verify_model_for_serving(config: _ModelSettings, *,
                             stamps: VerifiedStamps | None = None) -> LockEntry | None:
    """Verify config.model_path per config.model_verification; None when verification is off.

    Raises LockError or ModelIntegrityError with a one-line message.
    """
    if config.model_verification == "off":
        log.warning("MODEL VERIFICATION IS OFF (model_verification=off): %s is loaded without checking it "
                    "against models.lock; a truncated, altered or swapped file will not be detected",
                    config.model_path)
        return None
    lock_path = resolve_lock_path(config.models_lock)
    entry = entry_verified_here(read_lock(lock_path), config.model_path, config.model_name)
    use_stamps = config.model_verification == "stamp"
    report = verify_model_dir(config.model_path, entry, progress=HashProgress(log_line=log.info),
                              stamps=(stamps or VerifiedStamps()) if use_stamps else None)
    log.info("model verified (%s): %s", lock_path, report.summary())
    return entry
