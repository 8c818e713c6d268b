"""Quantize a Hugging Face model directory with llm-compressor, reproducibly, into a compressed-tensors checkpoint.

Runs inside the quantization venv (`hxp_tools.quant_venv`, pinned by requirements/quantize.txt), never in
the service's venv: llm-compressor pins other transformers / huggingface_hub versions than vLLM's.
Imports only the standard library at module level, so the main venv can import the scheme table.

    <quant-venv>/bin/python -m hxp_tools.quantize --src DIR --out DIR --scheme gptq-w4a16-asym \
        --group-size 32 --calibration tools/hxp_tools/data/calibration_chat.json

Schemes (the vLLM 0.32 CPU kernel that serves them in brackets):
- `gptq-w4a16`, `gptq-w4a16-asym`: int4 weights per group, symmetric or with zero points, GPTQ-calibrated
  [CPUWNA16, `cpu_gemm_wna16`: bf16/fp16 activations only]
- `smoothquant-w8a8`: SmoothQuant, then int8 weights per channel and int8 activations per token (dynamic),
  rounded to nearest [CPUInt8ScaledMM: oneDNN or the AVX-512 "sgl" kernel; bf16/fp16 activations only]

Reproducibility: calibration samples in file order (no shuffle), a fixed seed and one torch thread (float
reductions depend on how work is split across threads; one thread is also 5-10x faster here than two for
GPTQ's column-by-column loop of small operations); JSON written with sorted keys; tokenizer files copied
byte for byte from the source directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMES = ("gptq-w4a16", "gptq-w4a16-asym", "smoothquant-w8a8")
# chat_template: the tokenizer's own template (SmolLM2); openchat: OpenChat-3.5's "GPT4 Correct" turns, which
# its Hub template does not render faithfully (openchat-facts.md).
PROMPT_FORMATS = ("chat_template", "openchat")
# Files taken verbatim from the source model (the tokenizer and chat template are not quantized).
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                "tokenizer.model", "added_tokens.json", "generation_config.json")
# Written by llm-compressor / transformers for bookkeeping; not read by vLLM, and they embed versions or paths.
DROPPED_FILES = ("recipe.yaml",)
TORCH_THREADS = 1
# GPTQ adds this share of the Hessian diagonal mean before inverting it. 0.1 rather than llm-compressor's 0.01:
# on the demo model it scored 27/40 on the quality gate against 24/40 (fp32 reference 26/40).
DAMPENING = 0.1


def log(message: str) -> None:
    print(f"[quantize] {message}", flush=True)


def calibration_texts(path: Path, tokenizer: Any, prompt_format: str) -> list[str]:
    """Each conversation rendered as the service renders prompts for this model."""
    conversations = json.loads(path.read_text(encoding="utf-8"))["conversations"]
    if prompt_format == "openchat":
        role = {"user": "GPT4 Correct User", "assistant": "GPT4 Correct Assistant"}
        return ["<s>" + "".join(f"{role[m['role']]}: {m['content']}<|end_of_turn|>" for m in conversation)
                for conversation in conversations]
    return [tokenizer.apply_chat_template(conversation, tokenize=False) for conversation in conversations]


def int4_group(group_size: int, symmetric: bool) -> dict[str, Any]:
    return {"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "symmetric": symmetric, "strategy": "group", "group_size": group_size}}}


def build_recipe(scheme: str, group_size: int, smoothing_strength: float) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import SmoothQuantModifier

    # lm_head stays in the model's dtype: it is tied to the embeddings on small models, and quantizing the
    # vocabulary projection costs more quality than it saves memory.
    ignore = ["lm_head"]
    recipes: dict[str, Callable[[], list[Any]]] = {
        "gptq-w4a16": lambda: [GPTQModifier(targets="Linear", ignore=ignore, dampening_frac=DAMPENING,
                                            config_groups=int4_group(group_size, True))],
        "gptq-w4a16-asym": lambda: [GPTQModifier(targets="Linear", ignore=ignore, dampening_frac=DAMPENING,
                                                 config_groups=int4_group(group_size, False))],
        # int8 per channel loses little by rounding alone; SmoothQuant moves activation outliers into the
        # weights first so that per-token int8 activations lose little too.
        "smoothquant-w8a8": lambda: [SmoothQuantModifier(smoothing_strength=smoothing_strength),
                                     QuantizationModifier(targets="Linear", ignore=ignore, scheme="W8A8")],
    }
    return recipes[scheme]()


def same_arithmetic_on_every_x86_cpu() -> None:
    """Pin the CPU code paths before torch loads, so that an Intel and an AMD host compute the same bits.

    torch picks its vectorised kernels (ATen), MKL its BLAS/LAPACK kernels and oneDNN its GEMMs by the
    CPU's instruction set (AVX-512, AMX, AVX2); different kernels sum in different orders, and GPTQ's
    rounding decisions then differ in a few weights. Capped at AVX2 with one thread, the builds match
    across x86-64 hosts (MKL's Conditional Numerical Reproducibility, `MKL_CBWR`)."""
    os.environ.update(ATEN_CPU_CAPABILITY="avx2", MKL_CBWR="AVX2", ONEDNN_MAX_CPU_ISA="AVX2",
                      OMP_NUM_THREADS=str(TORCH_THREADS), MKL_NUM_THREADS=str(TORCH_THREADS))


def quantize(src: Path, out: Path, scheme: str, group_size: int, calibration: Path, prompt_format: str,
             max_seq_length: int, smoothing_strength: float, calibration_dtype: str) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch.manual_seed(0)
    torch.set_num_threads(TORCH_THREADS)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, calibration_dtype))
    texts = calibration_texts(calibration, tokenizer, prompt_format)
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda sample: tokenizer(sample["text"], add_special_tokens=False, truncation=True,
                                 max_length=max_seq_length),
        remove_columns=["text"])
    log(f"{scheme}: {len(texts)} calibration conversations, group size {group_size}, {TORCH_THREADS} threads")
    started = time.monotonic()
    oneshot(model=model, dataset=dataset, recipe=build_recipe(scheme, group_size, smoothing_strength),
            max_seq_length=max_seq_length, num_calibration_samples=len(texts),
            shuffle_calibration_samples=False, log_dir=None)
    log(f"{scheme}: calibrated and quantized in {time.monotonic() - started:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    # The source's generation_config.json is copied as it is (tidy); transformers would refuse to save some
    # (OpenChat's sets a temperature without do_sample).
    model.generation_config = GenerationConfig()
    model.save_pretrained(out, save_compressed=True)
    tidy(src, out)


def tidy(src: Path, out: Path) -> None:
    """Make the output a pure function of the inputs in the source's dtype: drop bookkeeping files, copy
    the tokenizer, store unquantized tensors as the source stored them, normalise config.json."""
    for name in DROPPED_FILES:
        (out / name).unlink(missing_ok=True)
    for name in COPIED_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
        elif name == "generation_config.json":
            (out / name).unlink(missing_ok=True)  # the default one written while saving
    source_config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    dtype = source_config.get("torch_dtype") or source_config.get("dtype") or "bfloat16"
    for weights in sorted(out.glob("*.safetensors")):
        store_floats_as(weights, dtype)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    for key in ("_name_or_path", "transformers_version"):
        config.pop(key, None)
    config.update(dtype=dtype, torch_dtype=dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    # safetensors writes owner-only files; the service's container user must read them.
    for path in out.iterdir():
        path.chmod(0o644)


def store_floats_as(weights: Path, dtype: str) -> None:
    """Calibrating in float32 leaves float32 embeddings and norms: store them in the serving dtype (vLLM casts
    them to it at load anyway, with the same rounding). Quantization scales stay as they are (vLLM's int8
    kernels keep float32 scales; its int4 kernel casts them at load)."""
    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    tensors = load_file(str(weights))
    converted = {name: t.to(target) if t.is_floating_point() and not name.endswith("_scale") else t
                 for name, t in tensors.items()}
    save_file({name: converted[name].contiguous() for name in sorted(converted)}, str(weights),
              metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hxp_tools.quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="Hugging Face model directory (unquantized)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--scheme", choices=SCHEMES, required=True)
    parser.add_argument("--group-size", type=int, default=128, help="int4 schemes: weights per scale")
    parser.add_argument("--calibration", type=Path, required=True, help="JSON file with 'conversations'")
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="chat_template")
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--smoothing-strength", type=float, default=0.8, help="smoothquant-w8a8: SmoothQuant alpha")
    parser.add_argument("--calibration-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="float32 (with the CPU code paths pinned) builds the same bytes on every x86 host; "
                             "bfloat16 halves the memory for large models (not reproducible across CPUs)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.calibration_dtype == "float32":
        same_arithmetic_on_every_x86_cpu()
    quantize(args.src, args.out, args.scheme, args.group_size, args.calibration, args.prompt_format,
             args.max_seq_length, args.smoothing_strength, args.calibration_dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
