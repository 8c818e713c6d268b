"""The vLLM adapter's two conversions on vLLM's own objects, without an engine: a request vLLM would refuse is
refused by `check_request` (which the service calls while preparing, before a slot), and logprobs become
finite numbers (the engine gives -inf for tokens structured output's grammar masked)."""

from __future__ import annotations

import math

import pytest
from vllm.logprobs import Logprob

from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.schemas.errors import InvalidRequestError
from hxp_enterprise_llm.services.core.engine import GenerationRequest, SamplingOptions
from hxp_enterprise_llm.services.core.vllm_engine import LOWEST_LOGPROB, VllmEngine, _logprobs


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
