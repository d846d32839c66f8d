"""`explain import --format openai`: the paper's published neuron records as a run directory.

Every file is read and checked before anything is written. Then, for the subject model:

* `excerpts/`: each distinct token sequence once, numbered in reading order (neurons by layer
  and index; top, random, then quantile records). The files hold token strings only, so
  `token_ids` is an empty list.
* `records/`: top records ranked in the file's order (the paper's files list them best first),
  random and quantile records likewise, dealt into splits as the paper dealt them: top rank r to
  ("explain", "calibrate", "valid", "test")[r % 4], random rank r to ("calibrate", "valid",
  "test")[r % 3], but only within the last full round; the paper never used the remainder, and
  neither does `explain` (split `unused`). Quantile records: rank = bin * Q + position, split by
  rank % 4, as `explain record` deals them.
* `neurons/`: statistics from the imported records only (not the paper's whole corpus): mean,
  std, density and quantiles over the random sample's tokens (an unbiased sample), max and min
  over every imported record; `n_tokens` counts the random-sample tokens they rest on.
* `explanations/`: the published explanations, explainer `openai-published`, one candidate each
  in file order; and `scores/`: the paper's own score of each (simulator `openai-published`,
  split valid, the best candidate marked), so a rescore sits beside the published number.

`run.json` is written last: a killed import leaves no model entry, and its rerun starts over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explainer import ExplainError
from explainer import config
from explainer import run as rundir
from explainer.run.specs import RANDOM_SPLITS, SPLITS
from explainer.ingest import openai as openai_data

FORMATS = ("openai",)
PUBLISHED = "openai-published"  # explainer and simulator of what the paper published
UNUSED = "unused"  # split of records past the last full round of splits
QUANTILE_PROBS = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)  # as `explain record`
# The GPT-2 family (REFERENCE.md): layers, d_mlp, parameters. Other names take their shape from
# the files (layers and neurons seen), with no parameter count.
GPT2 = {"gpt2": (12, 3072, 124_439_808), "gpt2-medium": (24, 4096, 354_823_168),
        "gpt2-large": (36, 5120, 774_030_080), "gpt2-xl": (48, 6400, 1_557_611_200)}
TABLES = ("records", "neurons", "explanations", "scores")


def run(cfg: config.ImportConfig) -> str:
    """Import the files into cfg.run; returns a one-line summary."""
    if cfg.format not in FORMATS:
        raise ExplainError(f"--format {cfg.format}: expected one of {', '.join(FORMATS)}")
    data = openai_data.read(cfg.paths)
    entry = _entry(cfg, data)
    key = rundir.model_key(cfg.model)
    run_dir = Path(cfg.run)
    old = rundir.model_meta(run_dir, key)
    if old is not None:
        if old.get("settings", {}).get("sha256") == data.sha256:
            return f"nothing to do: these files are already imported in {run_dir} as {key}"
        raise ExplainError(f"--run {run_dir} already holds {key} from other files or another "
                           "tool; import into a new --run")
    excerpts = _excerpt_ids(data)
    rundir.remove_partition(run_dir, "excerpts", key)  # leftovers of a killed import, if any
    for layer in entry["layers_done"]:
        for name in TABLES:
            rundir.remove_partition(run_dir, name, key, layer)
    _write_excerpts(run_dir, key, excerpts)
    for layer in entry["layers_done"]:
        mine = [n for n in data.neurons if n.layer == layer]
        _write_records(run_dir, key, layer, mine, excerpts)
        _write_neurons(run_dir, key, layer, mine)
    _write_explanations(run_dir, key, data)
    rundir.update_run_json(run_dir, lambda meta: {**meta, "models": {**meta.get("models", {}),
                                                                     key: entry}})
    return (f"imported {len(data.neurons)} neurons in {len(entry['layers_done'])} layers, "
            f"{len(excerpts)} excerpts, {len(data.explanations)} published explanations "
            f"into {run_dir}")


def _entry(cfg: config.ImportConfig, data: openai_data.Imported) -> dict:
    """run.json's entry for the model; an ExplainError if a neuron lies outside a known shape."""
    layers = sorted({n.layer for n in data.neurons})
    top_neuron = max(n.neuron for n in data.neurons)
    n_layers, d_mlp, n_params = GPT2.get(cfg.model, (layers[-1] + 1, top_neuron + 1, None))
    if layers[-1] >= n_layers or top_neuron >= d_mlp:
        raise ExplainError(f"--model {cfg.model} has layers 0-{n_layers - 1} and neurons "
                           f"0-{d_mlp - 1}, but the files hold layer {layers[-1]} neuron "
                           f"{top_neuron}; name the model the records come from")
    return {"model": cfg.model, "model_id": cfg.model, "source": "openai-import",
            "n_params": n_params, "n_layers": n_layers, "d_mlp": d_mlp,
            "hook_point": "blocks.{layer}.mlp.hook_post",
            "settings": {"format": cfg.format, "sha256": data.sha256, "files": list(data.files)},
            "layers_done": layers, "n_neurons": len(data.neurons),
            "splits": {"top": list(SPLITS), "random": list(RANDOM_SPLITS),
                       "remainder": UNUSED},
            "token_ids": "unknown: the files hold token strings only (token_ids are empty)",
            "quantile_probs": list(QUANTILE_PROBS),
            "stats_from": "the imported records only: mean, std, density and quantiles over the "
                          "random sample's tokens, max and min over every record"}


