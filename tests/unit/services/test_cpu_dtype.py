"""`dtype: auto` on a CPU: bf16 only where the CPU computes it in hardware, fp32 elsewhere (emulated bf16 is
4.6x slower at 50 users there, docs/benchmark.md); explicit dtypes and GPUs are left as asked."""

from __future__ import annotations

import pytest
import torch

from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.core.cpu_kernels import native_cpu_dtype, resolve_dtype
from hxp_enterprise_llm.services.core.vllm_engine import engine_args_from_config
from support.server_process import REPO


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (False, False, "float32"),  # AVX2 only, or AVX-512 without its bf16 instructions
    (True, False, "bfloat16"),
    (False, True, "bfloat16"),
    (True, True, "bfloat16"),
])
def test_auto_on_a_cpu_is_bf16_only_with_hardware_bf16(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool,
                                                       amx: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_cpu_dtype() == expected
    assert resolve_dtype("auto", on_cpu=True) == expected
    assert engine_args_from_config(ModelConfigSchema(dtype="auto"), on_cpu=True)["dtype"] == expected


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_an_explicit_dtype_is_given_as_asked(dtype: str) -> None:
    assert resolve_dtype(dtype, on_cpu=True) == resolve_dtype(dtype, on_cpu=False) == dtype
    assert engine_args_from_config(ModelConfigSchema(dtype=dtype), on_cpu=True)["dtype"] == dtype


def test_auto_on_a_gpu_is_left_to_vllm() -> None:
    assert resolve_dtype("auto", on_cpu=False) == "auto"
    assert engine_args_from_config(ModelConfigSchema(dtype="auto"), on_cpu=False)["dtype"] == "auto"


def test_the_cpu_demo_follows_the_host() -> None:
    assert OpenChat35Config.load(REPO / "config" / "demo-cpu.yaml").config.dtype == "auto"
