from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from model_fixtures import FIXTURE_FILES, LockedModel

from hxp_enterprise_llm.models.lockfile import LockedFile
from hxp_enterprise_llm.models.progress import HashProgress
from hxp_enterprise_llm.models.stamps import VerifiedStamps
from hxp_enterprise_llm.models.verify import (
    ModelIntegrityError,
    UnlockedModelError,
    default_workers,
    verify_model_dir,
)

WEIGHTS = "model-00001-of-00002.safetensors"


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, ctime_ns) of everything under directory, directories included."""
    result = {}
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files, "."]:
            st = os.stat(Path(root) / name)
            result[str(Path(root, name).relative_to(directory))] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return result


def test_a_matching_directory_passes_and_nothing_in_it_is_written(locked_model: LockedModel) -> None:
    before = snapshot(locked_model.model_dir)
    report = verify_model_dir(locked_model.model_dir, locked_model.entry, workers=3, progress=None)
    assert report.ok
    assert report.files_checked == len(FIXTURE_FILES)
    assert report.bytes_hashed == sum(len(b) for b in FIXTURE_FILES.values())
    assert snapshot(locked_model.model_dir) == before  # ctime would move on any write, chmod or rename


def test_one_altered_byte_fails_naming_the_file_and_both_hashes(locked_model: LockedModel) -> None:
    target = locked_model.model_dir / WEIGHTS
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError) as caught:
        verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None)
    message = str(caught.value)
    assert "\n" not in message
    assert f"'{WEIGHTS}'" in message
    assert locked_model.entry.file(WEIGHTS).sha256 in message  # expected
    import hashlib
    assert hashlib.sha256(bytes(data)).hexdigest() in message  # actual
    assert [p.kind for p in caught.value.problems] == ["sha256"]
    assert target.exists()  # a mismatch deletes nothing


def test_a_truncated_file_fails_on_size_before_any_hashing(locked_model: LockedModel) -> None:
    target = locked_model.model_dir / WEIGHTS
    size = target.stat().st_size
    os.truncate(target, size - 1000)
    report = verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, raise_on_problem=False)
    assert [(p.kind, p.path) for p in report.problems] == [("size", WEIGHTS)]
    assert report.bytes_hashed == 0
    assert f"expected {size} bytes, actual {size - 1000} bytes" in report.error().args[0]


@pytest.mark.parametrize("size_known", [True, False])
def test_a_deleted_file_fails_as_missing(locked_model: LockedModel, size_known: bool) -> None:
    (locked_model.model_dir / "config.json").unlink()
    entry = locked_model.entry
    if not size_known:  # an entry locked without sizes: the file is named by its hash alone
        entry = replace(entry, files=tuple(replace(f, size=None) for f in entry.files))
    locked = entry.file("config.json")
    with pytest.raises(ModelIntegrityError) as caught:
        verify_model_dir(locked_model.model_dir, entry, progress=None)
    size = f"{len(FIXTURE_FILES['config.json'])} bytes, " if size_known else ""
    assert caught.value.args[0] == (f"model file 'config.json' in {locked_model.model_dir} is missing: "
                                    f"expected {size}sha256 {locked.sha256}, actual: no such file")


@pytest.mark.parametrize("extra", ["model-00003-of-00002.safetensors", "nested/deeper/x.bin", ".hidden"])
def test_an_added_file_fails_as_unexpected(locked_model: LockedModel, extra: str) -> None:
    target = locked_model.model_dir / extra
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"not in the lock")
    with pytest.raises(ModelIntegrityError) as caught:
        verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None)
    assert caught.value.args[0] == (
        f"unexpected file '{extra}' in {locked_model.model_dir}: expected absent (not listed in models.lock entry "
        "'fixture-model'), actual a file of 15 bytes; remove it, or re-lock if it belongs to the model")


def test_huggingface_hub_download_metadata_is_not_part_of_the_model(locked_model: LockedModel) -> None:
    meta = locked_model.model_dir / ".cache" / "huggingface" / "download" / "config.json.metadata"
    meta.parent.mkdir(parents=True)
    meta.write_text("commit\netag\n")
    assert verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None).ok
    # ...but only that subtree: anything else under .cache is still extra.
    (locked_model.model_dir / ".cache" / "other").write_text("x")
    with pytest.raises(ModelIntegrityError, match="unexpected file '.cache/other'"):
        verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None)


def test_all_problems_are_reported_and_the_message_stays_one_line(locked_model: LockedModel) -> None:
    (locked_model.model_dir / "config.json").unlink()
    (locked_model.model_dir / "stray.txt").write_text("x")
    with pytest.raises(ModelIntegrityError) as caught:
        verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None)
    assert {(p.kind, p.path) for p in caught.value.problems} == {("missing", "config.json"), ("extra", "stray.txt")}
    assert "\n" not in str(caught.value)
    assert "1 more problem" in str(caught.value)


def test_an_unlocked_entry_is_refused_with_the_command_to_lock_it(locked_model: LockedModel) -> None:
    files = [replace(f, sha256="") if f.path == WEIGHTS else f for f in locked_model.entry.files]
    entry = replace(locked_model.entry, files=tuple(files), revision="0123456789" * 4)
    with pytest.raises(UnlockedModelError) as caught:
        verify_model_dir(locked_model.model_dir, entry, progress=None)
    message = str(caught.value)
    assert f"run `hxp-llm model lock fixture-model --revision {'0123456789' * 4}`" in message
    assert "machine that reaches the Hugging Face Hub" in message
    assert WEIGHTS in message
    assert "\n" not in message


def test_a_missing_directory_is_an_integrity_error(locked_model: LockedModel, tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="does not exist"):
        verify_model_dir(tmp_path / "nowhere", locked_model.entry, progress=None)


def test_a_file_without_a_known_size_is_checked_by_hash(locked_model: LockedModel) -> None:
    files = [replace(f, size=None) for f in locked_model.entry.files]
    entry = replace(locked_model.entry, files=tuple(files))
    assert verify_model_dir(locked_model.model_dir, entry, progress=None).ok
    os.truncate(locked_model.model_dir / WEIGHTS, 10)
    with pytest.raises(ModelIntegrityError, match=f"'{WEIGHTS}' in .* is altered: sha256 expected"):
        verify_model_dir(locked_model.model_dir, entry, progress=None)


def test_stamp_skips_hashing_only_while_nothing_changed(locked_model: LockedModel, tmp_path: Path) -> None:
    stamps = VerifiedStamps(tmp_path / "state")
    first = verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, stamps=stamps)
    assert first.mode == "full"
    assert list((tmp_path / "state" / "verified").glob("*.json"))  # stored outside the model dir
    assert not list(locked_model.model_dir.rglob("*.json.tmp"))
    second = verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, stamps=stamps)
    assert second.mode == "stamp"
    assert second.bytes_hashed == 0

    # Edit in place, same size, mtime put back: ctime still moves, so the stamp no longer applies.
    target = locked_model.model_dir / WEIGHTS
    st = target.stat()
    with open(target, "r+b") as f:
        f.seek(5)
        f.write(b"\x00\xff")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ModelIntegrityError, match=f"'{WEIGHTS}' in .* is altered"):
        verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, stamps=stamps)


def test_a_stamp_belongs_to_one_lock_entry(locked_model: LockedModel, tmp_path: Path) -> None:
    stamps = VerifiedStamps(tmp_path / "state")
    verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, stamps=stamps)
    relocked = replace(locked_model.entry, files=(*locked_model.entry.files,
                                                  LockedFile("added.txt", 1, "a" * 64)))
    (locked_model.model_dir / "added.txt").write_text("b")
    with pytest.raises(ModelIntegrityError, match="'added.txt' in .* is altered"):
        verify_model_dir(locked_model.model_dir, relocked, progress=None, stamps=stamps)


def test_serial_and_parallel_hashing_agree(locked_model: LockedModel) -> None:
    (locked_model.model_dir / "config.json").write_bytes(b"{}" + FIXTURE_FILES["config.json"][2:])
    kinds = []
    for workers in (1, 4):
        report = verify_model_dir(locked_model.model_dir, locked_model.entry, workers=workers,
                                  progress=None, raise_on_problem=False)
        kinds.append([(p.kind, p.path) for p in report.problems])
    assert kinds == [[("sha256", "config.json")]] * 2


def test_fifos_in_place_of_files_are_reported_not_read(locked_model: LockedModel) -> None:
    for name in ("config.json", "tokenizer_config.json"):  # two: the listing goes on after the first
        (locked_model.model_dir / name).unlink()
        os.mkfifo(locked_model.model_dir / name)
    report = verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, raise_on_problem=False)
    assert sorted((p.kind, p.path) for p in report.problems) == [("unreadable", "config.json"),
                                                                 ("unreadable", "tokenizer_config.json")]
    assert report.problems[0].describe(locked_model.model_dir).endswith(
        " cannot be read: expected a regular file, actual a special file")


def test_a_symlink_loop_is_not_followed_and_the_walk_goes_on(locked_model: LockedModel) -> None:
    (locked_model.model_dir / "a-loop").symlink_to(".")  # walked before nested/, which must still be listed
    report = verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, raise_on_problem=False)
    assert [(p.kind, p.path) for p in report.problems] == [("extra", "a-loop")]


def test_a_symlink_loop_ends_the_walk(locked_model: LockedModel) -> None:
    (locked_model.model_dir / "nested" / "loop").symlink_to("..")
    with pytest.raises(ModelIntegrityError) as caught:
        verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None)
    assert caught.value.args[0] == (
        f"unexpected file 'nested/loop' in {locked_model.model_dir}: expected absent (no directory symlinks back "
        "into the model), actual a symlink to a directory listed already; remove it, or re-lock if it belongs "
        "to the model")


@pytest.mark.parametrize("unreadable", [".", "nested"])
def test_an_unreadable_directory_is_named_not_reported_as_missing_files(locked_model: LockedModel,
                                                                        unreadable: str) -> None:
    # As the image's non-root user meets a model directory it may not read. Root reads everything,
    # so the check runs in a forked child that has become `nobody` (the package is imported already).
    if os.getuid() != 0:
        pytest.skip("needs root to run the check as another user")
    import shutil
    import tempfile

    outside = Path(tempfile.mkdtemp(prefix="hxp-unreadable-"))  # pytest's tmp_path is root-only
    try:
        model_dir = outside / locked_model.model_dir.name
        shutil.copytree(locked_model.model_dir, model_dir)
        for path in [outside, *outside.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        (model_dir / unreadable).chmod(0o700)
        assert verify_model_dir(model_dir, locked_model.entry, progress=None).ok  # root reads it all
        kinds, message = _as_nobody(lambda: _problems(model_dir, locked_model))
    finally:
        shutil.rmtree(outside)
    assert kinds == [("unreadable", unreadable)]
    where = f"model directory {model_dir}" if unreadable == "." else f"model file 'nested' in {model_dir}"
    assert message == f"{where} cannot be read: expected a directory readable by uid 65534, actual Permission denied"


def _problems(model_dir: Path, locked_model: LockedModel) -> tuple[list[tuple[str, str]], str]:
    report = verify_model_dir(model_dir, locked_model.entry, progress=None, raise_on_problem=False)
    return [(p.kind, p.path) for p in report.problems], report.error().args[0]


def _as_nobody(check: Callable[[], object]) -> Any:
    """check() run in a forked child that dropped root for uid and gid 65534; its result, or its error re-raised."""
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                result: object = ("ok", check())
            except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
                result = ("error", repr(exc))
            with os.fdopen(write_end, "wb") as pipe:
                pickle.dump(result, pipe)
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0, "the child as nobody failed"
    assert data, "the child as nobody did not report"
    outcome, value = pickle.loads(data)
    assert outcome == "ok", value
    return value


def test_the_progress_display_counts_every_byte_hashed(locked_model: LockedModel) -> None:
    stream = io.StringIO()
    verify_model_dir(locked_model.model_dir, locked_model.entry,
                     progress=HashProgress(stream, log_interval=3600, quiet_below=0))
    total = sum(len(b) for b in FIXTURE_FILES.values())
    assert stream.getvalue().startswith(
        f"verifying fixture-model: {total / 1e9:.2f} GB / {total / 1e9:.2f} GB (100%), ")


def test_dangling_symlinks_in_place_of_files_are_named_unreadable(locked_model: LockedModel) -> None:
    for name in ("config.json", "tokenizer_config.json"):  # two: the listing goes on after the first
        (locked_model.model_dir / name).unlink()
        (locked_model.model_dir / name).symlink_to("gone.json")
    report = verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, raise_on_problem=False)
    assert sorted((p.kind, p.path) for p in report.problems) == [("unreadable", "config.json"),
                                                                 ("unreadable", "tokenizer_config.json")]
    problem = next(p for p in report.problems if p.path == "config.json")  # "missing" too, before the fix
    assert problem.describe(locked_model.model_dir) == (
        f"model file 'config.json' in {locked_model.model_dir} cannot be read: "
        "expected a readable file, actual No such file or directory")


class _RemovesAFileOnStart(HashProgress):
    """Progress display during which another process deletes a model file (between listing and hashing)."""

    def __init__(self, victim: Path) -> None:
        super().__init__(io.StringIO())
        self.victim = victim

    def start(self, total_bytes: int, label: str) -> None:
        super().start(total_bytes, label)
        self.victim.unlink()


def test_a_file_that_vanishes_before_it_is_hashed_is_named_unreadable(locked_model: LockedModel) -> None:
    report = verify_model_dir(locked_model.model_dir, locked_model.entry, raise_on_problem=False,
                              progress=_RemovesAFileOnStart(locked_model.model_dir / WEIGHTS))
    assert [(p.kind, p.path) for p in report.problems] == [("unreadable", WEIGHTS)]
    assert report.error().args[0] == (f"model file '{WEIGHTS}' in {locked_model.model_dir} cannot be read: "
                                      "expected a readable file, actual No such file or directory")


class _RewritesAFileOnStart(HashProgress):
    """Progress display during which a model file is rewritten with the same bytes and its mtime put back."""

    def __init__(self, target: Path) -> None:
        super().__init__(io.StringIO())
        self.target = target

    def start(self, total_bytes: int, label: str) -> None:
        super().start(total_bytes, label)
        st = self.target.stat()
        self.target.write_bytes(self.target.read_bytes())
        os.utime(self.target, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_file_rewritten_while_it_was_hashed_is_not_stamped(locked_model: LockedModel, tmp_path: Path) -> None:
    stamps = VerifiedStamps(tmp_path / "state")
    first = verify_model_dir(locked_model.model_dir, locked_model.entry, stamps=stamps,
                             progress=_RewritesAFileOnStart(locked_model.model_dir / WEIGHTS))
    assert first.ok  # the same bytes: it matches, but its identity (ctime) moved under the hashing
    second = verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, stamps=stamps)
    assert second.mode == "full"
    assert verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, stamps=stamps).mode == "stamp"


def test_the_report_gives_the_threads_used_and_the_time_taken(locked_model: LockedModel, tmp_path: Path) -> None:
    stamps = VerifiedStamps(tmp_path / "state")
    for mode in ("full", "stamp"):
        before = time.monotonic()
        report = verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None, stamps=stamps)
        took = time.monotonic() - before
        assert report.mode == mode
        assert 0 <= report.seconds <= took  # within the call, whatever the machine's speed
    full = verify_model_dir(locked_model.model_dir, locked_model.entry, progress=None)
    assert full.workers == default_workers(len(FIXTURE_FILES)) >= 1
    assert verify_model_dir(locked_model.model_dir, locked_model.entry, workers=3, progress=None).workers == 3
