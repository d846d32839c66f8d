"""Scripted simulators for the fake OpenAI server: they know the true activations of a runfactory
run and answer the simulator prompts with them (or shuffled, or garbage, or an HTTP 500).

The explanation names the neuron ("neuron L1N3 ..."), the token list names the excerpt, so a
handler can look up the recorded activations and answer in either protocol:
* legacy completions with echo + logprobs: the prompt split into tab, newline and other runs
  (so every value slot is its own token), with a 0/9 mixture at each slot whose expected value is
  a linear function of the true activation;
* chat: lines "index<TAB>value", with top_logprobs over the same mixture when asked.

The endpoint probe (llm/probe.py) is answered in the handler's own convention: with `shift` 1
each token's certain prediction sits one row early, and every row also lists its own token with
a low log-probability, as llama-cpp-python does. `number_rows` makes excerpts look number-heavy
to a simulator: the row just before each value slot holds most of the digit mass (a number that
seems to continue), the slot's own row only a little, so guessing the convention from digit mass
would pick the wrong row.
"""

from __future__ import annotations

import math
import random
import re

from tests import runfactory as RF
from tests.fake_openai import Reply, Request, default_handler

SCALE = 3.0  # activations of a runfactory neuron lie in [-0.1, 3.0)
_NEURON = re.compile(r"neuron L(\d+)N(\d+)")


def explanation(layer: int, neuron: int) -> str:
    return f"neuron L{layer}N{neuron} fires on{RF.trigger(layer, neuron)}"


def truth(prompt_expl: str, tokens: list[str], ctx: int, n_excerpts: int) -> list[float]:
    """Share in [0, 1] of the 9 mass at each token: linear in the true activation."""
    m = _NEURON.search(prompt_expl)
    layer, neuron = int(m.group(1)), int(m.group(2))
    for i in range(n_excerpts):
        if RF.excerpt_tokens(i, ctx) == tokens:
            return [(a + 0.1) / SCALE for a in RF.activations(layer, neuron, i, ctx)]
    raise KeyError("unknown excerpt")


def _mixture(s: float) -> dict[str, float]:
    out = {}
    if s < 1:
        out["0"] = math.log(1 - s)
    if s > 0:
        out["9"] = math.log(s)
    return out


def fake_tokens(prompt: str) -> tuple[list[str], list[int]]:
    toks = re.findall(r"\t|\n|[^\t\n]+", prompt)
    offsets, pos = [], 0
    for t in toks:
        offsets.append(pos)
        pos += len(t)
    return toks, offsets


class Handler:
    """A fake simulator endpoint; `style` is truth | shuffled | garbage | error (HTTP 500 to
    every simulator prompt: no answer, so a rerun asks again); `shift` mimics llama.cpp."""

    def __init__(self, style: str = "truth", ctx: int = 16, n_excerpts: int = 20,
                 shift: int = 0, chat_logprobs: bool = True, seed: int = 0,
                 number_rows: bool = False):
        self.style, self.ctx, self.n_excerpts, self.shift = style, ctx, n_excerpts, shift
        self.chat_logprobs, self.number_rows = chat_logprobs, number_rows
        self.rng = random.Random(seed)

    def _values(self, expl: str, tokens: list[str]) -> list[float]:
        vals = truth(expl, tokens, self.ctx, self.n_excerpts)
        if self.style == "shuffled":
            self.rng.shuffle(vals)
        return vals

    def __call__(self, req: Request) -> Reply:
        body = req.body or {}
        if self.style == "error" and "Neuron: " in str(body):
            return Reply.error(500, message="the simulator is down")
        if req.path.endswith("/chat/completions"):
            return self._chat(body)
        prompt = body["prompt"]
        if "Neuron: " not in prompt:  # the endpoint probe (llm/probe.py)
            return self._probe(prompt) if body.get("echo") else default_handler(req)
        toks, offsets = fake_tokens(prompt)
        top: list = [{t: -0.1} for t in toks]
        if self.style == "garbage":
            return Reply.completion(prompt, logprobs={"tokens": toks, "text_offset": offsets,
                                                      "token_logprobs": [-0.1] * len(toks),
                                                      "top_logprobs": top})
        # One block per excerpt to predict (K of them in a merged prompt); few-shot blocks
        # carry values, so only blocks with "unknown" slots are the question.
        blocks = [b for b in prompt.split("Neuron: ")[1:] if "\tunknown\n" in b]
        expl = blocks[-1].split("\n", 1)[0]
        values: list[float] = []
        for b in blocks:
            lines = [ln for ln in b.split("\n")[2:] if ln.endswith("\tunknown")]
            values += self._values(expl, [ln.rsplit("\t", 1)[0] for ln in lines])
        slots = [i for i, t in enumerate(toks) if t == "unknown" and i and toks[i - 1] == "\t"]
        for i, s in zip(slots, values):
            top[i - self.shift] = _mixture(s)
            if self.number_rows:  # little digit mass at the slot, much on the row before it
                top[i - self.shift] = {t: lp + math.log(0.2) for t, lp in _mixture(s).items()}
                top[i - self.shift]["unknown"] = math.log(0.8)
                top[i - self.shift - 1] = {"1": math.log(0.9), "\t": math.log(0.1)}
        return Reply.completion(prompt, logprobs={"tokens": toks, "text_offset": offsets,
                                                  "token_logprobs": [-0.1] * len(toks),
                                                  "top_logprobs": top})

    def _probe(self, prompt: str) -> Reply:
        toks = re.findall(r" ?[^ ]+", prompt)  # words with their leading space
        offsets = [sum(map(len, toks[:i])) for i in range(len(toks))]
        top: list = [{t: -20.0} for t in toks]  # each row lists its own token, unlikely
        for i, t in enumerate(toks):
            if i - self.shift >= 0:
                top[i - self.shift][t] = -0.01  # the certain prediction of token i
        return Reply.completion(prompt, logprobs={"tokens": toks, "text_offset": offsets,
                                                  "token_logprobs": [-0.1] * len(toks),
                                                  "top_logprobs": top})

    def _chat(self, body: dict) -> Reply:
        if self.style == "garbage":
            return Reply.chat("I am sorry, I cannot rate these tokens.")
        user = body["messages"][-1]["content"]
        expl = user.split("\n", 1)[0].removeprefix("Neuron: ")
        excerpts: list[list[str]] = []  # a merged turn opens each excerpt with "# excerpt j"
        for ln in user.rstrip("\n").split("\n")[2:]:
            if ln.startswith("# excerpt") or not excerpts:
                excerpts.append([])
            if not ln.startswith("# excerpt"):
                excerpts[-1].append(ln.split("\t", 1)[1])
        vals = [v for tokens in excerpts for v in self._values(expl, tokens)]
        text, lps = [], []
        for k, s in enumerate(vals):
            stated = "9" if s >= 0.5 else "0"
            text.append(f"{k}\t{stated}")
            alts = [{"token": t, "logprob": lp, "bytes": None} for t, lp in _mixture(s).items()]
            lps += [{"token": str(k), "logprob": 0.0, "bytes": None, "top_logprobs": []},
                    {"token": "\t", "logprob": 0.0, "bytes": None, "top_logprobs": []},
                    {"token": stated, "logprob": _mixture(s).get(stated, -30.0), "bytes": None,
                     "top_logprobs": alts}]
            if k < len(vals) - 1:
                lps.append({"token": "\n", "logprob": 0.0, "bytes": None, "top_logprobs": []})
        return Reply.chat("\n".join(text), logprobs=lps if self.chat_logprobs and
                          body.get("logprobs") else None)
