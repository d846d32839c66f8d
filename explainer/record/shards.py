"""Recording in shards: consecutive ranges of excerpt ids, each recorded on its own, checkpointed,
then merged exactly.

Shard k reads excerpts [start, stop) of the corpus and keeps, per layer and neuron, its own
top-k, bottom-k and random-sample candidates and moment sums (`run_shard`). A finished shard's
state goes to the run's staging folder (one file per layer, then `done.json` last), so a killed
`record` resumes from the shards already finished, on either engine. The merge is exact
because every ranking is a total order on (key, excerpt id) that does not depend on reading
order: top-k by (max desc, id asc), bottom-k by (min asc, id asc), the random sample by hashed
key; moments are sums. The driver merges one shard's layer file at a time into the running
result, so it holds at most two layer states at once, whatever the number of shards. The local
engine's last shard is the exception: it is merged from memory and never written (`_KEPT`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explainer import run as rundir
from explainer.config import RecordConfig
from explainer.record import corpus
from explainer.subject import models
from explainer.record.heap import steady_heap
from explainer.record.samplers import (LayerSamplers, RandomSample, Stats, TopK, hashed_keys_at,
                                       rows, stream_id)

STAGE_ROWS = 1024  # excerpts per staged Parquet file: bounded memory, few files
SHARD_EXCERPTS = 4096  # default shard size: minutes of GPT-2 small, a checkpoint each
_SUBJECTS: dict = {}  # (model, device) -> the loaded subject, reused by a worker's next shard
# shard folder -> {"info": done.json's content, "arrays": {layer: state}}: the local engine's
# last shard, finished and merged by this process from memory, never written to disk (its
# checkpoint would only guard the seconds between the end of the pass and the first table
# written, at the cost of writing and reading every kept activation: ~1 GB for GPT-2 small).
_KEPT: dict = {}


@dataclass(frozen=True)
class ShardTask:
    """One shard of a recording: what a worker needs, and nothing it would have to share."""

    run: Path  # the run directory (staging lives inside it)
    cfg: RecordConfig
    index: int
    start: int  # first excerpt id
    stop: int  # one past the last excerpt id
    layers: tuple[int, ...]
    sides: tuple[str, ...]
    keep: bool = False  # hold the finished state in memory for this process's merge, unsaved


def plan(cfg: RecordConfig, n_shards: int = 0) -> list[tuple[int, int]]:
    """[start, stop) of each shard: `n_shards` equal ranges (0: SHARD_EXCERPTS each), cut at
    multiples of the batch size so both engines run the very same batches."""
    n = cfg.n_excerpts
    size = -(-n // n_shards) if n_shards else SHARD_EXCERPTS
    size = max(cfg.batch_size, -(-size // cfg.batch_size) * cfg.batch_size)
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def shard_dir(stage: Path, index: int) -> Path:
    return stage / f"shard-{index:05d}"


def done(stage: Path, index: int) -> dict | None:
    """A finished shard's summary (excerpts read, token digest), or None."""
    path = shard_dir(stage, index) / "done.json"
    if path.exists():
        return json.loads(path.read_text())
    kept = _KEPT.get(shard_dir(stage, index))
    return None if kept is None else kept["info"]


def subject_for(cfg: RecordConfig):
    """The subject model, loaded once per process (a Ray worker records many shards)."""
    key = (cfg.model, cfg.device)
    if key not in _SUBJECTS:
        _SUBJECTS.clear()  # one model at a time
        _SUBJECTS[key] = models.load(models.resolve(cfg.model), cfg.device)
    return _SUBJECTS[key]


def remember(cfg: RecordConfig, subject) -> None:
    """Hand this process's loaded subject to its shards (the local engine loads it once)."""
    _SUBJECTS.clear()
    _SUBJECTS[(cfg.model, cfg.device)] = subject