def _excerpt_ids(data: openai_data.Imported) -> dict[tuple, int]:
    """Excerpt id of each record, keyed (tokens, occurrence within its neuron and kind).

    One sequence shared by several neurons is one excerpt; a sequence a neuron lists twice in
    one kind gets a second excerpt, so (neuron, kind, excerpt_id) stays a record's key.
    """
    ids: dict[tuple, int] = {}
    for n in data.neurons:
        for _, key, _, _, _ in _dealt(n):
            ids.setdefault(key, len(ids))
    return ids


def _write_excerpts(run_dir: Path, key: str, ids: dict) -> None:
    toks = list(ids)
    rundir.write_columns(run_dir, "excerpts", {
        "excerpt_id": np.arange(len(toks), dtype=np.int64), "token_ids": [[] for _ in toks],
        "tokens": [list(t) for t, _ in toks]}, model=key, prefix="import")


def _split(rank: int, splits: tuple[str, ...], n: int) -> str:
    """The paper's interleaved split of rank `rank` among `n` records (remainder unused)."""
    return splits[rank % len(splits)] if rank < n - n % len(splits) else UNUSED


def _dealt(n: openai_data.Neuron) -> list[tuple[str, tuple, int, str, openai_data.Record]]:
    """(kind, excerpt key, rank, split, record) of every record of one neuron."""
    q = max((len(b) for b in n.quantiles), default=0)
    out = [("top", r, _split(r, SPLITS, len(n.top)), rec) for r, rec in enumerate(n.top)]
    out += [("random", r, _split(r, RANDOM_SPLITS, len(n.random)), rec)
            for r, rec in enumerate(n.random)]
    out += [("quantile", b * q + j, SPLITS[(b * q + j) % len(SPLITS)], rec)
            for b, recs in enumerate(n.quantiles) for j, rec in enumerate(recs)]
    seen: dict[tuple, int] = {}
    keyed = []
    for kind, rank, split, rec in out:
        k = seen[(kind, rec.tokens)] = seen.get((kind, rec.tokens), -1) + 1
        keyed.append((kind, (rec.tokens, k), rank, split, rec))
    return keyed


def _write_records(run_dir: Path, key: str, layer: int, neurons: list, ids: dict) -> None:
    cols = {c: [] for c in ("neuron", "excerpt_id", "kind", "rank", "split", "activations",
                            "max_activation")}
    for n in neurons:
        for kind, ekey, rank, split, rec in _dealt(n):
            for c, v in zip(cols, (n.neuron, ids[ekey], kind, rank, split,
                                   list(rec.activations), max(rec.activations))):
                cols[c].append(v)
    rundir.write_columns(run_dir, "records", _nulls("records", cols), model=key, layer=layer,
                         prefix="import")


def _write_neurons(run_dir: Path, key: str, layer: int, neurons: list) -> None:
    rows = {c: [] for c in ("neuron", "mean", "std", "max", "min", "density", "n_tokens",
                            "quantiles")}
    for n in neurons:
        every = np.concatenate([r.activations for r in (*n.top, *n.random,
                                                        *(r for b in n.quantiles for r in b))])
        # The random sample is an unbiased sample of tokens; without one, every record stands in.
        sample = np.concatenate([r.activations for r in n.random]) if n.random else every
        for c, v in zip(rows, (n.neuron, float(sample.mean()), float(sample.std()),
                               float(every.max()), float(every.min()),
                               float((sample > 0).mean()), int(sample.size),
                               np.quantile(sample, QUANTILE_PROBS).astype(np.float32).tolist())):
            rows[c].append(v)
    rundir.write_columns(run_dir, "neurons", _nulls("neurons", rows), model=key, layer=layer,
                         prefix="import")


def _nulls(name: str, cols: dict) -> dict:
    """Null columns for what the files cannot tell (e.g. a neuron's output-side tokens)."""
    n = len(next(iter(cols.values())))
    return {**{c: [None] * n for c in rundir.table(name).schema.names}, **cols}


def _write_explanations(run_dir: Path, key: str, data: openai_data.Imported) -> None:
    cand: dict[tuple[int, int], int] = {}
    expl, scores = [], []
    for e in data.explanations:
        c = cand[(e.layer, e.neuron)] = cand.get((e.layer, e.neuron), -1) + 1
        expl.append(rundir.ExplanationRow(
            model=key, layer=e.layer, neuron=e.neuron, explainer=PUBLISHED,
            prompt_hash="published", candidate=c, explanation=e.explanation, prompt_tokens=0,
            completion_tokens=0, status="ok", error=None))
        scores.append(e)
    if not expl:
        return
    best = {}
    for row, e in zip(expl, scores):
        k = (e.layer, e.neuron)
        if e.score is not None and (k not in best or e.score > best[k][0]):
            best[k] = (e.score, row.candidate)
    rundir.write_rows(run_dir, "explanations", expl, prefix="import")
    rundir.write_rows(run_dir, "scores", [rundir.ScoreRow(
        model=key, layer=e.layer, neuron=e.neuron, explainer=PUBLISHED, candidate=row.candidate,
        simulator=PUBLISHED, split="valid", explanation=e.explanation, score=e.score,
        score_top=None, score_random=None, rsquared=None, abs_dev_explained=None,
        n_tokens=e.n_tokens, best=best.get((e.layer, e.neuron), (None, -1))[1] == row.candidate,
        status="ok" if e.score is not None else "failed",
        error=None if e.score is not None else "the published score is undefined",
        mode="published")
        for row, e in zip(expl, scores)], prefix="import")
