"""`explain record`: run the hooked subject model over a corpus, keep each neuron's excerpts.

One forward pass per batch hooks every selected layer and stops after the last one. Per neuron
it keeps the exact top-k excerpts by max activation (samplers.TopK), on a signed (gated) model
also the bottom-k by min activation, its own uniform random sample drawn by hashed keys
(samplers.RandomSample) and running statistics over every token (samplers.Stats), all updated
inside the hook while the layer's activations are still in cache.
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
from explainer.record import corpus, logits, tables
from explainer.record import subject as models
from explainer import run as rundir
from explainer.config import RANDOM_SPLITS, SPLITS, RecordConfig, parse_spec
from explainer.record.tables import QUANTILE_PROBS

log = logging.getLogger(__name__)
TRIM_EVERY = 64  # batches between heap trims: a safety net against fragmentation on long runs
STAGE_ROWS = 1024  # excerpts per staged Parquet file: bounded memory, few files
# Settings that define what a model's recorded tables mean: a rerun must match them.
SETTINGS = ("model_id", "corpus", "n_excerpts", "ctx", "top_k", "random_k", "quantile_k",
            "quantile_bins", "seed", "sides", "bos_id", "sampling")
LOADED = ("sides", "bos_id")  # settings known only once the model is loaded
SAMPLING = 2  # version of the sampling rules (2: per-neuron hashed random sample, BOS first)
SIDES = ("auto", "pos", "both")


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
    if cfg.sides not in SIDES:
        raise ExplainError(f"--sides {cfg.sides!r}: expected one of {', '.join(SIDES)}")


def _settings(cfg: RecordConfig, model_id: str, sides: tuple[str, ...], bos_id) -> dict:
    return {"model_id": model_id, "corpus": cfg.corpus, "n_excerpts": cfg.n_excerpts,
            "ctx": cfg.ctx, "top_k": cfg.top_k, "random_k": cfg.random_k,
            "quantile_k": cfg.quantile_k, "quantile_bins": cfg.quantile_bins, "seed": cfg.seed,
            "sides": list(sides), "bos_id": bos_id, "sampling": SAMPLING}


def _sides(cfg: RecordConfig, subject) -> tuple[str, ...]:
    """Which signs are explanation targets: both on a gated MLP (or when asked), else pos."""
    if cfg.sides == "auto":
        return ("pos", "neg") if subject.signed else ("pos",)
    return ("pos", "neg") if cfg.sides == "both" else ("pos",)


def _check_existing(run: Path, key: str, settings: dict, skip: tuple = ()) -> list[int]:
    """Layers already recorded with these settings; an ExplainError if the settings differ."""
    meta = rundir.model_meta(run, key)
    if meta is None:
        return []
    for name in (n for n in SETTINGS if n not in skip):
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
    if cfg.ctx + 1 > spec.n_ctx:  # + the BOS token in front
        raise ExplainError(f"--ctx {cfg.ctx}: {spec.name} reads at most {spec.n_ctx - 1} tokens "
                           "after its BOS token")
    # Settings known before the model loads are checked first, so a mismatch fails fast.
    early = _settings(cfg, spec.model_id, (), None)
    if not [la for la in layers if la not in _check_existing(run_dir, spec.name, early,
                                                               LOADED)]:
        print(f"nothing to do: layers {cfg.layers} of {spec.name} are already recorded in "
              f"{run_dir}")
        return run_dir
    subject = models.load(spec, cfg.device)
    sides = _sides(cfg, subject)
    settings = _settings(cfg, spec.model_id, sides, subject.bos_id)
    done = _check_existing(run_dir, spec.name, settings)
    todo = [la for la in layers if la not in done]
    if not todo:
        print(f"nothing to do: layers {cfg.layers} of {spec.name} are already recorded in "
              f"{run_dir}")
        return run_dir
    created = not run_dir.exists()
    try:
        result = _record(cfg, subject, todo, sides)
        _check_same_text(run_dir, spec.name, result)
    except BaseException:
        shutil.rmtree(_staging(run_dir, spec.name), ignore_errors=True)
        if created:  # bad input found mid-pass (e.g. empty corpus): leave no files at all
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    _write(run_dir, cfg, subject, settings, todo, result)
    return run_dir


def _check_same_text(run_dir: Path, name: str, res: dict) -> None:
    """Layers added to a run must have read the very text its excerpts hold: same digest of
    every token id read, same excerpt count (a file added to a corpus folder, another dataset
    revision or another Python's pydoc topics would pair new activations with old text)."""
    meta = rundir.model_meta(run_dir, name)
    if meta is None:
        return
    for what, have, now in (("corpus_sha256", meta.get("corpus_sha256"), res["corpus_sha256"]),
                            ("n_excerpts_read", meta.get("n_excerpts_read"), res["n_read"])):
        if have != now:
            raise ExplainError(f"{run_dir}: its excerpts were recorded from a corpus with "
                               f"{what}={have}, but this pass read {what}={now}: the text "
                               "changed; record into a new --run")


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


def _record(cfg: RecordConfig, subject, layers: list[int], sides: tuple[str, ...]) -> dict:
    """The streaming pass: returns per-layer samplers and the staged excerpt files."""
    import torch
    from rich.progress import TextColumn

    from explainer import progress
    from explainer.record.samplers import RandomSample, Stats, TopK, stream_id

    stage = _staging(Path(cfg.run), subject.name)
    shutil.rmtree(stage, ignore_errors=True)
    d_mlp, mkey = subject.d_mlp, rundir.model_key(subject.name)
    tops = {la: TopK(cfg.top_k, d_mlp, cfg.ctx) for la in layers}
    bottoms = {la: TopK(cfg.top_k, d_mlp, cfg.ctx) for la in layers} if "neg" in sides else {}
    stats = {la: Stats(d_mlp) for la in layers}
    # Candidates beyond random_k let the neuron's own top/bottom excerpts be excluded at the end.
    extra = cfg.top_k * len(sides)
    randoms = {la: RandomSample(cfg.random_k, extra, d_mlp, cfg.ctx,
                                stream_id(cfg.seed, "random", mkey, la)) for la in layers}
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
        task = bar.add_task("record", total=cfg.n_excerpts, tps=0.0)
        for batch in _batches(source, cfg.batch_size):
            ids = torch.tensor([e.excerpt_id for e in batch])
            tokens = torch.tensor([e.token_ids for e in batch])  # (B, ctx)
            digest.update(tokens.numpy().astype(np.int32).tobytes())

            def consume(la, acts):  # acts (B, ctx, d_mlp), called as layer la's MLP fires
                bmax, bmin = stats[la].update(acts)  # (B, d_mlp) each excerpt's max and min
                tops[la].update(acts, ids, bmax)
                if bottoms:
                    bottoms[la].update(acts, ids, -bmin)  # the most negative rank first
                randoms[la].update(acts, ids)

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
    res = {"tops": tops, "bottoms": bottoms, "stats": stats, "randoms": randoms,
           "n_read": n_read, "corpus_sha256": digest.hexdigest(), "stage": stage}
    res["quantiles"] = _quantile_pass(cfg, subject, layers, res) if cfg.quantile_k else {}
    return res


def _quantile_pass(cfg: RecordConfig, subject, layers: list[int], res: dict) -> dict:
    """A second pass: per neuron, quantile_k random excerpts from each of quantile_bins bins.

    Bin b holds the excerpts whose max activation lies in (b/B, (b+1)/B] of the neuron's
    maximum (known only after the first pass, hence the second). Within a bin the excerpts with
    the smallest hashed keys win, a uniform sample that does not depend on reading order; the
    neuron's own top and bottom excerpts are left out, so no split sees an excerpt twice.
    """
    import torch

    from explainer.record.samplers import TopK, hashed_keys, stream_id

    n_bins, q = cfg.quantile_bins, cfg.quantile_k
    mkey = rundir.model_key(subject.name)
    maxima = {la: torch.from_numpy(res["stats"][la].max) for la in layers}
    held = {la: np.concatenate([res["tops"][la].ids]
                               + ([res["bottoms"][la].ids] if res["bottoms"] else []), axis=1)
            for la in layers}  # (N, m) excerpt ids each neuron already keeps
    bins = {la: [TopK(q, subject.d_mlp, cfg.ctx) for _ in range(n_bins)] for la in layers}
    source = corpus.excerpts(cfg.corpus, subject.tokenizer, cfg.ctx, cfg.n_excerpts)
    with torch.inference_mode(), steady_heap() as trim:
        for batch in _batches(source, cfg.batch_size):
            ids = torch.tensor([e.excerpt_id for e in batch])

            def consume(la, acts):
                frac = acts.amax(dim=1) / maxima[la].clamp(min=1e-12)  # (B, N)
                which = torch.ceil(frac * n_bins).long() - 1  # bin index; < 0 when max <= 0
                keys = -torch.from_numpy(hashed_keys(stream_id(cfg.seed, "quantile", mkey, la),
                                                     ids.numpy(), subject.d_mlp))
                mine = (ids.numpy()[:, None, None] == held[la][None]).any(axis=2)  # (B, N)
                keys[torch.from_numpy(mine)] = float("-inf")
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
                      "splits": {"top": list(SPLITS), "bottom": list(SPLITS),
                                 "random": list(RANDOM_SPLITS)},
                      "sides": list(settings["sides"]),
                      "first_token": ("BOS prepended; its activations are never kept"
                                      if subject.bos_id is not None else "no BOS token"),
                      "quantile_probs": list(QUANTILE_PROBS),
                      "quantiles_from": "tokens of each neuron's own random sample"}
    entry["packages"] = models.package_versions()
    for la in layers:
        rundir.remove_partition(run_dir, "records", key, la)
        rundir.remove_partition(run_dir, "neurons", key, la)
        tables.write_layer(run_dir, key, la, res, logits.layer_columns(subject, la))
        entry["layers_done"] = sorted(set(entry["layers_done"]) | {la})
        meta["models"][key] = entry
        rundir.write_run_json(run_dir, meta)
