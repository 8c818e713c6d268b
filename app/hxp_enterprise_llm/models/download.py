"""`hxp-llm model download NAME --revision R`: fetch a revision, prove its bytes are the Hub's, lock it.

huggingface_hub checks only the size of what it downloads. Here every file is checked against what
the Hub publishes for the commit before anything is written to models.lock: an LFS file's sha256
against its LFS object id, a small git file's bytes against its git blob id (its sha256 is then
computed and locked). A file that fails is moved out of the model directory to a sibling
`<dir>.rejected/` (deleted if it cannot be moved): left in place, huggingface_hub would keep trusting
its own download metadata and a re-run would never fetch it again, and vLLM could load it.

(huggingface_hub 2.4's `HfApi.verify_repo_checksums` compares the same hashes, but one file at a time
and without the lock; `verify_model_dir` hashes in parallel threads with progress, as `serve` does.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hxp_enterprise_llm.models.hub import (
    HubMetadataError,
    PublishedFile,
    PublishedHashMismatch,
    download_model,
    lock_small_file,
    published_files,
    resolve_revision,
)
from hxp_enterprise_llm.models.lockfile import LockedFile, LockEntry, with_files
from hxp_enterprise_llm.models.verify import VerifyReport, verify_model_dir

REJECTED_SUFFIX = ".rejected"


@dataclass(frozen=True)
class RejectedFile:
    path: str
    against: str  # what the bytes were compared with, e.g. "the Hub's published sha256 (LFS oid)"
    expected: str
    actual: str
    moved_to: Path | None  # None: could not be moved, so it was deleted

    def describe(self, model_dir: Path) -> str:
        where = f"moved to {self.moved_to}" if self.moved_to else "deleted (it could not be moved)"
        return (f"downloaded file '{self.path}' in {model_dir} does not match {self.against}: expected "
                f"{self.expected}, actual {self.actual}; {where}; re-run the same command to fetch it again")


class DownloadMismatch(Exception):
    """Downloaded bytes differ from the published (or locked) hashes; those files are out of the model dir."""

    def __init__(self, model_dir: Path, rejected: list[RejectedFile]) -> None:
        super().__init__(rejected[0].describe(model_dir))
        self.model_dir, self.rejected = model_dir, rejected


def quarantine(model_dir: Path, relative: str) -> Path | None:
    """Move model_dir/relative to <model_dir>.rejected/relative; delete it if the move fails."""
    source = model_dir / relative
    target = model_dir.with_name(model_dir.name + REJECTED_SUFFIX) / relative
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)  # same filesystem: instant, whatever the size
        return target
    except OSError:
        source.unlink(missing_ok=True)
        return None


def reject_mismatched_files(report: VerifyReport, against: str) -> None:
    """After a download: move files with a wrong size or sha256 out of the model dir and raise."""
    bad = [p for p in report.problems if p.kind in ("sha256", "size")]
    if bad:
        raise DownloadMismatch(report.model_dir, [
            RejectedFile(p.path, against if p.kind == "sha256" else f"the size in {against}", p.expected,
                         p.actual, quarantine(report.model_dir, p.path)) for p in bad])
    if report.problems:
        raise report.error()  # missing or stray files: nothing of ours to move


def check_against_lock(previous: LockEntry | None, entry: LockEntry) -> None:
    """The lock's hashes for this very commit must agree with the Hub's; a disagreement is never overwritten."""
    if previous is None or previous.revision != entry.revision:
        return
    for old in previous.files:
        new = entry.file(old.path)
        if old.locked and new is not None and new.locked and new.sha256 != old.sha256:
            raise HubMetadataError(
                f"'{old.path}' of {entry.repo_id}@{entry.revision}: the Hub publishes sha256 {new.sha256}, "
                f"models.lock has {old.sha256}; models.lock is left as it is, find out which is right")


def _check_small_files(model_dir: Path, published: list[PublishedFile]) -> list[LockedFile]:
    locked, rejected = [], []
    for item in published:
        if item.lfs_sha256 is not None:
            continue
        try:
            locked.append(lock_small_file(item, (model_dir / item.path).read_bytes()))
        except PublishedHashMismatch as exc:
            rejected.append(RejectedFile(item.path, f"the Hub's {exc.what}", exc.expected, exc.actual,
                                         quarantine(model_dir, item.path)))
    if rejected:
        raise DownloadMismatch(model_dir, rejected)
    return locked


def fetch_and_lock(name: str, repo_id: str, revision: str, dest: Path, *, note: str = "",
                   previous: LockEntry | None = None, endpoint: str | None = None,
                   max_workers: int = 4) -> LockEntry:
    """Download every file of repo_id at revision into dest, check it against the Hub; the entry to lock."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint)
    commit = resolve_revision(api, repo_id, revision)
    published = published_files(api, repo_id, commit)
    # LFS hashes are known before any transfer: a conflict with the lock stops here, not after 14 GB.
    provisional = LockEntry(name=name, repo_id=repo_id, revision=commit,
                            files=tuple(p.locked() for p in published), note=note)
    check_against_lock(previous, provisional)
    download_model(provisional, dest, endpoint=endpoint, max_workers=max_workers)
    small = _check_small_files(dest, published)
    entry = with_files(provisional, [p.locked() for p in published if p.lfs_sha256 is not None] + small)
    report = verify_model_dir(dest, entry, raise_on_problem=False)
    reject_mismatched_files(report, "the Hub's published sha256 (LFS oid)")
    check_against_lock(previous, entry)
    return entry
