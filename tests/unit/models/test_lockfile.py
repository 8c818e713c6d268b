from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from hxp_enterprise_llm.models.lockfile import (
    HOST_LOCK_NAME,
    LockedFile,
    LockEntry,
    LockError,
    ModelsLock,
    read_host_lock,
    read_lock,
    render_lock,
    with_files,
    with_host_builds,
    write_lock,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_round_trip_keeps_every_field_including_unknown_sizes(tmp_path: Path) -> None:
    entry = LockEntry(
        name="m", repo_id="owner/m", revision="a" * 40, note='quotes " and ünïcode',
        files=(LockedFile("b/weights [1].safetensors", 123, "f" * 64),
               LockedFile("a.json", None, ""),
               LockedFile("z.model", 0, "0" * 64)))
    other = LockEntry(name="another", repo_id="built", revision="built:x", files=(LockedFile("c", 1, "c" * 64),))
    path = tmp_path / "models.lock"
    write_lock(ModelsLock([entry, other]), path)

    again = read_lock(path)
    assert [e.name for e in again.models] == ["another", "m"]
    m = again.find("owner/m")
    assert m.note == entry.note
    assert m.files == tuple(sorted(entry.files, key=lambda f: f.path))
    assert m.file("a.json") == LockedFile("a.json", None, "")
    assert m.unlocked_files == ["a.json"]
    assert render_lock(again) == path.read_text(encoding="utf-8")
    # An unknown size is an omitted key, not a magic number.
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    assert "size" not in next(f for f in raw["model"][1]["file"] if f["path"] == "a.json")


def test_upsert_replaces_one_entry_and_keeps_the_others() -> None:
    lock = ModelsLock([LockEntry("a", "o/a", "1" * 40), LockEntry("b", "o/b", "2" * 40)])
    lock.upsert(LockEntry("a", "o/a", "3" * 40))
    assert [(e.name, e.revision) for e in lock.models] == [("a", "3" * 40), ("b", "2" * 40)]


def test_malformed_and_unknown_entries_are_lock_errors(tmp_path: Path) -> None:
    path = tmp_path / "models.lock"
    path.write_text('version = 1\n[[model]]\nname = "x"\n', encoding="utf-8")
    with pytest.raises(LockError, match="malformed model entry 'x'"):
        read_lock(path)
    with pytest.raises(LockError, match="no entry for 'nope'"):
        ModelsLock().find("nope")
    with pytest.raises(LockError, match="does not exist"):
        read_lock(tmp_path / "absent.lock")


def test_repository_lock_pins_openchat_and_knows_only_what_is_certain() -> None:
    entry = read_lock(REPO_ROOT / "models.lock").find("openchat/openchat-3.5-0106")
    assert entry.revision == "9619fb7d2a8e25fa6b0633c0f57f7f4aa79b45c4"
    tokenizer = entry.file("tokenizer.model")
    assert tokenizer == LockedFile("tokenizer.model", 493443,
                                   "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055")
    assert {f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)} <= {f.path for f in entry.files}
    # Nothing guessed: every file other than the tokenizer is unlocked until `hxp-llm model lock`.
    assert set(entry.unlocked_files) == {f.path for f in entry.files} - {"tokenizer.model"}


def test_rendered_file_tables_hold_only_the_formats_keys(tmp_path: Path) -> None:
    entry = LockEntry("m", "o/m", "a" * 40, files=(LockedFile("sized", 5, "5" * 64), LockedFile("unsized", None, "")))
    raw = tomllib.loads(render_lock(ModelsLock([entry])))
    assert raw["version"] == 1
    tables = {f["path"]: set(f) for f in raw["model"][0]["file"]}
    assert tables == {"sized": {"path", "size", "sha256"}, "unsized": {"path", "sha256"}}
    assert set(raw["model"][0]) == {"name", "repo_id", "revision", "file"}  # no note key when there is none


