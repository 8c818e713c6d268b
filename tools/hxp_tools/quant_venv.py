"""The quantization venv, and quantized variants of a model made in it by `hxp_tools.quantize` and locked.

The quantization venv holds llm-compressor pinned by requirements/quantize.txt, cached apart from the
service's venv: llm-compressor 0.14 pins older transformers / huggingface_hub than vLLM 0.32 uses, and
installed into the service's venv it would change the versions the other demo models' recipes hash. It is
`$HXP_CACHE_DIR/quant-venv-<key>` (key: the requirements file, the Python version, VENV_RECIPE), built once
per key under a lock (two setups at once build it once), marked complete only at the end.

Used two ways:
- by `hxp_tools.demo_models` for the demo model's int4 / int8 variants (built at setup, checked against
  models.lock like the other demo models);
- on its own, for OpenChat-3.5-0106 on a machine that has its bf16 weights (docs/models.md):

    scripts/quantize-model --src /opt/models/openchat-3.5-0106 --out /opt/models/openchat-3.5-0106-w4a16 \
        --scheme gptq-w4a16-asym --group-size 128 --prompt-format openchat \
        --lock-name openchat-3.5-0106-w4a16 --repo-id openchat/openchat-3.5-0106
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.models.hashing import sha256_file
from hxp_enterprise_llm.models.lockfile import LockedFile
from hxp_tools import ROOT
from hxp_tools.quantize import PROMPT_FORMATS, SCHEMES

REQUIREMENTS = ROOT / "requirements" / "quantize.txt"
# Bump when the way the venv is built changes (part of the key).
VENV_RECIPE = 1
COMPLETE_MARK = ".hxp-complete"
TOOLS_DIR = ROOT / "tools"
CALIBRATION = TOOLS_DIR / "hxp_tools" / "data" / "calibration_chat.json"
WORKER = TOOLS_DIR / "hxp_tools" / "quantize.py"
# The quantization venv's packages whose versions decide the quantized bytes.
QUANT_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "llmcompressor", "compressed-tensors",
                  "accelerate", "datasets", "numpy")


class QuantizationError(RuntimeError):
    """The quantization venv could not be built, or the worker failed (the message ends with its output)."""


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


def ensure_quant_venv(cache: Path, log: Callable[[str], None] = print) -> Path:
    """The venv's python, building the venv first if this key has none (a few minutes, about 1.5 GB)."""
    material = f"recipe {VENV_RECIPE}\n{sys.version_info[:3]}\n".encode() + REQUIREMENTS.read_bytes()
    venv = cache / f"quant-venv-{hashlib.sha256(material).hexdigest()[:16]}"
    python = venv / "bin" / "python"
    cache.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / COMPLETE_MARK).is_file():
            return python
        started = time.monotonic()
        log(f"building the quantization venv {venv} from {REQUIREMENTS.name} (once per key, a few minutes)")
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(python), "-m", "pip", "install", "--quiet", "--no-input", "--no-deps", *torch_source_args(),
              "-r", str(REQUIREMENTS)])
        check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
        if check.returncode != 0:
            raise QuantizationError(f"inconsistent quantization venv {venv}: {check.stdout.strip()}")
        (venv / COMPLETE_MARK).touch()
        log(f"quantization venv ready in {time.monotonic() - started:.0f} s")
    return python


