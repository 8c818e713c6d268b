"""The int4 demo in the CPU image inside the spec's limits: 8 GB of memory and 4 CPUs (or the host's cores,
if fewer), with the environment compose's cpu profile gives it under HXP_LLM_CPU_ENV=config/container-cpu-int4.env.

vLLM builds its int4 CPU kernel only for AVX-512 CPUs (app/.../services/core/cpu_kernels.py): on a CPU
without it the container must refuse to start (exit 2, naming the kernel), which is tested instead.
torch's AVX-512 check says which case this host is (the container runs on the host's CPU)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from openai import OpenAI

from support.figures import record_figure

from .conftest import RunningService

INT4_MODEL = "smollm2-135m-instruct-w4a16"
SPEC_CPUS = 4
EIGHT_GIB = 8 << 30
EXIT_CONFIG = 2
CPU_HAS_AVX512 = torch.cpu._is_avx512_supported()
NO_INT4_HERE = ("this CPU has no AVX-512, so vLLM has no int4 kernel here and the int4 container refuses to "
                "start (test_the_int4_container_refuses_to_start_on_a_cpu_without_the_kernel)")


@pytest.fixture(scope="module")
def int4_service(start_service: Callable[..., RunningService],
                 demo_model_dir: Callable[[str], object]) -> RunningService:
    if not CPU_HAS_AVX512:
        pytest.skip(NO_INT4_HERE)
    demo_model_dir(INT4_MODEL)  # fails (never skips) when scripts/setup has not built it
    running = start_service(cpu_env="container-cpu-int4.env", cpus=min(SPEC_CPUS, os.cpu_count() or 1))
    seconds = running.wait_healthy()
    record_figure(f"int4 demo container start-to-healthy: {seconds:.1f} s")
    return running


def test_int4_demo_runs_under_the_spec_limits(int4_service: RunningService) -> None:
    host_config = int4_service.docker.attrs["HostConfig"]
    assert host_config["Memory"] == EIGHT_GIB
    assert host_config["NanoCpus"] == min(SPEC_CPUS, os.cpu_count() or 1) * 10**9
    exit_code, output = int4_service.docker.exec_run(["env"])
    assert exit_code == 0
    assert f"OPENCHAT_3_5_MODEL_PATH=/opt/models/{INT4_MODEL}" in output.decode()


def test_int4_demo_answers_a_factual_question(int4_service: RunningService) -> None:
    client = OpenAI(base_url=f"{int4_service.api_url}/v1", api_key="unused", max_retries=0, timeout=120)
    completion = client.chat.completions.create(
        model=client.models.list().data[0].id, temperature=0, max_tokens=24,
        messages=[{"role": "user", "content": "What is the capital of Japan?"}])
    answer = completion.choices[0].message.content or ""
    assert "Tokyo" in answer, answer
    # The engine really runs the int4 weights: vLLM logs the compressed-tensors method it picked.
    assert "compressed-tensors" in int4_service.logs() or "compressed_tensors" in int4_service.logs()


def test_int4_demo_peak_memory_stays_inside_the_limit(int4_service: RunningService) -> None:
    # cgroup v2 names it memory.peak, v1 memory.max_usage_in_bytes; the kernel's own account of the container.
    read_peak = "cat /sys/fs/cgroup/memory.peak 2>/dev/null || cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes"
    exit_code, output = int4_service.docker.exec_run(["sh", "-c", read_peak])
    assert exit_code == 0, output
    peak = int(output.decode().split()[0])
    record_figure(f"int4 demo container peak memory (cgroup): {peak / 2**30:.2f} GiB of 8")
    assert 0 < peak < EIGHT_GIB


@pytest.mark.skipif(CPU_HAS_AVX512, reason="this CPU has AVX-512: the int4 container serves (the tests above)")
def test_the_int4_container_refuses_to_start_on_a_cpu_without_the_kernel(
        start_service: Callable[..., RunningService], demo_model_dir: Callable[[str], object]) -> None:
    demo_model_dir(INT4_MODEL)
    running = start_service(cpu_env="container-cpu-int4.env", cpus=min(SPEC_CPUS, os.cpu_count() or 1))
    assert running.wait_exit() == EXIT_CONFIG, running.logs()[-3000:]
    logs = running.logs()
    assert "refusing to start: the model's weights are int4" in logs
    assert "cpu_gemm_wna16" in logs
