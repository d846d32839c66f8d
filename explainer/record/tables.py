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
from explainer.record.samplers import rows
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


def _ranked(kind: str, ids: np.ndarray, slot: np.ndarray, splits: tuple) -> dict:
    """Record columns of one kind from (N, k) ids in rank order, slot (N, k) the row of the
    sampler's store holding each one's activations; ids of -1 (too few excerpts) are left out.
    `rows` (neuron, store row) says where each record's activations are, for `_gather`."""
    n, j = np.nonzero(ids >= 0)
    return {"neuron": n.astype(np.int32), "excerpt_id": ids[n, j], "kind": [kind] * len(n),
            "rank": j.astype(np.int32), "split": [splits[i % len(splits)] for i in j],
            "rows": (n, slot[n, j])}


def _gather(parts: list, stores: list, ctx: int) -> np.ndarray:
    """Every part's activations, in order, copied once from its store (N, K, ctx) into one
    (rows, ctx) array: no ranked copy of a store and no per-kind array to concatenate."""
    out = np.empty((sum(len(p["rows"][0]) for p in parts), ctx), np.float32)
    at = 0
    for part, store in zip(parts, stores):
        n, r = part.pop("rows")
        # mode="clip": the indices are in range by construction, and "raise" buffers `out`.
        np.take(store.reshape(-1, ctx), n * store.shape[1] + r, axis=0, out=out[at:at + len(n)],
                mode="clip")
        at += len(n)
    return out


def write_layer(run_dir: Path, key: str, layer: int, res: Recorded, outputs: dict) -> None:
    """Write one layer's records and neuron statistics (plus the output-side columns)."""
    top = res.tops[layer]
    parts, stores, held = [_ranked("top", top.ids, top.slot, SPLITS)], [top.acts], [top.ids]
    if res.bottoms:
        bottom = res.bottoms[layer]
        parts.append(_ranked("bottom", bottom.ids, bottom.slot, SPLITS))
        stores.append(bottom.acts)
        held.append(bottom.ids)
    rs = res.randoms[layer]
    rand_ids, rand_slot = rs.chosen(np.concatenate(held, axis=1))
    if rs.pool is not None:
        parts.append(_ranked("random", rand_ids, rand_slot, RANDOM_SPLITS))
        stores.append(rs.pool.acts)
    if res.quantiles:
        for b, q in enumerate(res.quantiles[layer]):
            parts.append(_quantile_part(q, b))
            stores.append(q.acts)
    acts = _gather(parts, stores, top.acts.shape[2])
    cols = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    cols["max_activation"] = acts.max(axis=1) if len(acts) else acts[:, :0].sum(1)
    rundir.write_columns(run_dir, "records", {**cols, "activations": rundir.list_array(acts)},
                         model=key, layer=layer)
    st = res.stats[layer].summary()
    n_neurons = len(st["mean"])
    rand_acts = rows(rs.pool.acts, rand_slot) if rs.pool is not None else \
        np.empty((n_neurons, 0, top.acts.shape[2]), np.float32)
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


def _quantile_part(top, b: int) -> dict:
    """Bin b's quantile samples as records of kind 'quantile'; rank = bin * quantile_k +
    position."""
    part = _ranked("quantile", top.ids, top.slot, SPLITS)
    part["rank"] = part["rank"] + b * top.k
    part["split"] = [SPLITS[i % len(SPLITS)] for i in part["rank"]]
    return part
