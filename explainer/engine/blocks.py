"""Cutting a stage's work into blocks of neurons and handing them to an engine: this process
(`local.py`) or a Ray cluster (`ray_engine.py`). See the package's docstring."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from explainer import ExplainError
from explainer import config as C
from explainer.engine import local

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
    if cfg.engine == "ray":  # Ray installed and a named cluster answering, before any file
        from explainer.engine import ray_engine

        ray_engine.door(cfg)


def several_blocks(units: Sequence[tuple[int, Sequence[int]]], cfg: C.EngineConfig) -> bool:
    """Whether (layer, neurons) `units` hold more than one block's worth of neurons (then a
    stage runs in blocks; a few neurons of several layers stay one run, opened once)."""
    return sum(len(n) for _, n in units) > (cfg.block or BLOCK)


def blocks(items: Sequence, size: int) -> list[tuple]:
    """`items` cut into consecutive tuples of at most `size` (the same cut on every run)."""
    size = max(1, int(size))
    return [tuple(items[i:i + size]) for i in range(0, len(items), size)]


def run_stage(stage_run: Callable, cfg: Any, units: Sequence[tuple[int, Sequence[int]]],
              label: str) -> dict:
    """`stage_run(cfg)` over blocks of `units` ((layer, neurons) pairs), on Ray actors or here.

    `cfg` is the stage's frozen config with `layers`, `neurons` and `engine` fields; each block
    gets a copy naming its layer and neurons, with the local engine. Returns the totals."""
    check(cfg.engine)
    size = cfg.engine.block or BLOCK
    args = []
    for layer, neurons in units:
        for b in blocks(sorted(neurons), size):
            sub = dataclasses.replace(cfg, layers=str(layer), neurons=_spec(b),
                                      engine=C.EngineConfig())
            args.append((stage_run, sub, len(b)))
    if cfg.engine.engine == "local":
        return local.run_blocks(Path(cfg.run), args, label)
    from explainer.engine import ray_engine

    return ray_engine.run_blocks(cfg.engine, cfg.run, args, label)


def ledger_counts(run: Path, writer: str | None = None) -> tuple[int, int]:
    """(calls, requests sent) in a run's ledger file so far (a worker's own with `writer`)."""
    from explainer.llm import ledger

    return ledger.counts(run, writer)


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
