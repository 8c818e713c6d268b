"""The vLLM adapter's two conversions on vLLM's own objects, without an engine: a request vLLM would refuse is
refused by `check_request` (which the service calls while preparing, before a slot), and logprobs become
finite numbers (the engine gives -inf for tokens structured output's grammar masked)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
from vllm.logprobs import Logprob

from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.schemas.errors import InvalidRequestError
from hxp_enterprise_llm.schemas.outcomes import FinishReason
from hxp_enterprise_llm.services.core.engine import EngineError, GenerationRequest, SamplingOptions
from hxp_enterprise_llm.services.core.vllm_engine import LOWEST_LOGPROB, VllmEngine, _finish_reason, _logprobs
from hxp_enterprise_llm.services.core.vllm_worker_extension import MAX_REASON_CHARS, _summary


def request(**options: object) -> GenerationRequest:
    return GenerationRequest("req-1", [1, 2, 3], SamplingOptions(**{"max_tokens": 8, **options}))  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "options"), [
    ("stop", {"stop": ("", "x")}),
    ("min_tokens", {"min_tokens": 10, "max_tokens": 5}),
])
def test_what_vllm_refuses_is_refused_by_check_request_naming_the_field(field: str,
                                                                         options: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        VllmEngine(ModelConfigSchema()).check_request(request(**options))
    assert refused.value.param == field


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30])
def test_a_schema_integer_msgpack_cannot_carry_is_refused(number: int) -> None:
    # xgrammar compiles such a schema (a `default` constrains nothing); vLLM's msgpack transport then failed.
    schema = {"type": "object", "properties": {"a": {"type": "integer", "examples": [[1, {"x": number}]]}}}
    with pytest.raises(InvalidRequestError) as refused:
        VllmEngine(ModelConfigSchema()).check_request(request(json_schema=schema))
    assert refused.value.param == "response_format"
    assert str(number) in refused.value.message


def test_a_request_vllm_takes_passes_check_request() -> None:
    VllmEngine(ModelConfigSchema()).check_request(request(json_schema={"type": "integer", "maximum": 2**64 - 1}))
    VllmEngine(ModelConfigSchema()).check_request(request(stop=("x",), min_tokens=2, n=2, temperature=0.7))


def test_masked_alternatives_are_sent_as_the_lowest_finite_logprob() -> None:
    position = {7: Logprob(-0.01, 1, "su"), 8: Logprob(-math.inf, 2, "x"), 9: Logprob(math.nan, 3, "y")}
    (entry,) = _logprobs([7], [position], 3) or ()
    assert entry.logprob == pytest.approx(-0.01)
    assert entry.top == (("su", pytest.approx(-0.01)), ("x", LOWEST_LOGPROB), ("y", LOWEST_LOGPROB))


@pytest.mark.parametrize(("options", "refused"), [
    ({"logprobs": 2}, True), ({"prompt_logprobs": 1}, True), ({}, False)])
def test_logprobs_are_refused_by_an_engine_whose_helper_did_not_compile(options: dict[str, object],
                                                                       refused: bool) -> None:
    engine = VllmEngine(ModelConfigSchema())
    engine.check_request(request(**options))  # compiled (the default until start says otherwise): accepted
    engine.logprobs_available = False
    if not refused:
        engine.check_request(request(**options))
        return
    with pytest.raises(InvalidRequestError) as refusal:
        engine.check_request(request(**options))
    assert refusal.value.param == "logprobs"


def test_a_compile_failure_is_summarised_by_its_error_line() -> None:
    compiler_output = RuntimeError("C++ compile error\n\nCommand:\ng++ /tmp/x.cpp -o x.so\n\nOutput:\n"
                                   "/tmp/x.cpp:1:10: fatal error: Python.h: No such file or directory\n"
                                   "compilation terminated.\n" + "x" * 5000)
    summary = _summary(compiler_output)
    assert summary == "RuntimeError: /tmp/x.cpp:1:10: fatal error: Python.h: No such file or directory"
    assert _summary(OSError("a.so: failed to map segment")) == "OSError: a.so: failed to map segment"
    assert len(_summary(ValueError("y" * 1000))) == MAX_REASON_CHARS


def test_every_finish_reason_vllm_sends_has_a_meaning_and_its_error_is_a_failure() -> None:
    """vLLM's "error" (a request its core could not pre-process, a token the grammar rejected) was read as an
    abort: the client heard the service was shutting down, and no failure was counted. Generation turns the
    EngineError into a logged 500 (tests/unit/api/test_engine_failures.py)."""
    from vllm.v1.engine import FINISH_REASON_STRINGS

    answers = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT}
    for reason in FINISH_REASON_STRINGS:
        if reason in answers:
            assert _finish_reason(reason) is answers[reason]
        else:
            with pytest.raises(EngineError, match=f"finish reason '{reason}'"):
                _finish_reason(reason)
    assert "error" in FINISH_REASON_STRINGS


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # vLLM's engine runs on asyncio only


class _OneOutputEngine:
    """Stands in for vLLM's AsyncLLM at the one call `generate` makes, yielding vLLM's own output objects:
    the real engine cannot be made to finish a request with "error" on demand (a grammar rejecting its own
    token, a failed KV load)."""

    errored = False

    def __init__(self, *outputs: object) -> None:
        self.outputs = outputs

    async def generate(self, *args: object, **kwargs: object) -> AsyncIterator[object]:
        for output in self.outputs:
            yield output


@pytest.mark.anyio
async def test_an_error_finish_counts_the_tokens_of_its_step_then_fails_the_request() -> None:
    from vllm.outputs import CompletionOutput, RequestOutput

    def step(text: str, ids: list[int], reason: str | None) -> RequestOutput:
        completion = CompletionOutput(0, text, ids, None, None, finish_reason=reason)
        return RequestOutput("r", None, [1, 2, 3], None, [completion], finished=reason is not None)

    engine = VllmEngine(ModelConfigSchema())
    engine._llm = _OneOutputEngine(step("Hel", [7, 8], None), step("lo", [9], "error"))
    seen = []

    async def read_all() -> None:
        async for delta in engine.generate(request()):
            seen.append(delta)

    with pytest.raises(EngineError, match="finish reason 'error'"):
        await read_all()
    assert [(d.text, d.completion_tokens, d.finish_reason) for d in seen] == [("Hel", 2, None), ("lo", 3, None)]


@pytest.mark.anyio
async def test_each_choice_carries_its_own_engine_requests_cached_tokens() -> None:
    from vllm.outputs import CompletionOutput, RequestOutput

    def step(index: int, cached: int) -> RequestOutput:  # with n > 1 vLLM sends each choice's output on its own
        completion = CompletionOutput(index, "x", [7], None, None)
        return RequestOutput("r", None, [1, 2, 3], None, [completion], finished=False, num_cached_tokens=cached)

    engine = VllmEngine(ModelConfigSchema())
    engine._llm = _OneOutputEngine(step(0, 0), step(1, 384), step(0, 0))
    seen = [(delta.index, delta.cached_tokens) async for delta in engine.generate(request(n=2))]
    assert seen == [(0, 0), (1, 384), (0, 0)]