def run_shard(task: ShardTask, advance=lambda n, tokens: None) -> dict:
    """Record one shard into its checkpoint folder; returns {"units": excerpts read}.

    `advance(n_excerpts, n_tokens)` is called after every batch (the local engine's bar)."""
    import torch

    cfg = task.cfg
    stage = staging(task.run, models.resolve(cfg.model).name)
    out = shard_dir(stage, task.index)
    if done(stage, task.index) is not None:
        return {"units": 0}
    shutil.rmtree(out, ignore_errors=True)  # a shard killed half-way starts again
    out.mkdir(parents=True)
    subject = subject_for(cfg)
    state = _State(cfg, subject, task)
    digest = hashlib.sha256()
    n_read, pending = 0, []
    source = corpus.excerpts(cfg.corpus, subject.tokenizer, cfg.ctx, task.stop)
    source = itertools.dropwhile(lambda e: e.excerpt_id < task.start, source)
    with torch.inference_mode(), steady_heap() as trim:
        for batch in batches(source, cfg.batch_size):
            tokens = torch.tensor([e.token_ids for e in batch])  # (B, ctx)
            digest.update(tokens.numpy().astype(np.int32).tobytes())
            state.add(torch.tensor([e.excerpt_id for e in batch]), tokens)
            pending.extend(batch)
            if len(pending) >= STAGE_ROWS:
                _stage_excerpts(out, subject, pending)
                pending = []
            n_read += len(batch)
            trim()
            advance(len(batch), len(batch) * cfg.ctx)
    if pending:
        _stage_excerpts(out, subject, pending)
    info = {"n_read": n_read, "sha256": digest.hexdigest()}
    if task.keep:
        _KEPT.clear()
        _KEPT[out] = {"info": info, "arrays": state.arrays(in_place=True)}
    else:
        state.save(out)
        _atomic_text(out / "done.json", json.dumps(info))
    return {"units": n_read}


def on_device(cfg: RecordConfig) -> bool:
    """Whether the samplers run on the model's device (record/device.py): on a CUDA GPU.
    Elsewhere (the CPU; MPS, which has no float64) the Numba samplers do."""
    import torch

    return torch.device(cfg.device).type == "cuda"


class _State:
    """One shard's samplers, per layer, updated inside the hook of each layer."""

    def __init__(self, cfg: RecordConfig, subject, task: ShardTask):
        d, mkey = subject.d_mlp, rundir.model_key(subject.name)
        self.subject, self.layers = subject, list(task.layers)
        self.on_device = on_device(cfg)
        # Candidates beyond random_k let the neuron's own top/bottom excerpts be left out.
        extra = cfg.top_k * len(task.sides)
        streams = {la: stream_id(cfg.seed, "random", mkey, la) for la in task.layers}
        if self.on_device:
            from explainer.record import device

            dev = subject.device
            self.tops = {la: device.TopK(cfg.top_k, d, cfg.ctx, dev) for la in task.layers}
            self.bottoms = {la: device.TopK(cfg.top_k, d, cfg.ctx, dev) for la in task.layers} \
                if "neg" in task.sides else {}
            self.stats = {la: device.Stats(d, dev) for la in task.layers}
            self.randoms = {la: device.RandomSample(cfg.random_k, extra, d, cfg.ctx, streams[la],
                                                    dev) for la in task.layers}
            return
        # On the CPU one compiled pass per layer and batch updates all four (kernels.py).
        self.fused = {la: LayerSamplers(cfg.top_k, d, cfg.ctx, cfg.random_k, streams[la],
                                        "neg" in task.sides) for la in task.layers}
        self.tops = {la: f.top for la, f in self.fused.items()}
        self.bottoms = {la: f.bottom for la, f in self.fused.items()} \
            if "neg" in task.sides else {}
        self.stats = {la: f.stats for la, f in self.fused.items()}
        self.randoms = {la: f.random for la, f in self.fused.items()}

    def add(self, ids, tokens) -> None:
        if self.on_device:  # once per batch, not per layer; enqueued without a wait
            ids = ids.to(self.subject.device, non_blocking=True)

            def consume(la, acts):  # acts (B, ctx, d_mlp), called as layer la's MLP fires
                bmax, bmin = self.stats[la].update(acts)  # (B, d_mlp) each excerpt's max, min
                self.tops[la].update(acts, ids, bmax)
                if self.bottoms:
                    self.bottoms[la].update(acts, ids, -bmin)  # the most negative rank first
                self.randoms[la].update(acts, ids)
        else:
            def consume(la, acts):
                self.fused[la].update(acts, ids)

        # On the CPU the fused pass reads the layer's output in place (samplers.in_place).
        self.subject.stream(tokens, self.layers, consume, on_device=self.on_device,
                            view=not self.on_device)

    def layer_arrays(self, la: int, in_place: bool = False) -> dict:
        """One layer's state as named arrays, ranked (what a checkpoint file holds).

        in_place: the samplers' own buffers instead, each store with the slot of each rank
        (`_slotted`), for a state merged from memory and then dropped: the ranked copy of every
        kept activation (a store's size again in fresh pages, ~2 GB for SmolLM2's 30 layers and
        both sides) is never made; the merge and the tables gather each row once."""
        ranked = _slotted if in_place and not self.on_device else _ranked
        arrays = {**ranked("top", self.tops[la]), **_moments(self.stats[la])}
        if self.bottoms:
            arrays.update(ranked("bottom", self.bottoms[la]))
        if self.randoms[la].pool is not None:
            arrays.update(ranked("random", self.randoms[la].pool))
        return arrays

    def arrays(self, in_place: bool = False) -> dict:
        """{layer: layer_arrays(layer, in_place)}."""
        return {la: self.layer_arrays(la, in_place) for la in self.layers}

    def save(self, out: Path) -> None:
        """Write each layer's state to `out`, one file per layer, each written atomically."""
        for la in self.layers:
            tmp = out / f".layer-{la}.npz.tmp"
            with open(tmp, "wb") as f:
                np.savez(f, **self.layer_arrays(la))
            os.replace(tmp, out / f"layer-{la}.npz")


