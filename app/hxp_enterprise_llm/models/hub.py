"""Talking to the Hugging Face Hub: lock a revision from the Hub's metadata, download a locked model.

Locking never trusts downloaded bytes alone. For a file stored in LFS the Hub publishes its
sha256 (the LFS object id) and size: those go into the lock as they are. A small file kept in
git has no published sha256, only its git blob id (a sha1 over "blob <size>\\0" + bytes): its
bytes are fetched, their blob id must equal the Hub's, and only then their sha256 is recorded.

huggingface_hub is imported inside the functions: it is only needed by these commands.
"""

from __future__ import annotations

import glob
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.models.hashing import git_blob_sha1, sha256_bytes
from hxp_enterprise_llm.models.lockfile import LockedFile, LockEntry, LockError

log = logging.getLogger(__name__)

COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


class HubMetadataError(RuntimeError):
    """The Hub's own metadata is inconsistent with the bytes it serves; nothing is locked."""


def resolve_revision(api: Any, repo_id: str, revision: str) -> str:
    """A branch or tag becomes the commit it points to now: the lock pins commits only."""
    if COMMIT_HASH.fullmatch(revision):
        return revision
    sha = api.repo_info(repo_id=repo_id, revision=revision).sha
    if not sha or not COMMIT_HASH.fullmatch(sha):
        raise HubMetadataError(f"the Hub resolved {repo_id}@{revision} to {sha!r}, not a commit hash")
    log.info("revision %s of %s is commit %s", revision, repo_id, sha)
    return str(sha)


def _locked_file_from_hub(api: Any, repo_id: str, commit: str, repo_file: Any, scratch: Path) -> LockedFile:
    from huggingface_hub import hf_hub_download

    if repo_file.lfs is not None:
        sha256, size = repo_file.lfs.sha256, int(repo_file.lfs.size)
        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            raise HubMetadataError(f"the Hub's LFS sha256 for '{repo_file.path}' is malformed: {sha256!r}")
        return LockedFile(path=repo_file.path, size=size, sha256=sha256)
    local = hf_hub_download(repo_id, repo_file.path, revision=commit, cache_dir=scratch,
                            endpoint=api.endpoint, token=api.token)
    data = Path(local).read_bytes()
    actual_blob = git_blob_sha1(data)
    if actual_blob != repo_file.blob_id:
        raise HubMetadataError(f"file '{repo_file.path}' of {repo_id}@{commit} does not match the Hub's git "
                               f"blob id: expected {repo_file.blob_id}, actual {actual_blob}; not locking it")
    if len(data) != repo_file.size:
        raise HubMetadataError(f"file '{repo_file.path}' of {repo_id}@{commit}: expected {repo_file.size} "
                               f"bytes per the Hub, actual {len(data)}")
    return LockedFile(path=repo_file.path, size=len(data), sha256=sha256_bytes(data))


def lock_entry_from_hub(name: str, repo_id: str, revision: str, *, note: str = "",
                        endpoint: str | None = None, token: str | bool | None = None) -> LockEntry:
    """Every file of repo_id at revision, hashed from the Hub's metadata (see the module docstring)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token)
    commit = resolve_revision(api, repo_id, revision)
    repo_files = [f for f in api.list_repo_tree(repo_id, recursive=True, revision=commit)
                  if isinstance(f, RepoFile)]
    if not repo_files:
        raise HubMetadataError(f"{repo_id}@{commit} lists no files")
    with tempfile.TemporaryDirectory(prefix="hxp-llm-lock-") as scratch:
        files = [_locked_file_from_hub(api, repo_id, commit, f, Path(scratch)) for f in repo_files]
    return LockEntry(name=name, repo_id=repo_id, revision=commit,
                     files=tuple(sorted(files, key=lambda f: f.path)), note=note)


def download_model(entry: LockEntry, dest: Path, *, endpoint: str | None = None,
                   token: str | bool | None = None, max_workers: int = 4,
                   cache_dir: Path | None = None) -> Path:
    """Fetch exactly the locked files of entry's revision into dest (resumable); does not verify."""
    from huggingface_hub import snapshot_download

    if not COMMIT_HASH.fullmatch(entry.revision):
        raise LockError(f"models.lock entry '{entry.name}' has revision '{entry.revision}', not a Hub "
                        "commit: it is built locally (`scripts/fetch-demo-models`), not downloaded")
    # The lock lists the files to fetch; glob.escape keeps names with [ ] * ? literal in
    # huggingface_hub's fnmatch-based filter.
    patterns = [glob.escape(f.path) for f in entry.files] or None
    dest.mkdir(parents=True, exist_ok=True)
    path = snapshot_download(entry.repo_id, revision=entry.revision, local_dir=dest, allow_patterns=patterns,
                             endpoint=endpoint, token=token, max_workers=max_workers, cache_dir=cache_dir)
    return Path(path)
