"""Benchmark `describe`: concurrency speed-up, tokens per neuron, seconds per neuron (embedded).

    PYTHONPATH=. python bench/bench_describe.py [--neurons 64] [--latency 0.2] [--embedded 4]

1. Against the fake OpenAI server answering after `--latency` s, `describe` on `--neurons`
   neurons at --concurrency 16 vs 1; prints the ratio (should be >= 10).
2. On the embedded endpoint (SmolLM2-135M through llama.cpp), `--embedded` neurons of a run with
   realistic 64-token excerpts: prompt and completion tokens per neuron for the default prompt,
   and seconds per neuron.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainer import config as C  # noqa: E402
from explainer.describe import stage as describe  # noqa: E402
from explainer import run as rundir
from explainer.run.specs import SPLITS  # noqa: E402


def make_realistic_run(root: Path, n_neurons: int, ctx: int = 64, n_excerpts: int = 48,
                       seed: int = 0) -> Path:
    """A run with prose excerpts (words as tokens) and sparse activations on a few words each."""
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
    for neuron in range(n_neurons):
        likes = set(rng.sample(vocab, 12))  # each neuron fires on its own few words
        acts = [[rng.uniform(1, 4) if t in likes else rng.uniform(-0.2, 0.05) for t in ex]
                for ex in toks]
        ranked = sorted(range(n_excerpts), key=lambda i: -max(acts[i]))
        for rank, i in enumerate(ranked):
            for name, value in zip(["neuron", "excerpt_id", "kind", "rank", "split",
                                    "activations", "max_activation"],
                                   [neuron, i, "top", rank, SPLITS[rank % 4], acts[i],
                                    max(acts[i])]):
                cols[name].append(value)
    rundir.write_columns(root, "records", cols, model="bench", layer=0)
    rundir.write_run_json(root, {"format": 1, "models": {"bench": {
        "model": "bench", "n_layers": 1, "d_mlp": n_neurons, "layers_done": [0]}}})
    return root


def time_fake(n_neurons: int, latency_s: float, concurrency: int) -> float:
    """Seconds `describe` takes on a fresh run against the fake server in its own process."""
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen([sys.executable, "-m", "tests.fake_openai", "--latency",
                               str(latency_s)], cwd=root, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            run = make_realistic_run(Path(tmp) / "run", n_neurons)
            cfg = C.DescribeConfig(run=run, explainer="fake-model", llm=C.LLMConfig(
                base_url=f"http://127.0.0.1:{port}/v1", concurrency=concurrency))
            t0 = time.perf_counter()
            describe.run(cfg)
            elapsed = time.perf_counter() - t0
            df = rundir.read(run, "explanations")
            assert (df["status"] == "ok").sum() == n_neurons, "every neuron must be explained"
            return elapsed
    finally:
        server.stdin.close()
        server.wait(timeout=10)


def embedded(n_neurons: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = make_realistic_run(Path(tmp) / "run", n_neurons)
        t0 = time.perf_counter()
        describe.run(C.DescribeConfig(run=run, llm=C.LLMConfig(concurrency=1, timeout_s=600)))
        total = time.perf_counter() - t0
        df = rundir.read(run, "explanations")
        ok = df[df["status"] == "ok"]
        print(f"embedded {C.EMBEDDED_LLM}: {len(ok)}/{len(df)} usable; "
              f"{df['prompt_tokens'].mean():.0f} prompt + {df['completion_tokens'].mean():.1f} "
              f"completion tokens per neuron; {total / n_neurons:.2f} s per neuron "
              f"(incl. server start, {total:.1f} s total)")
        for row in df.itertuples():
            print(f"  neuron {row.neuron}: {row.explanation or row.error}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--embedded", type=int, default=4, help="neurons on the embedded LLM (0: skip)")
    args = ap.parse_args()
    # Warm-up: the first describe in a process pays its imports (~0.2 s); neither timing should.
    time_fake(2, args.latency, 1)
    t16 = time_fake(args.neurons, args.latency, 16)
    t1 = time_fake(args.neurons, args.latency, 1)
    print(f"fake endpoint, {args.latency * 1000:.0f} ms per answer, {args.neurons} neurons: "
          f"concurrency 1 {t1:.2f} s, concurrency 16 {t16:.2f} s, speed-up {t1 / t16:.1f}x "
          f"({'ok' if t1 / t16 >= 10 else 'BELOW 10x'})")
    if args.embedded:
        embedded(args.embedded)


if __name__ == "__main__":
    main()