def _ranked(name: str, top: TopK) -> dict:
    ids, vals, acts = top.ranked()
    return {f"{name}_ids": ids, f"{name}_vals": vals, f"{name}_acts": acts}


def _slotted(name: str, top: TopK) -> dict:
    """_ranked's arrays without the gather: the store as it is, `{name}_slot` (N, k) naming
    the row of `{name}_acts` that holds each rank (the buffers themselves, not copies)."""
    return {f"{name}_ids": top.ids, f"{name}_vals": top.vals, f"{name}_slot": top.slot,
            f"{name}_acts": top.acts}


def _moments(st: Stats) -> dict:
    st = st.to_numpy() if hasattr(st, "to_numpy") else st  # the device's sums, to the host
    return {"sum": st.sum, "sumsq": st.sumsq, "pos": st.pos, "min": st.min, "max": st.max,
            "n": np.array(st.n)}


# --- merging ----------------------------------------------------------------------------------


def merge_layer(stage: Path, indices: list[int], layer: int, cfg: RecordConfig,
                sides: tuple[str, ...], n_neurons: int, stream: int) -> dict:
    """One layer's samplers merged over the finished shards, one shard file at a time."""
    acc: dict | None = None
    for k in indices:
        part = _KEPT.get(shard_dir(stage, k), {}).get("arrays", {}).pop(layer, None)
        if part is None:
            with np.load(shard_dir(stage, k) / f"layer-{layer}.npz") as z:
                part = {name: z[name] for name in z.files}
        acc = part if acc is None else _merge(acc, part, cfg, stream)
    top = _top_k(acc, "top", cfg.top_k, n_neurons, cfg.ctx)
    stats = Stats(n_neurons)
    stats.sum, stats.sumsq, stats.pos = acc["sum"], acc["sumsq"], acc["pos"]
    stats.min, stats.max, stats.n = acc["min"], acc["max"], int(acc["n"])
    rs = RandomSample(cfg.random_k, cfg.top_k * len(sides), n_neurons, cfg.ctx, stream)
    if rs.pool is not None:
        rs.pool = _top_k(acc, "random", rs.pool.k, n_neurons, cfg.ctx)
    bottom = _top_k(acc, "bottom", cfg.top_k, n_neurons, cfg.ctx) if "neg" in sides else None
    return {"top": top, "bottom": bottom, "random": rs, "stats": stats}


def _merge(a: dict, b: dict, cfg: RecordConfig, stream: int) -> dict:
    out = {"sum": a["sum"] + b["sum"], "sumsq": a["sumsq"] + b["sumsq"], "pos": a["pos"] + b["pos"],
           "min": np.minimum(a["min"], b["min"]), "max": np.maximum(a["max"], b["max"]),
           "n": np.array(int(a["n"]) + int(b["n"]))}
    for name in ("top", "bottom"):
        if f"{name}_ids" in a:
            k = a[f"{name}_ids"].shape[1]
            out.update(merge_ranked(a, b, name, k))
    if "random_ids" in a:
        out.update(merge_pools(a, b, out, stream))
    return out


