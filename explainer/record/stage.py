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

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from explainer import ExplainError
from explainer import config as C
from explainer.record import corpus, heap, logits, shards, tables
from explainer.subject import models
from explainer import run as rundir
from explainer.config import RecordConfig
from explainer.run.specs import RANDOM_SPLITS, SPLITS, parse_spec
from explainer.record.samplers import stream_id
from explainer.record.tables import QUANTILE_PROBS, Recorded

log = logging.getLogger(__name__)
# Settings that define what a model's recorded tables mean: a rerun must match them.
SETTINGS = ("model_id", "corpus", "n_excerpts", "ctx", "top_k", "random_k", "quantile_k",
            "quantile_bins", "seed", "sides", "bos_id", "sampling")
LOADED = ("sides", "bos_id")  # settings known only once the model is loaded
SAMPLING = 3  # version of the sampling rules (2: per-neuron hashed random sample, BOS first)
SIDES = ("auto", "pos", "both")
# Excerpts per forward pass when --batch-size is not given. On a CPU the pass is bound by
# arithmetic, and 32 already keeps both the model and the samplers' loops busy (a larger batch
# only grows memory). On a CUDA GPU a batch of 32 leaves the device waiting on Python between
# small kernels: record ÷ bare forward measured 0.375 at 32 and 0.803 at 512 on an H200 (GPT-2
# small shape; 512 x 65 tokens x 3,072 neurons is 0.4 GB of activations per hooked layer).
BATCH_SIZES = {"cpu": 32, "cuda": 512}


def default_batch_size(device: str) -> int:
    """Excerpts per forward pass for a torch device string when the user gives none."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ExplainError(f"--device {device}: not a torch device (cpu, cuda, cuda:1, mps)") \
            from None
    return BATCH_SIZES.get(kind, BATCH_SIZES["cpu"])  # mps and others: the CPU samplers run


def _with_batch_size(cfg: RecordConfig, run_dir: Path, name: str) -> RecordConfig:
    """cfg with its batch size settled: the one this run recorded the model with (it fixes the
    shard plan, so a resumed or extended run reads the very same shards), else the user's, else
    the device's default. An explicit different one is an ExplainError."""
    stored = _stored_batch_size(run_dir, name)
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise ExplainError(f"--batch-size {cfg.batch_size}: must be >= 1")
    if cfg.batch_size is not None and stored is not None and cfg.batch_size != stored:
        raise ExplainError(f"--batch-size {cfg.batch_size}: {run_dir} records {name} with "
                           f"--batch-size {stored}; resume with {stored} (or leave it out) or "
                           "use another --run")
    size = stored or cfg.batch_size or default_batch_size(cfg.device)
    return dataclasses.replace(cfg, batch_size=size)


def _stored_batch_size(run_dir: Path, name: str) -> int | None:
    plan = rundir.read_run_json(run_dir).get("record", {}).get(rundir.model_key(name), {})
    return plan.get("batch_size")


def _store_batch_size(run_dir: Path, name: str, size: int | None) -> None:
    """Keep (or, with None, forget) the batch size of a model's recording in run.json."""
    key = rundir.model_key(name)

    def change(meta: dict) -> None:
        plans = meta.setdefault("record", {})
        if size is None:
            plans.pop(key, None)
        else:
            plans.setdefault(key, {})["batch_size"] = size

    rundir.update_run_json(run_dir, change)


def _check_numbers(cfg: RecordConfig) -> None:
    for name in ("n_excerpts", "ctx", "top_k"):
        if getattr(cfg, name) < 1:
            raise ExplainError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 1")
    for name in ("random_k", "quantile_k", "shards"):
        if getattr(cfg, name) < 0:
            raise ExplainError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 0")
    if cfg.top_k > cfg.n_excerpts:
        raise ExplainError(f"--top-k {cfg.top_k}: larger than --n-excerpts {cfg.n_excerpts}")
    if cfg.quantile_k and cfg.quantile_bins < 1:
        raise ExplainError(f"--quantile-bins {cfg.quantile_bins}: must be >= 1")
    if cfg.engine is not None:
        from explainer import engine

        engine.check(cfg.engine)
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
    cfg = _with_batch_size(cfg, run_dir, spec.name)
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
    if not shards.on_device(cfg):  # the CPU samplers' compiled pass, beside the model's load
        from explainer.record import warmup

        warmup.warm_in_background()
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
    fresh = _stored_batch_size(run_dir, spec.name) is None
    _store_batch_size(run_dir, spec.name, cfg.batch_size)  # before any shard is staged
    outputs = logits.OutputSide(subject, todo)  # what each neuron writes, beside the pass
    try:
        result = _record(cfg, subject, todo, sides, settings)
        _check_same_text(run_dir, spec.name, result)
    except BaseException as e:
        outputs.cancel()
        if isinstance(e, ExplainError):
            # Bad input found mid-pass (e.g. an empty corpus): leave no files at all. A kill or
            # Ctrl-C keeps the finished shards in the staging folder; a rerun resumes from them.
            shutil.rmtree(shards.staging(run_dir, spec.name), ignore_errors=True)
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            elif fresh:
                _store_batch_size(run_dir, spec.name, None)
        raise
    _write(run_dir, cfg, subject, settings, todo, result, outputs)
    return run_dir


