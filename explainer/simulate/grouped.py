"""Simulating one candidate's excerpts K at a time (`explain simulate --excerpts-per-prompt K`).

Excerpts whose predictions are stored are reused; the rest go, in order, K per request into one
merged prompt (simulators' `predict_many`); one excerpt alone is the paper's one-excerpt request,
byte for byte, so K = 1 sends exactly what it always sent. Results come back in the order given.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Sequence


async def items(sim, excerpts: Sequence, k: int, text: str, key: str,
                reuse: Callable, record: Callable) -> list:
    """`reuse(ex)` -> an item from stored predictions or None; `record(ex, parsed)` -> the item
    of a fresh prediction (and its stored row). Returns one item per excerpt, in order."""
    got: dict[int, object] = {}
    fresh = []
    for i, ex in enumerate(excerpts):
        old = reuse(ex)
        if old is None:
            fresh.append((i, ex))
        else:
            got[i] = old

    async def group(chunk) -> list:
        exs = [ex for _, ex in chunk]
        name = f"{key}/{exs[0].split}/" + "+".join(str(ex.excerpt_id) for ex in exs)
        if len(exs) == 1 or not hasattr(sim, "predict_many"):  # no prompt to merge into
            parsed = [await sim.predict(text, ex.tokens, name) for ex in exs]
        else:
            parsed = await sim.predict_many(text, [ex.tokens for ex in exs], name)
        return [record(ex, p) for ex, p in zip(exs, parsed)]

    chunks = [fresh[j:j + k] for j in range(0, len(fresh), max(1, k))]
    for chunk, out in zip(chunks, await asyncio.gather(*(group(c) for c in chunks))):
        got.update((i, it) for (i, _), it in zip(chunk, out))
    return [got[i] for i in range(len(excerpts))]
