"""Benchmark `simulate`: the embedded simulator's cost per neuron, and concurrency scaling.

    PYTHONPATH=. python bench/bench_simulate.py [--neurons 2] [--threads 2] [--fake 32] [--latency 0.2]

1. Embedded simulator (SmolLM2-135M, in-process PyTorch), `--neurons` neurons of a run with
   64-token prose excerpts, each scored on its 5 valid top + 5 valid random excerpts (test split
   off, to time exactly the 10 excerpts): calls, prompt tokens, tokens actually evaluated and
   wall seconds per neuron, against the published budget (one ~818-token call per excerpt with
   the few-shot prefix) and the 20 s floor.
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
FLOOR_S = 20.0


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


def embedded(n_neurons: int, threads: int) -> None:
    import torch

    from explainer.simulate import inprocess
    from explainer.llm import embedded as emb

    torch.set_num_threads(threads)
    made = []
    orig = inprocess.EmbeddedTorch.__init__

    def init(self, path, checkpoint):
        orig(self, path, checkpoint)
        made.append(self)

    inprocess.EmbeddedTorch.__init__ = init  # keep a handle on the counters
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", n_neurons)
        t_load = time.perf_counter()
        inprocess.EmbeddedTorch(emb.gguf_path(), emb.embedded_checkpoint())  # warm
        t_load = time.perf_counter() - t_load
        made.clear()
        # time the valid split only: the test split's excerpts are a second, equal batch
        cfg = C.SimulateConfig(run=run, n_top=5, n_random=5)
        t0 = time.perf_counter()
        simulate.run(cfg)
        total = time.perf_counter() - t0
        e = made[0]
        sims = rundir.read(run, "simulations")
        n_valid = int((sims["split"] == "valid").sum())
        n_test = int((sims["split"] == "test").sum())
        per_excerpt = total / max(1, n_valid + n_test)
        per_neuron_valid = per_excerpt * n_valid / n_neurons
        sc = rundir.read(run, "scores")
        valid = sc[sc["split"] == "valid"]
        print(f"embedded {C.EMBEDDED_LLM} in-process (PyTorch), {threads} threads, model load "
              f"{t_load:.1f} s (once): {e.calls} calls for {n_neurons} neurons "
              f"({n_valid} valid + {n_test} test excerpts of 64 tokens)")
        print(f"  per neuron (10 valid excerpts): {per_neuron_valid:.1f} s "
              f"({'ok' if per_neuron_valid <= FLOOR_S else 'ABOVE'} the {FLOOR_S:.0f} s floor); "
              f"prompt tokens {e.prompt_tokens / (n_valid + n_test) * 10:,.0f} as billed, "
              f"{e.evaluated_tokens / (n_valid + n_test) * 10:,.0f} evaluated "
              f"(prefix reused); published budget {10 * PUBLISHED_PROMPT_TOKENS:,}")
        print(f"  scores: {valid['score'].notna().sum()}/{len(valid)} defined, mean "
              f"{valid['score'].mean():.3f}")
    inprocess.EmbeddedTorch.__init__ = orig


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
        embedded(args.neurons, args.threads)


if __name__ == "__main__":
    main()
