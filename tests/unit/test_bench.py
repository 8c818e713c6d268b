"""The load tester against a real local HTTP server that streams scripted SSE (no mocks of httpx)."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hxp_enterprise_llm.bench.cli import main as bench_main
from hxp_enterprise_llm.bench.client import RequestResult, SSEDecoder
from hxp_enterprise_llm.bench.runner import LoadOptions, normalize_base_url, poisson_arrivals, run_load
from hxp_enterprise_llm.bench.stats import (
    EXIT_ERRORS,
    EXIT_OK,
    EXIT_SLO_MISSED,
    Slo,
    percentile,
    summarize,
    verdict,
)
from hxp_tools.servers import free_port

MODEL = "scripted-model"


def chunk(content: str | None = None, *, role: bool = False, finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}


def frames(*events: dict[str, Any] | str) -> list[bytes]:
    return [(f"data: {e}\n\n" if isinstance(e, str) else f"data: {json.dumps(e)}\n\n").encode()
            for e in events]


# What the scripted server answers, chosen by the user message so concurrent requests stay deterministic.
STREAMS: dict[str, list[bytes]] = {
    # 5 tokens in two content frames (3 + 2), as a server that batches tokens per SSE frame sends them.
    "ok": [b": ping\n\n", *frames(chunk("", role=True), chunk("The cap"), chunk("ital.", finish="stop"),
                                   USAGE, "[DONE]")],
    "no-usage": frames(chunk("", role=True), chunk("a"), chunk("b"), chunk("c", finish="length"), "[DONE]"),
    "error-in-stream": frames(chunk("", role=True), {"error": {"message": "engine died", "code": 500}}),
    "no-done": frames(chunk("", role=True), chunk("half")),
}
STATUS = {"overloaded": 429, "broken": 500}
FIRST_TOKEN_DELAY_S = {"slow": 0.2}


class ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send_json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ScriptedHandler.bodies.append(body)
        script = body["messages"][0]["content"]
        if script in STATUS:
            self._send_json(STATUS[script], {"error": {"message": script, "type": "x", "param": None,
                                                       "code": None}})
        elif not body.get("stream"):
            self._send_json(200, {"id": "c1", "object": "chat.completion", "model": MODEL, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
        else:
            self._stream(STREAMS.get(script, STREAMS["ok"]), FIRST_TOKEN_DELAY_S.get(script, 0.0))

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list[bytes], first_delay_s: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, event in enumerate(events):
            if index == 1 and first_delay_s:
                time.sleep(first_delay_s)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run(url: str, prompt: str, **options: Any) -> list[RequestResult]:
    opts = LoadOptions(base_url=url, prompts=(prompt,), warmup=0, **options)
    return asyncio.run(run_load(opts)).results


# --- statistics -------------------------------------------------------------------------------

def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="0..100"):
        percentile(values, 101)


def test_slo_parse_and_messages() -> None:
    assert Slo.parse("e2el:1000") == Slo("e2el", 1000.0)
    assert Slo.parse("TTFT:250.5") == Slo("ttft", 250.5)
    for bad, message in [("e2el", "METRIC:MILLISECONDS"), ("latency:5", "METRIC:MILLISECONDS"),
                         ("ttft:fast", "not a number"), ("tpot:0", "positive")]:
        with pytest.raises(ValueError, match=message):
            Slo.parse(bad)


def _result(e2e: float, ttft: float | None = None, tokens: int = 10, ok: bool = True,
            status: int = 200) -> RequestResult:
    return RequestResult(ok=ok, status=status, e2e=e2e, ttft=ttft, output_tokens=tokens if ok else 0,
                         error=None if ok else f"HTTP {status}: no")


def test_summary_goodput_counts_only_successes_meeting_every_slo() -> None:
    results = [_result(0.5, ttft=0.1), _result(0.8, ttft=0.3), _result(1.2, ttft=0.1),
               _result(0.0, ok=False, status=429)]
    summary = summarize(results, duration_s=2.0, slos=[Slo("e2el", 1000), Slo("ttft", 200)])
    assert (summary.requests, summary.succeeded, summary.failed) == (4, 3, 1)
    assert summary.slo_attainment == 0.25  # only the first meets both; the failed one counts against
    assert summary.goodput == 0.5
    assert summary.request_throughput == 1.5
    assert summary.output_throughput == 15.0
    assert summary.errors == {"status 429": 1}
    assert summary.error_samples == {"status 429": "HTTP 429: no"}
    assert summary.e2el.median == pytest.approx(800.0)
    assert summary.tpot.mean == pytest.approx(((0.4 + 0.5 + 1.1) / 9) / 3 * 1000)


def test_verdict_exit_codes() -> None:
    good = [_result(0.5), _result(0.7)]
    slow = [_result(0.5), _result(1.5)]
    slo = [Slo("e2el", 1000)]
    assert verdict(summarize(good, 1.0, slo), 1.0).exit_code == EXIT_OK
    missed = verdict(summarize(slow, 1.0, slo), 0.9)
    assert missed.exit_code == EXIT_SLO_MISSED
    assert "50.0% < required 90.0%" in missed.message
    assert verdict(summarize(slow, 1.0, slo), 0.5).exit_code == EXIT_OK
    with_error = [*good, _result(0.0, ok=False, status=500)]
    assert verdict(summarize(with_error, 1.0, slo), 0.0).exit_code == EXIT_ERRORS
    assert verdict(summarize(with_error, 1.0, slo), 0.0, max_errors=1).exit_code == EXIT_OK
    assert verdict(summarize([], 1.0, slo), 0.0).exit_code == EXIT_ERRORS


# --- SSE parsing ------------------------------------------------------------------------------

def test_sse_decoder_handles_comments_multiline_crlf_and_a_missing_last_blank_line() -> None:
    decoder = SSEDecoder()
    lines = [": ping", "event: message", "data: {\"a\":", "data:1}", "", "data: x\r", "\r", "data: [DONE]"]
    events = [event for line in lines for event in decoder.feed(line)]
    events += list(decoder.close())
    assert events == ["{\"a\":\n1}", "x", "[DONE]"]


# --- against the scripted server --------------------------------------------------------------

def test_streamed_request_timings_and_tokens(server_url: str) -> None:
    [result] = run(server_url, "ok", num_requests=1)
    assert result.ok, result.error
    assert result.text == "The capital."
    assert (result.prompt_tokens, result.output_tokens) == (7, 5)  # from the usage frame, not frame count
    assert len(result.content_times) == 2  # the empty role frame is not the first token
    assert result.ttft is not None
    assert 0 < result.ttft <= result.content_times[-1] <= result.e2e
    assert len(result.itls) == 1
    assert result.tpot == pytest.approx((result.e2e - result.ttft) / 4)


def test_request_body_carries_usage_option_and_optional_ignore_eos(server_url: str) -> None:
    ScriptedHandler.bodies.clear()
    run(server_url, "ok", num_requests=1, max_tokens=9, ignore_eos=True, extra_body={"top_k": 1})
    [body] = ScriptedHandler.bodies
    assert body["model"] == MODEL  # discovered from /v1/models
    assert body["max_tokens"] == 9
    assert body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True
    assert body["top_k"] == 1
    ScriptedHandler.bodies.clear()
    run(server_url, "ok", num_requests=1)
    assert "ignore_eos" not in ScriptedHandler.bodies[0]


def test_non_streamed_request(server_url: str) -> None:
    [result] = run(server_url, "ok", num_requests=1, stream=False)
    assert result.ok
    assert (result.text, result.output_tokens, result.ttft, result.tpot) == ("Paris.", 3, None, None)


def test_stream_without_usage_counts_frames(server_url: str) -> None:
    [result] = run(server_url, "no-usage", num_requests=1)
    assert result.ok
    assert (result.text, result.output_tokens) == ("abc", 3)


@pytest.mark.parametrize(("prompt", "key"), [
    ("overloaded", "status 429"), ("broken", "status 500"),
    ("error-in-stream", "stream error"), ("no-done", "stream error"),
])
def test_failures_are_results_grouped_by_kind(server_url: str, prompt: str, key: str) -> None:
    [result] = run(server_url, prompt, num_requests=1)
    assert not result.ok
    assert result.error_key == key
    assert result.error is not None


def test_concurrent_run_sends_every_request_once(server_url: str) -> None:
    ScriptedHandler.bodies.clear()
    results = run(server_url, "ok", num_requests=12, concurrency=5)
    assert len(results) == 12
    assert all(r.ok for r in results)
    assert len(ScriptedHandler.bodies) == 12


def test_normalize_base_url() -> None:
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
        assert normalize_base_url(url) == "http://h:1"


# --- the command and its exit codes -----------------------------------------------------------

def test_cli_passes_and_writes_json(server_url: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    code = bench_main(["--base-url", server_url + "/v1", "-n", "4", "-c", "2", "--prompt", "ok",
                       "--slo", "e2el:600000", "--json", str(out)])
    assert code == EXIT_OK
    printed = capsys.readouterr().out
    assert "PASS" in printed
    assert "TTFT" in printed
    doc = json.loads(out.read_text())
    assert doc["summary"]["succeeded"] == 4
    assert doc["summary"]["slos"] == ["e2el<=600000ms"]
    assert doc["summary"]["slo_attainment"] == 1.0
    assert doc["verdict"]["exit_code"] == EXIT_OK
    assert "api_key" not in doc["options"]


def test_cli_exits_1_when_slo_missed(server_url: str) -> None:
    # The server sleeps 200 ms before the first token, so a 100 ms TTFT objective cannot be met.
    code = bench_main(["--base-url", server_url, "-n", "2", "--prompt", "slow", "--slo", "ttft:100",
                       "--min-goodput-ratio", "0.5", "--quiet"])
    assert code == EXIT_SLO_MISSED


def test_cli_exits_2_on_errors(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--base-url", server_url, "-n", "2", "--prompt", "error-in-stream"]) == EXIT_ERRORS
    assert "(first: stream error: engine died)" in capsys.readouterr().out
    assert bench_main(["--base-url", server_url, "-n", "2", "--prompt", "broken", "--quiet"]) == EXIT_ERRORS


@pytest.mark.parametrize(("flags", "message"), [
    (["--conversations", "2", "-n", "5", "--plot", "x.png"], "-n, --plot do not apply to --conversations"),
    (["--turns", "3"], "--turns does not apply without --conversations"),
    # Checked before a run of minutes, not after it: a file where a directory should be, a directory.
    (["--json", "{tmp}/file/out.json"], "--json {tmp}/file/out.json: cannot write in {tmp}/file"),
    (["--plot", "{tmp}"], "--plot {tmp}: is a directory"),
])
def test_cli_refuses_flags_that_would_do_nothing_before_sending_anything(
        flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    port = free_port()  # nothing listens: a run that started would fail with "could not run"
    assert bench_main(["--base-url", f"http://127.0.0.1:{port}",
                       *(flag.format(tmp=tmp_path) for flag in flags)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: {message.format(tmp=tmp_path)}")
    assert "could not run" not in err

def test_cli_exits_2_when_server_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # free a moment ago: nothing listens there
    assert bench_main(["--base-url", f"http://127.0.0.1:{port}", "-n", "1", "--quiet"]) == EXIT_ERRORS
    assert "could not run" in capsys.readouterr().err


# --- open loop (--request-rate), timestamps and --plot ----------------------------------------

def test_poisson_arrivals_are_seeded_increasing_and_average_the_rate() -> None:
    arrivals = poisson_arrivals(20_000, rate=4.0, seed=7)
    assert arrivals == poisson_arrivals(20_000, rate=4.0, seed=7)
    assert arrivals != poisson_arrivals(20_000, rate=4.0, seed=8)
    assert all(later > earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False))
    gaps = [b - a for a, b in zip([0.0, *arrivals], arrivals, strict=False)]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 4.0, rel=0.03)  # exponential gaps, mean 1/rate
    with pytest.raises(ValueError, match="positive"):
        poisson_arrivals(3, 0.0)


def in_flight_peak(results: list[RequestResult]) -> int:
    events = sorted([(r.sent_at, 1) for r in results] + [(r.finished_at, -1) for r in results],
                    key=lambda e: (e[0], e[1]))
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_open_loop_sends_on_schedule_without_waiting_for_answers(server_url: str) -> None:
    # The "slow" script holds every answer 200 ms; arrivals at 200/s come far faster than that.
    options = LoadOptions(base_url=server_url, prompts=("slow",), warmup=0, num_requests=12,
                          request_rate=200.0, seed=3)
    results = asyncio.run(run_load(options)).results
    schedule = poisson_arrivals(12, 200.0, seed=3)
    assert all(r.ok for r in results)
    # Never sent before its arrival time, in arrival order, and not held back by the answers in flight.
    assert all(r.sent_at >= arrival for r, arrival in zip(results, schedule, strict=True))
    assert [r.sent_at for r in results] == sorted(r.sent_at for r in results)
    assert in_flight_peak(results) > 1
    closed = run(server_url, "slow", num_requests=4, concurrency=1)
    assert in_flight_peak(closed) == 1  # the closed loop with one worker never overlaps


def test_open_loop_respects_max_concurrency(server_url: str) -> None:
    options = LoadOptions(base_url=server_url, prompts=("slow",), warmup=0, num_requests=9,
                          request_rate=500.0, max_concurrency=2)
    results = asyncio.run(run_load(options)).results
    assert all(r.ok for r in results)
    assert in_flight_peak(results) == 2


def test_cli_open_loop_reports_the_load_and_writes_the_timeline(
        server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    code = bench_main(["--base-url", server_url, "-n", "5", "--request-rate", "50", "--prompt", "ok",
                       "--json", str(out)])
    assert code == EXIT_OK
    assert "open loop, Poisson arrivals at 50 req/s" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["options"]["request_rate"] == 50.0
    assert doc["options"]["max_concurrency"] is None
    rows = doc["requests"]
    assert len(rows) == 5
    for row in rows:
        assert 0 <= row["sent_at"] <= row["sent_at"] + row["ttft"] <= row["finished_at"]
        assert row["ok"] is True
        assert row["output_tokens"] == 5
        assert len(row["content_times"]) == 2


def test_timeline_spreads_tokens_over_frames_and_counts_in_flight() -> None:
    from hxp_enterprise_llm.bench.plot import timeline

    a = RequestResult(ok=True, sent_at=0.0, e2e=2.0, ttft=0.5, content_times=[0.5, 1.5], output_tokens=10)
    b = RequestResult(ok=True, sent_at=1.0, e2e=3.0, ttft=1.5, content_times=[2.5], output_tokens=4)
    refused = RequestResult(ok=False, sent_at=0.0, e2e=0.1, status=429)
    # A stream cut after two frames (no usage frame: one token per frame) delivered those tokens all the same.
    cut = RequestResult(ok=False, sent_at=2.0, e2e=1.5, ttft=0.2, content_times=[0.2, 0.4], output_tokens=2,
                        error="stream error: timeout")
    line = timeline([a, b, refused, cut], duration_s=4.0, bins=4)
    assert line.bin_seconds == 1.0
    assert line.starts == [0.0, 1.0, 2.0, 3.0]
    # a: 5 at 0.5 s and 5 at 1.5 s; cut: 2 at 2.2-2.4 s; b: 4 at 3.5 s
    assert line.tokens_per_second == [5.0, 5.0, 2.0, 4.0]
    assert line.finished_per_second == [0.0, 0.0, 1.0, 1.0]  # a at 2.0 s; b at 4.0 s, the end, in the last bin
    assert line.failed_per_second == [1.0, 0.0, 0.0, 1.0]  # refused at 0.1 s, cut at 3.5 s
    assert line.in_flight == [1, 2, 2, 1]  # at 0.5: a; 1.5: a, b; 2.5: b, cut; 3.5: b


def test_plot_writes_a_png(server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "plots" / "run.png"
    assert bench_main(["--base-url", server_url, "-n", "6", "-c", "2", "--prompt", "ok",
                       "--plot", str(png)]) == EXIT_OK
    assert f"plot: {png}" in capsys.readouterr().out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1300, 800)


def test_plot_without_matplotlib_says_how_to_get_it_before_sending_anything(
        server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees where it is missing
    ScriptedHandler.bodies.clear()
    code = bench_main(["--base-url", server_url, "-n", "2", "--prompt", "ok", "--plot", str(tmp_path / "x.png")])
    assert code == 2
    assert "pip install matplotlib" in capsys.readouterr().err
    assert ScriptedHandler.bodies == []
    assert not (tmp_path / "x.png").exists()


def test_the_cli_does_not_import_matplotlib() -> None:
    code = ("import sys, hxp_enterprise_llm.cli as c; c.build_parser(); "
            "import hxp_enterprise_llm.bench.cli, hxp_enterprise_llm.bench.report; "
            "print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("rate", ["0", "-2", "nan", "fast"])
def test_cli_refuses_a_request_rate_that_is_not_positive(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_main(["--request-rate", rate, "-n", "1"])
    assert exited.value.code == 2
    assert "--request-rate" in capsys.readouterr().err
