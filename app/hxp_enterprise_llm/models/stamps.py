"""Verified-stamps: "this directory hashed clean against this lock entry, and no file changed since".

Used only with `model_verification = "stamp"`. A stamp records per file its size, mtime_ns,
ctime_ns and inode as seen right after a full verification. A later start that sees exactly the
same values (and the same lock entry) skips hashing. ctime is set by the kernel on every write,
rename or `touch`, and cannot be set back by a user, so an edit in place is caught even if the
mtime is forged. Stamps live in a state directory OUTSIDE the model directory (which is mounted
read-only): `$HXP_LLM_STATE_DIR`, else `$XDG_STATE_HOME/hxp-llm`, else `~/.local/state/hxp-llm`.
Whoever can write there can skip the check, so keep it as private as the service's own files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from hxp_enterprise_llm.models.lockfile import LockEntry

log = logging.getLogger(__name__)

STATE_DIR_ENV = "HXP_LLM_STATE_DIR"


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "hxp-llm"
    return Path.home() / ".local" / "state" / "hxp-llm"


def entry_digest(entry: LockEntry) -> str:
    """sha256 of everything in the lock entry that verification depends on."""
    canonical = json.dumps({"name": entry.name, "repo_id": entry.repo_id, "revision": entry.revision,
                            "files": [[f.path, f.size, f.sha256] for f in entry.files]}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_identity(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


class VerifiedStamps:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.directory = (state_dir if state_dir is not None else default_state_dir()) / "verified"

    def _path(self, model_dir: Path, entry: LockEntry) -> Path:
        key = hashlib.sha256(f"{model_dir.resolve()}\0{entry_digest(entry)}".encode()).hexdigest()
        return self.directory / f"{key[:32]}.json"

    def is_fresh(self, model_dir: Path, entry: LockEntry, stats: Mapping[str, os.stat_result]) -> bool:
        try:
            stamp = json.loads(self._path(model_dir, entry).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        current = {path: file_identity(st) for path, st in stats.items()}
        return bool(stamp.get("lock_entry_sha256") == entry_digest(entry) and stamp.get("files") == current)

    def record(self, model_dir: Path, entry: LockEntry, stats: Mapping[str, os.stat_result]) -> None:
        """Best effort: a state directory that cannot be written only costs the next start a full check."""
        stamp = {
            "model_dir": str(model_dir.resolve()),
            "lock_entry": entry.name,
            "lock_entry_sha256": entry_digest(entry),
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {path: file_identity(st) for path, st in sorted(stats.items())},
        }
        target = self._path(model_dir, entry)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stamp, indent=1), encoding="utf-8")
            tmp.replace(target)
        except OSError as exc:
            log.warning("could not write the verified-stamp %s (%s); the next start hashes all files again",
                        target, exc)
