"""What the service runs inside vLLM's worker process, reached with `AsyncLLM.collective_rpc`.

vLLM imports the class named as `worker_extension_cls` in the engine arguments inside each worker
before the model runner is built, and mixes it into the worker. Importing this module there applies
the CPU seeded-sampling fix (vllm_cpu_seed_fix); the methods let the service check and prepare the
worker once the engine is up. The class may define no attribute the worker already has (vLLM
asserts that): hence the `hxp_` prefixes.
"""

from __future__ import annotations

import logging
from typing import Any

from . import vllm_cpu_seed_fix

logger = logging.getLogger(__name__)

# The batch size of the warm-up call: any size compiles the same kernel (the sampler marks the batch
# dimension unbacked, so one kernel serves every batch), 2 avoids dynamo's special cases for 0 and 1.
WARM_UP_ROWS = 2
MAX_REASON_CHARS = 300


class WorkerExtension:
    """Mixed into vLLM's worker (GPU or CPU), which provides `device` and `model_config`."""

    device: Any
    model_config: Any

    def hxp_seed_fix_active(self) -> bool:
        return vllm_cpu_seed_fix.active()

    def hxp_compile_token_ranks(self) -> str | None:
        """Compile vLLM's token-rank helper now; None when it compiled, else why it did not.

        Every request asking for logprobs (sampled or prompt) ranks its tokens with
        `batched_count_greater_than`, a torch.compile'd function, in eager mode too. Left to the first
        such request, its compile (13 s on a cold cache on a 2-core CPU, 7 s on a warm one) stalls every
        running stream, and where the compiler cannot build it (no Python.h, no C++ compiler) the
        failure kills the engine core. Here it happens before the service is ready, and a failure is
        an answer rather than a dead engine. The call mirrors the sampler's (vLLM 0.32,
        Sampler.gather_logprobs): float32 logprobs of (rows, vocabulary), values of (rows, 1), the row
        dimension unbacked, so the compiled kernel's guards match the real calls.
        """
        try:
            import torch
            from vllm.v1.sample.ops.logprobs import batched_count_greater_than

            logprobs = torch.zeros((WARM_UP_ROWS, self.model_config.get_vocab_size()), dtype=torch.float32,
                                   device=self.device)
            values = logprobs[:, :1].clone()
            torch._dynamo.decorators.mark_unbacked(logprobs, 0)
            torch._dynamo.decorators.mark_unbacked(values, 0)
            batched_count_greater_than(logprobs, values)
        except Exception as exc:  # noqa: BLE001 - any failure means "logprobs cannot be served"
            logger.exception("vLLM's token-rank helper did not compile")
            return _summary(exc)
        return None


def _summary(exc: BaseException) -> str:
    """One line for the service's log: a compiler's failure runs to pages, its `error:` line says why."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if "error:" in line), lines[0] if lines else "")
    return f"{type(exc).__name__}: {reason}"[:MAX_REASON_CHARS]
