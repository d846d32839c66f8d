"""Benchmark the endpoint pool: simulate throughput with 4 endpoints ÷ with 1.

    PYTHONPATH=. python bench/bench_pool.py [--neurons 24] [--latency 0.2] [--slots 8]
    PYTHONPATH=. python bench/bench_pool.py --overhead [--neurons 64]

Each fake endpoint runs in its own process (so its threads do not share the client's
interpreter lock) and serves at most `--slots` requests at a time, each taking `--latency`
seconds, like a vLLM server with max_num_seqs = slots: a request beyond that waits in the
server's queue. `simulate --concurrency slots` (in flight per endpoint) runs over the same
neurons against 1 endpoint, then against 4 (fresh run directories, so nothing is cached); the
ratio of throughputs should be near 4 (floor 3.5). Prints requests/s and neurons/s per process.

`--overhead`: the client's own cost instead: one endpoint answering at once (no latency, no
slot limit), `--concurrency 32`; requests/s of a whole `simulate` (floor 300 on 2 cores).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainer import config as C  # noqa: E402
from explainer import run as rundir  # noqa: E402
from explainer.llm import ledger  # noqa: E402
from tests import runfactory as RF  # noqa: E402
from tests import simfake  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402

CTX, N_EXCERPTS = 16, 20


class Limited:
    """A handler that serves `slots` requests at a time, each `latency_s` long."""

    def __init__(self, inner, slots: int, latency_s: float):
        self.inner, self.latency_s = inner, latency_s
        self.sem = threading.BoundedSemaphore(slots)

    def __call__(self, req):
        with self.sem:
            time.sleep(self.latency_s)
            return self.inner(req)


def _serve(slots: int, latency_s: float, ports, stop) -> None:
    handler = Limited(simfake.Handler("truth", CTX, N_EXCERPTS), slots, latency_s)
    with FakeOpenAI(handler) as fake:
        ports.put(fake.port)
        stop.wait()


def make_run(root: Path, n_neurons: int) -> Path:
    run = RF.make_run(root, n_layers=1, d_mlp=n_neurons, n_excerpts=N_EXCERPTS, ctx=CTX,
                      layers=(0,), n_random=12)
    rows = [rundir.ExplanationRow(RF.MODEL, 0, n, "bench", "p" * 12, 0,
                                  simfake.explanation(0, n), 0, 0, "ok", None)
            for n in range(n_neurons)]
    rundir.write_rows(run, "explanations", rows)
    return run


def simulate(urls: list[str], n_neurons: int, slots: int,
             mode: str = "logprob") -> tuple[float, int]:
    from explainer.simulate import stage

    run = make_run(Path(tempfile.mkdtemp(prefix="bench-pool-")), n_neurons)
    cfg = C.SimulateConfig(run=run, simulator="fake-model", mode=mode,
                           llm=C.LLMConfig(base_url=tuple(urls), concurrency=slots))
    t0 = time.perf_counter()
    stage.run(cfg)
    wall = time.perf_counter() - t0
    times = [c.time for c in ledger.calls(run, sent=True) if c.status == "ok"]
    sent, t0, t1 = len(times), min(times), max(times)
    print(f"  ({sent / (t1 - t0):,.1f} requests/s from the first answer to the last, without "
          f"start-up and the final writes: {wall - (t1 - t0):.1f} s)")
    scores = rundir.read(run, "scores")
    assert len(scores) and (scores["status"] == "ok").all(), "every neuron scored"
    return wall, sent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--neurons", type=int, default=24)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--overhead", action="store_true")
    ap.add_argument("--mode", default="logprob", help="logprob (echo answers of ~600 logprob "
                    "rows, heavy for the fake servers) or chat (index/value lines, light)")
    args = ap.parse_args()
    if args.overhead:
        args.latency, args.slots = 0.0, 1024
    ctx = mp.get_context("fork")
    ports, stop = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_serve, args=(args.slots, args.latency, ports, stop),
                         daemon=True) for _ in range(4)]
    for p in procs:
        p.start()
    urls = [f"http://127.0.0.1:{ports.get(timeout=30)}/v1" for _ in procs]
    try:
        simulate(urls[:1], 2, 8)  # warm-up: imports, first connections
        if args.overhead:
            wall, sent = simulate(urls[:1], args.neurons, 32)
            print(f"zero-latency endpoint, concurrency 32: {sent} requests in {wall:.2f} s: "
                  f"{sent / wall:,.1f} requests/s (floor 300)")
            return
        out = {}
        for k in (1, 4):
            wall, sent = simulate(urls[:k], args.neurons, args.slots, args.mode)
            out[k] = sent / wall
            print(f"{k} endpoint(s): {args.neurons} neurons, {sent} requests in {wall:.2f} s: "
                  f"{sent / wall:,.1f} requests/s, {args.neurons / wall:,.2f} neurons/s per "
                  f"process (ceiling {k * args.slots / args.latency:,.0f} requests/s)")
        print(f"throughput 4 endpoints ÷ 1: {out[4] / out[1]:.2f} (floor 3.5)")
    finally:
        stop.set()
        for p in procs:
            p.join(5)


if __name__ == "__main__":
    main()
