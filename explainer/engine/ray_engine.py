"""The Ray engine: blocks of a stage on a pool of Ray actors (imported only with `--engine ray`).

`connect` joins the cluster at `--ray-address` (or $RAY_ADDRESS, or the one this process is
already connected to); with neither it starts a local cluster for this command and stops it
afterwards. Each actor is one worker process; a block goes to whichever actor is free
(`ActorPool.map_unordered`), so blocks finish in any order. An actor that dies is restarted and
its block retried (blocks are idempotent: a stage skips finished rows, and newest rows win).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from explainer import ExplainError
from explainer import config as C

log = logging.getLogger(__name__)

RESTARTS = 3  # times a dead actor is restarted, and its block retried
WRITER_ENV = "EXPLAIN_LEDGER_WRITER"  # set in a worker: its LLM clients write their own ledger


class Worker:
    """A Ray actor: runs stage blocks in its own process, a writer of its own files."""

    def __init__(self, index: int):
        from explainer import run as rundir

        self.index = index
        self.writer = rundir.writer_id()
        os.environ[WRITER_ENV] = self.writer  # read by explainer.llm.LLM (see ledger.py)

    def run(self, stage_run, cfg, units: int) -> dict:
        """One block; returns its size, time, writer and the LLM calls it made."""
        import io

        from explainer.engine import ledger_counts

        before = ledger_counts(Path(cfg.run), self.writer)
        t0 = time.monotonic()
        with contextlib.redirect_stderr(io.StringIO()):  # the driver shows the one bar
            stage_run(cfg)
        seconds = time.monotonic() - t0
        after = ledger_counts(Path(cfg.run), self.writer)
        return {"units": units, "seconds": seconds, "writer": self.writer,
                "calls": after[0] - before[0], "requests": after[1] - before[1]}


@contextlib.contextmanager
def connect(address: str | None) -> Iterator[None]:
    """Connected to a Ray cluster for the block (started and stopped here when none runs)."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ExplainError(f"--ray-address {address}: cannot connect to a Ray cluster there "
                           f"({str(err).splitlines()[0][:160]}); start one with `ray start "
                           "--head`, or leave --ray-address out for a local one") from None
    try:
        yield
    finally:
        ray.shutdown()


def run_blocks(cfg: C.EngineConfig, run: Path, args: Sequence[tuple], label: str,
               unit: str = "neurons") -> dict:
    """Every (stage_run, cfg, units) of `args` on a pool of actors; returns the totals
    (`unit` names what `units` counts: neurons of a block, excerpts of a record shard)."""
    from explainer.llm.ledger import merge_workers

    if not args:
        return {"units": 0}
    t0 = time.monotonic()
    try:
        with connect(cfg.ray_address):
            results, n = _map(cfg, args, label)
    finally:
        merge_workers(Path(run))  # every worker is gone by now
    wall = time.monotonic() - t0
    busy = max(sum(r["seconds"] for r in results), 1e-9)
    total = {"units": sum(r["units"] for r in results), "workers": n, "wall_s": wall,
             "calls": sum(r["calls"] for r in results),
             "requests": sum(r["requests"] for r in results)}
    print(f"{label}: {len(args)} blocks, {total['units']:,} {unit} on {n} Ray workers in "
          f"{wall:.1f} s; per worker: {total['units'] / busy:,.2f} {unit}/s, "
          f"{total['requests'] / busy:,.1f} requests/s ({total['calls']:,} LLM calls, "
          f"{total['calls'] - total['requests']:,} cached)", file=sys.stderr)
    return total


def _map(cfg: C.EngineConfig, args: Sequence[tuple], label: str) -> tuple[list[dict], int]:
    import ray
    from ray.util import ActorPool

    from explainer import progress

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    n = max(1, min(cfg.workers or int(cpus) or 1, len(args)))
    actor = ray.remote(Worker).options(num_cpus=min(1.0, cpus / n), max_restarts=RESTARTS,
                                       max_task_retries=RESTARTS)
    actors = [actor.remote(i) for i in range(n)]
    results = []
    try:
        with progress.bar(f"{label} on {n} Ray workers") as bar:
            task = bar.add_task(label, total=sum(a[2] for a in args))
            pool = ActorPool(actors)
            for out in pool.map_unordered(lambda a, v: a.run.remote(*v), list(args)):
                results.append(out)
                bar.update(task, advance=out["units"])
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, ExplainError):  # bad input found by a block: one line, exit 2
            raise ExplainError(str(cause)) from None
        raise
    finally:
        for a in actors:
            ray.kill(a)
    return results, n
