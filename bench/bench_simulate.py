"""Benchmark `simulate`: the embedded simulator's seconds per 10 excerpts, and concurrency scaling.

    PYTHONPATH=. python bench/bench_simulate.py [--neurons 2] [--threads 2] [--repeats 1]
        [--fake 32] [--latency 0.2]

1. Embedded simulator (SmolLM2-135M, in-process PyTorch), `--neurons` neurons of a run with
   64-token prose excerpts, each scored on its 5 valid top + 5 valid random excerpts and the
   chosen candidate's test split: calls, prompt tokens as billed and as actually evaluated, and
   wall seconds per 10 excerpts against the 3 s floor, with excerpts in flight batched into one
   forward pass (the default), the same in float32 where the default decoder is bfloat16, and
   one excerpt per pass, alternated `--repeats` times; then how closely bfloat16's predictions
   follow float32's.
2. Against the fake OpenAI server answering after `--latency` s, `--fake` neurons at
   concurrency 16 vs 1 (logprob mode); prints the speed-up.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainer import config as C  # noqa: E402
from explainer.simulate import stage as simulate  # noqa: E402
from explainer import run as rundir
from explainer.run.specs import RANDOM_SPLITS, SPLITS  # noqa: E402
from tests.fake_openai import FakeOpenAI, Reply, default_handler  # noqa: E402

PUBLISHED_PROMPT_TOKENS = 818  # one all-at-once simulation prompt of the published method
FLOOR_S = 3.0  # seconds per 10 excerpts on 2 cores (issue 21)


def make_run(root: Path, n_neurons: int, ctx: int = 64, n_excerpts: int = 40,
             seed: int = 0) -> Path:
    """Prose excerpts (words as tokens), sparse activations, top + random records, explanations."""
    import pydoc_data.topics as topics

    words = re.findall(r"\S+", " ".join(topics.topics.values()))
    rng = random.Random(seed)
    starts = [rng.randrange(len(words) - ctx) for _ in range(n_excerpts)]
    toks = [[" " + w for w in words[s:s + ctx]] for s in starts]
    rundir.write_columns(root, "excerpts", {"excerpt_id": list(range(n_excerpts)),
                                           "token_ids": [list(range(ctx))] * n_excerpts,
                                           "tokens": toks}, model="bench")
    cols: dict[str, list] = {c: [] for c in rundir.table("records").schema.names}
    vocab = sorted({t for ex in toks for t in ex})
    expl = []
    for neuron in range(n_neurons):
        likes = rng.sample(vocab, 8)
        acts = [[rng.uniform(1, 4) if t in likes else rng.uniform(-0.2, 0.05) for t in ex]
                for ex in toks]
        ranked = sorted(range(n_excerpts), key=lambda i: -max(acts[i]))
        kept = [("top", i, r, SPLITS[r % 4]) for r, i in enumerate(ranked)]
        kept += [("random", i, r, RANDOM_SPLITS[r % 3]) for r, i in enumerate(range(15))]
        for kind, i, rank, split in kept:
            for name, value in zip(["neuron", "excerpt_id", "kind", "rank", "split",
                                    "activations", "max_activation"],
                                   [neuron, i, kind, rank, split, acts[i], max(acts[i])]):
                cols[name].append(value)
        words_liked = ", ".join(w.strip() for w in likes[:3])
        expl.append(rundir.ExplanationRow("bench", 0, neuron, "bench-explainer", "0" * 12, 0,
                                         f"the words {words_liked}", 0, 0, "ok", None))
    rundir.write_columns(root, "records", cols, model="bench", layer=0)
    rundir.write_rows(root, "explanations", expl)
    rundir.write_run_json(root, {"format": 1, "models": {"bench": {
        "model": "bench", "n_layers": 1, "d_mlp": n_neurons, "layers_done": [0]}}})
    return root


def embedded(n_neurons: int, threads: int, repeats: int = 1) -> None:
    """Seconds per 10 excerpts of the embedded simulator: batched in the decoder's default
    dtype (bfloat16 where the CPU has it), batched in float32, and one excerpt per forward pass,
    alternating `repeats` times so that all see the same machine load; then how closely the
    default dtype's predictions follow float32's."""
    import os

    import numpy as np
    import torch

    from explainer.llm import embedded as emb
    from explainer.llm import inprocess, ledger, torchlm

    torch.set_num_threads(threads)
    dtype = torchlm.compute_dtype()
    t_load = time.perf_counter()
    torchlm.load(emb.embedded_checkpoint())  # once per process, shared by every stage
    t_load = time.perf_counter() - t_load
    print(f"embedded {C.EMBEDDED_LLM} in-process (PyTorch), {threads} threads, decoder "
          f"{dtype}, model load {t_load:.1f} s (once per process)")
    batched = inprocess.IN_FLIGHT
    variants = [("batched", batched, dtype), ("one per pass", 1, dtype)]
    if dtype != "float32":
        variants.insert(1, ("batched float32", batched, "float32"))
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    preds: dict[str, dict] = {}
    before = os.environ.get("EXPLAIN_LLM_DTYPE")
    for _ in range(repeats):
        for name, in_flight, dt in variants:
            inprocess.IN_FLIGHT = in_flight  # the largest forward pass, in requests
            os.environ["EXPLAIN_LLM_DTYPE"] = dt
            try:
                per10, preds[name] = _time_embedded(n_neurons, f"{name} ({dt})", ledger)
                times[name].append(per10)
            finally:
                inprocess.IN_FLIGHT = batched
                if before is None:
                    os.environ.pop("EXPLAIN_LLM_DTYPE", None)
                else:
                    os.environ["EXPLAIN_LLM_DTYPE"] = before
    best = {k: min(v) for k, v in times.items()}
    others = ", ".join(f"{k} {v:.2f} s ({v / best['batched']:.2f}x)" for k, v in best.items()
                       if k != "batched")
    print(f"  batched {dtype} {best['batched']:.2f} s per 10 excerpts (best of {repeats}; "
          f"{'ok' if best['batched'] <= FLOOR_S else 'ABOVE'} the {FLOOR_S:.0f} s floor); "
          f"{others}")
    if "batched float32" in preds:
        a, b = preds["batched"], preds["batched float32"]
        keys = sorted(set(a) & set(b))
        x = np.concatenate([a[k] for k in keys])
        y = np.concatenate([b[k] for k in keys])
        print(f"  {dtype} vs float32 predictions: {len(x):,} tokens, correlation "
              f"{np.corrcoef(x, y)[0, 1]:.4f}, largest difference {np.abs(x - y).max():.3f} "
              "(0-10 scale)")


def _time_embedded(n_neurons: int, label: str, ledger) -> tuple[float, dict]:
    """Seconds per 10 excerpts of one `simulate` over a fresh run, and its predictions per
    (neuron, excerpt, split); prints its figures."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", n_neurons)
        cfg = C.SimulateConfig(run=run, n_top=5, n_random=5)
        t0 = time.perf_counter()
        simulate.run(cfg)
        total = time.perf_counter() - t0
        calls = [c for c in ledger.calls(run, stage="simulate") if c.status == "ok"]
        sims = rundir.read(run, "simulations")
        n = len(sims)  # valid + test excerpts (the best candidate's test split too)
        per10 = total / max(1, n) * 10
        sc = rundir.read(run, "scores")
        valid = sc[sc["split"] == "valid"]
        print(f"  {label}: {len(calls)} calls for {n_neurons} neurons ({n} "
              f"excerpts of 64 tokens), {total:.1f} s, {per10:.2f} s per 10 excerpts; per 10 "
              f"excerpts {sum(c.prompt_tokens for c in calls) / n * 10:,.0f} prompt tokens as "
              f"billed, {sum(c.evaluated_tokens for c in calls) / n * 10:,.0f} evaluated "
              f"(published budget {10 * PUBLISHED_PROMPT_TOKENS:,}); scores "
              f"{valid['score'].notna().sum()}/{len(valid)} defined, mean "
              f"{valid['score'].mean():.3f}", flush=True)
        preds = {(int(r.neuron), int(r.excerpt_id), r.split): np.asarray(r.predicted, float)
                 for r in sims.itertuples() if r.predicted is not None}
        return per10, preds


