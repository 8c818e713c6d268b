"""`hxp-llm bench --plot FILE.png`: latency distributions and throughput over time, drawn with matplotlib.

matplotlib is imported here only, and only when a plot is asked for: the service image does not ship it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.bench.client import RequestResult
from hxp_enterprise_llm.bench.runner import LoadRun
from hxp_enterprise_llm.bench.stats import Summary, percentile

MATPLOTLIB_HINT = ("--plot needs matplotlib, which the service image does not ship: run the bench from the "
                   "development venv (scripts/setup installs it) or `pip install matplotlib`")


class PlotUnavailable(RuntimeError):
    pass


def require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(MATPLOTLIB_HINT) from None
    matplotlib.use("Agg")  # files only, never a display
    return matplotlib


@dataclass(frozen=True)
class Timeline:
    """Per-bin figures over the run: bin start times (s), output tokens/s, finished and failed requests/s,
    requests in flight."""

    starts: list[float]
    tokens_per_second: list[float]
    finished_per_second: list[float]
    failed_per_second: list[float]
    in_flight: list[int]
    bin_seconds: float


def timeline(results: Sequence[RequestResult], duration_s: float, bins: int = 40) -> Timeline:
    """Throughput over time from each request's send time and frame times.

    A frame may carry several tokens: a request's output tokens are spread evenly over its content frames
    (all at the finish when it was not streamed). Tokens a failed stream delivered before failing count too:
    the server produced them. In flight is counted at the middle of each bin.
    """
    end = max([duration_s, *(r.finished_at for r in results)], default=duration_s)
    width = max(end / bins, 1e-3)
    count = max(1, math.ceil(end / width))
    tokens = [0.0] * count
    finished = [0.0] * count
    failed = [0.0] * count

    def slot(t: float) -> int:
        return min(count - 1, max(0, int(t / width)))

    for result in results:
        (finished if result.ok else failed)[slot(result.finished_at)] += 1
        frames = result.content_times
        if frames:
            for t in frames:
                tokens[slot(result.sent_at + t)] += result.output_tokens / len(frames)
        else:
            tokens[slot(result.finished_at)] += result.output_tokens
    starts = [i * width for i in range(count)]
    in_flight = [sum(1 for r in results if r.sent_at <= s + width / 2 < r.finished_at) for s in starts]
    return Timeline(starts, [t / width for t in tokens], [f / width for f in finished],
                    [f / width for f in failed], in_flight, width)


def _histogram(axis: Any, title: str, seconds: Sequence[float]) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_title(f"{title} ({len(seconds)} samples)", fontsize=10)
    if not seconds:
        axis.text(0.5, 0.5, "no samples\n(needs --stream)", ha="center", va="center", transform=axis.transAxes)
        return
    # Milliseconds, or seconds once the values reach tens of seconds (tick labels stay short).
    unit, scale = ("s", 1.0) if max(seconds) >= 10 else ("ms", 1000.0)
    values = [s * scale for s in seconds]
    axis.set_xlabel(unit)
    axis.xaxis.set_major_locator(MaxNLocator(6))
    axis.hist(values, bins=min(40, max(5, len(values) // 3)), color="#4c72b0", alpha=0.85)
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        value = percentile(values, q)
        label = f"p{q} {value:.0f} ms" if unit == "ms" else f"p{q} {value:.1f} s"
        axis.axvline(value, color="#c44e52", linestyle=style, linewidth=1.2, label=label)
    axis.legend(fontsize=8)
    axis.set_ylabel("requests" if title != "ITL" else "frame gaps")


def write_plot(path: Path, run: LoadRun, summary: Summary) -> None:
    require_matplotlib()
    import matplotlib.pyplot as plt

    succeeded = [r for r in run.results if r.ok]
    figure = plt.figure(figsize=(13, 8), layout="constrained")
    grid = figure.add_gridspec(2, 3)
    _histogram(figure.add_subplot(grid[0, 0]), "TTFT", [r.ttft for r in succeeded if r.ttft is not None])
    _histogram(figure.add_subplot(grid[0, 1]), "ITL", [gap for r in succeeded for gap in r.itls])
    _histogram(figure.add_subplot(grid[0, 2]), "E2E latency", [r.e2e for r in succeeded])

    line = timeline(run.results, summary.duration_s)
    axis = figure.add_subplot(grid[1, :])
    axis.plot(line.starts, line.tokens_per_second, drawstyle="steps-post", color="#4c72b0",
              label="output tokens/s")
    axis.set_xlabel("seconds since the start of the run")
    axis.set_ylabel("output tokens/s")
    axis.set_title(f"Throughput over time ({line.bin_seconds:.2g} s bins)", fontsize=10)
    right = axis.twinx()
    right.plot(line.starts, line.in_flight, drawstyle="steps-post", color="#dd8452", label="requests in flight")
    right.plot(line.starts, line.finished_per_second, drawstyle="steps-post", color="#55a868", alpha=0.8,
               label="requests finished/s")
    if any(line.failed_per_second):
        right.plot(line.starts, line.failed_per_second, drawstyle="steps-post", color="#c44e52",
                   label="requests failed/s")
    right.set_ylabel("requests")
    # Both axes from 0, with headroom above the lines for the legend.
    axis.set_ylim(0, max([*line.tokens_per_second, 1.0]) * 1.35)
    right.set_ylim(0, max([*line.in_flight, *line.finished_per_second, 1.0]) * 1.35)
    handles = axis.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    axis.legend(handles, [str(h.get_label()) for h in handles], loc="upper center", ncol=len(handles), fontsize=8)

    options = run.options
    figure.suptitle(
        f"{run.model} at {options.base_url}: {options.describe_load()}, {summary.requests} requests, "
        f"max_tokens {options.max_tokens}\n{summary.succeeded} ok, {summary.failed} failed in "
        f"{summary.duration_s:.1f} s: {summary.request_throughput:.2f} req/s, "
        f"{summary.output_throughput:.1f} output tok/s", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
