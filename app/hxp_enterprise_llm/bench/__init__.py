"""Load testing with an SLO verdict against any OpenAI-compatible chat endpoint."""

from hxp_enterprise_llm.bench.cli import add_bench_commands, main

__all__ = ["add_bench_commands", "main"]
