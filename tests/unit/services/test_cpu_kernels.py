"""int4 weights on a CPU whose vLLM kernels lack int4: refused at start (exit 2), never a ready service
whose engine dies at its first request. Which CPUs have the kernel is told here by torch's own AVX-512
check (the test that decides which of its kernel libraries vLLM loads), not by the code under test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hxp_enterprise_llm.services.core.cpu_kernels import missing_cpu_kernel, needs_int4_kernel

REPO = Path(__file__).resolve().parents[3]
HXP_LLM = Path(sys.executable).parent / "hxp-llm"
EXIT_CONFIG = 2
CPU_HAS_AVX512 = torch.cpu._is_avx512_supported()


@pytest.mark.parametrize(("quantization", "needs"), [
    ("compressed-tensors:w4a16-g32", True),
    ("compressed-tensors:w4a16", True),
    ("gptq:w4-g128", True),
    ("awq:w4", True),
    ("compressed-tensors:w8a8", False),  # int8 has its own kernel, in every build
    ("compressed-tensors:w4a8-g32", False),  # 8-bit activations: another kernel
    ("compressed-tensors:w16a16", False),
    ("none", False),
    ("unknown", False),
])
def test_which_weights_need_the_int4_kernel(quantization: str, needs: bool) -> None:
    assert needs_int4_kernel(quantization) is needs


def test_the_kernel_is_missing_exactly_on_cpus_without_avx512() -> None:
    why = missing_cpu_kernel("compressed-tensors:w4a16-g32")
    if CPU_HAS_AVX512:
        assert why is None
    else:
        assert why is not None
        assert "cpu_gemm_wna16" in why
        assert "AVX-512" in why
        assert "config/demo-cpu-int8.yaml" in why
    assert missing_cpu_kernel("none") is None


@pytest.mark.skipif(CPU_HAS_AVX512, reason="this CPU has AVX-512: the int4 variant serves here "
                                           "(tests/engine/test_quality_gate.py serves and judges it)")
@pytest.mark.skipif(not (REPO / "models/smollm2-135m-instruct-w4a16").is_dir(),
                    reason="the int4 demo model is not built (scripts/setup builds it)")
def test_serve_refuses_the_int4_variant_at_start_on_this_cpu(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCHAT_3_5_")}
    result = subprocess.run([str(HXP_LLM), "serve", "--config", "config/demo-cpu-int4.yaml", "--port", "1",
                             "--metrics-port", "2"], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == EXIT_CONFIG, result.stderr[-2000:]
    assert "refusing to start: the model's weights are int4 (compressed-tensors:w4a16-g32)" in result.stderr
    assert "Uvicorn running" not in result.stdout + result.stderr  # refused before serving anything
