"""`model lock` and `model download` against a local server that speaks the Hub's HTTP API.

huggingface_hub's real code paths run (list_repo_tree, HEAD/GET /resolve, snapshot_download with
its retry-with-Range on a dropped connection); only the server is ours.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_hub import FakeHub, FakeRepo, git_blob_id

from hxp_enterprise_llm.cli_model import main
from hxp_enterprise_llm.models.hub import HubMetadataError, download_model, lock_entry_from_hub
from hxp_enterprise_llm.models.lockfile import LockEntry, ModelsLock, read_lock, write_lock
from hxp_enterprise_llm.models.verify import ModelIntegrityError, verify_model_dir

COMMIT = "c0ffee" + "0123456789abcdef0123456789abcdef01"
WEIGHTS = "model.safetensors"
# Larger than huggingface_hub's 10 MiB read chunk, so a cut after 12 MiB leaves 10 MiB on disk to resume from.
WEIGHTS_BYTES = os.urandom(16 * 1024 * 1024 + 5)
CUT_AFTER = 12 * 1024 * 1024


def fixture_repo() -> FakeRepo:
    return FakeRepo(
        repo_id="acme/tiny-chat", commit=COMMIT, branches={"main": COMMIT}, lfs={WEIGHTS},
        files={"config.json": b'{"model_type": "mistral", "vocab_size": 32002}\n',
               "tokenizer_config.json": b'{"eos_token": "<|end_of_turn|>"}\n',
               "nested/generation_config.json": b'{"eos_token_id": 32000}\n',
               WEIGHTS: WEIGHTS_BYTES})


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(fixture_repo()) as server:
        yield server


@pytest.fixture
def locked(hub: FakeHub, tmp_path: Path) -> LockEntry:
    entry = lock_entry_from_hub("tiny-chat", "acme/tiny-chat", COMMIT, endpoint=hub.url)
    hub.requests.clear()
    return entry


def test_lock_takes_lfs_hashes_from_metadata_and_checks_small_files_blob_ids(hub: FakeHub, tmp_path: Path) -> None:
    lock_path = tmp_path / "models.lock"
    write_lock(ModelsLock([LockEntry("other", "o/other", "built:x")]), lock_path)

    code = main(["model", "lock", "acme/tiny-chat", "--revision", "main", "--lock", str(lock_path),
                 "--endpoint", hub.url])

    assert code == 0
    lock = read_lock(lock_path)
    assert [e.name for e in lock.models] == ["other", "tiny-chat"]  # the other entry survives
    entry = lock.find("tiny-chat")
    assert entry.revision == COMMIT  # the branch is pinned as its commit
    repo = fixture_repo()
    assert {f.path: (f.size, f.sha256) for f in entry.files} == {
        p: (len(b), hashlib.sha256(b).hexdigest()) for p, b in repo.files.items()}
    # The weights' hash came from the LFS metadata: their bytes were never fetched.
    assert hub.gets(WEIGHTS) == []
    assert len(hub.gets("config.json")) == 1


def test_lock_refuses_a_small_file_whose_bytes_do_not_match_the_hub_blob_id(
        hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = hub.repo.files["config.json"]
    hub.serve_instead["config.json"] = original.replace(b"32002", b"32000")  # same size, other bytes
    lock_path = tmp_path / "models.lock"

    code = main(["model", "lock", "acme/tiny-chat", "--revision", COMMIT, "--lock", str(lock_path),
                 "--endpoint", hub.url])

    assert code == 3
    err = capsys.readouterr().err
    assert "'config.json'" in err
    assert f"expected {git_blob_id(original)}" in err
    assert f"actual {git_blob_id(hub.serve_instead['config.json'])}" in err
    assert not lock_path.exists()
    with pytest.raises(HubMetadataError):
        lock_entry_from_hub("tiny-chat", "acme/tiny-chat", COMMIT, endpoint=hub.url)


def test_an_interrupted_transfer_resumes_with_a_range_request(
        hub: FakeHub, locked: LockEntry, tmp_path: Path) -> None:
    hub.cut_once[WEIGHTS] = CUT_AFTER
    dest = tmp_path / "models" / "tiny-chat"

    download_model(locked, dest, endpoint=hub.url, cache_dir=tmp_path / "hf-cache")

    first, second = hub.gets(WEIGHTS)
    assert "Range" not in first.headers
    resumed_from = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= CUT_AFTER
    assert verify_model_dir(dest, locked, progress=None).ok
    assert not list(dest.rglob("*.incomplete"))


def test_a_rerun_after_a_failed_download_fetches_only_what_is_missing(
        hub: FakeHub, locked: LockEntry, tmp_path: Path) -> None:
    dest = tmp_path / "tiny-chat"
    hub.fail_get.add("config.json")
    with pytest.raises(Exception, match="500"):
        download_model(locked, dest, endpoint=hub.url, cache_dir=tmp_path / "hf-cache")
    assert len(hub.gets(WEIGHTS)) == 1

    hub.fail_get.clear()
    download_model(locked, dest, endpoint=hub.url, cache_dir=tmp_path / "hf-cache")

    assert len(hub.gets(WEIGHTS)) == 1  # the completed 16 MB file was not fetched again
    assert len(hub.gets("config.json")) == 2
    assert verify_model_dir(dest, locked, progress=None).ok


def test_only_locked_files_are_downloaded(hub: FakeHub, locked: LockEntry, tmp_path: Path) -> None:
    hub.repo.files["README.md"] = b"# not part of the lock\n"
    dest = tmp_path / "tiny-chat"
    download_model(locked, dest, endpoint=hub.url, cache_dir=tmp_path / "hf-cache")
    assert not (dest / "README.md").exists()
    assert verify_model_dir(dest, locked, progress=None).ok


def test_download_command_rejects_a_wrong_hash_and_moves_the_file_out(
        hub: FakeHub, locked: LockEntry, tmp_path: Path) -> None:
    """The whole CLI in a subprocess, the Hub found through HF_ENDPOINT as an operator would set it."""
    lock_path = tmp_path / "models.lock"
    write_lock(ModelsLock([locked]), lock_path)
    tampered = bytearray(WEIGHTS_BYTES)
    tampered[-1] ^= 0xFF
    hub.serve_instead[WEIGHTS] = bytes(tampered)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_TOKEN", None)
    command = [sys.executable, "-m", "hxp_enterprise_llm.cli_model", "model", "download", "tiny-chat",
               "--lock", str(lock_path), "--models-root", str(tmp_path / "models")]

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 1, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert f"downloaded file '{WEIGHTS}'" in last_line
    assert f"expected {hashlib.sha256(WEIGHTS_BYTES).hexdigest()}" in last_line
    assert f"actual {hashlib.sha256(bytes(tampered)).hexdigest()}" in last_line
    model_dir = tmp_path / "models" / "tiny-chat"
    rejected = tmp_path / "models" / "tiny-chat.rejected" / WEIGHTS
    assert f"moved to {rejected}" in last_line
    assert not (model_dir / WEIGHTS).exists()  # out of the directory vLLM loads
    assert rejected.read_bytes() == bytes(tampered)  # kept for inspection
    with pytest.raises(ModelIntegrityError, match="missing"):
        verify_model_dir(model_dir, locked, progress=None)

    # Once the right bytes are served, the same command fetches the file again (huggingface_hub's own
    # metadata would have kept the bad file in place) and passes.
    del hub.serve_instead[WEIGHTS]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert verify_model_dir(model_dir, locked, progress=None).ok