def torch_source_args() -> list[str]:
    """pip's options for torch 2.13.0+cpu (not on PyPI), as scripts/setup uses them; it logs the source."""
    result = subprocess.run([str(ROOT / "scripts" / "torch-source")], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise QuantizationError("no source for torch 2.13.0+cpu (scripts/torch-source said why above; docs/setup.md)")
    return result.stdout.split()


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        # pip's output minus the machine's noise about index folders that lack a package.
        output = "\n".join(line for line in result.stdout.splitlines() if "is ignored: it is neither" not in line)
        raise QuantizationError(f"{' '.join(argv)} failed ({result.returncode}):\n{output[-3000:]}")


def recipe_inputs() -> dict[str, Any]:
    """What, besides the parameters and the source model, decides a quantized build's bytes."""
    pins = pinned_versions()
    return {"calibration": sha256_file(CALIBRATION), "worker": sha256_file(WORKER),
            "quant_packages": {name: pins.get(name, "absent") for name in QUANT_PACKAGES}}


def quantize(src: Path, out: Path, params: dict[str, Any], cache: Path, log: Callable[[str], None]) -> None:
    """Quantize src into out (which must not exist yet) in the quantization venv."""
    python = ensure_quant_venv(cache, log)
    argv = [str(python), "-m", "hxp_tools.quantize", "--src", str(src), "--out", str(out),
            "--scheme", params["scheme"], "--group-size", str(params.get("group_size", 128)),
            "--calibration", str(CALIBRATION), "--prompt-format", params.get("prompt_format", "chat_template"),
            "--max-seq-length", str(params.get("max_seq_length", 512)),
            "--calibration-dtype", params.get("calibration_dtype", "float32")]
    if "smoothing_strength" in params:
        argv += ["--smoothing-strength", str(params["smoothing_strength"])]
    env = {**os.environ, "PYTHONPATH": str(TOOLS_DIR), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           # llm-compressor checks for newer releases and reports usage unless told not to.
           "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    log(f"quantizing {src.name} -> {out.name} ({params['scheme']}) in the quantization venv")
    # llm-compressor logs every module and draws progress bars: keep its output for a failure, show ours.
    tail: deque[str] = deque(maxlen=60)
    with subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as worker:
        assert worker.stdout is not None
        for line in worker.stdout:
            tail.append(line.rstrip())
            if line.startswith("[quantize]"):
                log(line.rstrip().removeprefix("[quantize] "))
    if worker.returncode != 0:
        raise QuantizationError(f"quantizing {src} failed (exit code {worker.returncode}); the worker's last "
                                f"lines:\n" + "\n".join(tail))


def describe_files(directory: Path) -> list[LockedFile]:
    """Every file under `directory` as a lock entry records it."""
    return [LockedFile(path=str(p.relative_to(directory)), size=p.stat().st_size, sha256=sha256_file(p))
            for p in sorted(directory.rglob("*")) if p.is_file()]


def main(argv: Sequence[str] | None = None) -> int:
    from hxp_enterprise_llm.models.lockfile import LockEntry, ModelsLock, read_lock, with_files, write_lock

    def log(message: str) -> None:
        print(f"[quantize-model] {message}", flush=True)

    parser = argparse.ArgumentParser(prog="python -m hxp_tools.quant_venv",
                                     description="Quantize a model directory with llm-compressor (own venv).")
    parser.add_argument("--src", type=Path, required=True, help="unquantized Hugging Face model directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist)")
    parser.add_argument("--scheme", choices=SCHEMES, default="gptq-w4a16-asym")
    parser.add_argument("--group-size", type=int, default=128, help="int4: weights per scale (divides every K)")
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="chat_template",
                        help="how calibration conversations are rendered (openchat: GPT4 Correct User/Assistant)")
    parser.add_argument("--calibration-dtype", choices=("float32", "bfloat16"), default="bfloat16",
                        help="bfloat16 (default here: a 7B model in float32 needs 29 GB) or float32 (reproducible "
                             "across x86 hosts, as the demo models are built)")
    parser.add_argument("--lock-name", help="also write a models.lock entry of this name for the output")
    parser.add_argument("--repo-id", default="", help="repo id recorded in the lock entry (the source model's)")
    parser.add_argument("--lock", type=Path, default=Path("models.lock"))
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new directory")
    params = {"scheme": args.scheme, "group_size": args.group_size, "prompt_format": args.prompt_format,
              "calibration_dtype": args.calibration_dtype}
    try:
        quantize(args.src, args.out, params, cache_dir(), log)
    except QuantizationError as exc:
        shutil.rmtree(args.out, ignore_errors=True)  # never leave a half-written model directory
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.lock_name:
        files = describe_files(args.out)
        digest = hashlib.sha256(repr((sorted(params.items()), recipe_inputs())).encode()).hexdigest()[:16]
        entry = LockEntry(name=args.lock_name, repo_id=args.repo_id, revision=f"built:{args.lock_name}@{digest}",
                          note=f"Quantized here by hxp_tools.quant_venv from {args.src.name} ({params}); "
                               "locked from the bytes this build produced.")
        lock = read_lock(args.lock) if args.lock.exists() else ModelsLock()
        lock.upsert(with_files(entry, files))
        write_lock(lock, args.lock)
        log(f"wrote {args.lock_name} to {args.lock} ({len(files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
