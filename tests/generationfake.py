"""A tiny GPT-2 with two neurons of known behaviour, and scripted generators for the fake server.

`detector_gpt2` copies the tiny GPT-2 and rewires layer 0 so that its MLP reads the current token
only (attention output and position embeddings zeroed), then sets two neurons by hand:

* DETECTOR fires (about 2) on one whole-word token, TARGET, and stays near 0 (GELU of a negative
  number) on every other token: a token detector whose explanation is exact;
* ANY fires on every token, around 2 with a per-token spread, so its max over a window grows with
  the window's length: the neuron that shows whether the control windows are length-matched.

A scripted generator answers the generation prompt as `Generator(style)` says: `exact` writes
sentences holding the quoted word of the explanation (plus one line restating the explanation, a
duplicate and an empty line, which the screen must drop), `unrelated` writes sentences of the
held-out pydoc topics that never hold it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from tests.fake_openai import Reply, default_handler

DETECTOR, ANY = 5, 9
LAYER = 0


def detector_gpt2(src: Path, folder: Path, target: str) -> Path:
    """The tiny GPT-2 at `src` with layer 0's DETECTOR firing on token `target` (one token of
    the tokenizer, with its leading space) and ANY on every token."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(src)
    hf = GPT2LMHeadModel.from_pretrained(src)
    (tid,) = tok(target, add_special_tokens=False)["input_ids"]
    block = hf.transformer.h[LAYER]
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        block.attn.c_proj.weight.zero_()
        block.attn.c_proj.bias.zero_()
        hf.transformer.wpe.weight.zero_()
        # The MLP now reads ln_2(wte[token]): a direction of norm 1 scores about sqrt(d_model)
        # on its own token and about +-1 on another one (random 32-d vectors).
        ln = block.ln_2
        x = hf.transformer.wte.weight
        x = (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)
        x = x * ln.weight + ln.bias
        u = x[tid] / x[tid].norm()
        w_in, b_in = block.mlp.c_fc.weight, block.mlp.c_fc.bias  # (d_model, d_mlp), (d_mlp,)
        w_in[:, DETECTOR] = 2.0 * u
        b_in[DETECTOR] = -2.0 * 0.6 * float(x[tid].norm())  # others: GELU of about -7 +- 2, ~0
        w_in[:, ANY] = 0.6 * torch.randn(w_in.shape[0], generator=gen)
        b_in[ANY] = 2.0
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def heldout_sentences() -> list[str]:
    """Plain sentences of pydoc topics the test corpus does not hold (its first 12 topics)."""
    from pydoc_data.topics import topics

    out = []
    for k in sorted(topics)[40:]:
        for s in re.split(r"(?<=[.!?])\s+", " ".join(topics[k].split())):
            if 4 <= len(s.split()) <= 7 and s[0].isupper():  # short: far below 64 tokens
                out.append(s)
    return out


class Generator:
    """A scripted generation judge: style exact | unrelated."""

    def __init__(self, style: str, seed: int = 0, n_bad: int = 3):
        self.style, self.rng, self.n_bad = style, random.Random(seed), n_bad
        self.pool = heldout_sentences()

    def __call__(self, req) -> Reply:
        body = req.body or {}
        if not req.path.endswith("/chat/completions"):
            return default_handler(req)
        user = body["messages"][-1]["content"]
        asked = re.search(r"Write (\d+) sentences, one per line", user)
        if asked is None:  # another stage's prompt (explain run also simulates)
            return default_handler(req)
        desc = user.split("\n", 1)[0].removeprefix("Description: ")
        n = int(asked.group(1))
        word = (re.findall(r'"([^"]+)"', desc) or [""])[0].strip()
        lines = []
        pool = [s for s in self.pool if not word or word not in s.lower().split()]
        for s in self.rng.sample(pool, n):  # distinct sentences: duplicates are scripted below
            if self.style == "exact" and word:
                words = s.split()
                words.insert(self.rng.randrange(1, len(words)), word)
                s = " ".join(words)
            lines.append(s)
        if self.n_bad:  # what the screen must drop: a restatement, a duplicate, an empty line
            lines[1:1] = [f'The word "{word}" appears in this sentence.', lines[0], "   -"]
        return Reply.chat("\n".join(lines), prompt_tokens=len(user) // 4,
                          completion_tokens=12 * len(lines))
