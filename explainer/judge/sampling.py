"""Which excerpts a judge sees, with which label: pure functions, no I/O (docs/reference.md §6b).

A neuron's *side* decides its sign: `pos` reads the activations as recorded and its excerpts of
kind `top`; `neg` (a gated neuron's negative side) negates them and reads kind `bottom`. From then
on every activation here is in the side's units, where larger means "fires more".

A token *activates* when its activation reaches `fraction` of the neuron's largest activation over
its top excerpts (the same m that scales what the explainer saw, so with the default 0.1 these are
exactly the tokens the explainer saw as non-zero). Positives are held-out excerpts with at least
one activating token; negatives are the neuron's random excerpts with none.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

# side -> (kind of its top excerpts, kind of its quantile samples or None, sign)
SIDES = {"pos": ("top", "quantile", 1.0), "neg": ("bottom", None, -1.0)}
HELD_OUT = ("valid", "test")  # top-excerpt splits the explainer never saw
N_BINS = 5  # activation-strength bins of (0, m] for recall per quantile


@dataclass(frozen=True)
class Excerpt:
    """One recorded excerpt of a neuron, activations already in the side's units."""

    excerpt_id: int
    kind: str  # top | bottom | quantile | random
    split: str
    rank: int
    tokens: tuple[str, ...]
    acts: tuple[float, ...]

    @property
    def peak(self) -> float:
        return max(self.acts, default=-math.inf)


@dataclass(frozen=True)
class Item:
    """One question to the judge: an excerpt (maybe with highlights) and its true answer."""

    excerpt: Excerpt
    label: bool
    quantile: int | None  # strength bin of a positive (None for negatives)
    highlighted: tuple[int, ...] | None = None  # fuzzing: token positions marked


def side_of(side: str) -> tuple[str, str | None, float]:
    """(top kind, quantile kind or None, sign) of a side; ValueError for another name."""
    if side not in SIDES:
        raise ValueError(f"side {side!r}: expected one of {', '.join(SIDES)}")
    return SIDES[side]


def rng_for(*parts: object) -> random.Random:
    """A generator seeded by its parts, the same on every machine and Python version."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def threshold(tops: Sequence[Excerpt], fraction: float) -> float:
    """The activating threshold: `fraction` of the largest activation over the top excerpts
    (infinite when nothing is positive there: such a neuron has no activating token)."""
    m = max((e.peak for e in tops), default=-math.inf)
    return fraction * m if m > 0 else math.inf


def activating(acts: Sequence[float], tau: float) -> tuple[int, ...]:
    """Positions of the tokens that activate."""
    return tuple(i for i, a in enumerate(acts) if a >= tau)


def strength_bin(peak: float, m: float, n_bins: int = N_BINS) -> int:
    """Bin b of an excerpt's max in (b/B, (b+1)/B] of m, as record's quantile samples use."""
    return min(n_bins - 1, max(0, math.ceil(n_bins * peak / m) - 1))


def positives(tops: Iterable[Excerpt], quantiles: Iterable[Excerpt], tau: float, n: int,
              exclude: set[int] = frozenset()) -> list[Item]:
    """Up to n held-out activating excerpts, spread over activation strength.

    Candidates: valid/test top excerpts (by rank), then quantile samples; an excerpt counts once
    and never when the explainer saw it (`exclude`). They are dealt round-robin from the
    strongest bin down, so weak activations are represented whenever the run recorded them.
    """
    if not math.isfinite(tau) or n <= 0:
        return []
    tops = list(tops)
    m = max((e.peak for e in tops), default=tau)
    m = max(m, tau)
    pool: dict[int, Excerpt] = {}
    for e in sorted((e for e in tops if e.split in HELD_OUT), key=lambda e: e.rank) + \
            sorted(quantiles, key=lambda e: e.rank):
        if e.excerpt_id not in exclude and e.excerpt_id not in pool and e.peak >= tau:
            pool[e.excerpt_id] = e
    by_bin: dict[int, list[Excerpt]] = {}
    for e in pool.values():
        by_bin.setdefault(strength_bin(e.peak, m), []).append(e)
    order = [by_bin[b] for b in sorted(by_bin, reverse=True)]
    out: list[Item] = []
    while len(out) < n and any(order):
        for group in order:
            if group and len(out) < n:
                e = group.pop(0)
                out.append(Item(e, True, strength_bin(e.peak, m)))
    return out


def negatives(randoms: Iterable[Excerpt], tau: float, n: int,
              exclude: set[int] = frozenset()) -> list[Item]:
    """Up to n of the neuron's random excerpts (by rank) in which no token activates."""
    out: list[Item] = []
    for e in sorted(randoms, key=lambda e: e.rank):
        if len(out) == n:
            break
        if e.excerpt_id not in exclude and e.peak < tau and \
                e.excerpt_id not in {i.excerpt.excerpt_id for i in out}:
            out.append(Item(e, False, None))
    return out


def fuzz_items(pos: Sequence[Item], tau: float, rng: random.Random) -> list[Item]:
    """Each positive twice: its activating tokens highlighted (True), and a decoy (False) with
    as many tokens highlighted, drawn at random among its tokens that do not activate."""
    out: list[Item] = []
    for it in pos:
        hot = activating(it.excerpt.acts, tau)
        out.append(Item(it.excerpt, True, it.quantile, hot))
        cold = [i for i in range(len(it.excerpt.acts)) if i not in set(hot)]
        if cold:
            out.append(Item(it.excerpt, False, it.quantile,
                            tuple(sorted(rng.sample(cold, min(len(hot), len(cold)))))))
    return out


def batches(items: Sequence[Item], size: int, rng: random.Random) -> list[list[Item]]:
    """The items shuffled and cut into prompts of `size`, never one excerpt twice in a prompt
    (fuzzing's true and decoy versions of an excerpt go to different prompts)."""
    order = list(items)
    rng.shuffle(order)
    out: list[list[Item]] = []
    for it in order:
        eid = it.excerpt.excerpt_id
        home = next((b for b in out if len(b) < size and
                     all(o.excerpt.excerpt_id != eid for o in b)), None)
        if home is None:
            out.append([it])
        else:
            home.append(it)
    return out
