"""The Ray engine: blocks of a stage on a pool of Ray actors (imported only with `--engine ray`).

`door` is checked before a stage writes anything: Ray importable, and a named cluster answering
(a bounded connection of our own, since `ray.init` retries a dead address for minutes while
printing its own warnings). `connect` joins the cluster at `--ray-address` (or $RAY_ADDRESS, or
the one this process is already connected to); with neither it starts a local cluster for this
command and stops it afterwards. Each actor is one worker process; a block goes to whichever actor is free
(`ActorPool.map_unordered`), so blocks finish in any order. An actor that dies is restarted and
its block retried (blocks are idempotent: a stage skips finished rows, and newest rows win).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from explainer import ExplainError
from explainer import config

log = logging.getLogger(__name__)

INSTALL = "pip install 'explain[ray]'"
DOOR_TIMEOUT_S = 5.0  # the connection attempt and the first answer, each (so under 15 s in all)
GCS_PORT = 6379  # Ray's default head port, when an address names only a host
# What a gRPC server (Ray's head speaks gRPC) answers first to HTTP/2's client preface: a
# SETTINGS frame (9-byte header, type 0x4 at offset 3).
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
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


def door(cfg: config.EngineConfig) -> None:
    """ExplainError, before any work or file, when `--engine ray` cannot start: Ray missing, or
    the named cluster not answering within seconds (none named: `ray.init` starts one)."""
    try:
        import ray  # noqa: F401  (the engine needs it anyway; a failed import says it all)
    except ImportError:
        raise ExplainError(f"--engine ray: Ray is not installed here; install it with "
                           f"`{INSTALL}`, or leave --engine out to run in this process") from None
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address in ("auto", "local"):
        return  # nothing named: a local cluster is found or started by ray.init
    host, port = _host_port(address)
    why = None if ray.is_initialized() else _answers(host, port)  # connected already
    if why:
        raise ExplainError(f"--ray-address {address}: no Ray cluster answers there ({why}); "
                           "start one with `ray start --head` and pass the address it prints, "
                           "or leave --ray-address out for a local one")


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address: host:port, ray://host:port, [v6]:port or a bare host."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or "]" in port:  # no port named (a bare host or a bracketed IPv6 one)
        host, port = rest, str(GCS_PORT)
    if not port.isdigit() or not host:
        raise ExplainError(f"--ray-address {address}: expected HOST:PORT (e.g. 127.0.0.1:6379, "
                           "as `ray start --head` prints it)")
    return host.strip("[]"), int(port)


def _answers(host: str, port: int, timeout_s: float = DOOR_TIMEOUT_S) -> str | None:
    """None when a gRPC server (a Ray head) answers at host:port within the time, else why not."""
    # A TLS head does not answer plain HTTP/2: there, that it accepts is all we can know.
    tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            if tls:
                return None
            conn.settimeout(timeout_s)
            conn.sendall(_PREFACE)
            head = conn.recv(9)
    except socket.timeout:
        return f"no answer within {timeout_s:.0f} s"
    except OSError as err:
        return err.strerror or type(err).__name__
    if len(head) < 4 or head[3] != 4:
        return "something answers, but not a Ray head (no gRPC)"
    return None


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


def run_blocks(cfg: config.EngineConfig, run: Path, args: Sequence[tuple], label: str,
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


def _map(cfg: config.EngineConfig, args: Sequence[tuple], label: str) -> tuple[list[dict], int]:
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
