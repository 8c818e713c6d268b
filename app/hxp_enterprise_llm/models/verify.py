"""Check a model directory against its models.lock entry: no file missing, extra, resized or altered.

Order of the checks: the lock entry must be complete (every file hashed), then the directory
listing and sizes (cheap, catches truncation and stray files before reading 14 GB), then the
sha256 of every file, hashed in parallel threads. The directory is only ever opened for reading.

One subtree is not part of the model and is skipped: `.cache/huggingface/`, which
`huggingface_hub.snapshot_download(local_dir=...)` creates for its own download metadata. Any
other file that the lock does not list is an error: vLLM loads every `*.safetensors` it finds,
so a stray weight file changes the model even when all locked files are intact.
"""

from __future__ import annotations

import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hxp_enterprise_llm.models.hashing import sha256_file
from hxp_enterprise_llm.models.lockfile import LockEntry, LockError
from hxp_enterprise_llm.models.progress import HashProgress
from hxp_enterprise_llm.models.stamps import VerifiedStamps

# Relative directory prefixes (posix) that belong to tools, not to the model.
IGNORED_SUBTREES = (".cache/huggingface",)

ProblemKind = Literal["missing", "extra", "size", "sha256", "unreadable"]


class ModelIntegrityError(Exception):
    """The model directory does not match its lock entry; str() is one line naming the first file."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class UnlockedModelError(LockError):
    """The lock entry has files without a sha256: refusing beats trusting whatever is on disk."""


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    path: str
    expected: str
    actual: str

    def describe(self, model_dir: Path) -> str:
        where = f"'{self.path}' in {model_dir}"
        if self.kind == "missing":
            return f"model file {where} is missing: expected {self.expected}, actual: no such file"
        if self.kind == "extra":
            return (f"unexpected file {where}: expected absent ({self.expected}), actual {self.actual}; "
                    "remove it, or re-lock if it belongs to the model")
        if self.kind == "size":
            return (f"model file {where} has the wrong size (truncated or replaced): "
                    f"expected {self.expected}, actual {self.actual}")
        if self.kind == "unreadable" and self.path == ".":
            return f"model directory {model_dir} cannot be read: expected {self.expected}, actual {self.actual}"
        if self.kind == "unreadable":
            return f"model file {where} cannot be read: expected {self.expected}, actual {self.actual}"
        return f"model file {where} is altered: sha256 expected {self.expected}, actual {self.actual}"


@dataclass
class VerifyReport:
    model_dir: Path
    entry: LockEntry
    mode: Literal["full", "stamp"] = "full"
    files_checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    workers: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if not self.ok:
            return f"{len(self.problems)} problem(s) in {self.model_dir}"
        if self.mode == "stamp":
            return (f"{self.model_dir} matches models.lock entry '{self.entry.name}' "
                    f"({self.files_checked} files; unchanged since a full verification: "
                    "verified-stamp trusted, not re-hashed)")
        rate = self.bytes_hashed / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (f"{self.model_dir} matches models.lock entry '{self.entry.name}' "
                f"({self.entry.repo_id}@{self.entry.revision}): {self.files_checked} files, "
                f"{self.bytes_hashed / 1e9:.2f} GB hashed in {self.seconds:.1f} s "
                f"({rate:.0f} MB/s, {self.workers} threads)")

    def error(self) -> ModelIntegrityError:
        first = self.problems[0].describe(self.model_dir)
        more = len(self.problems) - 1
        suffix = f" (and {more} more problem(s); `hxp-llm model verify` lists them)" if more else ""
        return ModelIntegrityError(first + suffix, self.problems)


def refuse_unlocked(entry: LockEntry) -> None:
    unlocked = entry.unlocked_files
    if not unlocked:
        return
    shown = ", ".join(unlocked[:3]) + (", ..." if len(unlocked) > 3 else "")
    raise UnlockedModelError(
        f"models.lock entry '{entry.name}' ({entry.repo_id}@{entry.revision}) is unlocked: "
        f"{len(unlocked)} of {len(entry.files)} files have no sha256 ({shown}); run "
        f"`hxp-llm model lock {entry.name} --revision {entry.revision}` on a machine that reaches the "
        "Hugging Face Hub, commit the updated models.lock, and retry")


def _is_ignored(relative: str) -> bool:
    return any(relative == prefix or relative.startswith(prefix + "/") for prefix in IGNORED_SUBTREES)


def list_model_files(model_dir: Path) -> tuple[dict[str, os.stat_result], list[Problem]]:
    """Every file under model_dir (symlinks followed, as vLLM follows them) with its stat."""
    stats: dict[str, os.stat_result] = {}
    problems: list[Problem] = []
    seen_dirs: set[tuple[int, int]] = set()

    def unlisted(exc: OSError) -> None:
        # os.walk skips a directory it cannot list; unreported, its files would look "missing".
        where = Path(exc.filename or model_dir)
        relative = where.relative_to(model_dir).as_posix() if where != model_dir else "."
        problems.append(Problem("unreadable", relative, f"a directory readable by uid {os.getuid()}",
                                exc.strerror or str(exc)))

    for root, dirs, files in os.walk(model_dir, onerror=unlisted, followlinks=True):
        rel_root = Path(root).relative_to(model_dir).as_posix()
        st_root = os.stat(root)
        if (st_root.st_dev, st_root.st_ino) in seen_dirs:  # a symlink loop: listed already
            dirs[:] = []
            problems.append(Problem("extra", rel_root, "no directory symlinks back into the model",
                                    "a symlink to a directory listed already"))
            continue
        seen_dirs.add((st_root.st_dev, st_root.st_ino))
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = sorted(d for d in dirs if not _is_ignored(rel_root + d))
        for name in files:
            relative = rel_root + name
            try:
                st = os.stat(Path(root) / name)
            except OSError as exc:
                problems.append(Problem("unreadable", relative, "a readable file", exc.strerror or str(exc)))
                continue
            if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end when read
                problems.append(Problem("unreadable", relative, "a regular file", "a special file"))
                continue
            stats[relative] = st
    return stats, problems


def check_layout(entry: LockEntry, stats: dict[str, os.stat_result]) -> list[Problem]:
    """Missing, extra and wrong-size files: everything that needs no hashing."""
    problems: list[Problem] = []
    locked = {f.path: f for f in entry.files}
    for path, locked_file in locked.items():
        if path not in stats:
            size = f"{locked_file.size} bytes, " if locked_file.size is not None else ""
            expected = f"{size}sha256 {locked_file.sha256 or '(unlocked)'}"
            problems.append(Problem("missing", path, expected, ""))
    for path in sorted(set(stats) - set(locked)):
        problems.append(Problem("extra", path, f"not listed in models.lock entry '{entry.name}'",
                                f"a file of {stats[path].st_size} bytes"))
    for path, locked_file in locked.items():
        st = stats.get(path)
        if st is not None and locked_file.size is not None and st.st_size != locked_file.size:
            problems.append(Problem("size", path, f"{locked_file.size} bytes", f"{st.st_size} bytes"))
    return problems


def default_workers(file_count: int) -> int:
    return max(1, min(os.cpu_count() or 1, 8, file_count))


def verify_model_dir(
    model_dir: Path,
    entry: LockEntry,
    *,
    workers: int | None = None,
    progress: HashProgress | Literal["auto"] | None = "auto",
    stamps: VerifiedStamps | None = None,
    raise_on_problem: bool = True,
) -> VerifyReport:
    """Verify model_dir against entry; raise ModelIntegrityError (or return the report) on a mismatch.

    With `stamps`, a directory whose files are unchanged since its last clean full verification is
    not hashed again; the listing and size checks still run.
    """
    refuse_unlocked(entry)
    if not model_dir.is_dir():
        raise ModelIntegrityError(f"model directory {model_dir} does not exist or is not a directory "
                                  f"(models.lock entry '{entry.name}'; fetch it with "
                                  f"`hxp-llm model download {entry.name}`)")
    started = time.monotonic()
    report = VerifyReport(model_dir=model_dir, entry=entry, files_checked=len(entry.files))
    stats, unreadable = list_model_files(model_dir)
    unlisted_dirs = [p.path for p in unreadable if p.expected.startswith("a directory")]
    unread_files = {p.path for p in unreadable}
    report.problems = unreadable + [  # files that could not be read, or listed, are not "missing" too
        p for p in check_layout(entry, stats)
        if not (p.kind == "missing" and (p.path in unread_files
                                         or any(d == "." or p.path.startswith(d + "/") for d in unlisted_dirs)))]
    if report.problems:
        return _finish(report, raise_on_problem)

    if stamps is not None and stamps.is_fresh(model_dir, entry, stats):
        report.mode = "stamp"
        report.seconds = time.monotonic() - started
        return report

    reporter = HashProgress() if progress == "auto" else progress
    report.workers = workers or default_workers(len(entry.files))
    digests = _hash_files(model_dir, entry, stats, report.workers, reporter)
    report.bytes_hashed = sum(stats[f.path].st_size for f in entry.files)
    report.seconds = time.monotonic() - started
    for locked_file in entry.files:
        actual = digests[locked_file.path]
        if isinstance(actual, OSError):
            report.problems.append(Problem("unreadable", locked_file.path, "a readable file",
                                           actual.strerror or str(actual)))
        elif actual != locked_file.sha256:
            report.problems.append(Problem("sha256", locked_file.path, locked_file.sha256, actual))

    if report.ok and stamps is not None:
        after, _ = list_model_files(model_dir)
        # A file rewritten while we hashed it must not be stamped with its new identity.
        if all(after.get(p) is not None and after[p].st_mtime_ns == st.st_mtime_ns
               and after[p].st_ctime_ns == st.st_ctime_ns for p, st in stats.items()):
            stamps.record(model_dir, entry, stats)
    return _finish(report, raise_on_problem)


def _hash_files(model_dir: Path, entry: LockEntry, stats: dict[str, os.stat_result], workers: int,
                reporter: HashProgress | None) -> dict[str, str | OSError]:
    """sha256 of every locked file, in parallel; an unreadable file gives its OSError."""
    # Largest first, so the last thread to finish is not the one that started the 5 GB file last.
    files = sorted(entry.files, key=lambda f: stats[f.path].st_size, reverse=True)
    if reporter is not None:
        reporter.start(sum(stats[f.path].st_size for f in files), f"verifying {model_dir.name}")
    on_bytes = reporter.advance if reporter is not None else None

    def digest(path: str) -> tuple[str, str | OSError]:
        try:
            return path, sha256_file(model_dir / path, on_bytes)
        except OSError as exc:
            return path, exc

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        results = dict(pool.map(digest, [f.path for f in files]))
    if reporter is not None:
        reporter.finish()
    return results


def _finish(report: VerifyReport, raise_on_problem: bool) -> VerifyReport:
    if report.problems and raise_on_problem:
        raise report.error()
    return report