def _check_same_text(run_dir: Path, name: str, res: Recorded) -> None:
    """Layers added to a run must have read the very text its excerpts hold: same digest of
    every token id read, same excerpt count (a file added to a corpus folder, another dataset
    revision or another Python's pydoc topics would pair new activations with old text)."""
    meta = rundir.model_meta(run_dir, name)
    if meta is None:
        return
    for what, have, now in (("corpus_sha256", meta.get("corpus_sha256"), res.corpus_sha256),
                            ("n_excerpts_read", meta.get("n_excerpts_read"), res.n_read)):
        if have != now:
            raise ExplainError(f"{run_dir}: its excerpts were recorded from a corpus with "
                               f"{what}={have}, but this pass read {what}={now}: the text "
                               "changed; record into a new --run")


def _record(cfg: RecordConfig, subject, layers: list[int], sides: tuple[str, ...],
            settings: dict) -> Recorded:
    """Record the corpus shard by shard (resuming finished shards), then merge the shards."""
    run_dir = Path(cfg.run)
    stage = shards.staging(run_dir, subject.name)
    _reset_if_stale(stage, {**settings, "layers": list(layers)})
    tasks = [shards.ShardTask(run_dir, cfg, k, a, b, tuple(layers), sides)
             for k, (a, b) in enumerate(shards.plan(cfg, cfg.shards))]
    todo = [t for t in tasks if shards.done(stage, t.index) is None]
    shards.forget()  # nothing kept from another pass of this process
    if len(todo) < len(tasks):
        print(f"record: {len(tasks) - len(todo)} of {len(tasks)} shards already recorded, "
              "resumed", file=sys.stderr)
    engine = cfg.engine or C.EngineConfig()
    if todo and engine.engine == "ray":
        from explainer.engine import ray_engine

        ray_engine.run_blocks(engine, run_dir, [(shards.run_shard, t, t.stop - t.start)
                                                for t in todo], "record", unit="excerpts")
    elif todo:
        from explainer.engine import local

        shards.remember(cfg, subject)  # the shards run here, on the model already loaded
        # The last shard's state stays in memory for the merge below (no re-read from disk).
        todo[-1] = dataclasses.replace(todo[-1], keep=True)
        local.run_blocks(run_dir, [(shards.run_shard, t, t.stop - t.start) for t in todo],
                         f"record {subject.name}", unit="excerpts", live=True)
    infos = [shards.done(stage, t.index) for t in tasks]
    n_read = sum(i["n_read"] for i in infos)
    if n_read == 0:
        raise ExplainError(f"--corpus {cfg.corpus}: holds fewer than {cfg.ctx} tokens "
                           f"for {subject.name}'s tokenizer")
    if cfg.top_k > n_read:
        raise ExplainError(f"--top-k {cfg.top_k}: the corpus gave only {n_read} excerpts "
                           f"of {cfg.ctx} tokens")
    used = tuple(t.index for t, i in zip(tasks, infos) if i["n_read"])
    tops, bottoms, stats, randoms = {}, {}, {}, {}
    mkey = rundir.model_key(subject.name)
    for la in layers:
        m = shards.merge_layer(stage, used, la, cfg, sides, subject.d_mlp,
                               stream_id(cfg.seed, "random", mkey, la))
        tops[la], stats[la], randoms[la] = m["top"], m["stats"], m["random"]
        if m["bottom"] is not None:
            bottoms[la] = m["bottom"]
    shards.forget()
    res = Recorded(tops, bottoms, randoms, stats, {}, n_read, hashlib.sha256(
        "".join(i["sha256"] for i in infos).encode()).hexdigest(), stage, used)
    if cfg.quantile_k:
        res = dataclasses.replace(res, quantiles=_quantile_pass(cfg, subject, layers, res))
    return res


