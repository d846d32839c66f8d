"""A run with known activating words and scripted judges for the fake OpenAI server.

`make_run` writes model "tiny", layer 0, `d_mlp` neurons over random 8-word excerpts: neuron n
fires on the word WORDS[n] (activation 0.3..2.0, spread over strength) and stays near 0 elsewhere
(under 0.05, so below any sensible threshold). Its explanation says `the word "<word>"`, so a
scripted judge can answer from the prompt alone:

* perfect: yes exactly when an excerpt holds the word (detection) or when every marked span is
  the word (fuzzing), with P(yes) 0.9 / 0.1 in top_logprobs;
* always_yes: yes to everything, P(yes) 0.8;
* random: a seeded coin, with a random P(yes);
* garble: like perfect, but every third line is unreadable ("3: perhaps").
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

from explainer import run as rundir
from tests.fake_openai import Reply, Request, default_handler

MODEL = "tiny"
WORDS = ["cat", "dog", "red", "blue", "run", "jump", "one", "two", "sea", "sky", "tree", "sun"]
CTX = 8
SPLITS = ("explain", "calibrate", "valid", "test")


def tokens(eid: int) -> list[str]:
    rng = random.Random(eid)
    return [" " + rng.choice(WORDS) for _ in range(CTX)]


def activations(neuron: int, eid: int) -> list[float]:
    hot = 0.3 + 1.7 * ((eid * 37) % 100) / 100
    return [hot if t.strip() == WORDS[neuron] else 0.01 * ((eid + i) % 5)
            for i, t in enumerate(tokens(eid))]


def explanation(neuron: int) -> str:
    return f'the word "{WORDS[neuron]}"'


def make_run(root: Path, d_mlp: int = 6, n_excerpts: int = 120, top_k: int = 40,
             random_k: int = 30, explainers: tuple[str, ...] = ("fake-explainer",)) -> Path:
    run = Path(root)
    ids = list(range(n_excerpts))
    rundir.write_columns(run, "excerpts", {
        "excerpt_id": ids, "token_ids": [[WORDS.index(t.strip()) for t in tokens(e)] for e in ids],
        "tokens": [tokens(e) for e in ids]}, model=MODEL)
    cols: dict[str, list] = {c: [] for c in rundir.table("records").schema.names}
    for n in range(d_mlp):
        acts = {e: activations(n, e) for e in ids}
        ranked = sorted(ids, key=lambda e: (-max(acts[e]), e))[:top_k]
        rest = [e for e in ids if e not in set(ranked)]
        rand = sorted(rest, key=lambda e: random.Random(1000 * n + e).random())[:random_k]
        kept = [("top", e, r, SPLITS[r % 4]) for r, e in enumerate(ranked)]
        kept += [("random", e, r, SPLITS[1 + r % 3]) for r, e in enumerate(rand)]
        for kind, e, rank, split in kept:
            for k, v in (("neuron", n), ("excerpt_id", e), ("kind", kind), ("rank", rank),
                         ("split", split), ("activations", acts[e]),
                         ("max_activation", max(acts[e]))):
                cols[k].append(v)
    rundir.write_columns(run, "records", cols, model=MODEL, layer=0)
    rundir.write_run_json(run, {"format": 1, "models": {MODEL: {
        "model": MODEL, "n_layers": 1, "d_mlp": d_mlp, "n_params": 0, "ctx": CTX,
        "layers_done": [0]}}})
    rows = [rundir.ExplanationRow(MODEL, 0, n, ex, "p" * 12, 0, explanation(n), 10, 5, "ok",
                                  None) for n in range(d_mlp) for ex in explainers]
    rundir.write_rows(run, "explanations", rows)
    return run


def truth(description: str, excerpt: str) -> bool:
    """Whether the excerpt (as shown in the prompt) is a true positive for the description."""
    word = re.search(r'"([^"]+)"', description).group(1)
    spans = re.findall(r"<<(.*?)>>", excerpt)
    if spans:  # fuzzing
        return all(w == word for s in spans for w in s.split())
    return word in excerpt.split()


def _line_tokens(k: int, yes: bool, p_yes: float, last: bool) -> list[dict]:
    def tok(t: str, lp: float = 0.0, alts=()):
        return {"token": t, "logprob": lp, "bytes": None,
                "top_logprobs": [{"token": a, "logprob": b, "bytes": None} for a, b in alts]}

    word = " yes" if yes else " no"
    alts = [(" yes", math.log(p_yes)), (" no", math.log(1 - p_yes))]
    out = [tok(str(k)), tok(":"), tok(word, dict(alts)[word], alts)]
    return out if last else out + [tok("\n")]


class Judge:
    """A scripted judge: style perfect | always_yes | random | garble."""

    def __init__(self, style: str = "perfect", seed: int = 0, logprobs: bool = True):
        self.style, self.logprobs = style, logprobs
        self.rng = random.Random(seed)

    def __call__(self, req: Request) -> Reply:
        body = req.body or {}
        if not req.path.endswith("/chat/completions"):
            return default_handler(req)
        user = body["messages"][-1]["content"]
        desc = user.split("\n", 1)[0]
        excerpts = re.findall(r"^(\d+)\) (.*)$", user, re.MULTILINE)
        lines, lps = [], []
        for i, (k, text) in enumerate(excerpts):
            right = truth(desc, text)
            yes, p = {"perfect": (right, 0.9 if right else 0.1),
                      "garble": (right, 0.9 if right else 0.1),
                      "always_yes": (True, 0.8)}.get(self.style, (None, None))
            if yes is None:
                p = self.rng.random()
                yes = p >= 0.5
            if self.style == "garble" and int(k) % 3 == 0:
                lines.append(f"{k}: perhaps")
                continue
            lines.append(f"{k}: {'yes' if yes else 'no'}")
            lps += _line_tokens(int(k), yes, min(max(p, 1e-6), 1 - 1e-6), i == len(excerpts) - 1)
        text = "\n".join(lines)
        usable = self.logprobs and body.get("logprobs") and self.style != "garble"
        return Reply.chat(text, prompt_tokens=len(user) // 4, completion_tokens=4 * len(lines),
                          logprobs=lps if usable else None)
