"""`hxp-llm bench` / `python -m hxp_enterprise_llm.bench`: load test with an SLO verdict in the exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hxp_enterprise_llm.bench.prompts import BUILTIN_PROMPTS
from hxp_enterprise_llm.bench.stats import EXIT_ERRORS, Slo, summarize, verdict
from hxp_enterprise_llm.cli_args import positive_float, positive_int

if TYPE_CHECKING:
    from hxp_enterprise_llm.bench.runner import LoadOptions

DEFAULT_MIN_GOODPUT_RATIO = 0.9
EXIT_USAGE = 2  # as argparse exits on a bad argument


def _slo(text: str) -> Slo:
    try:
        return Slo.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {text}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    target = parser.add_argument_group("target")
    target.add_argument("--base-url", default="http://127.0.0.1:11402",
                        help="server root or its /v1 URL (default: %(default)s)")
    target.add_argument("--model", help="model id to request (default: the first of GET /v1/models)")
    target.add_argument("--api-key", default=os.environ.get("HXP_LLM_API_KEY"),
                        help="Bearer key (default: $HXP_LLM_API_KEY)")
    load = parser.add_argument_group("load")
    load.add_argument("-n", "--num-requests", type=positive_int, default=20)
    load.add_argument("-c", "--concurrency", type=positive_int, default=None,
                      help="closed loop: requests in flight at once (default 1); with --request-rate: "
                           "the most in flight at once (default: no limit)")
    load.add_argument("--request-rate", type=positive_float, metavar="R",
                      help="open loop: send requests as Poisson arrivals at R per second, whether or not "
                           "earlier ones finished (as `vllm bench serve --request-rate`)")
    load.add_argument("--seed", type=int, default=0, help="seed of the open loop's arrival times (default: 0)")
    load.add_argument("--max-tokens", type=positive_int, default=50)
    load.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                      help="user message; repeat for several (default: a built-in set of 8)")
    load.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                      help="stream with SSE (TTFT, TPOT and ITL need it; default: on)")
    load.add_argument("--temperature", type=float, default=0.0, help="default: %(default)s (greedy)")
    load.add_argument("--ignore-eos", action="store_true",
                      help="send vLLM's `ignore_eos: true` so every answer runs to max_tokens")
    load.add_argument("--extra-body", type=_json_object, default={}, metavar="JSON",
                      help="extra request fields merged into every body")
    load.add_argument("--warmup", type=int, default=1, help="requests sent first and not counted")
    load.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds")
    talk = parser.add_argument_group("conversation workload (instead of single prompts)")
    talk.add_argument("--conversations", type=positive_int, metavar="USERS",
                      help="USERS users at once, each holding a multi-turn chat over one shared system prompt; "
                           "reports TTFT and cached prompt tokens per turn (-n, -c, --prompt, --request-rate, "
                           "--warmup and --plot do not apply, and are refused)")
    talk.add_argument("--turns", type=positive_int, default=6, help="turns per conversation (default: %(default)s)")
    talk.add_argument("--system-prompt-tokens", type=positive_int, default=2000,
                      help="size of the shared system prompt (default: %(default)s)")
    talk.add_argument("--think-time", type=float, default=1.0, metavar="S",
                      help="mean seconds between a user's turns (default: %(default)s)")
    talk.add_argument("--session-header", default="X-Session-ID", metavar="NAME",
                      help="header carrying each conversation's id, for session-affine balancers; '' sends none "
                           "(default: %(default)s)")
    gate = parser.add_argument_group("verdict")
    gate.add_argument("--slo", action="append", type=_slo, default=[], metavar="METRIC:MS",
                      help="per-request objective, repeatable: ttft, tpot or e2el in ms (e.g. e2el:1000)")
    gate.add_argument("--min-goodput-ratio", type=_ratio, default=DEFAULT_MIN_GOODPUT_RATIO,
                      help="share of requests that must meet every SLO, else exit 1 (default: %(default)s)")
    gate.add_argument("--max-errors", type=int, default=0,
                      help="failed requests tolerated before exit 2 (default: %(default)s)")
    output = parser.add_argument_group("output")
    output.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    output.add_argument("--quiet", action="store_true", help="print only the verdict line")
    output.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="also draw latency distributions (TTFT, ITL, e2e) and throughput over time "
                             "(needs matplotlib)")
    parser.set_defaults(func=run_bench_command)
    return parser


def add_bench_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Register `bench` on the main CLI; the handler is `args.func(args) -> exit code`."""
    parser = subparsers.add_parser(
        "bench", help="load test an OpenAI-compatible server; exit 1 if the SLO is missed, 2 on errors",
        description=__doc__)
    return configure_parser(parser)


