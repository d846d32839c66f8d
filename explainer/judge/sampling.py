"""Which excerpts a judge sees, with which label: pure functions, no I/O (docs/reference.md §6b).

Two presets (`PRESETS`) draw the questions; every parameter of the one used is stored with each
judgment and score row. `explain` is described first, `delphi` after it (below `Preset`).

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
import json
import math
import random
import statistics
from dataclasses import asdict, dataclass, replace
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


# --- presets ---------------------------------------------------------------------------------
#
# `delphi` follows EleutherAI's delphi (config.py SamplerConfig / ConstructorConfig, latents/
# samplers.py split_quantiles, scorers/classifier/sample.py and fuzz.py), with one adaptation:
# delphi's negatives are windows where the latent is exactly 0, and a GPT-2 MLP neuron (GELU) is
# almost never exactly 0, so no window qualifies. Its *firing floor* stands in for 0: the median,
# over the neuron's random excerpts, of each excerpt's maximum (never below 0). A window whose
# every token stays at or under it is one where the neuron never rises above what it does in a
# typical random window: its background, not its feature. For a sparse neuron (a ReLU, an SAE
# latent) most random maxima are 0, the median is 0, and the rule is delphi's exactly.


@dataclass(frozen=True)
class Preset:
    """How a judge's questions are drawn; stored (as `params`) with every row it shaped."""

    name: str  # explain | delphi
    n_positive: int  # activating held-out excerpts (at most)
    n_negative: int  # non-activating excerpts (detection's negatives, delphi's fuzzing decoys)
    n_bins: int  # activation bins the positives are spread over (recall per bin)
    fraction: float  # highlight share of the reference maximum
    highlight: str  # neuron: of the neuron's top max (>=) | example: of the excerpt's own max (>)
    negatives: str  # below-threshold: no token reaches fraction x top max | floor: max <= floor
    decoys: str  # same-excerpt: other tokens of each positive | non-activating: negatives marked
    excerpts_per_prompt: int


PRESETS = {
    "explain": Preset("explain", n_positive=10, n_negative=10, n_bins=N_BINS, fraction=0.1,
                      highlight="neuron", negatives="below-threshold", decoys="same-excerpt",
                      excerpts_per_prompt=5),
    "delphi": Preset("delphi", n_positive=50, n_negative=50, n_bins=10, fraction=0.3,
                     highlight="example", negatives="floor", decoys="non-activating",
                     excerpts_per_prompt=5),
}


def preset(name: str, **overrides) -> Preset:
    """The preset called `name` with the given fields replaced (None: the preset's own)."""
    if name not in PRESETS:
        raise ValueError(f"sampling {name!r}: expected one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def params(p: Preset, positives_from: str) -> str:
    """Every parameter of a preset and where its positives came from, as one JSON string."""
    return json.dumps({**asdict(p), "positives_from": positives_from}, sort_keys=True)


def firing_floor(randoms: Iterable[Excerpt]) -> float:
    """The neuron's firing floor: the median of its random excerpts' maxima, never below 0
    (0 with no random excerpt, delphi's own rule)."""
    peaks = [e.peak for e in randoms if e.acts]
    return max(0.0, statistics.median(peaks)) if peaks else 0.0


def quantile_positives(tops: Sequence[Excerpt], quantiles: Sequence[Excerpt], floor: float,
                       p: Preset, recorded_bins: int, rng: random.Random,
                       exclude: set[int] = frozenset()) -> tuple[list[Item], str]:
    """(positives, where from): up to n_positive // bins excerpts drawn at random from every
    activation bin, as delphi's split_quantiles does.

    With recorded quantile samples (record --quantile-k), their own bins: bin b holds maxima in
    (b/B, (b+1)/B] of the neuron's maximum, B = `recorded_bins`. Without, the held-out top
    excerpts cut into `p.n_bins` bins of equal count by rank (delphi's equal-count quantiles).
    Either way only excerpts whose maximum is above the firing floor, never one the explainer saw.
    Bin 0 is the weakest.
    """
    m = max((e.peak for e in tops), default=0.0)
    qs = [e for e in quantiles if e.excerpt_id not in exclude and e.peak > floor]
    by_bin: dict[int, list[Excerpt]] = {}
    if qs and m > 0:
        source, n_bins = "recorded-quantiles", max(1, recorded_bins)
        for e in sorted(qs, key=lambda e: e.rank):
            by_bin.setdefault(strength_bin(e.peak, m, n_bins), []).append(e)
    else:
        source, n_bins = "top-bins", p.n_bins
        held = sorted((e for e in tops if e.split in HELD_OUT and e.excerpt_id not in exclude
                       and e.peak > floor), key=lambda e: e.rank, reverse=True)  # weakest first
        for b in range(n_bins):  # equal-count slices, sizes differing by at most one
            lo, hi = b * len(held) // n_bins, (b + 1) * len(held) // n_bins
            if hi > lo:
                by_bin[b] = held[lo:hi]
    per_bin = max(1, p.n_positive // n_bins)
    out: list[Item] = []
    for b in sorted(by_bin):
        group = by_bin[b]
        for e in (group if len(group) <= per_bin else rng.sample(group, per_bin)):
            out.append(Item(e, True, b))
    return out[:p.n_positive], source


def floor_negatives(randoms: Iterable[Excerpt], floor: float, n: int,
                    exclude: set[int] = frozenset()) -> list[Item]:
    """Up to n random excerpts (by rank) whose every token stays at or under the firing floor."""
    out: list[Item] = []
    seen: set[int] = set()
    for e in sorted(randoms, key=lambda e: e.rank):
        if len(out) == n:
            break
        if e.excerpt_id not in exclude and e.excerpt_id not in seen and e.peak <= floor:
            seen.add(e.excerpt_id)
            out.append(Item(e, False, None))
    return out


def own_highlights(acts: Sequence[float], fraction: float) -> tuple[int, ...]:
    """Tokens above `fraction` of the excerpt's own maximum (delphi's highlight rule)."""
    top = max(acts, default=0.0)
    return tuple(i for i, a in enumerate(acts) if a > fraction * top) if top > 0 else ()


def delphi_fuzz_items(pos: Sequence[Item], neg: Sequence[Item], fraction: float,
                      rng: random.Random) -> list[Item]:
    """Each positive with its own highlights (True); each non-activating excerpt as a decoy
    (False) with as many random tokens marked as a positive has on average, rounded up (delphi
    counts a positive's non-zero tokens; a dense neuron is non-zero everywhere, so its
    highlighted tokens stand in for them)."""
    out = [Item(it.excerpt, True, it.quantile, own_highlights(it.excerpt.acts, fraction))
           for it in pos]
    if not out:
        return out
    n_marked = math.ceil(sum(len(i.highlighted) for i in out) / len(out))
    for it in neg:
        k = min(max(1, n_marked), len(it.excerpt.acts))
        if k:
            out.append(Item(it.excerpt, False, None,
                            tuple(sorted(rng.sample(range(len(it.excerpt.acts)), k)))))
    return out
