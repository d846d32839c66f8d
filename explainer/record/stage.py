"""`explain record`: run the hooked subject model over a corpus, keep each neuron's excerpts.

One forward pass per batch hooks every selected layer and stops after the last one. Per neuron
it keeps the exact top-k excerpts by max activation (topk.TopK), a seeded uniform sample of
excerpts shared by all neurons (topk.Reservoir) and running statistics over every token
(topk.Stats), all updated inside the hook while the layer's activations are still in cache.
Nothing is written until the pass has finished: excerpts go to a hidden staging folder and move
into place at the end, then each layer's tables are written and marked done in run.json. A
killed run therefore leaves either finished layers or nothing, and a rerun redoes exactly the
layers not marked done.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import logging
import shutil
from pathlib import Path

import numpy as np

from explainer import ExplainError
from explainer.record import corpus, logits
from explainer.record import subject as models
from explainer import run as rundir
from explainer.config import RANDOM_SPLITS, SPLITS, RecordConfig, parse_spec

log = logging.getLogger(__name__)
TRIM_EVERY = 64  # batches between heap trims: a safety net against fragmentation on long runs
STAGE_ROWS = 1024  # excerpts per staged Parquet file: bounded memory, few files
QUANTILE_PROBS = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)
# Settings that define what a model's recorded tables mean: a rerun must match them.
SETTINGS = ("model_id", "corpus", "n_excerpts", "ctx", "top_k", "random_k", "quantile_k",
            "quantile_bins", "seed")


def _check_numbers(cfg: RecordConfig) -> None:
    for name in ("n_excerpts", "ctx", "top_k", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ExplainError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 1")
    for name in ("random_k", "quantile_k"):
        if getattr(cfg, name) < 0:
            raise ExplainError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 0")
    if cfg.top_k > cfg.n_excerpts:
        raise ExplainError(f"--top-k {cfg.top_k}: larger than --n-excerpts {cfg.n_excerpts}")
    if cfg.quantile_k and cfg.quantile_bins < 1:
        raise ExplainError(f"--quantile-bins {cfg.quantile_bins}: must be >= 1")


def _settings(cfg: RecordConfig, model_id: str) -> dict:
    return {"model_id": model_id, "corpus": cfg.corpus, "n_excerpts": cfg.n_excerpts,
            "ctx": cfg.ctx, "top_k": cfg.top_k, "random_k": cfg.random_k,
            "quantile_k": cfg.quantile_k, "quantile_bins": cfg.quantile_bins, "seed": cfg.seed}


def _check_existing(run: Path, key: str, settings: dict) -> list[int]:
    """Layers already recorded with these settings; an ExplainError if the settings differ."""
    meta = rundir.model_meta(run, key)
    if meta is None:
        return []
    for name in SETTINGS:
        if meta.get("settings", {}).get(name) != settings[name]:
            raise ExplainError(
                f"{run}: recorded with {name}={meta['settings'].get(name)!r}, not "
                f"{settings[name]!r}; use another --run or the same settings")
    return list(meta.get("layers_done", []))


def run(cfg: RecordConfig) -> Path:
    """Record the selected layers of one subject model into the run directory; returns it."""
    run_dir = Path(cfg.run)
    _check_numbers(cfg)
    corpus.check(cfg.corpus)
    spec = models.resolve(cfg.model)
    layers = parse_spec(cfg.layers, spec.n_layers, "layer", spec.name)
    if cfg.ctx > spec.n_ctx:
        raise ExplainError(f"--ctx {cfg.ctx}: {spec.name} reads at most {spec.n_ctx} tokens")
    settings = _settings(cfg, spec.model_id)
    done = _check_existing(run_dir, spec.name, settings)
    todo = [la for la in layers if la not in done]
    if not todo:
        print(f"nothing to do: layers {cfg.layers} of {spec.name} are already recorded in "
              f"{run_dir}")
        return run_dir
    subject = models.load(spec, cfg.device)
    created = not run_dir.exists()
    try:
        result = _record(cfg, subject, todo)
    except BaseException:
        shutil.rmtree(_staging(run_dir, spec.name), ignore_errors=True)
        if created:  # bad input found mid-pass (e.g. empty corpus): leave no files at all
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    _write(run_dir, cfg, subject, settings, todo, result)
    return run_dir


def _staging(run_dir: Path, name: str) -> Path:
    return run_dir / f".staging-{rundir.model_key(name)}"


@contextlib.contextmanager
def steady_heap(trim_every: int = TRIM_EVERY):
    """Keep freed memory in glibc's heap for the pass; yields a per-batch callback that trims.

    By default glibc hands the top of its heap back to the OS whenever enough of it is free,
    and each batch's large temporaries then page-fault it in again: up to a GB of faults per
    batch on GPT-2 small, depending on what else lives in the heap. Here large blocks come
    from the heap and stay, and every trim_every batches malloc_trim bounds the peak; the
    defaults come back afterwards. A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield lambda: None
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # the most glibc allows
    mallopt(m_trim_threshold, (1 << 31) - 1)
    batches = itertools.count(1)
    try:
        yield lambda: malloc_trim(0) if next(batches) % trim_every == 0 else None
    finally:
        mallopt(m_mmap_threshold, 128 << 10)  # glibc's defaults
        mallopt(m_trim_threshold, 128 << 10)
        malloc_trim(0)


