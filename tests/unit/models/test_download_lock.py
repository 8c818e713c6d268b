"""`model download NAME --revision R`: checked against the Hub's published hashes, then locked.

The Hub is a local HTTP server answering with a recorded metadata response
(hub_recording/openchat-3.5-0106.json) and serving file bytes; the real huggingface_hub client talks
to it (HF_ENDPOINT in a subprocess, --endpoint in-process). The expected hashes below come from
the recording, never from the bytes the server sends.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mistral_common
import pytest
from fake_hub import FakeHub, FakeRepo

from hxp_enterprise_llm.cli_model import main
from hxp_enterprise_llm.models.lockfile import read_lock
from hxp_enterprise_llm.models.verify import verify_model_dir

RECORDING = Path(__file__).parent / "hub_recording" / "openchat-3.5-0106.json"
STAND_INS = Path(__file__).parent / "hub_recording" / "openchat-3.5-0106"
REPO_LOCK = Path(__file__).parents[3] / "models.lock"
COMMIT = "9619fb7d2a8e25fa6b0633c0f57f7f4aa79b45c4"  # openchat-facts.md's revision
SHARD = "model-00002-of-00003.safetensors"
TOKENIZER_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"


def published() -> dict[str, dict[str, object]]:
    return {e["path"]: e for e in json.loads(RECORDING.read_text())["tree"]}


def served_files() -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in STAND_INS.iterdir()}
    files["tokenizer.model"] = (Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1").read_bytes()
    return files


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(FakeRepo.from_recording(RECORDING, served_files())) as server:
        yield server


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    """A copy of the repository's models.lock: its openchat-3.5-0106 entry is unlocked at COMMIT."""
    path = tmp_path / "models.lock"
    shutil.copy(REPO_LOCK, path)
    return path


def run_cli(hub: FakeHub, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "hxp_enterprise_llm.cli_model", "model", "download",
                           *args], env=env, capture_output=True, text=True, timeout=120)


def test_download_with_a_revision_checks_the_published_hashes_and_locks_every_file(
        hub: FakeHub, lock_path: Path, tmp_path: Path) -> None:
    before = read_lock(lock_path)
    assert before.find("openchat-3.5-0106").unlocked_files  # as committed

    result = run_cli(hub, tmp_path, "openchat-3.5-0106", "--revision", "main", "--lock", str(lock_path),
                     "--models-root", str(tmp_path / "models"))

    assert result.returncode == 0, result.stderr
    entry = read_lock(lock_path).find("openchat-3.5-0106")
    assert entry.revision == COMMIT  # "main" pinned as the full commit
    assert not entry.unlocked_files
    assert before.find("openchat-3.5-0106").note.startswith("UNLOCKED")
    assert entry.note == ""  # no longer true
    recorded = published()
    assert {f.path for f in entry.files} == set(recorded)
    for f in entry.files:
        meta = recorded[f.path]
        assert f.size == meta["size"]
        if "lfs" in meta:  # the Hub's LFS oid, as published
            assert f.sha256 == meta["lfs"]["oid"]  # type: ignore[index]
        else:  # hashed after download, its bytes proven by the git blob id
            assert f.sha256 == hashlib.sha256((STAND_INS / f.path).read_bytes()).hexdigest()
    assert entry.file("tokenizer.model").sha256 == TOKENIZER_SHA256  # type: ignore[union-attr]
    # The other entries are untouched, and the directory passes the check serve runs.
    assert [e for e in read_lock(lock_path).models if e.name != entry.name] == [
        e for e in before.models if e.name != entry.name]
    assert verify_model_dir(tmp_path / "models" / "openchat-3.5-0106", entry, progress=None).ok
    assert f"locked openchat-3.5-0106 in {lock_path}" in result.stdout


def test_a_served_file_that_differs_from_the_published_sha256_is_refused_and_moved_out(
        hub: FakeHub, lock_path: Path, tmp_path: Path) -> None:
    lock_before = lock_path.read_bytes()
    good = served_files()[SHARD]
    bad = good[:-1] + bytes([good[-1] ^ 0x01])  # same size: only the hash can tell
    hub.serve_instead[SHARD] = bad

    result = run_cli(hub, tmp_path, "openchat-3.5-0106", "--revision", COMMIT, "--lock", str(lock_path),
                     "--models-root", str(tmp_path / "models"))

    assert result.returncode == 1, result.stderr
    expected = published()[SHARD]["lfs"]["oid"]  # type: ignore[index]
    line = next(line for line in result.stderr.splitlines() if SHARD in line)
    assert f"downloaded file '{SHARD}'" in line
    assert "the Hub's published sha256" in line
    assert f"expected {expected}" in line
    assert f"actual {hashlib.sha256(bad).hexdigest()}" in line
    model_dir = tmp_path / "models" / "openchat-3.5-0106"
    assert not (model_dir / SHARD).exists()
    assert (tmp_path / "models" / "openchat-3.5-0106.rejected" / SHARD).read_bytes() == bad
    assert lock_path.read_bytes() == lock_before  # nothing locked


