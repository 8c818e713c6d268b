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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PublishedFile:
    """One file of a commit as the Hub lists it: its LFS sha256 (large files) or its git blob id."""

    path: str
    size: int
    blob_id: str
    lfs_sha256: str | None  # None: a small file kept in git, known by its blob id only

    def locked(self) -> LockedFile:
        """What the lock may take from the metadata alone: the sha256 of an LFS file ("" otherwise)."""
        return LockedFile(path=self.path, size=self.size, sha256=self.lfs_sha256 or "")


class PublishedHashMismatch(Exception):
    """Bytes served for a file are not the ones the Hub's metadata describes."""

    def __init__(self, path: str, what: str, expected: str, actual: str) -> None:
        super().__init__(f"'{path}': {what} expected {expected}, actual {actual}")
        self.path, self.what, self.expected, self.actual = path, what, expected, actual


def published_files(api: Any, repo_id: str, commit: str) -> list[PublishedFile]:
    """Every file of repo_id at commit, from the Hub's tree listing (the call snapshot_download makes too)."""
    from huggingface_hub.hf_api import RepoFile

    files = []
    for f in api.list_repo_tree(repo_id, recursive=True, revision=commit):
        if not isinstance(f, RepoFile):
            continue
        sha256 = f.lfs.sha256 if f.lfs is not None else None
        if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise HubMetadataError(f"the Hub's LFS sha256 for '{f.path}' is malformed: {sha256!r}")
        size = int(f.lfs.size) if f.lfs is not None else int(f.size)
        files.append(PublishedFile(path=f.path, size=size, blob_id=f.blob_id, lfs_sha256=sha256))
    if not files:
        raise HubMetadataError(f"{repo_id}@{commit} lists no files")
    return sorted(files, key=lambda f: f.path)


def lock_small_file(published: PublishedFile, data: bytes) -> LockedFile:
    """A git-stored file's sha256, once its bytes are proven to be the Hub's (blob id and size)."""
    actual_blob = git_blob_sha1(data)
    if actual_blob != published.blob_id:
        raise PublishedHashMismatch(published.path, "git blob id", published.blob_id, actual_blob)
    if len(data) != published.size:
        raise PublishedHashMismatch(published.path, "size", f"{published.size} bytes", f"{len(data)} bytes")
    return LockedFile(path=published.path, size=len(data), sha256=sha256_bytes(data))


def _locked_file_from_hub(api: Any, repo_id: str, commit: str, published: PublishedFile,
                          scratch: Path) -> LockedFile:
    from huggingface_hub import hf_hub_download

    if published.lfs_sha256 is not None:
        return published.locked()
    local = hf_hub_download(repo_id, published.path, revision=commit, cache_dir=scratch,
                            endpoint=api.endpoint, token=api.token)
    try:
        return lock_small_file(published, Path(local).read_bytes())
    except PublishedHashMismatch as exc:
        raise HubMetadataError(f"file '{exc.path}' of {repo_id}@{commit} does not match the Hub's {exc.what}: "
                               f"expected {exc.expected}, actual {exc.actual}; not locking it") from None


def lock_entry_from_hub(name: str, repo_id: str, revision: str, *, note: str = "",
                        endpoint: str | None = None, token: str | bool | None = None) -> LockEntry:
    """Every file of repo_id at revision, hashed from the Hub's metadata (see the module docstring)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    commit = resolve_revision(api, repo_id, revision)
    repo_files = published_files(api, repo_id, commit)
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
