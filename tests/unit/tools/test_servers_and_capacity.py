"""Developer tooling: the managed server process and the capacity report's arithmetic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hxp_tools.servers import free_port


def test_managed_server_waits_for_health_and_stops_its_process(tmp_path: Path) -> None:
    import sys

    from hxp_tools.servers import ManagedServer

    port = free_port()
    server = ManagedServer("static", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                           f"http://127.0.0.1:{port}/", tmp_path / "static.log")
    with server:
        server.wait_healthy(timeout_s=60, poll_s=0.05)
        process = server.process
        assert process is not None
        assert process.poll() is None
    assert process.poll() is not None


def test_managed_server_reports_an_early_exit_with_its_log(tmp_path: Path) -> None:
    import sys

    from hxp_tools.servers import ManagedServer, ServerFailed

    argv = [sys.executable, "-c", "print('model missing'); raise SystemExit(3)"]
    with ManagedServer("broken", argv, "http://127.0.0.1:9/health", tmp_path / "b.log") as server, \
            pytest.raises(ServerFailed, match=r"(?s)exited with code 3.*model missing"):
        server.wait_healthy(timeout_s=60, poll_s=0.05)
    server.start()
    assert server.process is not None
    server.process.wait(timeout=60)
    with pytest.raises(ServerFailed, match=r"(?s)not running \(exit code 3\).*model missing"):
        server.check_running()
    server.stop()



def _row(rate: float, goodput: float) -> dict[str, Any]:
    figures = {f"{m}_p{p}": 100.0 * rate for m in ("ttft", "e2el") for p in (50, 95, 99)}
    return {"rate": rate, "goodput": goodput, "load_1m": 1.0, "completed": 10, "failed": 0,
            "request_throughput": rate, **figures}


def test_goodput_counts_failed_requests_against_the_share() -> None:
    from hxp_tools.capacity import goodput_share

    # `vllm bench serve` reports goodput as good requests per second over the run's duration.
    assert goodput_share({"request_goodput": 0.9, "duration": 10.0, "num_prompts": 10}) == 0.9
    assert goodput_share({"request_goodput": None, "duration": 10.0, "num_prompts": 10}) == 0.0


def test_capacity_is_the_last_rate_before_goodput_first_drops() -> None:
    from hxp_tools.capacity import capacity

    rows = [_row(4, 1.0), _row(1, 1.0), _row(2, 0.99), _row(6, 0.8), _row(8, 1.0)]
    assert capacity(rows, 0.99) == 4  # 8 req/s passing after 6 failed does not count
    assert capacity([_row(1, 0.5)], 0.99) is None


def test_report_table_and_plot(tmp_path: Path) -> None:
    from hxp_tools.capacity import build_parser, plot, table

    args = build_parser().parse_args(["--num-prompts", "10"])
    args.slo = {"ttft": 500.0, "e2el": 1000.0}
    runs = {"ours": [_row(1, 1.0), _row(2, 0.5)], "vllm serve": [_row(1, 1.0), _row(2, 1.0)]}
    text = table(runs, args)
    assert "| ours | 2 | 50.0% | 2.00 | 0 | 200 / 200 | 200 / 200 | 1.0 |" in text
    assert "**ours**: highest rate with goodput >= 99%: 1 req/s" in text
    assert "**vllm serve**: highest rate with goodput >= 99%: 2 req/s" in text
    plot(runs, args, tmp_path / "capacity.png")
    assert (tmp_path / "capacity.png").read_bytes().startswith(b"\x89PNG")


def test_both_reports_give_vllm_bench_serve_options_it_accepts(tmp_path: Path) -> None:
    """The sweep and the closed loop share one `vllm bench serve` command: vLLM's own parser takes both whole."""
    import argparse

    from vllm.benchmarks.serve import add_cli_args

    from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
    from hxp_tools import capacity, serving_compare

    engine = capacity.Engine(OpenChat35Config(served_model_name="openchat-3.5"), tmp_path / "model", "bfloat16")
    sweep_args = capacity.build_parser().parse_args(["--num-prompts", "7"])
    sweep_args.slo = {"ttft": 500.0, "e2el": 1000.0}
    loop_args = serving_compare.build_parser().parse_args([])
    commands = {
        "sweep": capacity.bench_command(sweep_args, engine, "http://127.0.0.1:1", 2.5, tmp_path / "s.json"),
        "closed loop": serving_compare.closed_loop_command(loop_args, engine, "http://127.0.0.1:1", 50, 200,
                                                           tmp_path / "c.json"),
    }
    parsed = {}
    for name, command in commands.items():
        assert command[1:3] == ["bench", "serve"], name
        parser = argparse.ArgumentParser()
        add_cli_args(parser)
        parsed[name] = parser.parse_args(command[3:])  # an unknown or misspelt option exits here
    assert (parsed["sweep"].request_rate, parsed["sweep"].num_prompts, parsed["sweep"].goodput) == \
        (2.5, 7, ["ttft:500", "e2el:1000"])
    assert (parsed["closed loop"].max_concurrency, parsed["closed loop"].request_rate) == (50, float("inf"))
    assert {p.result_filename for p in parsed.values()} == {"s.json", "c.json"}
    assert all(p.ignore_eos and p.random_output_len == 50 for p in parsed.values())


def test_profile_summary_counts_a_function_once_per_stack_and_its_own_time_at_the_top(tmp_path) -> None:
    from hxp_tools.serving_compare import profile_summary

    profile = tmp_path / "ours.pyspy"  # py-spy's raw format: frames outermost first, then the sample count
    profile.write_text("main (app.py:1);loop (app.py:5);loop (app.py:9);send (io.py:3) 3\n"
                       "main (app.py:1);loop (app.py:5) 1\n")
    summary = profile_summary(profile).splitlines()
    assert summary[0] == "profile ours.pyspy: 4 samples; inclusive:"
    inclusive = summary[1:summary.index("own time:")]
    own = summary[summary.index("own time:") + 1:]
    assert inclusive[:2] == ["100.0%  loop (app.py)", "100.0%  main (app.py)"]  # recursion counted once; ties by name
    assert inclusive[2] == " 75.0%  send (io.py)"
    assert own == [" 75.0%  send (io.py)", " 25.0%  loop (app.py)"]
