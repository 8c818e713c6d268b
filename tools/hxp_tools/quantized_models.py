"""Quantized variants of a model: run `hxp_tools.quantize` in the quantization venv, and lock the result.

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
import hashlib
import os
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.models.hashing import sha256_file
from hxp_enterprise_llm.models.lockfile import LockedFile
from hxp_tools.quant_venv import ROOT, QuantVenvError, cache_dir, ensure_quant_venv, pinned_versions
from hxp_tools.quantize import PROMPT_FORMATS, SCHEMES

TOOLS_DIR = ROOT / "tools"
CALIBRATION = TOOLS_DIR / "hxp_tools" / "data" / "calibration_chat.json"
WORKER = TOOLS_DIR / "hxp_tools" / "quantize.py"
# The quantization venv's packages whose versions decide the quantized bytes.
QUANT_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "llmcompressor", "compressed-tensors",
                  "accelerate", "datasets", "numpy")


class QuantizationError(RuntimeError):
    """The worker failed; the message ends with its last lines of output."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_inputs() -> dict[str, Any]:
    """What, besides the parameters and the source model, decides a quantized build's bytes."""
    pins = pinned_versions()
    return {"calibration": sha256_of(CALIBRATION), "worker": sha256_of(WORKER),
            "quant_packages": {name: pins.get(name, "absent") for name in QUANT_PACKAGES}}


def quantize(src: Path, out: Path, params: dict[str, Any], cache: Path, log: Callable[[str], None]) -> None:
    """Quantize src into out (which must not exist yet) in the quantization venv."""
    try:
        python = ensure_quant_venv(cache, log)
    except QuantVenvError as exc:
        raise QuantizationError(str(exc)) from exc
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

    parser = argparse.ArgumentParser(prog="python -m hxp_tools.quantized_models",
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
                          note=f"Quantized here by hxp_tools.quantized_models from {args.src.name} ({params}); "
                               "locked from the bytes this build produced.")
        lock = read_lock(args.lock) if args.lock.exists() else ModelsLock()
        lock.upsert(with_files(entry, files))
        write_lock(lock, args.lock)
        log(f"wrote {args.lock_name} to {args.lock} ({len(files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
