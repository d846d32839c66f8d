"""Benchmark the frugal options: merged simulation prompts and the explainer cascade.

    PYTHONPATH=. python bench/bench_frugal.py [--neurons 3] [--threads 2]

Prints the floors of issues 12 and 23:
1. billed prompt tokens per neuron for 10 simulated excerpts (5 valid top + 5 valid random, 64
   prose tokens each) at K = 1, 2, 5, 10 excerpts per prompt, counted with the embedded
   simulator's own tokenizer (what an endpoint serving it bills); floor: <= 4,090 at K = 5;
2. what merging does to predictions: per-token agreement of K = 5 with K = 1 on the embedded
   simulator (in-process), and equality on the deterministic fake simulator (tests/simfake.py);
3. the cascade on scripted endpoints (tests/acceptfake.py: cheap explainer right for 40% of
   neurons, strong one always right, the simulator's model also a scripted judge), once per
   accept rule (--accept-by detection, fuzzing, simulation): one machine-readable line each,
   `accept-by=<judge> quality=<ratio> cost=<ratio>` (mean test score and ledger dollars against
   the strong explainer alone; floors: quality >= 0.95, cost <= 0.50), and the lower bound on
   cost that escalation alone sets (`--cascade-only` runs just this part).
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


RULES = (("detection", 0.8), ("fuzzing", 0.8), ("simulation", 0.8))  # accept-by, --accept


def cascade_floor(k: int) -> None:
    """The cascade against the strong explainer alone, once per accept rule, on one fake
    endpoint; prints `accept-by=<judge> quality=<ratio> cost=<ratio>` per rule."""
    import io
    from contextlib import redirect_stderr

    from tests import test_cascade as T

    from explainer import cascade
    from explainer.llm import ledger
    from explainer.views import cost as V
    from tests import acceptfake as AF
    from tests.fake_openai import FakeOpenAI

    out = {}
    with tempfile.TemporaryDirectory() as tmp, redirect_stderr(io.StringIO()):
        tmp = Path(tmp)
        ledger.PRICES = Path(AF.prices_file(tmp / "prices.json"))
        ledger._prices.cache_clear()
        with FakeOpenAI(AF.handler, models=AF.MODELS) as fake:
            strong_score, strong_usd = T._strong_alone(tmp, fake, k)
            parts = V.cost_rows(V.read_calls(tmp / "strong"))
            describe_usd = sum(r.usd for r in parts if r.stage == "describe")
            for by, accept in RULES:
                run = T._run(tmp / f"cascade-{by}")
                d, s = T._configs(run, fake, k)
                cascade.run(C.CascadeConfig(describe=d, simulate=s, accept=accept, accept_by=by,
                                            explainers=("cheap-model", "strong-model")))
                cheap = T._test_scores(run, "cheap-model")
                strong = T._test_scores(run, "strong-model")
                score = (sum(cheap.values()) + sum(strong.values())) / T.D_MLP
                out[by] = (score, T._dollars(run), len(cheap), len(strong), accept)
    print(f"3. cascade cheap-model > strong-model, K = {k} (prices {AF.PRICES['cheap-model']} "
          f"and {AF.PRICES['strong-model']} $/M tokens, simulator and judge "
          f"{AF.PRICES['sim-model']}); strong alone: mean test score {strong_score:.3f}, "
          f"${strong_usd:.5f}; floors quality >= 0.95, cost <= 0.50")
    for by, (score, usd, n_cheap, n_strong, accept) in out.items():
        q, c = score / strong_score, usd / strong_usd
        print(f"accept-by={by} quality={q:.3f} cost={c:.3f}")
        print(f"   (accept {accept:g}; kept {n_cheap} cheap + {n_strong} strong; quality "
              f"{'met' if q >= 0.95 else 'NOT met'}, cost {'met' if c <= 0.5 else 'NOT met'})")
    # Whatever decides acceptance, each escalated neuron pays the strong describe again, and
    # every kept explanation pays the final scoring the strong run pays too.
    share = describe_usd / strong_usd
    n_up = min(v[3] for v in out.values())
    bound = n_up / T.D_MLP * share + (1 - share)
    print(f"   bound: the strong describe is {share:.3f} of the strong run's bill; escalating "
          f"{n_up} of {T.D_MLP} neurons costs at least {n_up}/{T.D_MLP} of it plus the final "
          f"scoring: {bound:.3f} of strong alone, before the cheap level and its judging")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=3, help="neurons on the embedded simulator")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cascade-only", action="store_true",
                    help="only part 3 (the accept rules), seconds instead of minutes")
    args = ap.parse_args()
    if not args.cascade_only:
        embedded_agreement(args.neurons, args.threads)
        fake_equality()
    for k in (1, 5):
        cascade_floor(k)


if __name__ == "__main__":
    main()
