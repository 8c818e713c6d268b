"""The quantization venv: llm-compressor pinned by requirements/quantize.txt, cached apart from the service's venv.

llm-compressor 0.14 pins older transformers / huggingface_hub than vLLM 0.32 uses; installed into the
service's venv it would change the versions the other demo models' recipes hash. So it gets its own venv,
`$HXP_CACHE_DIR/quant-venv-<key>` (key: the requirements file, the Python version, VENV_RECIPE), built
once per key under a lock (two setups at once build it once), marked complete only at the end.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements" / "quantize.txt"
# Bump when the way the venv is built changes (part of the key).
VENV_RECIPE = 1
COMPLETE_MARK = ".hxp-complete"


class QuantVenvError(RuntimeError):
    """The quantization venv could not be built."""


def cache_dir() -> Path:
    """The build cache of the demo models and this venv (HXP_CACHE_DIR, as scripts/setup reads it)."""
    return Path(os.environ.get("HXP_CACHE_DIR") or Path.home() / ".cache" / "hxp-llm")


def pinned_versions(requirements: Path = REQUIREMENTS) -> dict[str, str]:
    """{normalised project name: version} of every `name==version` line."""
    pins = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def venv_key(requirements: Path = REQUIREMENTS) -> str:
    material = f"recipe {VENV_RECIPE}\n{sys.version_info[:3]}\n".encode() + requirements.read_bytes()
    return hashlib.sha256(material).hexdigest()[:16]


def venv_path(cache: Path, requirements: Path = REQUIREMENTS) -> Path:
    return cache / f"quant-venv-{venv_key(requirements)}"


def ensure_quant_venv(cache: Path, log: Callable[[str], None] = print, requirements: Path = REQUIREMENTS) -> Path:
    """The venv's python, building the venv first if this key has none (a few minutes, about 1.5 GB)."""
    venv = venv_path(cache, requirements)
    python = venv / "bin" / "python"
    cache.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / COMPLETE_MARK).is_file():
            return python
        started = time.monotonic()
        log(f"building the quantization venv {venv} from {requirements.name} (once per key, a few minutes)")
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(python), "-m", "pip", "install", "--quiet", "--no-input", "--no-deps", *torch_source_args(),
              "-r", str(requirements)])
        check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
        if check.returncode != 0:
            raise QuantVenvError(f"inconsistent quantization venv {venv}: {check.stdout.strip()}")
        (venv / COMPLETE_MARK).touch()
        log(f"quantization venv ready in {time.monotonic() - started:.0f} s")
    return python


def torch_source_args() -> list[str]:
    """pip's options for torch 2.13.0+cpu (not on PyPI), as scripts/setup uses them; it logs the source."""
    result = subprocess.run([str(ROOT / "scripts" / "torch-source")], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise QuantVenvError("no source for torch 2.13.0+cpu (scripts/torch-source said why above; docs/setup.md)")
    return result.stdout.split()


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        # pip's output minus the machine's noise about index folders that lack a package.
        output = "\n".join(line for line in result.stdout.splitlines() if "is ignored: it is neither" not in line)
        raise QuantVenvError(f"{' '.join(argv)} failed ({result.returncode}):\n{output[-3000:]}")
