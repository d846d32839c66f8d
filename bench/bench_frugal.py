"""Benchmark the frugal options: merged simulation prompts and the explainer cascade.

    PYTHONPATH=. python bench/bench_frugal.py [--neurons 3] [--threads 2]

Prints the three floors of issue 12:
1. billed prompt tokens per neuron for 10 simulated excerpts (5 valid top + 5 valid random, 64
   prose tokens each) at K = 1, 2, 5, 10 excerpts per prompt, counted with the embedded
   simulator's own tokenizer (what an endpoint serving it bills); floor: <= 4,090 at K = 5;
2. what merging does to predictions: per-token agreement of K = 5 with K = 1 on the embedded
   simulator (in-process), and equality on the deterministic fake simulator (tests/simfake.py);
3. the cascade on scripted endpoints (tests/cascadefake.py: cheap explainer right for 40% of
   neurons, strong one always right): mean test score and ledger cost against the strong
   explainer alone; floors: score >= 0.95 x strong's, cost <= 0.60 x strong's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from explainer import config as C  # noqa: E402
from explainer import run as rundir  # noqa: E402
from explainer.simulate import prompt as SP  # noqa: E402
from explainer.simulate import stage as simulate  # noqa: E402

PUBLISHED = 8180  # the published prompt, 10 excerpts
FLOOR_K5 = PUBLISHED // 2  # 4,090


def billed_tokens(run: Path, n_neurons: int) -> dict[int, float]:
    """Mean billed prompt tokens per neuron for its 10 valid excerpts, per K."""
    from llama_cpp import Llama

    from explainer.llm import embedded
    from explainer.llm.embedded import native_output_to

    with native_output_to(None):
        tok = Llama(model_path=str(embedded.gguf_path()), vocab_only=True, verbose=False)
    excerpts = rundir.read(run, "excerpts")
    words = {int(e): list(t) for e, t in zip(excerpts["excerpt_id"], excerpts["tokens"])}
    rec = rundir.read(run, "records")
    ex, out = SP.load_examples(), {}
    for k in (1, 2, 5, 10):
        total = 0
        for n in range(n_neurons):
            mine = rec[(rec["neuron"] == n) & (rec["split"] == "valid")].sort_values(["kind", "rank"])
            ids = list(mine[mine["kind"] == "top"]["excerpt_id"][:5]) + \
                list(mine[mine["kind"] == "random"]["excerpt_id"][:5])
            lists = [words[int(i)] for i in ids]
            for j in range(0, len(lists), k):
                text = SP.logprob_prompt_many("the words a, b, c", lists[j:j + k], ex).text
                total += len(tok.tokenize(text.encode(), add_bos=False, special=True))
        out[k] = total / n_neurons
    return out


def _predictions(run: Path) -> dict:
    s = rundir.read(run, "simulations")
    return {(int(n), k, int(e)): np.asarray(p, float) for n, k, e, p in
            zip(s["neuron"], s["kind"], s["excerpt_id"], s["predicted"]) if p is not None}


def embedded_agreement(n_neurons: int, threads: int) -> None:
    import shutil

    import torch
    from bench_simulate import make_run

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = make_run(Path(tmp) / "base", n_neurons)
        runs = {}
        for k in (1, 5):
            runs[k] = Path(tmp) / f"k{k}"
            shutil.copytree(base, runs[k])
            simulate.run(C.SimulateConfig(run=runs[k], test=False, excerpts_per_prompt=k))
        tokens = billed_tokens(base, n_neurons)
        p1, p5 = _predictions(runs[1]), _predictions(runs[5])
        keys = sorted(set(p1) & set(p5))
        a = np.concatenate([p1[key] for key in keys])
        b = np.concatenate([p5[key] for key in keys])
        s1, s5 = (rundir.read(runs[k], "scores") for k in (1, 5))
    print("1. billed prompt tokens per neuron, 10 simulated excerpts (64 tokens each), "
          "embedded simulator's tokenizer:")
    for k, t in tokens.items():
        print(f"   K = {k:>2}: {t:7,.0f}  ({t / tokens[1]:.2f} of K = 1, {t / PUBLISHED:.2f} of "
              f"the published {PUBLISHED:,})")
    ok = tokens[5] <= FLOOR_K5
    print(f"   floor K = 5 <= {FLOOR_K5:,}: {'met' if ok else 'NOT met'} ({tokens[5]:,.0f})")
    print(f"2. embedded simulator, {len(keys)} excerpts x 64 tokens of {n_neurons} neurons: "
          f"per-token Pearson r(K=5, K=1) = {np.corrcoef(a, b)[0, 1]:.3f}, mean |diff| "
          f"{np.abs(a - b).mean():.3f} on the 0-10 scale (mean prediction {a.mean():.2f} vs "
          f"{b.mean():.2f}); neuron scores (valid) mean {s1['score'].mean():.3f} at K=1, "
          f"{s5['score'].mean():.3f} at K=5")


def fake_equality() -> None:
    from tests import runfactory as RF
    from tests import simfake
    from tests.fake_openai import FakeOpenAI

    preds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in (1, 5):
            run = RF.make_run(Path(tmp) / f"k{k}", n_layers=1, d_mlp=8, n_excerpts=20, ctx=16,
                              n_random=12)
            rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
                RF.MODEL, 0, n, "x", "p" * 12, 0, simfake.explanation(0, n), 1, 1, "ok", None)
                for n in range(8)])
            with FakeOpenAI(simfake.Handler("truth", 16, 20)) as fake:
                simulate.run(C.SimulateConfig(run=run, simulator="fake-model", mode="logprob",
                                              excerpts_per_prompt=k,
                                              llm=C.LLMConfig(base_url=fake.base_url)))
            preds[k] = _predictions(run)
    diff = max(float(np.abs(preds[1][key] - preds[5][key]).max()) for key in preds[1])
    print(f"   deterministic fake simulator: {len(preds[1])} excerpts, same keys "
          f"{set(preds[1]) == set(preds[5])}, max |K=5 - K=1| = {diff:.2g}")


def cascade_floor(k: int) -> None:
    import io
    from contextlib import redirect_stderr

    from tests import test_cascade as T

    from explainer import cascade
    from explainer.llm import ledger
    from tests import cascadefake as CF
    from tests.fake_openai import FakeOpenAI

    with tempfile.TemporaryDirectory() as tmp, redirect_stderr(io.StringIO()):
        tmp = Path(tmp)
        ledger.PRICES = Path(CF.prices_file(tmp / "prices.json"))
        ledger._prices.cache_clear()
        with FakeOpenAI(CF.handler, models=CF.MODELS) as fake:
            strong_score, strong_usd = T._strong_alone(tmp, fake, k)
            run = T._run(tmp / "cascade")
            d, s = T._configs(run, fake, k)
            cascade.run(C.CascadeConfig(describe=d, simulate=s,
                                        explainers=("cheap-model", "strong-model"), accept=0.8))
        cheap, strong = T._test_scores(run, "cheap-model"), T._test_scores(run, "strong-model")
        score = (sum(cheap.values()) + sum(strong.values())) / T.D_MLP
        usd = T._dollars(run)
    print(f"3. cascade cheap-model > strong-model, accept 0.8, K = {k} (prices "
          f"{CF.PRICES['cheap-model']} and {CF.PRICES['strong-model']} $/M tokens, simulator "
          f"{CF.PRICES['sim-model']}): kept {len(cheap)} cheap + {len(strong)} strong")
    print(f"   mean test score {score:.3f} vs strong alone {strong_score:.3f} "
          f"({score / strong_score:.3f}; floor 0.95: "
          f"{'met' if score >= 0.95 * strong_score else 'NOT met'})")
    print(f"   cost ${usd:.5f} vs ${strong_usd:.5f} ({usd / strong_usd:.3f}; floor 0.60: "
          f"{'met' if usd <= 0.6 * strong_usd else 'NOT met'}: escalating 60% of neurons "
          "costs 0.60 of the strong run before the cheap level and its judging)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=3, help="neurons on the embedded simulator")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    embedded_agreement(args.neurons, args.threads)
    fake_equality()
    for k in (1, 5):
        cascade_floor(k)


if __name__ == "__main__":
    main()
