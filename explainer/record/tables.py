"""The record stage's tables: sampler states at the end of the pass -> `records/`, `neurons/`.

Per neuron, `records/` gets its top excerpts (kind 'top', ranked by max), on a signed model its
bottom excerpts (kind 'bottom', ranked by min: the negative side), its own random sample (kind
'random', none of them among its top or bottom excerpts) and, with --quantile-k, its quantile
samples. Ranks are dealt to splits by interleaving (docs/reference.md, Splits).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explainer import run as rundir
from explainer.run.specs import RANDOM_SPLITS, SPLITS

QUANTILE_PROBS = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)


@dataclass(frozen=True)
class Recorded:
    """What a finished pass holds, merged over its shards: per layer, each neuron's samplers."""

    tops: dict  # layer -> samplers.TopK, by max activation
    bottoms: dict  # layer -> samplers.TopK by minus the min activation; {} on an unsigned model
    randoms: dict  # layer -> samplers.RandomSample
    stats: dict  # layer -> samplers.Stats
    quantiles: dict  # layer -> list of samplers.TopK, one per bin; {} without --quantile-k
    n_read: int  # excerpts read
    corpus_sha256: str  # digest of every token id read, shard by shard
    stage: Path  # the staging folder of the shards
    shards: tuple[int, ...]  # indices of the shards that read excerpts, in order


def _ranked(kind: str, ids: np.ndarray, acts: np.ndarray, splits: tuple) -> dict:
    """Record columns of one kind from (N, k) ids in rank order and their (N, k, ctx) acts;
    ids of -1 (too few excerpts) are left out."""
    n, j = np.nonzero(ids >= 0)
    kept = acts[n, j]  # (rows, ctx)
    return {"neuron": n.astype(np.int32), "excerpt_id": ids[n, j], "kind": [kind] * len(n),
            "rank": j.astype(np.int32), "split": [splits[i % len(splits)] for i in j],
            "acts": kept, "max_activation": kept.max(axis=1) if len(n) else kept[:, :0].sum(1)}


def write_layer(run_dir: Path, key: str, layer: int, res: Recorded, outputs: dict) -> None:
    """Write one layer's records and neuron statistics (plus the output-side columns)."""
    top_ids, _, top_acts = res.tops[layer].ranked()  # (N, k), _, (N, k, ctx)
    parts = [_ranked("top", top_ids, top_acts, SPLITS)]
    held = [top_ids]
    if res.bottoms:
        bot_ids, _, bot_acts = res.bottoms[layer].ranked()
        parts.append(_ranked("bottom", bot_ids, bot_acts, SPLITS))
        held.append(bot_ids)
    rand_ids, rand_acts = res.randoms[layer].sample(np.concatenate(held, axis=1))
    parts.append(_ranked("random", rand_ids, rand_acts, RANDOM_SPLITS))
    if res.quantiles:
        parts.append(_quantile_rows(res.quantiles[layer]))
    cols = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    acts = cols.pop("acts")
    rundir.write_columns(run_dir, "records", {**cols, "activations": rundir.list_array(acts)},
                         model=key, layer=layer)
    st = res.stats[layer].summary()
    n_neurons = len(st["mean"])
    rundir.write_columns(run_dir, "neurons", {
        "neuron": np.arange(n_neurons, dtype=np.int32), **st,
        "quantiles": rundir.list_array(_quantiles(rand_ids, rand_acts)), **outputs},
        model=key, layer=layer)


def _quantiles(ids: np.ndarray, acts: np.ndarray) -> np.ndarray:
    """(N, Q) quantiles of each neuron's activation, estimated from its random sample's tokens
    (every token of those excerpts: a uniform sample of excerpts, so of token positions too)."""
    n, r, ctx = acts.shape
    if r == 0:
        return np.zeros((n, 0), np.float32)
    tokens = np.where((ids >= 0)[:, :, None], acts, np.nan).reshape(n, r * ctx)
    with warnings.catch_warnings():  # a neuron with no random excerpt at all gets NaNs, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(tokens, QUANTILE_PROBS, axis=1).T.astype(np.float32)


def _quantile_rows(bins: list) -> dict:
    """Quantile samples as records of kind 'quantile'; rank = bin * quantile_k + position."""
    q = bins[0].k
    parts = []
    for b, top in enumerate(bins):
        ids, _, acts = top.ranked()  # (N, q), _, (N, q, ctx)
        part = _ranked("quantile", ids, acts, SPLITS)
        part["rank"] = part["rank"] + b * q
        part["split"] = [SPLITS[i % len(SPLITS)] for i in part["rank"]]
        parts.append(part)
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
