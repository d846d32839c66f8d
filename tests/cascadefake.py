"""Scripted explainers and a scripted simulator on the fake OpenAI server, for the cascade and
revision tests and bench/bench_frugal.py.

On a runfactory run (neuron n of layer L fires on the word VOCAB[(n + L) % 10]):
* `strong-model` always names the word with the highest value in the excerpts it is shown;
* `cheap-model` names it for 40% of the words (RIGHT), and another word of the vocabulary
  otherwise; asked to revise, it names the token its revision prompt marks "missed";
* `sim-model` (chat mode) predicts 9 exactly on the tokens that the explanation names, 0
  elsewhere.
Every answer reports prompt tokens as characters / 4, so costs follow the prompts' lengths.
"""

from __future__ import annotations

import json
import re

from tests import runfactory as RF
from tests.fake_openai import Reply, Request, default_handler

MODELS = ("cheap-model", "strong-model", "sim-model")
RIGHT = {" cat", " red", " run", " one"}  # 4 of the 10 words: the cheap explainer is right there
# USD per million tokens [prompt, completion]; only for tests (a temporary prices file).
PRICES = {"cheap-model": [0.10, 0.40], "strong-model": [10.0, 30.0], "sim-model": [0.02, 0.05]}


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _named(explanation: str) -> set[str]:
    return {" " + w for w in re.findall(r"[a-z]+", explanation.lower())}


def _explain(model: str, messages: list[dict]) -> str:
    user = messages[-1]["content"]
    if "| verdict" in user or "guess" in messages[0]["content"]:  # a revision request
        missed = re.findall(r"^(.*) \| \d+ \| \d+ \| missed$", user, re.M)
        word = missed[0].strip() if missed else "nothing"
        return f"the word {word}"
    pairs = re.findall(r"^(.*)\t(\d+)$", user, re.M)
    top = max(pairs, key=lambda p: int(p[1]))[0]
    if model == "cheap-model" and top not in RIGHT:
        top = RF.VOCAB[(RF.VOCAB.index(top) + 5) % len(RF.VOCAB)]
    return f"the word {top.strip()}"


def _simulate(messages: list[dict]) -> str:
    user = messages[-1]["content"]
    named = _named(user.split("\n", 1)[0].removeprefix("Neuron: "))
    lines = [ln for ln in user.split("\n")[2:] if ln and not ln.startswith("# excerpt")]
    out = []
    for ln in lines:
        k, tok = ln.split("\t", 1)
        out.append(f"{k}\t{9 if tok in named else 0}")
    return "\n".join(out)


def handler(req: Request) -> Reply:
    """The fake endpoint: explainers and simulator by model name."""
    body = req.body or {}
    if not req.path.endswith("/chat/completions"):
        return default_handler(req)
    msgs = body["messages"]
    text = _simulate(msgs) if body["model"] == "sim-model" else _explain(body["model"], msgs)
    prompt = json.dumps(msgs)
    return Reply.chat(text, prompt_tokens=_tokens(prompt), completion_tokens=_tokens(text))


def prices_file(path) -> str:
    """Write PRICES as a prices.json; returns its path."""
    path.write_text(json.dumps({"usd_per_million_tokens": PRICES}))
    return str(path)
