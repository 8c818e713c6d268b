"""Latency percentiles, SLOs and goodput over a run's request results."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hxp_enterprise_llm.percentiles import percentile

if TYPE_CHECKING:  # the CLI parser imports this module: keep httpx out of `hxp-llm serve`'s imports
    from hxp_enterprise_llm.bench.client import RequestResult

# Per-request figures an SLO can bound, as `vllm bench serve --goodput` names them (milliseconds).
SLO_METRICS = ("ttft", "tpot", "e2el")
PERCENTILES = (50.0, 95.0, 99.0)


@dataclass(frozen=True)
class Slo:
    """One service-level objective: `metric` (ttft, tpot or e2el) at most `limit_ms` per request."""

    metric: str
    limit_ms: float

    @classmethod
    def parse(cls, text: str) -> Slo:
        """`e2el:1000` -> Slo("e2el", 1000.0); the message names what is wrong."""
        name, sep, value = text.partition(":")
        name = name.strip().lower()
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"bad SLO {text!r}: expected METRIC:MILLISECONDS with METRIC one of "
                             f"{', '.join(SLO_METRICS)} (e.g. e2el:1000)")
        try:
            limit = float(value)
        except ValueError:
            raise ValueError(f"bad SLO {text!r}: {value!r} is not a number of milliseconds") from None
        if not limit > 0:
            raise ValueError(f"bad SLO {text!r}: the limit must be positive")
        return cls(name, limit)

    def met_by(self, result: RequestResult) -> bool:
        observed = request_metric(result, self.metric)
        return observed is not None and observed * 1000.0 <= self.limit_ms

    def __str__(self) -> str:
        return f"{self.metric}<={self.limit_ms:g}ms"


def request_metric(result: RequestResult, metric: str) -> float | None:
    """A request's figure for an SLO metric, in seconds; None when unknown (e.g. TTFT without streaming)."""
    if metric == "ttft":
        return result.ttft
    if metric == "tpot":
        return result.tpot
    if metric == "e2el":
        return result.e2e
    raise ValueError(f"unknown SLO metric {metric!r}")


def meets_all(result: RequestResult, slos: Sequence[Slo]) -> bool:
    """A good request succeeded and met every SLO."""
    return result.ok and all(slo.met_by(result) for slo in slos)


@dataclass(frozen=True)
class Distribution:
    """Milliseconds; NaN everywhere when there were no samples."""

    count: int
    mean: float
    median: float
    p95: float
    p99: float

    @classmethod
    def of_seconds(cls, samples: Sequence[float]) -> Distribution:
        millis = [s * 1000.0 for s in samples]
        if not millis:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(len(millis), sum(millis) / len(millis),
                   *(percentile(millis, q) for q in PERCENTILES))


@dataclass(frozen=True)
class Summary:
    """Everything a run report shows."""

    requests: int
    succeeded: int
    duration_s: float
    output_tokens: int
    prompt_tokens: int
    request_throughput: float
    output_throughput: float
    goodput: float
    slo_attainment: float
    slos: tuple[Slo, ...]
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, str] = field(default_factory=dict)  # first message of each kind

    @property
    def failed(self) -> int:
        return self.requests - self.succeeded


def summarize(results: Sequence[RequestResult], duration_s: float, slos: Sequence[Slo] = ()) -> Summary:
    """Aggregate one run; throughputs are per wall-clock second of the whole run."""
    succeeded = [r for r in results if r.ok]
    good = sum(1 for r in results if meets_all(r, slos))
    per_second = 1.0 / duration_s if duration_s > 0 else math.nan
    output_tokens = sum(r.output_tokens for r in succeeded)
    return Summary(
        requests=len(results),
        succeeded=len(succeeded),
        duration_s=duration_s,
        output_tokens=output_tokens,
        prompt_tokens=sum(r.prompt_tokens for r in succeeded),
        request_throughput=len(succeeded) * per_second,
        output_throughput=output_tokens * per_second,
        goodput=good * per_second,
        slo_attainment=good / len(results) if results else math.nan,
        slos=tuple(slos),
        ttft=Distribution.of_seconds([r.ttft for r in succeeded if r.ttft is not None]),
        tpot=Distribution.of_seconds([t for r in succeeded if (t := r.tpot) is not None]),
        itl=Distribution.of_seconds([gap for r in succeeded for gap in r.itls]),
        e2el=Distribution.of_seconds([r.e2e for r in succeeded]),
        errors=dict(Counter(r.error_key for r in results if not r.ok)),
        error_samples=_first_error_of_each_kind(results),
    )


def _first_error_of_each_kind(results: Sequence[RequestResult]) -> dict[str, str]:
    samples: dict[str, str] = {}
    for result in results:
        if not result.ok:
            samples.setdefault(result.error_key, result.error or "")
    return samples


EXIT_OK = 0
EXIT_SLO_MISSED = 1
EXIT_ERRORS = 2


@dataclass(frozen=True)
class Verdict:
    exit_code: int
    message: str


def verdict(summary: Summary, min_goodput_ratio: float, max_errors: int = 0) -> Verdict:
    """Errors beyond `max_errors` exit 2; otherwise SLO attainment below the ratio exits 1."""
    if summary.requests == 0:
        return Verdict(EXIT_ERRORS, "FAIL: no requests were made")
    if summary.failed > max_errors:
        return Verdict(EXIT_ERRORS, f"FAIL: {summary.failed} of {summary.requests} requests failed "
                                    f"(allowed: {max_errors})")
    if summary.slos and summary.slo_attainment < min_goodput_ratio:
        return Verdict(EXIT_SLO_MISSED,
                       f"FAIL: SLO attainment {summary.slo_attainment:.1%} < required "
                       f"{min_goodput_ratio:.1%} ({', '.join(map(str, summary.slos))})")
    if summary.slos:
        return Verdict(EXIT_OK, f"PASS: SLO attainment {summary.slo_attainment:.1%} >= required "
                                f"{min_goodput_ratio:.1%} ({', '.join(map(str, summary.slos))})")
    return Verdict(EXIT_OK, "PASS: all requests succeeded (no SLO given)")
