"""Quantize a Hugging Face model directory with llm-compressor, reproducibly, into a compressed-tensors checkpoint.

Runs inside the quantization venv (`hxp_tools.quant_venv`, pinned by requirements/quantize.txt), never in
the service's venv: llm-compressor pins other transformers / huggingface_hub versions than vLLM's.
Imports only the standard library at module level, so the main venv can import the scheme table.

    <quant-venv>/bin/python -m hxp_tools.quantize --src DIR --out DIR --scheme gptq-w4a16 \
        --group-size 64 --calibration tools/hxp_tools/data/calibration_chat.json

Schemes (vLLM 0.32 CPU kernels in brackets):
- `gptq-w4a16`: int4 weights, symmetric, per group, GPTQ [CPUWNA16, `cpu_gemm_wna16`; bf16/fp16 activations only]
- `awq-w4a16`:  int4 weights, asymmetric (zero points), per group, AWQ scaling then round-to-nearest [CPUWNA16]
- `gptq-w8a8`:  SmoothQuant, then int8 weights per channel (GPTQ) and int8 activations per token, dynamic
  [CPUInt8ScaledMM: oneDNN or the AMX/AVX-512 "sgl" kernel]

Reproducibility: calibration samples in file order (no shuffle), a fixed seed and a fixed number of torch
threads (float reductions depend on how work is split across threads); JSON written with sorted keys;
tokenizer files copied byte for byte from the source directory.
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

SCHEMES = ("gptq-w4a16", "gptq-w4a16-asym", "awq-w4a16", "awq-gptq-w4a16", "smoothquant-w8a8")
# chat_template: the tokenizer's own template (SmolLM2); openchat: OpenChat-3.5's "GPT4 Correct" turns, which
# its Hub template does not render faithfully (openchat-facts.md).
PROMPT_FORMATS = ("chat_template", "openchat")
# Files taken verbatim from the source model (the tokenizer and chat template are not quantized).
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                "tokenizer.model", "added_tokens.json", "generation_config.json")
# Written by llm-compressor / transformers for bookkeeping; not read by vLLM, and they embed versions or paths.
DROPPED_FILES = ("recipe.yaml",)
TORCH_THREADS = 1


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
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier

    # lm_head stays in the model's dtype: it is tied to the embeddings on small models, and quantizing the
    # vocabulary projection costs more quality than it saves memory.
    ignore = ["lm_head"]
    recipes: dict[str, Callable[[], list[Any]]] = {
        "gptq-w4a16": lambda: [GPTQModifier(targets="Linear", ignore=ignore,
                                            config_groups=int4_group(group_size, True))],
        "gptq-w4a16-asym": lambda: [GPTQModifier(targets="Linear", ignore=ignore,
                                                 config_groups=int4_group(group_size, False))],
        "awq-w4a16": lambda: [AWQModifier(), QuantizationModifier(targets="Linear", ignore=ignore,
                                                                  config_groups=int4_group(group_size, False))],
        "awq-gptq-w4a16": lambda: [AWQModifier(), GPTQModifier(targets="Linear", ignore=ignore,
                                                               config_groups=int4_group(group_size, False))],
        # int8 per channel loses little by rounding alone; SmoothQuant moves activation outliers into the
        # weights first so that per-token int8 activations lose little too.
        "smoothquant-w8a8": lambda: [SmoothQuantModifier(smoothing_strength=smoothing_strength),
                                     QuantizationModifier(targets="Linear", ignore=ignore, scheme="W8A8")],
    }
    return recipes[scheme]()


def without_pinned_memory() -> None:
    """AWQ's grid search pins its cached activations for faster host-to-GPU copies; on a host without an
    accelerator torch refuses (llm-compressor 0.14: `RuntimeError: Cannot access accelerator device when
    none is available.` from IntermediatesCache.pin_memory). Pinning is only a transfer optimisation."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None  # type: ignore[method-assign]


def quantize(src: Path, out: Path, scheme: str, group_size: int, calibration: Path, prompt_format: str,
             max_seq_length: int, smoothing_strength: float) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(TORCH_THREADS)
    without_pinned_memory()
    tokenizer = AutoTokenizer.from_pretrained(src)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    dtype = getattr(torch, config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
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
    model.save_pretrained(out, save_compressed=True)
    tidy(src, out)


def tidy(src: Path, out: Path) -> None:
    """Make the output a pure function of the inputs: drop bookkeeping files, normalise config.json."""
    for name in DROPPED_FILES:
        (out / name).unlink(missing_ok=True)
    for name in COPIED_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    for key in ("_name_or_path", "transformers_version"):
        config.pop(key, None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                     encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hxp_tools.quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="Hugging Face model directory (unquantized)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--scheme", choices=SCHEMES, required=True)
    parser.add_argument("--group-size", type=int, default=128, help="int4 schemes: weights per scale")
    parser.add_argument("--calibration", type=Path, required=True, help="JSON file with 'conversations'")
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="chat_template")
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--smoothing-strength", type=float, default=0.8, help="gptq-w8a8: SmoothQuant alpha")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    quantize(args.src, args.out, args.scheme, args.group_size, args.calibration, args.prompt_format,
             args.max_seq_length, args.smoothing_strength)
    return 0


if __name__ == "__main__":
    sys.exit(main())
