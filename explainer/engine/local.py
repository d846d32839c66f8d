"""The one-process engine: a stage's blocks one after another in this process, under one bar.

It runs the same (stage_run, sub-config, units) triples that `ray_engine.run_blocks` hands to
Ray actors, so a stage writes the same rows on either engine. Never imports Ray.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path
from typing import Sequence


def run_blocks(run: Path, args: Sequence[tuple], label: str, unit: str = "neurons",
               live: bool = False) -> dict:
    """Every (stage_run, cfg, units) of `args`, in order, here; returns the totals.

    By default each block runs as `stage_run(cfg)` with its own bar and lines hidden, and the
    bar moves a block at a time. live: each runs as `stage_run(cfg, advance)` and moves the bar
    itself (`advance(n, tokens)` after each batch: record's shards, with tokens per second),
    returning {"units": what it read}, which may be fewer than planned (a corpus runs out).
    """
    from rich.progress import TextColumn

    from explainer import progress
    from explainer.llm import ledger

    t0, before = time.monotonic(), ledger.counts(run)
    columns = [TextColumn("{task.fields[tps]:,.0f} tok/s")] if live else []
    title = f"{label} ({len(args)} blocks)" if len(args) > 1 or not live else label
    with progress.bar(title, *columns) as bar:
        task = bar.add_task(label, total=sum(a[2] for a in args), tps=0.0)
        seen = {"tokens": 0}

        def advance(n: int, tokens: int = 0) -> None:
            seen["tokens"] += tokens
            bar.update(task, advance=n, tps=seen["tokens"] / (bar.tasks[0].elapsed or 1e-9))

        done = 0
        for stage_run, sub, units in args:
            if live:
                done += stage_run(sub, advance)["units"]
            else:
                with contextlib.redirect_stderr(io.StringIO()):  # each block's own bar and lines
                    stage_run(sub)
                done += units
                advance(units)
            trim_heap()
        bar.update(task, total=done, completed=done)
    after, wall = ledger.counts(run), time.monotonic() - t0
    total = {"units": done, "workers": 1, "wall_s": wall, "calls": after[0] - before[0],
             "requests": after[1] - before[1]}
    if not live:  # record's own bar already said how fast it read; it makes no LLM calls
        print(f"{label}: {len(args)} blocks, {done:,} {unit} in {wall:.1f} s: "
              f"{done / wall:,.2f} {unit}/s, {total['requests'] / wall:,.1f} requests/s "
              f"({total['calls']:,} LLM calls, {total['calls'] - total['requests']:,} cached)",
              file=sys.stderr)
    return total


def trim_heap() -> None:
    """Give the freed heap of a finished block back to the OS (glibc keeps it otherwise, and
    the next block's allocations land elsewhere, so the process grows block after block)."""
    import ctypes
    import ctypes.util

    import pyarrow as pa

    pa.default_memory_pool().release_unused()  # Arrow's own pool (jemalloc or mimalloc) too
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
