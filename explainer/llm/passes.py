"""How the in-process model cuts the sequences it evaluates together into forward passes.

Pure functions of token ids, no torch: `torchlm.TorchLM.rows` runs one pass per group.
"""

from __future__ import annotations

from typing import Sequence

MAX_PADDED = 8192  # tokens (batch x longest new part) of one forward pass; more are split


def common(*seqs: Sequence[int]) -> int:
    """Length of the prefix every sequence shares."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


def by_length(lengths: Sequence[int]) -> list[list[int]]:
    """Indices cut into forward passes of similar lengths, each at most MAX_PADDED tokens
    padded (a sequence longer than that goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:  # ascending: the newest member is the group's longest
        if groups and lengths[i] * (len(groups[-1]) + 1) <= MAX_PADDED:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def plan(batch: Sequence[Sequence[int]], want: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices of `batch` in forward passes: sequences with the same tokens up to the one
    before their first wanted row go together, then by length.

    A pass evaluates what its sequences share once (TorchLM._forward), and only what all of
    them share. The simulator's prompts in flight belong to a few explanations, and each
    repeats its explanation's header (~20 tokens of a ~230-token prompt) before the first
    value slot: passed together, prompts of one explanation compute that header once instead
    of once a prompt (8% of the tokens of the demo's simulation). Row r reads what follows
    token r, and token r - 1 is the excerpt's own first token, which is left out of the key
    (an excerpt whose first token the simulator splits in two goes in a pass of its own:
    slower, never wrong).
    """
    parts: dict[tuple, list[int]] = {}
    for i, seq in enumerate(batch):
        first = min(want[i], default=0)  # wanting no row: nothing to group it by
        parts.setdefault(tuple(seq[:max(0, first - 1)]), []).append(i)
    out = []
    for members in parts.values():
        out += [[members[j] for j in g] for g in by_length([len(batch[i]) for i in members])]
    return out