def test_keys_left_out_read_as_unlocked_and_without_note(tmp_path: Path) -> None:
    path = tmp_path / "models.lock"
    path.write_text('version = 1\n[[model]]\nname = "m"\nrepo_id = "o/m"\nrevision = "r"\n'
                    '[[model.file]]\npath = "w"\n', encoding="utf-8")
    entry = read_lock(path).find("m")
    assert entry.note == ""
    assert entry.files == (LockedFile("w", None, ""),)
    assert entry.unlocked_files == ["w"]
    assert entry.file("absent") is None


def test_lock_errors_say_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "models.lock"
    path.write_text("version = 2\n", encoding="utf-8")
    with pytest.raises(LockError, match=r"unsupported version 2, expected 1$"):
        read_lock(path)
    with pytest.raises(LockError, match=r"\(entries: a, b\)$"):
        ModelsLock([LockEntry("a", "o/a", "1"), LockEntry("b", "o/b", "2")]).find("c")
    with pytest.raises(LockError, match=r"\(entries: none\)$"):
        ModelsLock().find("c")


def test_with_files_sorts_the_files_by_path() -> None:
    entry = with_files(LockEntry("m", "o/m", "r"), [LockedFile("b", 1, "b"), LockedFile("a", 2, "a")])
    assert [f.path for f in entry.files] == ["a", "b"]
    assert (entry.name, entry.repo_id, entry.revision) == ("m", "o/m", "r")


def test_a_lock_without_models_and_broken_locks_read_as_what_they_are(tmp_path: Path) -> None:
    path = tmp_path / "models.lock"
    path.write_text("version = 1\n", encoding="utf-8")
    assert read_lock(path).models == []
    path.write_text("version = 1\n[[model\n", encoding="utf-8")
    with pytest.raises(LockError, match=r"models.lock is not valid TOML: "):
        read_lock(path)
    path.write_text('version = 1\n[[model]]\nrepo_id = "o/m"\n', encoding="utf-8")
    with pytest.raises(LockError, match=r"malformed model entry '\?': 'name'"):
        read_lock(path)


def test_the_file_keeps_non_ascii_text_readable() -> None:
    rendered = render_lock(ModelsLock([LockEntry("m", "o/m", "r", note="ünïcode")]))
    assert 'note = "ünïcode"' in rendered


def test_host_built_files_are_verified_as_this_machine_built_them(tmp_path: Path) -> None:
    # The reference lock's sha256 of a host-built file is the reference machine's; this machine's own
    # first build (models.host.lock, the same name and revision) replaces it, and only for those files.
    entry = LockEntry("m", "built", "built:r1", files=(LockedFile("config.json", 2, "c" * 64),
                                                        LockedFile("w.safetensors", 9, "a" * 64)),
                      host_built=("w.safetensors",))
    path = tmp_path / "models.lock"
    write_lock(ModelsLock([entry]), path)
    assert read_lock(path).models[0].host_built == ("w.safetensors",)
    assert read_host_lock(tmp_path) is None  # nothing built on this machine yet
    assert with_host_builds(entry, None) == entry

    own = LockEntry("m", "built", "built:r1", files=(LockedFile("config.json", 2, "d" * 64),
                                                      LockedFile("w.safetensors", 9, "b" * 64)))
    other_recipe = LockEntry("m", "built", "built:r0", files=(LockedFile("w.safetensors", 9, "e" * 64),))
    other_model = LockEntry("n", "built", "built:r1", files=(LockedFile("w.safetensors", 9, "f" * 64),))
    write_lock(ModelsLock([other_recipe, other_model, own]), tmp_path / HOST_LOCK_NAME)
    host_lock = read_host_lock(tmp_path)
    assert host_lock is not None
    verified = with_host_builds(entry, host_lock)
    assert verified.files == (LockedFile("config.json", 2, "c" * 64), LockedFile("w.safetensors", 9, "b" * 64))
    assert with_host_builds(replace(entry, revision="built:r2"), host_lock) == replace(entry, revision="built:r2")
    assert with_host_builds(replace(entry, host_built=()), host_lock) == replace(entry, host_built=())