def merge_pools(a: dict, b: dict, out: dict, stream: int) -> dict:
    """Two shards' random pools merged, given their tops and bottoms merged in `out`.

    A CPU shard's pool holds the smallest hashed keys among its excerpts in neither its top
    nor its bottom (samplers.LayerSamplers), so an excerpt that falls out of the merged top or
    bottom (and is in neither) is a candidate too, with its activations from the shard's top
    or bottom store. Candidates in the merged top or bottom are left out, and an excerpt
    offered twice (in a pool that keeps spare candidates, as the GPU's does, and falling out)
    counts once: the merged pool is then again the smallest keys outside the merged top and
    bottom, as many as each side's pool holds."""
    k = a["random_ids"].shape[1]
    own = np.concatenate([out[f"{s}_ids"] for s in ("top", "bottom") if f"{s}_ids" in out],
                         axis=1)
    segments = [(a, "random"), (b, "random")]
    segments += [(p, s) for s in ("top", "bottom") if f"{s}_ids" in a for p in (a, b)]
    ids = np.concatenate([p[f"{s}_ids"] for p, s in segments], axis=1)  # (N, M)
    vals = np.concatenate([p["random_vals"] if s == "random" else
                           -hashed_keys_at(stream, np.maximum(p[f"{s}_ids"], 0))
                           for p, s in segments], axis=1)
    # (neuron, id) as one integer, so that set operations run on flat arrays
    span = int(max(ids.max(initial=0), own.max(initial=0))) + 2  # ids -1 .. max
    rows_ = np.arange(ids.shape[0], dtype=np.int64)[:, None]
    pair, own_pair = rows_ * span + ids + 1, rows_ * span + own + 1
    valid = (ids >= 0) & ~np.isin(pair, own_pair[own >= 0])
    # An id offered twice keeps its first place (pools first, then tops, then bottoms).
    first = np.zeros(ids.size, bool)
    first[np.unique(pair.ravel(), return_index=True)[1]] = True
    valid &= first.reshape(ids.shape)
    vals = np.where(valid, vals, -np.inf)
    ids = np.where(valid, ids, -1)
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -vals), axis=-1)[:, :k]
    acts = np.zeros((ids.shape[0], k, a["random_acts"].shape[2]), np.float32)
    start = 0
    for p, s in segments:
        width = p[f"{s}_ids"].shape[1]
        n, r = np.nonzero((order >= start) & (order < start + width))
        if len(n):
            acts[n, r] = p[f"{s}_acts"][n, _store_rows(p, s, order - start)[n, r]]
        start += width
    return {"random_ids": np.take_along_axis(ids, order, axis=1),
            "random_vals": np.take_along_axis(vals, order, axis=1), "random_acts": acts}


def forget() -> None:
    """Drop the shard states kept in memory (before a pass, and once it is merged)."""
    _KEPT.clear()


def merge_ranked(a: dict, b: dict, name: str, k: int) -> dict:
    """The k best of two ranked buffers per neuron, by (value desc, excerpt id asc).

    Either side may be `_slotted` (its store in slot order); the result is ranked, each kept
    row gathered straight from its side's store (no (N, 2k, ctx) concatenation)."""
    a_ids, b_ids = a[f"{name}_ids"], b[f"{name}_ids"]
    ids = np.concatenate([a_ids, b_ids], axis=1)  # (N, 2k)
    vals = np.concatenate([a[f"{name}_vals"], b[f"{name}_vals"]], axis=1)
    # Empty slots (-inf, id -1) sort last; every real excerpt id appears in one shard only.
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -vals), axis=-1)[:, :k]
    ka = a_ids.shape[1]
    from_a = order < ka
    acts = rows(a[f"{name}_acts"], _store_rows(a, name, np.minimum(order, ka - 1)))
    n, r = np.nonzero(~from_a)  # ranks taken from b overwrite what was gathered from a
    if len(n):
        acts[n, r] = b[f"{name}_acts"][n, _store_rows(b, name, order - ka)[n, r]]
    return {f"{name}_ids": np.take_along_axis(ids, order, axis=1),
            f"{name}_vals": np.take_along_axis(vals, order, axis=1),
            f"{name}_acts": acts}


def _store_rows(part: dict, name: str, ranks: np.ndarray) -> np.ndarray:
    """The rows of part's store holding these ranks (N, m) (clipped into range)."""
    ranks = np.clip(ranks, 0, part[f"{name}_ids"].shape[1] - 1)
    slot = part.get(f"{name}_slot")
    return ranks if slot is None else np.take_along_axis(slot, ranks, axis=1)


def _top_k(acc: dict, name: str, k: int, n_neurons: int, ctx: int) -> TopK:
    """A TopK holding merged arrays, ranked or `_slotted` (no copy either way)."""
    return TopK.of(acc[f"{name}_ids"], acc[f"{name}_vals"], acc[f"{name}_acts"],
                   acc.get(f"{name}_slot"))


# --- plumbing of the pass ---------------------------------------------------------------------


def staging(run_dir: Path, model: str) -> Path:
    """The hidden folder a recording stages its shards in until the tables are written."""
    return Path(run_dir) / f".staging-{rundir.model_key(model)}"


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def batches(source, size: int):
    """Consecutive lists of `size` items of `source` (the last may be shorter)."""
    batch = []
    for ex in source:
        batch.append(ex)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _stage_excerpts(out: Path, subject, batch) -> None:
    cols = {"excerpt_id": [e.excerpt_id for e in batch],
            "token_ids": [e.token_ids for e in batch],
            "tokens": [subject.token_strings(e.token_ids) for e in batch]}
    rundir.write_columns(out, "excerpts", cols, model=subject.name,
                         prefix=f"{batch[0].excerpt_id:09d}")
