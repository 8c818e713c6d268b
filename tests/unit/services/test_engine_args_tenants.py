"""The settings of issue 21 reach vLLM's engine arguments (checked without vLLM: the arguments are a dict)."""

from __future__ import annotations

from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.services.core.vllm_engine import engine_args_from_config


def test_scheduling_policy_reaches_vllm_and_defaults_to_fcfs() -> None:
    assert engine_args_from_config(ModelConfigSchema())["scheduling_policy"] == "fcfs"
    assert engine_args_from_config(ModelConfigSchema(scheduling_policy="priority"))["scheduling_policy"] == "priority"


def test_vllm_traces_to_the_same_endpoint_only_when_tracing_is_on() -> None:
    assert "otlp_traces_endpoint" not in engine_args_from_config(ModelConfigSchema())
    traced = ModelConfigSchema(otel_traces_endpoint="http://collector:4318/v1/traces")
    assert engine_args_from_config(traced)["otlp_traces_endpoint"] == "http://collector:4318/v1/traces"
