"""Where a stage's work runs: in this process (`local`, the default, never imports Ray) or on a
Ray cluster (`ray`).

With `--engine ray`, a stage hands `run_stage` its own entry point, its config and the neurons
it would work on; they are cut into deterministic blocks (`BLOCK` consecutive neurons of one
layer), and each block is that same entry point, run on a Ray actor with the config narrowed to
the block and the local engine (`ray_engine.py`). So both engines run the same code on each
neuron and write the same rows; resuming works the same (a block skips what is done). Each
actor is a separate writer: its own Parquet files (writer id = host.pid) and its own ledger
file, which the driver merges into `llm.sqlite` when the stage ends. Plumbing: imports no stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from explainer import ExplainError
from explainer import config as C

BLOCK = 256  # neurons per block: minutes of LLM work, so a lost block costs little


def check(cfg: C.EngineConfig) -> None:
    """ExplainError for an engine setting that cannot work (before any work)."""
    if cfg.engine not in C.ENGINES:
        raise ExplainError(f"--engine {cfg.engine!r}: expected one of {', '.join(C.ENGINES)}")
    if cfg.workers < 0:
        raise ExplainError(f"--workers {cfg.workers}: must be 0 (one per CPU) or more")
    if cfg.block < 0:
        raise ExplainError(f"--block {cfg.block}: must be 0 (the default, {BLOCK}) or more")
    if cfg.engine == "local" and cfg.ray_address:
        raise ExplainError(f"--ray-address {cfg.ray_address}: needs --engine ray")


def blocks(items: Sequence, size: int) -> list[tuple]:
    """`items` cut into consecutive tuples of at most `size` (the same cut on every run)."""
    size = max(1, int(size))
    return [tuple(items[i:i + size]) for i in range(0, len(items), size)]


def run_stage(stage_run: Callable, cfg: Any, units: Sequence[tuple[int, Sequence[int]]],
              label: str) -> dict:
    """`stage_run(cfg)` over blocks of `units` ((layer, neurons) pairs) on Ray actors.

    `cfg` is the stage's frozen config with `layers`, `neurons` and `engine` fields; each block
    gets a copy naming its layer and neurons, with the local engine. Returns the totals."""
    from explainer.engine import ray_engine

    check(cfg.engine)
    size = cfg.engine.block or BLOCK
    args = []
    for layer, neurons in units:
        for b in blocks(sorted(neurons), size):
            sub = dataclasses.replace(cfg, layers=str(layer), neurons=_spec(b),
                                      engine=C.EngineConfig())
            args.append((stage_run, sub, len(b)))
    return ray_engine.run_blocks(cfg.engine, cfg.run, args, label)


def _spec(neurons: Sequence[int]) -> str:
    """A neuron spec naming exactly these neurons (runs of consecutive ones as A-B)."""
    parts, start = [], None
    for i, n in enumerate(neurons):
        if start is None:
            start = n
        if i + 1 == len(neurons) or neurons[i + 1] != n + 1:
            parts.append(str(n) if n == start else f"{start}-{n}")
            start = None
    return ",".join(parts)
