"""Set-up on a CPU whose quantized bytes differ from the ones models.lock records, with the real builds.

Simulates the other host of issue 19: the committed lock's host-built hashes are replaced by another
machine's (as GPTQ and SmoothQuant produce on other float kernels), and this machine has no record of
its own builds yet. `scripts/fetch-demo-models` must pass and `hxp-llm model verify` must accept what
it installed; a weight file changed afterwards must still be refused.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hxp_enterprise_llm.models.lockfile import HOST_LOCK_NAME, read_lock, write_lock
from hxp_tools import demo_models

REPO_ROOT = Path(__file__).resolve().parents[3]
HXP_LLM = Path(sys.executable).parent / "hxp-llm"
QUANTIZED = ["smollm2-135m-instruct-w4a16", "smollm2-135m-instruct-w8a8"]
# No build here can have it (whatever the committed lock says, even one already planted like this).
OTHER_HOSTS_SHA256 = hashlib.sha256(b"weights another CPU computed").hexdigest()
EXIT_VERIFY_MISMATCH = 1  # `hxp-llm model verify`
EXIT_SERVE_MODEL = 3  # `hxp-llm serve`


@pytest.fixture
def other_host(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A lock as the other host wrote it, and an environment whose build cache has no host record."""
    lock_path = tmp_path / "models.lock"
    lock = read_lock(REPO_ROOT / "models.lock")
    for name in QUANTIZED:
        entry = lock.find(name)
        assert entry.host_built, f"{name}: models.lock must list its host-built files"
        lock.upsert(replace(entry, files=tuple(
            replace(f, sha256=OTHER_HOSTS_SHA256) if f.path in entry.host_built else f for f in entry.files)))
    write_lock(lock, lock_path)

    # The real cached builds, hard-linked into a fresh cache (no models.host.lock: no first build here yet).
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    for name in QUANTIZED:
        built = demo_models.cache_dir() / "models" / f"{name}-{demo_models.RECIPES[name].recipe_hash()}"
        if not built.is_dir():
            pytest.fail(f"{built} is missing: run scripts/setup (it builds the quantized demo models)")
        subprocess.run(["cp", "-al", str(built), str(cache / "models" / built.name)], check=True)
    return lock_path, {**os.environ, "HXP_CACHE_DIR": str(cache)}


def test_setup_passes_where_the_quantized_bytes_differ_from_the_lock(
        other_host: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    lock_path, env = other_host
    models = tmp_path / "models"
    only = [arg for name in QUANTIZED for arg in ("--only", name)]

    fetched = subprocess.run([str(REPO_ROOT / "scripts" / "fetch-demo-models"), "--dest", str(models),
                              "--lock", str(lock_path), *only],
                             env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)

    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.count("first build on this machine") == len(QUANTIZED)
    assert "float kernels differ between CPUs" in fetched.stdout
    assert {e.name for e in read_lock(models / HOST_LOCK_NAME).models} == set(QUANTIZED)
    for name in QUANTIZED:
        verified = _verify(models / name, lock_path)
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.startswith("ok:")


def test_a_weight_file_changed_after_the_build_is_still_refused(
        other_host: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    lock_path, env = other_host
    models = tmp_path / "models"
    subprocess.run([str(REPO_ROOT / "scripts" / "fetch-demo-models"), "--dest", str(models), "--lock",
                    str(lock_path), "--only", QUANTIZED[0]], env=env, cwd=REPO_ROOT, check=True,
                   capture_output=True, timeout=300)
    weights = models / QUANTIZED[0] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))

    verified = _verify(models / QUANTIZED[0], lock_path)
    served = subprocess.run([str(HXP_LLM), "serve", "--model-path", str(models / QUANTIZED[0]), "--models-lock",
                             str(lock_path), "--enforce-eager"], env=_service_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)

    assert verified.returncode == EXIT_VERIFY_MISMATCH, verified.stdout + verified.stderr
    assert "model.safetensors" in verified.stderr
    assert "altered" in verified.stderr
    assert served.returncode == EXIT_SERVE_MODEL, served.stderr[-2000:]
    assert "model.safetensors" in served.stderr


def _service_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPENCHAT_3_5_")}


def _verify(model_dir: Path, lock_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HXP_LLM), "model", "verify", "--model-path", str(model_dir), "--lock",
                           str(lock_path)], env=_service_env(), capture_output=True, text=True, timeout=300)
