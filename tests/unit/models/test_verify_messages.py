"""The words a refusal and a verification report use: each problem kind says what was expected and what was found."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hxp_enterprise_llm.models.lockfile import LockedFile, LockEntry
from hxp_enterprise_llm.models.verify import (
    Problem,
    UnlockedModelError,
    VerifyReport,
    _is_ignored,
    default_workers,
    refuse_unlocked,
)

MODEL_DIR = Path("/models/m")


@pytest.mark.parametrize(("problem", "message"), [
    (Problem("missing", "w.bin", "10 bytes", ""),
     "model file 'w.bin' in /models/m is missing: expected 10 bytes, actual: no such file"),
    (Problem("extra", "x.bin", "not in models.lock", "3 bytes"),
     "unexpected file 'x.bin' in /models/m: expected absent (not in models.lock), actual 3 bytes; "
     "remove it, or re-lock if it belongs to the model"),
    (Problem("size", "w.bin", "10 bytes", "4 bytes"),
     "model file 'w.bin' in /models/m has the wrong size (truncated or replaced): expected 10 bytes, actual 4 bytes"),
    (Problem("unreadable", ".", "a directory readable by uid 1", "Permission denied"),
     "model directory /models/m cannot be read: expected a directory readable by uid 1, actual Permission denied"),
    (Problem("unreadable", "w.bin", "a readable file", "Permission denied"),
     "model file 'w.bin' in /models/m cannot be read: expected a readable file, actual Permission denied"),
    (Problem("sha256", "w.bin", "aa", "bb"),
     "model file 'w.bin' in /models/m is altered: sha256 expected aa, actual bb"),
], ids=["missing", "extra", "size", "unreadable-dir", "unreadable-file", "sha256"])
def test_each_problem_says_what_was_expected_and_found(problem: Problem, message: str) -> None:
    assert problem.describe(MODEL_DIR) == message


def test_the_refusal_names_the_first_problem_and_counts_the_others() -> None:
    report = VerifyReport(MODEL_DIR, LockEntry("m", "o/m", "r"), problems=[Problem("sha256", "a", "1", "2")])
    assert str(report.error()) == "model file 'a' in /models/m is altered: sha256 expected 1, actual 2"
    report.problems.append(Problem("missing", "b", "5 bytes", ""))
    assert str(report.error()).endswith(" actual 2 (and 1 more problem(s); `hxp-llm model verify` lists them)")
    assert report.error().problems == report.problems
    assert report.summary() == "2 problem(s) in /models/m"


def test_the_summary_gives_size_time_and_rate() -> None:
    report = VerifyReport(MODEL_DIR, LockEntry("m", "o/m", "r"), files_checked=3, bytes_hashed=3_000_000_000,
                          seconds=2.0, workers=2)
    assert report.summary() == ("/models/m matches models.lock entry 'm' (o/m@r): 3 files, 3.00 GB hashed in "
                                "2.0 s (1500 MB/s, 2 threads)")
    quick = VerifyReport(MODEL_DIR, LockEntry("m", "o/m", "r"), files_checked=1, bytes_hashed=300_000_000,
                         seconds=0.5, workers=1)  # a small model takes under a second: its rate still counts
    assert quick.summary().endswith("0.30 GB hashed in 0.5 s (600 MB/s, 1 threads)")
    instant = VerifyReport(MODEL_DIR, LockEntry("m", "o/m", "r"), files_checked=1, bytes_hashed=5, seconds=0.0)
    assert "(0 MB/s, 0 threads)" in instant.summary()
    stamp = VerifyReport(MODEL_DIR, LockEntry("m", "o/m", "r"), mode="stamp", files_checked=3)
    assert stamp.summary() == ("/models/m matches models.lock entry 'm' (3 files; unchanged since a full "
                               "verification: verified-stamp trusted, not re-hashed)")


@pytest.mark.parametrize(("relative", "ignored"), [
    (".cache/huggingface", True), (".cache/huggingface/download/x.lock", True),
    (".cache/huggingfaceX", False), (".cache/other", False), ("weights.bin", False),
])
def test_only_the_hubs_cache_is_ignored(relative: str, ignored: bool) -> None:
    assert _is_ignored(relative) is ignored


@pytest.mark.parametrize(("cores", "files", "workers"), [
    (16, 100, 8),  # capped at 8 hashing threads
    (4, 100, 4),
    (4, 2, 2),  # never more threads than files
    (4, 0, 1),
    (None, 100, 1),  # unknown core count: one thread
])
def test_hashing_threads_follow_cores_files_and_the_cap(monkeypatch: pytest.MonkeyPatch, cores: int | None,
                                                        files: int, workers: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_workers(files) == workers


@pytest.mark.parametrize(("unlocked", "shown"), [(3, "f0, f1, f2"), (4, "f0, f1, f2, ...")])
def test_an_unlocked_entry_names_its_first_three_unlocked_files(unlocked: int, shown: str) -> None:
    files = tuple(LockedFile(f"f{i}", 1, "") for i in range(unlocked)) + (LockedFile("z", 1, "a" * 64),)
    with pytest.raises(UnlockedModelError) as refused:
        refuse_unlocked(LockEntry("m", "o/m", "r", files=files))
    assert str(refused.value) == (f"models.lock entry 'm' (o/m@r) is unlocked: {unlocked} of {unlocked + 1} files "
                                  f"have no sha256 ({shown}); run `hxp-llm model lock m --revision r` on a machine "
                                  "that reaches the Hugging Face Hub, commit the updated models.lock, and retry")