def _record(cfg: RecordConfig, subject, layers: list[int]) -> dict:
    """The streaming pass: returns per-layer samplers and the staged excerpt files."""
    import torch
    from rich.progress import TextColumn

    from explainer import progress

    from explainer.record.samplers import Reservoir, Stats, TopK

    stage = _staging(Path(cfg.run), subject.name)
    shutil.rmtree(stage, ignore_errors=True)
    d_mlp = subject.d_mlp
    tops = {la: TopK(cfg.top_k, d_mlp, cfg.ctx) for la in layers}
    stats = {la: Stats(d_mlp) for la in layers}
    reservoir = Reservoir(cfg.random_k, cfg.seed)
    rand_acts = {la: torch.zeros(cfg.random_k, cfg.ctx, d_mlp) for la in layers}
    digest = hashlib.sha256()
    n_read = 0
    pending: list = []  # excerpts staged in files of up to STAGE_ROWS rows
    source = corpus.excerpts(cfg.corpus, subject.tokenizer, cfg.ctx, cfg.n_excerpts)
    first = next(source, None)  # an unreadable corpus fails here, before the bar is drawn
    if first is None:
        raise ExplainError(f"--corpus {cfg.corpus}: holds fewer than {cfg.ctx} tokens "
                           f"for {subject.name}'s tokenizer")
    source = itertools.chain([first], source)
    tps = TextColumn("{task.fields[tps]:,.0f} tok/s")
    with progress.bar(f"record {subject.name}", tps) as bar, torch.inference_mode(), \
            steady_heap() as trim:
        task = bar.add_task("record", total=cfg.n_excerpts, model=subject.name, tps=0.0)
        for batch in _batches(source, cfg.batch_size):
            ids = torch.tensor([e.excerpt_id for e in batch])
            tokens = torch.tensor([e.token_ids for e in batch])  # (B, ctx)
            digest.update(tokens.numpy().astype(np.int32).tobytes())
            picks = reservoir.offer(len(batch))

            def consume(la, acts):  # acts (B, ctx, d_mlp), called as layer la's MLP fires
                bmax = stats[la].update(acts)  # (B, d_mlp) each excerpt's max per neuron
                tops[la].update(acts, ids, bmax)
                for slot, i in picks:
                    rand_acts[la][slot] = acts[i]

            subject.stream(tokens, layers, consume)
            pending.extend(batch)
            if len(pending) >= STAGE_ROWS:
                _stage_excerpts(stage, subject, pending)
                pending = []
            n_read += len(batch)
            trim()
            elapsed = bar.tasks[0].elapsed or 1e-9
            bar.update(task, advance=len(batch), tps=n_read * cfg.ctx / elapsed)
        bar.update(task, total=n_read)
    if pending:
        _stage_excerpts(stage, subject, pending)
    if cfg.top_k > n_read:
        raise ExplainError(f"--top-k {cfg.top_k}: the corpus gave only {n_read} excerpts "
                           f"of {cfg.ctx} tokens")
    random_k = min(cfg.random_k, n_read)
    quant = _quantile_pass(cfg, subject, layers,
                           {la: torch.from_numpy(stats[la].max) for la in layers}) \
        if cfg.quantile_k else {}
    return {"tops": tops, "stats": stats, "rand_ids": reservoir.ids[:random_k],
            "rand_acts": {la: a[:random_k].numpy() for la, a in rand_acts.items()},
            "quantiles": quant, "n_read": n_read, "corpus_sha256": digest.hexdigest(),
            "stage": stage}


