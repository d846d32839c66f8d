"""Where a stage's work runs: in this process (`local`, the default, never imports Ray) or on a
Ray cluster (`ray`).

With `--engine ray`, a stage hands `run_stage` its own entry point, its config and the neurons
it would work on; they are cut into deterministic blocks (`BLOCK` consecutive neurons of one
layer), and each block is that same entry point, run on a Ray actor with the config narrowed to
the block and the local engine (`ray_engine.py`). The local engine does the same, one block
after another in this process, when the work spans several blocks: a stage then holds one
block's jobs at a time, so its memory does not grow with the number of neurons. So both engines run the same code on each
neuron and write the same rows; resuming works the same (a block skips what is done). Each
actor is a separate writer: its own Parquet files (writer id = host.pid) and its own ledger
file, which the driver merges into the run's ledger when the stage ends. Plumbing: imports no stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import time
from pathlib import Path
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
        return _run_here(Path(cfg.run), args, label)
    from explainer.engine import ray_engine

    return ray_engine.run_blocks(cfg.engine, cfg.run, args, label)


def _run_here(run: Path, args: Sequence[tuple], label: str) -> dict:
    """The blocks one after another in this process, under one progress bar."""
    from explainer import progress

    t0, before = time.monotonic(), ledger_counts(run)
    with progress.bar(f"{label} ({len(args)} blocks)") as bar:
        task = bar.add_task(label, total=sum(a[2] for a in args))
        for stage_run, sub, units in args:
            with contextlib.redirect_stderr(io.StringIO()):  # each block's own bar and lines
                stage_run(sub)
            _trim_heap()
            bar.update(task, advance=units)
    after, wall = ledger_counts(run), time.monotonic() - t0
    total = {"units": sum(a[2] for a in args), "workers": 1, "wall_s": wall,
             "calls": after[0] - before[0], "requests": after[1] - before[1]}
    print(f"{label}: {len(args)} blocks, {total['units']:,} neurons in {wall:.1f} s: "
          f"{total['units'] / wall:,.2f} neurons/s, {total['requests'] / wall:,.1f} requests/s "
          f"({total['calls']:,} LLM calls, {total['calls'] - total['requests']:,} cached)",
          file=sys.stderr)
    return total


def _trim_heap() -> None:
    """Give the freed heap of a finished block back to the OS (glibc keeps it otherwise, and
    the next block's allocations land elsewhere, so the process grows block after block)."""
    import ctypes
    import ctypes.util

    import pyarrow as pa

    pa.default_memory_pool().release_unused()  # Arrow's own pool (jemalloc or mimalloc) too
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


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