def options_from_args(args: argparse.Namespace) -> LoadOptions:
    from hxp_enterprise_llm.bench.runner import LoadOptions  # httpx only when a benchmark runs

    if not args.stream and any(slo.metric in ("ttft", "tpot") for slo in args.slo):
        raise SystemExit("bench: ttft and tpot SLOs need --stream (a whole answer has no first token time)")
    open_loop = args.request_rate is not None
    return LoadOptions(
        base_url=args.base_url, model=args.model, api_key=args.api_key,
        prompts=tuple(args.prompts or BUILTIN_PROMPTS), num_requests=args.num_requests,
        concurrency=1 if open_loop or args.concurrency is None else args.concurrency,
        max_tokens=args.max_tokens, stream=args.stream,
        temperature=args.temperature, ignore_eos=args.ignore_eos, extra_body=args.extra_body,
        warmup=max(args.warmup, 0), timeout_s=args.timeout, request_rate=args.request_rate,
        max_concurrency=args.concurrency if open_loop else None, seed=args.seed)


# Flags of one workload only: given with the other, each would be accepted and do nothing.
SINGLE_PROMPTS_ONLY = {"num_requests": "-n", "concurrency": "-c", "prompts": "--prompt",
                       "request_rate": "--request-rate", "warmup": "--warmup", "plot": "--plot"}
CONVERSATIONS_ONLY = {"turns": "--turns", "system_prompt_tokens": "--system-prompt-tokens",
                      "think_time": "--think-time", "session_header": "--session-header"}


def usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with this combination of flags, found before a run of minutes rather than after it."""
    defaults = configure_parser(argparse.ArgumentParser()).parse_args([])
    talk = args.conversations is not None
    misplaced = [flag for dest, flag in (SINGLE_PROMPTS_ONLY if talk else CONVERSATIONS_ONLY).items()
                 if getattr(args, dest) != getattr(defaults, dest)]
    if misplaced:
        return (f"{', '.join(misplaced)} {'do' if len(misplaced) > 1 else 'does'} not apply "
                f"{'to --conversations' if talk else 'without --conversations'}")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and (problem := _unwritable(path)):
            return f"{flag} {path}: {problem}"
    return None


def _unwritable(path: Path) -> str | None:
    """Why `path` cannot be written (its missing directories are made when it is), or None."""
    if path.is_dir():
        return "is a directory"
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        return f"cannot write in {existing}"
    return None


def run_bench_command(args: argparse.Namespace) -> int:
    from hxp_enterprise_llm.bench.report import render_table, write_json
    from hxp_enterprise_llm.bench.runner import run_load

    problem = usage_error(args)
    if problem is not None:
        print(f"bench: {problem}", file=sys.stderr)
        return EXIT_USAGE
    options = options_from_args(args)
    if args.conversations is not None:
        return run_conversation_command(args, options)
    if args.plot is not None:
        from hxp_enterprise_llm.bench.plot import PlotUnavailable, require_matplotlib

        try:  # before the run: a benchmark of minutes should not end in "cannot draw"
            require_matplotlib()
        except PlotUnavailable as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        run = asyncio.run(run_load(options))
    except Exception as exc:  # the server is down or /v1/models failed: say so, no traceback
        print(f"bench: could not run against {options.base_url}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_ERRORS
    summary = summarize(run.results, run.duration_s, args.slo)
    result = verdict(summary, args.min_goodput_ratio, args.max_errors)
    print(result.message if args.quiet else render_table(run, summary, result))
    if args.json:
        write_json(args.json, run, summary, result)
    if args.plot is not None:
        from hxp_enterprise_llm.bench.plot import write_plot

        write_plot(args.plot, run, summary)
        if not args.quiet:
            print(f"plot: {args.plot}")
    return result.exit_code


def run_conversation_command(args: argparse.Namespace, load: LoadOptions) -> int:
    from hxp_enterprise_llm.bench.conversation import (
        ConversationOptions,
        render_conversation_table,
        run_conversations,
        summarize_conversations,
        write_conversation_json,
    )

    options = ConversationOptions(users=args.conversations, turns=args.turns,
                                  system_prompt_tokens=args.system_prompt_tokens, think_time_s=args.think_time,
                                  session_header=args.session_header or None, seed=args.seed)
    try:
        run = asyncio.run(run_conversations(load, options))
    except Exception as exc:
        print(f"bench: could not run against {load.base_url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    summary = summarize_conversations(run, args.slo)
    result = verdict(summary.overall, args.min_goodput_ratio, args.max_errors)
    print(result.message if args.quiet else f"{render_conversation_table(run, summary)}\n{result.message}")
    if args.json:
        write_conversation_json(args.json, run, summary)
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m hxp_enterprise_llm.bench",
                                                      description=__doc__))
    args = parser.parse_args(argv)
    return int(args.func(args))