def _quantile_pass(cfg: RecordConfig, subject, layers: list[int], maxima: dict) -> dict:
    """A second pass: per neuron, quantile_k random excerpts from each of quantile_bins bins.

    Bin b holds the excerpts whose max activation lies in (b/B, (b+1)/B] of the neuron's
    maximum (known only after the first pass, hence the second). Within a bin the excerpts with
    the smallest seeded random keys win, which is a uniform sample drawn in a stream.
    """
    import torch

    from explainer.record.samplers import TopK

    n_bins, q = cfg.quantile_bins, cfg.quantile_k
    bins = {la: [TopK(q, subject.d_mlp, cfg.ctx) for _ in range(n_bins)] for la in layers}
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    source = corpus.excerpts(cfg.corpus, subject.tokenizer, cfg.ctx, cfg.n_excerpts)
    with torch.inference_mode(), steady_heap() as trim:
        for batch in _batches(source, cfg.batch_size):
            ids = torch.tensor([e.excerpt_id for e in batch])
            keys = -torch.rand(len(batch), subject.d_mlp, generator=gen)  # (B, N), higher wins

            def consume(la, acts):
                frac = acts.amax(dim=1) / maxima[la].clamp(min=1e-12)  # (B, N)
                which = torch.ceil(frac * n_bins).long() - 1  # bin index; < 0 when max <= 0
                for b, top in enumerate(bins[la]):
                    in_bin = torch.where(which == b, keys, torch.tensor(float("-inf")))
                    top.update(acts, ids, in_bin)

            subject.stream(torch.tensor([e.token_ids for e in batch]), layers, consume)
            trim()
    return bins


def _batches(source, size: int):
    batch = []
    for ex in source:
        batch.append(ex)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _stage_excerpts(stage: Path, subject, batch) -> None:
    cols = {"excerpt_id": [e.excerpt_id for e in batch],
            "token_ids": [e.token_ids for e in batch],
            "tokens": [subject.token_strings(e.token_ids) for e in batch]}
    rundir.write_columns(stage, "excerpts", cols, model=subject.name,
                        prefix=f"{batch[0].excerpt_id:09d}")


def _write(run_dir: Path, cfg: RecordConfig, subject, settings: dict, layers: list[int],
           res: dict) -> None:
    key = rundir.model_key(subject.name)
    meta = rundir.read_run_json(run_dir)
    entry = meta["models"].get(key)
    if entry is None or not rundir.files(run_dir, "excerpts", key):
        rundir.remove_partition(run_dir, "excerpts", key)
        target = rundir.partition_dir(run_dir, "excerpts", key)
        target.parent.mkdir(parents=True, exist_ok=True)
        (res["stage"] / "excerpts" / f"model={key}").rename(target)
    shutil.rmtree(res["stage"], ignore_errors=True)
    entry = entry or {**subject.meta(), "settings": settings, "layers_done": [],
                      "n_excerpts_read": res["n_read"], "corpus_sha256": res["corpus_sha256"],
                      "splits": {"top": list(SPLITS), "random": list(RANDOM_SPLITS)},
                      "quantile_probs": list(QUANTILE_PROBS),
                      "quantiles_from": "tokens of the random sample"}
    entry["packages"] = models.package_versions()
    for la in layers:
        rundir.remove_partition(run_dir, "records", key, la)
        rundir.remove_partition(run_dir, "neurons", key, la)
        _write_layer(run_dir, key, la, res, logits.layer_columns(subject, la))
        entry["layers_done"] = sorted(set(entry["layers_done"]) | {la})
        meta["models"][key] = entry
        rundir.write_run_json(run_dir, meta)


