"""Benchmark simulate's memory: peak RSS over 10,000 neurons ÷ over 100 (ceiling 1.5).

    PYTHONPATH=. python bench/bench_memory.py [--small 100] [--large 10000] [--ctx 64]

A run with one layer of `--large` neurons (20 top + 12 random records each, `--ctx` tokens per
excerpt, scripted explanations) is written by a separate process; `simulate` then runs in a
fresh process per size against a zero-latency fake endpoint (its own process), scoring 1 top +
1 random valid excerpt per neuron (2 requests a neuron, test split off, so the large run takes
minutes, not hours), and reports its peak RSS (`ru_maxrss`). The simulate stage works through
blocks of 256 neurons and reads only a block's rows, so its memory should not follow the size.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_EXCERPTS, N_RANDOM = 20, 12


def build(run: Path, n_neurons: int, ctx: int) -> None:
    """Records and explanations of `n_neurons` neurons in layer 0 (as runfactory lays them out)."""
    import numpy as np

    from explainer import run as rundir
    from tests import runfactory as RF
    from tests import simfake

    ids = list(range(N_EXCERPTS))
    toks = [RF.excerpt_tokens(i, ctx) for i in ids]
    vocab = {t: i for i, t in enumerate(RF.VOCAB)}
    rundir.write_columns(run, "excerpts", {"excerpt_id": ids,
                                           "token_ids": [[vocab[t] for t in ts] for ts in toks],
                                           "tokens": toks}, model=RF.MODEL)
    for start in range(0, n_neurons, 1000):  # several files, as a real run appends them
        cols: dict[str, list] = {c: [] for c in ("neuron", "excerpt_id", "kind", "rank", "split",
                                                 "max_activation")}
        acts = []
        for neuron in range(start, min(n_neurons, start + 1000)):
            a = {i: RF.activations(0, neuron, i, ctx) for i in ids}
            ranked = sorted(ids, key=lambda i: (-max(a[i]), i))
            kept = [("top", i, r, RF.SPLITS[r % 4]) for r, i in enumerate(ranked)]
            kept += [("random", i, r, RF.SPLITS[1 + r % 3]) for r, i in enumerate(ids[:N_RANDOM])]
            for kind, i, rank, split in kept:
                for c, v in zip(cols, (neuron, i, kind, rank, split, max(a[i]))):
                    cols[c].append(v)
                acts.append(a[i])
        cols["activations"] = rundir.list_array(np.array(acts, dtype=np.float32))
        rundir.write_columns(run, "records", cols, model=RF.MODEL, layer=0)
        rundir.write_rows(run, "explanations", [
            rundir.ExplanationRow(RF.MODEL, 0, n, "bench", "p" * 12, 0,
                                  simfake.explanation(0, n), 0, 0, "ok", None)
            for n in range(start, min(n_neurons, start + 1000))])
    rundir.write_run_json(run, {"format": 1, "models": {RF.MODEL: {
        "model": RF.MODEL, "n_layers": 1, "d_mlp": n_neurons, "n_params": 0, "ctx": ctx,
        "layers_done": [0]}}})


def simulate(run: Path, n_neurons: int, url: str) -> None:
    """In this (fresh) process: simulate `n_neurons` neurons; print peak RSS and the time."""
    from explainer import config as C
    from explainer.simulate import stage

    cfg = C.SimulateConfig(run=run, simulator="fake-model", mode="logprob", n_top=1,
                           n_random=1, test=False, neurons=f"0-{n_neurons - 1}",
                           llm=C.LLMConfig(base_url=url, concurrency=16))
    t0 = time.perf_counter()
    stage.run(cfg)
    wall = time.perf_counter() - t0
    print(f"RESULT {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} {wall:.1f}")


def _serve(ctx: int, ports, stop) -> None:
    from tests import simfake
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI(simfake.Handler("truth", ctx, N_EXCERPTS)) as fake:
        ports.put(fake.port)
        stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=10_000)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # build|simulate RUN N URL/CTX
    args = ap.parse_args()
    if args.child:
        what, run, n, extra = args.child
        if what == "build":
            build(Path(run), int(n), int(extra))
        else:
            simulate(Path(run), int(n), extra)
        return
    mp_ctx = mp.get_context("fork")
    ports, stop = mp_ctx.Queue(), mp_ctx.Event()
    server = mp_ctx.Process(target=_serve, args=(args.ctx, ports, stop), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=30)}/v1"

    def child(*argv) -> str:
        out = subprocess.run([sys.executable, __file__, "--child", *map(str, argv)],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        return out.stdout

    try:
        rss = {}
        for n in (args.small, args.large):
            run = Path(tempfile.mkdtemp(prefix=f"bench-mem-{n}-"))
            child("build", run, n, args.ctx)
            mib, wall = map(float, child("simulate", run, n, url).split("RESULT")[1].split())
            rss[n] = mib
            print(f"simulate over {n:,} neurons (ctx {args.ctx}, {2 * n:,} requests): "
                  f"peak RSS {mib:,.0f} MiB, {wall:.1f} s ({2 * n / wall:,.0f} requests/s)")
        print(f"peak RSS {args.large:,} ÷ {args.small:,} neurons: "
              f"{rss[args.large] / rss[args.small]:.2f} (ceiling 1.5)")
    finally:
        stop.set()


if __name__ == "__main__":
    main()
