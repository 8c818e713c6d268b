"""What `cpu_cores` and `memory_gb` mean on a CPU host: the cores vLLM computes on, and the memory budget.

vLLM's CPU backend pins one compute thread per core it sees (`os.sched_getaffinity`), blind to a
container's CPU quota: with `--cpus=4` on a 32-core host it would start 31 threads and be throttled.
The service tells it the cores to use instead, from `cpu_cores`. An operator's own
`VLLM_CPU_OMP_THREADS_BIND` always wins.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema

logger = logging.getLogger(__name__)

GIB = 1 << 30
# Measured on the demo (docs/benchmark.md): the API process, vLLM's engine core and worker with
# torch loaded take about this much beside the weights and the KV cache.
RUNTIME_OVERHEAD_GIB = 1.5
MAX_RENICE_PASSES = 20


def cpu_thread_binding(cpu_cores: float, environ: Mapping[str, str],
                       allowed: list[int] | None = None) -> dict[str, str]:
    """The environment that binds vLLM's compute threads to `cpu_cores` of the cores this process may use.

    With more than two cores one is left for the API and engine-core processes; with two or fewer
    all compute (measured on 2 cores: 20 users went from 3.9 to 6.4 req/s with no core kept back).
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in environ:
        return {}
    cores = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
    usable = min(max(1, math.floor(cpu_cores)), len(cores))
    threads = usable if usable <= 2 else usable - 1
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(core) for core in cores[:threads]),
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def lower_engine_priority(nice: int) -> list[int]:
    """Run every thread of this process's children (vLLM's engine core and its workers) `nice` steps below this
    process; the pids reached.

    Where the compute threads have every core (two or fewer, `cpu_thread_binding`), the API process competes
    with them for the CPU. Its work is small but waited on: a request's intake, each stream's frames, the
    next request of a client who just got its answer. Queued behind a compute thread it delays all of that,
    and the engine runs smaller batches. The price is paid under a flood: the API process then takes the CPU
    the engine needs, and every admitted request generates slower. Both are measured in docs/benchmark.md,
    hence off by default (`engine_nice` 0). Only ever lowers a priority (no privilege needed); threads the
    engine starts later inherit it from the thread that starts them.
    """
    import psutil

    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)
    reached: set[int] = set()
    # Until a pass finds nothing to change: a thread the engine starts during a pass, from a thread not yet
    # reached, is born at the old priority (seen in CI); once every thread has it, new ones inherit it.
    for _ in range(MAX_RENICE_PASSES):
        changed = False
        for child in psutil.Process().children(recursive=True):
            try:
                threads = child.threads()
            except psutil.Error:  # a helper process that ended meanwhile, or one not ours to look into
                continue
            for thread in threads:
                try:
                    if os.getpriority(os.PRIO_PROCESS, thread.id) < target:
                        os.setpriority(os.PRIO_PROCESS, thread.id, target)
                        changed = True
                except OSError:  # this thread ended meanwhile: its siblings still get the new priority
                    continue
            reached.add(child.pid)
        if not changed:
            break
    return sorted(reached)


def weights_bytes(model_path: Path) -> int:
    return sum(path.stat().st_size for path in model_path.glob("*.safetensors"))


def memory_estimate_gib(config: ModelConfigSchema) -> float:
    """Weights + KV cache + runtime: what the service needs on a CPU host, where the weights live in RAM."""
    return weights_bytes(config.model_path) / GIB + config.kv_cache_space_gb + RUNTIME_OVERHEAD_GIB


def warn_if_over_budget(config: ModelConfigSchema) -> None:
    needed = memory_estimate_gib(config)
    if needed > config.memory_gb:
        logger.warning(
            "memory_gb=%g is less than this CPU configuration needs (about %.1f GiB: weights %.1f GiB + "
            "kv_cache_space_gb %g + runtime %.1f GiB): the process may be killed for lack of memory; use "
            "quantized weights, a smaller kv_cache_space_gb, or raise the limit",
            config.memory_gb, needed, weights_bytes(config.model_path) / GIB, config.kv_cache_space_gb,
            RUNTIME_OVERHEAD_GIB)