def test_a_small_file_whose_bytes_differ_from_its_git_blob_id_is_refused(
        hub: FakeHub, lock_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock_before = lock_path.read_bytes()
    good = served_files()["generation_config.json"]
    hub.serve_instead["generation_config.json"] = good.replace(b"0.5", b"0.9")

    code = main(["model", "download", "openchat-3.5-0106", "--revision", COMMIT, "--lock", str(lock_path),
                 "--models-root", str(tmp_path / "models"), "--endpoint", hub.url])

    assert code == 1
    err = capsys.readouterr().err
    assert "downloaded file 'generation_config.json'" in err
    assert "the Hub's git blob id" in err
    assert f"expected {published()['generation_config.json']['oid']}" in err
    assert not (tmp_path / "models" / "openchat-3.5-0106" / "generation_config.json").exists()
    assert lock_path.read_bytes() == lock_before


def test_a_published_hash_that_contradicts_the_lock_stops_before_any_transfer(
        hub: FakeHub, lock_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """models.lock knows tokenizer.model's sha256 at COMMIT: a Hub that publishes another one is not believed."""
    wrong = "0" * 64
    for entry in hub.repo.recorded["tree"]:  # type: ignore[index]
        if entry["path"] == "tokenizer.model":
            entry["lfs"] = {**entry["lfs"], "oid": wrong}
    lock_before = lock_path.read_bytes()

    code = main(["model", "download", "openchat-3.5-0106", "--revision", COMMIT, "--lock", str(lock_path),
                 "--models-root", str(tmp_path / "models"), "--endpoint", hub.url])

    assert code == 3
    err = capsys.readouterr().err
    assert f"'tokenizer.model' of openchat/openchat-3.5-0106@{COMMIT}" in err
    assert f"the Hub publishes sha256 {wrong}, models.lock has {TOKENIZER_SHA256}" in err
    assert not [r for r in hub.requests if "/resolve/" in r.path]
    assert lock_path.read_bytes() == lock_before


def test_a_new_repo_id_gets_a_new_entry(hub: FakeHub, tmp_path: Path) -> None:
    lock_path = tmp_path / "models.lock"  # no lock file yet

    code = main(["model", "download", "openchat/openchat-3.5-0106", "--revision", "main",
                 "--lock", str(lock_path), "--dest", str(tmp_path / "oc"), "--endpoint", hub.url])

    assert code == 0
    entry = read_lock(lock_path).find("openchat-3.5-0106")
    assert (entry.repo_id, entry.revision) == ("openchat/openchat-3.5-0106", COMMIT)
    assert verify_model_dir(tmp_path / "oc", entry, progress=None).ok


@pytest.mark.parametrize("name", ["openchat-3.5-tiny", "smollm2-135m-instruct"])
def test_a_model_built_here_is_neither_downloaded_nor_locked_from_the_hub(
        name: str, lock_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock_before = lock_path.read_bytes()
    for command in ("download", "lock"):
        code = main(["model", command, name, "--revision", "main", "--lock", str(lock_path),
                     "--endpoint", "http://127.0.0.1:9"])  # nothing listens there: no request may be made
        assert code == 2
        assert f"models.lock entry '{name}' is built locally" in capsys.readouterr().err
    assert lock_path.read_bytes() == lock_before
    assert not (tmp_path / name).exists()


def test_a_repo_id_shared_with_a_built_model_selects_the_hub_entry(hub: FakeHub, lock_path: Path,
                                                                   tmp_path: Path) -> None:
    """openchat-3.5-tiny is built from openchat/openchat-3.5-0106's tokenizer: the repo id means the real one."""
    code = main(["model", "download", "openchat/openchat-3.5-0106", "--revision", COMMIT, "--lock", str(lock_path),
                 "--models-root", str(tmp_path / "models"), "--endpoint", hub.url])
    assert code == 0
    lock = read_lock(lock_path)
    assert not lock.find("openchat-3.5-0106").unlocked_files
    assert lock.find("openchat-3.5-tiny").revision.startswith("built:")