def _reset_if_stale(stage: Path, wanted: dict) -> None:
    """Staged shards are reused only by a rerun with the same settings and layers."""
    path = stage / "settings.json"
    if path.exists() and json.loads(path.read_text()) == json.loads(json.dumps(wanted)):
        return
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    path.write_text(json.dumps(wanted))


def _quantile_pass(cfg: RecordConfig, subject, layers: list[int], res: Recorded) -> dict:
    """A second pass: per neuron, quantile_k random excerpts from each of quantile_bins bins.

    Bin b holds the excerpts whose max activation lies in (b/B, (b+1)/B] of the neuron's
    maximum (known only after the first pass, hence the second, run in this process). Within a
    bin the excerpts with the smallest hashed keys win, a uniform sample that does not depend
    on reading order; the neuron's own top and bottom excerpts are left out, so no split sees
    an excerpt twice.
    """
    import torch

    from explainer.record.samplers import TopK, hashed_keys

    n_bins, q = cfg.quantile_bins, cfg.quantile_k
    mkey = rundir.model_key(subject.name)
    maxima = {la: torch.from_numpy(res.stats[la].max) for la in layers}
    held = {la: np.concatenate([res.tops[la].ids]
                               + ([res.bottoms[la].ids] if res.bottoms else []), axis=1)
            for la in layers}  # (N, m) excerpt ids each neuron already keeps
    bins = {la: [TopK(q, subject.d_mlp, cfg.ctx) for _ in range(n_bins)] for la in layers}
    streams = {la: stream_id(cfg.seed, "quantile", mkey, la) for la in layers}
    source = corpus.excerpts(cfg.corpus, subject.tokenizer, cfg.ctx, cfg.n_excerpts)
    with torch.inference_mode(), heap.steady_heap() as trim:
        for batch in shards.batches(source, cfg.batch_size):
            ids = torch.tensor([e.excerpt_id for e in batch])

            def consume(la, acts):
                frac = acts.amax(dim=1) / maxima[la].clamp(min=1e-12)  # (B, N)
                which = torch.ceil(frac * n_bins).long() - 1  # bin index; < 0 when max <= 0
                keys = -torch.from_numpy(hashed_keys(streams[la], ids.numpy(), subject.d_mlp))
                mine = (ids.numpy()[:, None, None] == held[la][None]).any(axis=2)  # (B, N)
                keys[torch.from_numpy(mine)] = float("-inf")
                for b, top in enumerate(bins[la]):
                    in_bin = torch.where(which == b, keys, torch.tensor(float("-inf")))
                    top.update(acts, ids, in_bin)

            subject.stream(torch.tensor([e.token_ids for e in batch]), layers, consume,
                           view=True)  # read in the call: no copy of each layer's output
            trim()
    return bins


def _write(run_dir: Path, cfg: RecordConfig, subject, settings: dict, layers: list[int],
           res: Recorded, outputs: logits.OutputSide) -> None:
    key = rundir.model_key(subject.name)
    meta = rundir.read_run_json(run_dir)
    entry = meta["models"].get(key)
    if entry is None or not rundir.files(run_dir, "excerpts", key):
        rundir.remove_partition(run_dir, "excerpts", key)
        target = rundir.partition_dir(run_dir, "excerpts", key)
        target.mkdir(parents=True, exist_ok=True)
        # Linked, not moved: a kill half-way leaves the staged shards whole for the rerun.
        for k in res.shards:  # each shard's staged excerpt files, in excerpt-id order
            for f in rundir.files(shards.shard_dir(res.stage, k), "excerpts", key):
                _link(f, target / f"{k:05d}-{f.name}")
    entry = entry or {**subject.meta(), "settings": settings, "layers_done": [],
                      "n_excerpts_read": res.n_read, "corpus_sha256": res.corpus_sha256,
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
        tables.write_layer(run_dir, key, la, res, outputs.columns(la))
        entry["layers_done"] = sorted(set(entry["layers_done"]) | {la})

        def mark_done(meta: dict, entry=dict(entry)) -> None:  # under run.json's lock: other
            meta.setdefault("models", {})[key] = entry  # stages may update it meanwhile

        rundir.update_run_json(run_dir, mark_done)
    shutil.rmtree(res.stage, ignore_errors=True)  # every layer is written: shards done


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links there
        shutil.copy2(src, dst)
