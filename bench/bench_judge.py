"""Benchmark `judge`: prompt tokens per neuron for detection and fuzzing against simulation's.

    PYTHONPATH=. python bench/bench_judge.py --run runs/demo [--neurons 0-2] [--explainer smollm2-135m]

Copies the run, then simulates (chat and logprob modes) and judges (detection, fuzzing) its
explanations against a scripted fake endpoint that bills each request by the embedded model's own
tokenizer (llama.cpp's, loaded vocabulary-only), so the three methods are counted with one
tokenizer on the same neurons. Prints calls and prompt tokens per neuron for each, and the ratio.
The embedded model's own figures come from `explain judge` itself (its ledger); see the README.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainer import config as C  # noqa: E402
from tests import simfake  # noqa: E402
from tests.fake_openai import FakeOpenAI, Reply, Request, echo_logprobs  # noqa: E402


def tokenizer():
    """The embedded GGUF's tokenizer (vocabulary only: no weights are loaded)."""
    from llama_cpp import Llama

    from explainer.llm import embedded

    llm = Llama(model_path=str(embedded.gguf_path()), vocab_only=True, verbose=False)
    return lambda text: len(llm.tokenize(text.encode(), add_bos=False, special=True))


def handler(count):
    """Answers every request plausibly and bills its prompt by the embedded tokenizer."""
    import re

    def answer(req: Request) -> Reply:
        body = req.body or {}
        if req.path.endswith("/chat/completions"):
            text = "\n".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>"
                             for m in body["messages"])
            user = body["messages"][-1]["content"]
            if "Tokens (" in user:  # the chat simulator: index<TAB>value lines
                n = len(user.rstrip("\n").split("\n")) - 2
                reply = "\n".join(f"{k}\t0" for k in range(n))
            else:  # a judge: one yes/no line per excerpt
                n = len(re.findall(r"^\d+\) ", user, re.MULTILINE))
                reply = "\n".join(f"{k}: no" for k in range(1, n + 1))
            return Reply.chat(reply, prompt_tokens=count(text), completion_tokens=count(reply))
        prompt = body.get("prompt", "")
        lp = simfake.Handler("garbage")  # noqa: F841 (echo answers need only the token layout)
        toks, offsets = simfake.fake_tokens(prompt)
        top = [{"0": -0.1, "9": -2.0} if t == "unknown" else {t: -0.1} for t in toks]
        logprobs = {"tokens": toks, "text_offset": offsets, "token_logprobs": [-0.1] * len(toks),
                    "top_logprobs": top} if body.get("echo") else echo_logprobs(prompt)
        return Reply.completion(prompt if body.get("echo") else "", logprobs=logprobs,
                                prompt_tokens=count(prompt), completion_tokens=1)
    return answer


def ledger(run: Path) -> dict[str, tuple[int, int, int]]:
    """stage -> (neurons, requests, prompt tokens) from the run's ledger (distinct requests)."""
    from explainer.views import cost

    return {r.stage: (r.neurons, r.calls, r.prompt_tokens)
            for r in cost.cost_rows(cost.read_calls(run))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--neurons", default="0-2")
    ap.add_argument("--explainer", default="smollm2-135m")
    args = ap.parse_args()
    count = tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        from explainer import judge, simulate
        from explainer.llm import ledger as ledger_file

        results = {}
        for mode in ("chat",):  # logprob: the embedded simulator runs in-process (README)
            run = Path(tmp) / f"sim-{mode}"
            shutil.copytree(args.run, run, ignore=shutil.ignore_patterns(
                f"{ledger_file.FILE}*", "simulations", "scores", "judgments", "view"))
            with FakeOpenAI(handler(count)) as fake:
                llm = C.LLMConfig(base_url=fake.base_url, concurrency=8, max_retries=0)
                simulate.run(C.SimulateConfig(run=run, neurons=args.neurons, mode=mode,
                                              explainer=args.explainer, simulator="fake-model",
                                              llm=llm))
                if mode == "chat":
                    for method in ("detection", "fuzzing"):
                        judge.run(C.JudgeConfig(run=run, method=method, neurons=args.neurons,
                                                explainer=args.explainer, judge="fake-model",
                                                llm=llm))
            for stage, v in ledger(run).items():
                results[f"{stage} ({mode})" if stage == "simulate" else stage] = v
    sim = results.get("simulate (chat)")
    print(f"prompt tokens per neuron (embedded tokenizer, scripted endpoint, "
          f"{args.explainer} explanations, neurons {args.neurons} of each layer):")
    for name, (n, calls, pt) in sorted(results.items()):
        ratio = f"  {pt / n / (sim[2] / sim[0]):.2f}x simulation" if sim else ""
        print(f"  {name:22s} {n:3d} neurons  {calls / n:5.1f} calls  {pt / n:8,.0f} prompt tokens"
              f"{ratio}")


if __name__ == "__main__":
    main()