def _answer(req) -> Reply:
    body = req.body or {}
    prompt = body.get("prompt", "")
    if "Neuron: " not in prompt:
        return default_handler(req)
    toks = re.findall(r"\t|\n|[^\t\n]+", prompt)
    offsets = [0]
    for t in toks[:-1]:
        offsets.append(offsets[-1] + len(t))
    rng = random.Random(len(prompt))
    top = [{t: -0.1} if t != "unknown" else {"0": math.log(0.9), str(rng.randrange(1, 10)):
                                             math.log(0.1)} for t in toks]
    return Reply.completion(prompt, logprobs={"tokens": toks, "text_offset": offsets,
                                              "token_logprobs": [-0.1] * len(toks),
                                              "top_logprobs": top})


def time_fake(n_neurons: int, latency_s: float, concurrency: int) -> tuple[float, int]:
    """Seconds and requests of `simulate` against the fake server, run in its own process so
    that its JSON work does not compete with the client for this process's GIL."""
    import subprocess

    from explainer.llm import ledger

    server = subprocess.Popen([sys.executable, __file__, "--serve", str(latency_s)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            run = make_run(Path(tmp) / "run", n_neurons)
            cfg = C.SimulateConfig(run=run, simulator="fake-model", mode="logprob",
                                   llm=C.LLMConfig(base_url=f"http://127.0.0.1:{port}/v1",
                                                   concurrency=concurrency))
            t0 = time.perf_counter()
            simulate.run(cfg)
            elapsed = time.perf_counter() - t0
            sent = len(ledger.calls(run, sent=True))
            return elapsed, sent
    finally:
        server.stdin.close()
        server.wait(timeout=10)


def _serve(latency_s: float) -> None:
    with FakeOpenAI(_answer, latency_s=latency_s) as fake:
        print(fake.port, flush=True)
        sys.stdin.read()  # until the parent closes it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=2, help="neurons on the embedded model (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1,
                    help="alternations of the variants (the best of each counts)")
    ap.add_argument("--fake", type=int, default=32, help="neurons against the fake server (0: skip)")
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--serve", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        return _serve(args.serve)
    import openai  # noqa: F401 - imported once up front, so no timing pays for it

    if args.fake:
        t16, n16 = time_fake(args.fake, args.latency, 16)
        t1, n1 = time_fake(args.fake, args.latency, 1)
        print(f"fake endpoint, {args.latency * 1000:.0f} ms per answer, {args.fake} neurons "
              f"({n1} requests): concurrency 1 {t1:.1f} s, concurrency 16 {t16:.1f} s, "
              f"speed-up {t1 / t16:.1f}x")
    if args.neurons:
        embedded(args.neurons, args.threads, args.repeats)


if __name__ == "__main__":
    main()
