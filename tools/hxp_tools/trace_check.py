"""Traces of the demo service on the real engine, vLLM's own span included (a script that prints what arrived).

    .venv/bin/python -m hxp_tools.trace_check

Starts an OTLP/HTTP receiver on 127.0.0.1, serves the demo with `--otel-traces-endpoint` pointing at it,
sends one streamed chat request with a client `traceparent`, stops the service (which flushes its spans;
vLLM's exporter sends within its batch delay) and prints every span received: its name, the process
that sent it, and whether it is in the client's trace and under which parent.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from hxp_tools.live import demo_service

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.spans: list[tuple[str, Any]] = []  # (service or vLLM module, span)


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            sender = attributes.get("service.name", "?") + " " + attributes.get("vllm.instrumenting_module_name", "")
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend((sender.strip(), span) for span in scope_spans.spans)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def main() -> None:
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    with demo_service(["--otel-traces-endpoint", endpoint]) as service:
        body = {"messages": [{"role": "user", "content": "What is the capital of Japan?"}], "max_tokens": 12,
                "stream": True}
        with httpx.Client(timeout=300) as client:
            response = client.post(f"{service.base_url}/v1/chat/completions", json=body,
                                   headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
            print(f"streamed request: HTTP {response.status_code}, {len(response.text)} bytes", flush=True)
        time.sleep(8)  # vLLM's BatchSpanProcessor exports every 5 s
    time.sleep(2)
    ids = {span.span_id.hex(): span.name for _, span in receiver.spans}
    for sender, span in receiver.spans:
        parent = span.parent_span_id.hex()
        trace = "= client" if span.trace_id.hex() == CLIENT_TRACE else "other"
        parent_name = ids.get(parent, "client span" if parent == CLIENT_SPAN else parent or "-")
        print(f"{span.name:<12} from {sender:<40} trace {trace}  parent {parent_name}")
    receiver.shutdown()


if __name__ == "__main__":
    main()
