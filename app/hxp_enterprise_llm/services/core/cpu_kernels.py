"""What vLLM's CPU build can run fast on this machine, asked before loading: the dtype, the int4 kernel.

`dtype: auto` on a CPU means the fastest dtype this CPU computes natively (resolve_dtype). vLLM's own
"auto" keeps a bf16 checkpoint in bf16 on every x86 CPU; without AVX512-BF16 or AMX, PyTorch then
emulates bf16 arithmetic and the demo produced 4.6x fewer tokens a second at 50 users than in fp32
(docs/benchmark.md, an AVX2 host), while with them bf16 is the faster one (1.5x fp32).


vLLM's CPU wheel carries its kernels three times (`_C` for AVX-512 with bf16, `_C_AVX512`, `_C_AVX2`)
and loads the one the CPU supports. The int4 kernel for 16-bit activations (`cpu_gemm_wna16`, used for
compressed-tensors W4A16 and GPTQ/AWQ 4-bit weights) is built into the AVX-512 libraries only. On a
CPU without AVX-512 such a model loads, reports ready, and then kills the engine at its first request
(AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'), so under a restart
policy it fails every request forever. Asked first, the service refuses it at start instead, as the
configuration error it is on this host (exit 2: systemd and compose do not loop on it).
"""

from __future__ import annotations

import re

INT4_KERNEL = "cpu_gemm_wna16"
AUTO_DTYPE = "auto"
# "compressed-tensors:w4a16-g32", "gptq:w4-g128", "awq:w4": 4-bit weights with 16-bit activations.
_INT4_WEIGHTS = re.compile(r":w4(a16)?(-|$)")


def needs_int4_kernel(quantization: str) -> bool:
    """Does a model whose weights are stored as `quantization` (service.model_quantization) need the kernel?"""
    return _INT4_WEIGHTS.search(quantization) is not None


def missing_cpu_kernel(quantization: str) -> str | None:
    """Why vLLM cannot run these weights on this CPU, or None when it can (or runs on a GPU)."""
    if not needs_int4_kernel(quantization):
        return None
    import torch
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    current_platform.import_kernels()
    if hasattr(torch.ops._C, INT4_KERNEL):
        return None
    return (f"the model's weights are int4 ({quantization}), and vLLM's CPU kernel for them ({INT4_KERNEL}) "
            "is built only for CPUs with AVX-512, which this CPU lacks: serve the default "
            "(config/demo-cpu.yaml) or the int8 variant (config/demo-cpu-int8.yaml) here, or this model on an "
            "AVX-512 host")


def native_cpu_dtype() -> str:
    """bfloat16 where this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), float32 elsewhere."""
    import torch

    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if native_bf16 else "float32"


def resolve_dtype(requested: str, on_cpu: bool) -> str:
    """The dtype vLLM is given: `auto` on a CPU becomes native_cpu_dtype(); anything else (and GPUs) as asked."""
    if requested == AUTO_DTYPE and on_cpu:
        return native_cpu_dtype()
    return requested
