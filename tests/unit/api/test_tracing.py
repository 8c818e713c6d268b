"""Traces reach a real OTLP/HTTP receiver: an http.server on 127.0.0.1 that takes POST /v1/traces and
decodes the protobuf with opentelemetry-proto, as a collector would. The service's exporter is the real
one (opentelemetry-exporter-otlp-proto-http); nothing is mocked.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from api_harness import chat_body, sse_chunks
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

pytestmark = pytest.mark.anyio

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class OtlpReceiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Any] = []
        self.paths: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _Handler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        self.server.paths.append(self.path)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend(scope_spans.spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _attributes(span: Any) -> dict[str, Any]:
    values = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = getattr(value, value.WhichOneof("value"))
    return values


async def test_a_streamed_request_arrives_as_one_trace_joined_to_the_clients_traceparent(
        serve_app, receiver: OtlpReceiver) -> None:
    async with serve_app(otel_traces_endpoint=receiver.endpoint) as served:
        served.engine.enqueue(*"traced answer")
        response = await served.chat(chat_body(stream=True, stream_options={"include_usage": True}),
                                     headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
                                              "X-Request-ID": "traced"})
        usage = sse_chunks(response.text)[-1]["usage"]
    # Leaving the app's lifespan flushes the exporter: the spans are at the receiver now.
    assert receiver.paths
    assert set(receiver.paths) == {"/v1/traces"}
    spans = {span.name: span for span in receiver.spans}
    assert set(spans) == {"chat", "queue", "prefill", "decode", "streaming"}
    root = spans["chat"]
    assert {span.trace_id.hex() for span in receiver.spans} == {CLIENT_TRACE}
    assert root.parent_span_id.hex() == CLIENT_SPAN
    # vLLM's own spans (its --otlp-traces-endpoint) join the request's: the engine got the W3C context.
    traceparent = served.engine.requests[0].trace_headers["traceparent"]
    assert traceparent.split("-")[1:3] == [CLIENT_TRACE, root.span_id.hex()]
    assert {spans[name].parent_span_id for name in ("queue", "prefill", "decode", "streaming")} == {root.span_id}
    attributes = _attributes(root)
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == len("traced answer")
    assert attributes["hxp.outcome"] == "ok"
    assert attributes["hxp.request_id"] == "traced"
    assert attributes["http.response.status_code"] == 200
    # The phases follow one another inside the request.
    assert root.start_time_unix_nano <= spans["queue"].start_time_unix_nano
    assert spans["queue"].end_time_unix_nano <= spans["prefill"].end_time_unix_nano
    assert spans["prefill"].end_time_unix_nano == spans["decode"].start_time_unix_nano
    assert spans["streaming"].end_time_unix_nano <= root.end_time_unix_nano


async def test_a_client_context_flagged_unsampled_still_traces_the_request(serve_app, receiver: OtlpReceiver) -> None:
    # The operator asked for one trace per request; a client sampling its own traces at 10% sends `-00`
    # nine times in ten, and the SDK's default (parent-based) sampler would then record nothing.
    async with serve_app(otel_traces_endpoint=receiver.endpoint) as served:
        served.engine.enqueue(*"ok")
        response = await served.chat(headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"})
    assert response.status_code == 200
    (root,) = [span for span in receiver.spans if span.name == "chat"]
    assert root.trace_id.hex() == CLIENT_TRACE
    assert root.parent_span_id.hex() == CLIENT_SPAN
    # vLLM's span joins a sampled context, so the engine records its part too.
    assert served.engine.requests[0].trace_headers["traceparent"].endswith("-01")


async def test_a_refused_request_is_traced_with_its_outcome_and_no_client_context_starts_a_trace(
        serve_app, receiver: OtlpReceiver) -> None:
    async with serve_app(otel_traces_endpoint=receiver.endpoint, api_key="right") as served:
        refused = await served.chat(headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401
    (root,) = [span for span in receiver.spans if span.name == "chat"]
    assert root.parent_span_id == b""
    assert _attributes(root)["hxp.outcome"] == "invalid"
    assert root.status.code == 2  # STATUS_CODE_ERROR


def test_tracing_is_off_unless_configured_and_refuses_a_non_http_endpoint() -> None:
    from hxp_enterprise_llm.schemas.configuration.model_schemas import ConfigError, ModelConfigSchema, load_config

    assert ModelConfigSchema().otel_traces_endpoint is None
    with pytest.raises(ConfigError, match="otel_traces_endpoint.*http:// or https://"):
        load_config(ModelConfigSchema, cli_overrides={"otel_traces_endpoint": "collector:4317"}, environ={})
