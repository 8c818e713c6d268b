"""OpenTelemetry traces: one trace per inference request, sent over OTLP/HTTP (`otel_traces_endpoint`).

The request's span opens when it is admitted (its id is what vLLM's own `llm_request` span joins, via
`trace_headers`) and closes with the request; its children are made from the record's timings when it
ends, so no span is held open across awaits and none can leak:

    chat | completion          arrival -> last byte; key, tokens, outcome, status, finish reason
      queue                    arrival -> a slot (or the refusal)
      prefill                  a slot -> the first token
      decode                   the first token -> the last token
      streaming                the first token -> the last byte sent (streams only)

A client's W3C `traceparent` makes the request's span its child (the trace joins the client's); its
sampled flag does not decide whether the request is traced: every request is.
Off by default; the SDK is imported only when it is on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hxp_enterprise_llm.schemas.outcomes import Outcome

if TYPE_CHECKING:
    from hxp_enterprise_llm.orchestration.request_record import RequestRecord


def _wall_clock() -> Callable[[float], int]:
    """Monotonic seconds -> wall-clock ns, with one offset, so that phases which meet still meet."""
    offset = time.time_ns() - int(time.monotonic() * 1e9)
    return lambda monotonic: offset + int(monotonic * 1e9)


class RequestTracer:
    def __init__(self, endpoint: str, model: str, version: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # Our own provider, not the global one: vLLM sets the global provider for its spans. ALWAYS_ON, not
        # the SDK's default parent-based sampler: with that, a client's traceparent flagged unsampled (`-00`,
        # as an SDK sampling 10% sends nine times in ten) would turn off the operator's trace of the request
        # and, through trace_headers, vLLM's own span of it.
        self._provider = TracerProvider(sampler=ALWAYS_ON, resource=Resource.create(
            {"service.name": "hxp-enterprise-llm", "service.version": version, "gen_ai.request.model": model}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self._provider.get_tracer("hxp_enterprise_llm")
        self._propagator = TraceContextTextMapPropagator()
        self._model = model

    def start(self, record: RequestRecord) -> Mapping[str, str]:
        """Open the request's span; its W3C headers, for the engine's own spans to join."""
        from opentelemetry.trace import SpanKind, set_span_in_context

        parent = self._propagator.extract({"traceparent": record.traceparent}) if record.traceparent else None
        wall = _wall_clock()
        span = self._tracer.start_span(record.route, context=parent, kind=SpanKind.SERVER,
                                       start_time=wall(record.arrived))
        record.trace = (span, wall)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(span))
        return carrier

    def on_finished(self, record: RequestRecord) -> None:
        from opentelemetry.trace import Status, StatusCode, set_span_in_context

        if record.trace is None:  # refused before admission (a bad key, a bad body, a limit)
            self.start(record)
        (root, wall), record.trace = record.trace, None
        context = set_span_in_context(root)
        end = record.finished if record.finished is not None else time.monotonic()
        for name, start, stop in _phases(record, end):
            self._tracer.start_span(name, context=context, start_time=wall(start)).end(end_time=wall(stop))
        root.set_attributes(_attributes(record, self._model))
        if record.outcome is not Outcome.OK:
            root.set_status(Status(StatusCode.ERROR, str(record.outcome)))
        root.end(end_time=wall(end))

    def shutdown(self) -> None:
        """Send what is buffered (a drained service's last requests) and stop."""
        self._provider.shutdown()


def _phases(record: RequestRecord, end: float) -> list[tuple[str, float, float]]:
    phases = [("queue", record.arrived, record.admitted if record.admitted is not None else end)]
    if record.admitted is not None:
        phases.append(("prefill", record.admitted, record.first_token if record.first_token is not None else end))
    if record.first_token is not None:
        phases.append(("decode", record.first_token, record.last_token or record.first_token))
        if record.stream:
            phases.append(("streaming", record.first_token, end))
    return phases


def _attributes(record: RequestRecord, model: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "hxp.usage.cached_tokens": record.cached_tokens,
        "hxp.request_id": record.request_id,
        "hxp.key": record.key.name,
        "hxp.outcome": str(record.outcome),
        "hxp.stream": record.stream,
        "http.response.status_code": record.status or 0,
    }
    if record.finish_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [str(record.finish_reason)]
    if record.error is not None and record.error.code:
        attributes["error.type"] = record.error.code
    return attributes
