"""The run report: a fixed-width table for people, a JSON document for machines."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.bench.runner import LoadRun
from hxp_enterprise_llm.bench.stats import Distribution, Summary, Verdict

LATENCIES = (("TTFT", "ttft"), ("TPOT", "tpot"), ("ITL", "itl"), ("E2E latency", "e2el"))


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def render_table(run: LoadRun, summary: Summary, verdict: Verdict) -> str:
    options = run.options
    lines = [
        "=" * 22 + " Benchmark result " + "=" * 22,
        f"{'Endpoint:':<34}{options.base_url}",
        f"{'Model:':<34}{run.model}",
        f"{'Requests (ok / failed):':<34}{summary.succeeded} / {summary.failed}",
        f"{'Load:':<34}{options.describe_load()}",
        f"{'max_tokens, stream:':<34}{options.max_tokens}, {'on' if options.stream else 'off'}",
        f"{'Duration (s):':<34}{summary.duration_s:.2f}",
        f"{'Output tokens (total):':<34}{summary.output_tokens}",
        f"{'Request throughput (req/s):':<34}{_fmt(summary.request_throughput)}",
        f"{'Output token throughput (tok/s):':<34}{_fmt(summary.output_throughput)}",
    ]
    if summary.slos:
        lines += [
            f"{'SLOs:':<34}{', '.join(map(str, summary.slos))}",
            f"{'Goodput (req/s):':<34}{_fmt(summary.goodput)}",
            f"{'SLO attainment:':<34}{summary.slo_attainment:.1%}",
        ]
    lines.append(f"{'latency (ms)':<16}{'mean':>10}{'median':>10}{'p95':>10}{'p99':>10}{'samples':>10}")
    for label, key in LATENCIES:
        dist: Distribution = getattr(summary, key)
        lines.append(f"{label:<16}{_fmt(dist.mean):>10}{_fmt(dist.median):>10}{_fmt(dist.p95):>10}"
                     f"{_fmt(dist.p99):>10}{dist.count:>10}")
    for key, count in sorted(summary.errors.items()):
        sample = summary.error_samples.get(key, "")
        lines.append(f"{'Errors ' + key + ':':<34}{count}  (first: {sample[:100]})")
    lines += [verdict.message, "=" * 62]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: report missing figures as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def report_document(run: LoadRun, summary: Summary, verdict: Verdict) -> dict[str, Any]:
    options = dataclasses.asdict(run.options)
    options.pop("api_key", None)  # never write secrets into result files
    options["prompts"] = len(run.options.prompts)
    doc: dict[str, Any] = {
        "model": run.model,
        "options": options,
        "summary": dataclasses.asdict(summary),
        "verdict": {"exit_code": verdict.exit_code, "message": verdict.message},
    }
    doc["summary"]["slos"] = [str(slo) for slo in summary.slos]
    doc["summary"]["failed"] = summary.failed
    # One row per request, for throughput over time and re-plotting; seconds from the run's start.
    doc["requests"] = [
        {"sent_at": round(r.sent_at, 6), "finished_at": round(r.finished_at, 6),
         "ttft": None if r.ttft is None else round(r.ttft, 6), "ok": r.ok, "status": r.status,
         "error": r.error_key if not r.ok else None, "output_tokens": r.output_tokens,
         "content_times": [round(t, 6) for t in r.content_times]}
        for r in run.results]
    safe: dict[str, Any] = _json_safe(doc)
    return safe


def write_json(path: Path, run: LoadRun, summary: Summary, verdict: Verdict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_document(run, summary, verdict), indent=2) + "\n")
