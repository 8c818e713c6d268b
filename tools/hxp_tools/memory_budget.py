"""Memory budget of a service config on a CPU host: int4 weights + KV cache + runtime, against memory_gb.

On a CPU host everything lives in the container's memory: the weights, the KV cache vLLM allocates up
front (`kv_cache_space_gb`), and the runtime (two Python processes with torch and vLLM, activations,
the transient buffers of weight repacking). The KV cache must hold max_num_seqs sequences at full
max_model_len, or vLLM preempts and recomputes under load.

    python -m hxp_tools.memory_budget --config config/openchat-3.5-cpu.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hxp_enterprise_llm.services.core.cpu_budget import GIB, RUNTIME_OVERHEAD_GIB


@dataclass(frozen=True)
class Architecture:
    """The shapes that decide the memory (a Mistral/Llama decoder; openchat-facts.md for OpenChat-3.5)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool


OPENCHAT_3_5 = Architecture(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
                            vocab=32002, tied_embeddings=False)


@dataclass(frozen=True)
class Budget:
    weights: int
    kv_cache: int
    kv_needed: int
    repack_transient: int
    runtime: int
    limit: int

    @property
    def total(self) -> int:
        # vLLM repacks the int4 weights right after loading them, before it allocates the KV cache: the
        # transient buffers and the KV cache are never there at the same time.
        return self.weights + self.runtime + max(self.kv_cache, self.repack_transient)

    @property
    def fits(self) -> bool:
        return self.total <= self.limit and self.kv_cache >= self.kv_needed

    def table(self) -> str:
        rows = [("weights (int4 linear layers + group scales/zeros, bf16 embeddings and lm_head)", self.weights),
                ("KV cache (kv_cache_space_gb)", self.kv_cache),
                ("  needed: max_num_seqs x max_model_len x KV bytes/token", self.kv_needed),
                ("repacking at load, before the KV cache exists (gate+up unpacked to int32)", self.repack_transient),
                ("runtime (API process, engine core, worker; measured on the demo)", self.runtime),
                ("peak: weights + runtime + the larger of KV cache and repacking", self.total),
                ("limit (memory_gb)", self.limit)]
        lines = [f"{label:<82}{value / GIB:>7.2f} GiB" for label, value in rows]
        lines.append("fits" if self.fits else "DOES NOT FIT")
        return "\n".join(lines)


def linear_params(arch: Architecture) -> int:
    """Parameters of the quantized projections (q, k, v, o, gate, up, down) over all layers."""
    q_o = 2 * arch.hidden * arch.heads * arch.head_dim
    k_v = 2 * arch.hidden * arch.kv_heads * arch.head_dim
    mlp = 3 * arch.hidden * arch.intermediate
    return arch.layers * (q_o + k_v + mlp)


def int4_weight_bytes(arch: Architecture, group_size: int, zero_points: bool) -> int:
    quantized = linear_params(arch)
    packed = quantized // 2
    # One 16-bit scale per group of `group_size` input weights, plus a 4-bit zero point for AWQ.
    per_group = 2 + (0.5 if zero_points else 0)
    scales = int(quantized / group_size * per_group)
    embeddings = arch.vocab * arch.hidden * (1 if arch.tied_embeddings else 2) * 2  # bf16 embed + lm_head
    return packed + scales + embeddings


def kv_bytes_per_token(arch: Architecture, dtype_bytes: int = 2) -> int:
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * dtype_bytes


def budget(arch: Architecture, *, group_size: int, zero_points: bool, max_model_len: int, max_num_seqs: int,
           kv_cache_space_gb: float, memory_gb: float, runtime_gib: float = RUNTIME_OVERHEAD_GIB) -> Budget:
    # vLLM fuses gate and up into one layer; CPUWNA16 unpacks it to one int32 per weight while repacking.
    largest_linear = arch.hidden * 2 * arch.intermediate
    return Budget(weights=int4_weight_bytes(arch, group_size, zero_points),
                  kv_cache=int(kv_cache_space_gb * GIB),
                  kv_needed=max_num_seqs * max_model_len * kv_bytes_per_token(arch),
                  repack_transient=4 * largest_linear,
                  runtime=int(runtime_gib * GIB), limit=int(memory_gb * GIB))


def budget_for_config(config_file: Path, group_size: int = 128, zero_points: bool = True) -> Budget:
    from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config

    config = OpenChat35Config.load(config_file).config
    return budget(OPENCHAT_3_5, group_size=group_size, zero_points=zero_points,
                  max_model_len=config.max_model_len, max_num_seqs=config.max_num_seqs,
                  kv_cache_space_gb=config.kv_cache_space_gb, memory_gb=config.memory_gb)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hxp_tools.memory_budget", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config/openchat-3.5-cpu.yaml"))
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--symmetric", action="store_true", help="no zero points (GPTQ symmetric)")
    args = parser.parse_args(argv)
    result = budget_for_config(args.config, args.group_size, zero_points=not args.symmetric)
    print(result.table())
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main())
