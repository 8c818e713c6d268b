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
