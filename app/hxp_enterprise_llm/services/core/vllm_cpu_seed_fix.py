"""Keeps one legal request from killing vLLM 0.32's CPU engine: seeded sampling beside chunked prefill.

The crash: a request with `seed` and temperature > 0 gets its own torch.Generator. When its prompt
is split by chunked prefill, the step still samples a token for it that is then discarded, and
vLLM rewinds the generator with `gen.set_offset(gen.get_offset() - 4)`
(`GPUModelRunner._bookkeeping_sync`). Only CUDA's Philox generators have an offset: a CPU generator
raises "CPU Generator does not use offset", the worker dies, the engine core dies, and every client
loses its request. Unfixed upstream as of vLLM 0.33.

The fix, CPU only: for the rows whose token will be discarded, take their generators out of the
batch while sampling. Those rows then draw their throw-away token from the global generator, so
the request's own generator does not advance (what the GPU rewind achieves), and the rewind finds
no generator to touch. A seeded request gives the same tokens however its prompt was chunked.

How it reaches the worker: vLLM imports the `worker_extension_cls` named in the engine arguments
(vllm_worker_extension) inside each worker process before the model runner is built, and that module
imports this one, which applies the patch there. On GPU platforms it does nothing. It relies on vLLM
internals of the pinned version (`input_batch.generators`, `discard_request_mask`, `sample_tokens`):
`active()` tells the service at start whether the patch is active in the worker.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_patched = False


def apply() -> bool:
    """Patch CPUModelRunner.sample_tokens once; True when the patch is in place."""
    global _patched
    if _patched:
        return True
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    original: Any = CPUModelRunner.sample_tokens

    def sample_tokens(self: Any, grammar_output: Any) -> Any:
        generators = self.input_batch.generators
        held_back = {}
        if generators:
            rows = self.input_batch.num_reqs
            discarded = self.discard_request_mask.np[:rows]
            for row in [row for row in generators if row < rows and discarded[row]]:
                if generators[row].device.type == "cpu":
                    held_back[row] = generators.pop(row)
        try:
            return original(self, grammar_output)
        finally:
            generators.update(held_back)

    CPUModelRunner.sample_tokens = sample_tokens  # type: ignore[method-assign, assignment]
    _patched = True
    logger.info("seeded sampling under chunked prefill made safe on CPU (vLLM CPUModelRunner patched)")
    return True


def active() -> bool:
    return _patched


try:
    apply()  # runs in the worker process when vLLM resolves worker_extension_cls
except Exception:  # a failed workaround must not stop the engine; active() reports it
    logger.exception("could not apply the CPU seeded-sampling fix")