def _write_layer(run_dir: Path, key: str, layer: int, res: dict, outputs: dict) -> None:
    ids, vals, acts = res["tops"][layer].ranked()  # (N, k), (N, k), (N, k, ctx)
    n_neurons, k = ids.shape
    rand_ids, rand_acts = res["rand_ids"], res["rand_acts"][layer]  # (R,), (R, ctx, N)
    r = len(rand_ids)
    neuron = np.repeat(np.arange(n_neurons, dtype=np.int32), k + r)
    rank = np.tile(np.r_[np.arange(k), np.arange(r)].astype(np.int32), n_neurons)
    kind = np.tile(np.array(["top"] * k + ["random"] * r, dtype=object), n_neurons)
    split = np.tile(np.array([SPLITS[i % len(SPLITS)] for i in range(k)]
                             + [RANDOM_SPLITS[i % len(RANDOM_SPLITS)] for i in range(r)],
                             dtype=object), n_neurons)
    excerpt = np.concatenate([ids, np.broadcast_to(rand_ids, (n_neurons, r))], axis=1)
    all_acts = np.concatenate([acts, rand_acts.transpose(2, 0, 1)], axis=1)  # (N, k + r, ctx)
    all_max = np.concatenate([vals, rand_acts.max(axis=1).T], axis=1)
    rundir.write_columns(run_dir, "records", {
        "neuron": neuron, "excerpt_id": excerpt.ravel(), "kind": kind, "rank": rank,
        "split": split, "activations": rundir.list_array(all_acts.reshape(-1, all_acts.shape[-1])),
        "max_activation": all_max.ravel()}, model=key, layer=layer)
    if res["quantiles"]:
        _write_quantiles(run_dir, key, layer, res["quantiles"][layer])
    st = res["stats"][layer].summary()
    tokens = rand_acts.reshape(-1, n_neurons)  # (R*ctx, N) uniform sample of tokens
    quant = np.quantile(tokens, QUANTILE_PROBS, axis=0).T.astype(np.float32)  # (N, Q)
    rundir.write_columns(run_dir, "neurons", {
        "neuron": np.arange(n_neurons, dtype=np.int32), **st,
        "quantiles": rundir.list_array(quant), **outputs}, model=key, layer=layer)


def _write_quantiles(run_dir: Path, key: str, layer: int, bins: list) -> None:
    """Quantile samples as records of kind 'quantile'; rank = bin * quantile_k + position."""
    rows = {"neuron": [], "excerpt_id": [], "rank": [], "acts": [], "max": []}
    q = bins[0].k
    for b, top in enumerate(bins):
        ids, _, acts = top.ranked()  # (N, q), (N, q, ctx)
        n, j = np.nonzero(ids >= 0)  # a bin may hold fewer than q excerpts
        rows["neuron"].append(n)
        rows["excerpt_id"].append(ids[n, j])
        rows["rank"].append(b * q + j)
        rows["acts"].append(acts[n, j])
        rows["max"].append(acts[n, j].max(axis=1))
    rank = np.concatenate(rows["rank"]).astype(np.int32)
    rundir.write_columns(run_dir, "records", {
        "neuron": np.concatenate(rows["neuron"]).astype(np.int32),
        "excerpt_id": np.concatenate(rows["excerpt_id"]), "kind": ["quantile"] * len(rank),
        "rank": rank, "split": [SPLITS[i % len(SPLITS)] for i in rank],
        "activations": rundir.list_array(np.concatenate(rows["acts"])),
        "max_activation": np.concatenate(rows["max"])}, model=key, layer=layer,
        prefix="quantile")
