"""`explain score`: recompute every score of a run from its stored simulations (no LLM).

Reads `simulations/`, `records/` and `explanations/`; rewrites `scores/`, removing the old files
of a layer only once the new ones are in place.
"""

from __future__ import annotations

import sys
from pathlib import Path

from explainer import ExplainError
from explainer import config as C
from explainer import run as rundir
from explainer.score.rows import Candidate, Item, mark_best, mode_family, score_row, text_hash


def run(cfg: C.ScoreConfig) -> Path:
    """Recompute all scores of a run from its stored simulations; returns the scores/ folder."""
    run_dir = Path(cfg.run)
    models = rundir.models_in(run_dir, "simulations")
    if not models:
        raise ExplainError(f"--run {run_dir}: has no simulations yet; run `explain simulate` first")
    if cfg.calibrate:
        _check_calibrate_split(run_dir, models)
    n_rows = n_ok = 0
    for model in models:
        for layer in rundir.layers_in(run_dir, "simulations", model):
            old = rundir.files(run_dir, "scores", model, layer)
            rows = _rescore_layer(run_dir, model, layer, cfg.calibrate)
            if rows:
                rundir.write_rows(run_dir, "scores", rows, prefix="score")
            rundir.remove_files(old)  # only once the replacement is in place
            rundir.compact(run_dir, "scores", model, layer)  # rows written meanwhile, if any
            n_rows += len(rows)
            n_ok += sum(r.status == "ok" for r in rows)
    print(f"score: {n_rows} score rows from stored simulations ({n_ok} defined, "
          f"{n_rows - n_ok} undefined or failed; no LLM calls)", file=sys.stderr)
    return run_dir / "scores"


def _check_calibrate_split(run_dir: Path, models: list[str]) -> None:
    """Refuse --calibrate, before anything is written, where a layer has nothing to fit on."""
    for model in models:
        for layer in rundir.layers_in(run_dir, "simulations", model):
            splits = rundir.read(run_dir, "simulations", model=model, layer=layer,
                                columns=["split"])["split"]
            if not (splits == "calibrate").any():
                raise ExplainError(
                    f"--calibrate: layer {layer} of {model} was simulated without the calibrate "
                    "split, so there is nothing to fit the calibration on; rerun `explain "
                    f"simulate --calibrate --layer {layer}` first, or score without --calibrate")


def real_activations(run_dir: Path, model: str, layer: int) -> dict[tuple, tuple[float, ...]]:
    """(neuron, kind, excerpt_id) -> the recorded activations, for the scored splits."""
    rec = rundir.read(run_dir, "records", model=model, layer=layer,
                     columns=["neuron", "excerpt_id", "kind", "split", "activations"])
    rec = rec[rec["split"].isin(["calibrate", "valid", "test"])]
    return {(int(n), k, int(e)): tuple(float(x) for x in a)
            for n, k, e, a in zip(rec["neuron"], rec["kind"], rec["excerpt_id"],
                                  rec["activations"])}


def _rescore_layer(run_dir: Path, model: str, layer: int, calibrate: bool) -> list:
    sims = rundir.read(run_dir, "simulations", model=model, layer=layer)
    real = real_activations(run_dir, model, layer)
    texts = _explanation_texts(run_dir, model, layer)
    groups: dict[tuple, list[Item]] = {}
    for r in sims.itertuples(index=False):
        # Everything that tells one simulated explanation from another stays apart.
        key = (int(r.neuron), r.side, r.explainer, r.simulator, mode_family(r.mode),
               r.control, r.source_neuron, int(r.candidate), r.sim_prompt_hash,
               r.explanation_hash)
        acts = real.get((int(r.neuron), r.kind, int(r.excerpt_id)))
        if acts is None:
            continue  # the records were re-made without this excerpt; it no longer counts
        if r.side == "neg":  # the negative side sees every activation negated
            acts = tuple(-a for a in acts)
        pred = tuple(float(x) for x in r.predicted) if r.status == "ok" else None
        kind = "random" if r.kind == "random" else "top"  # bottom excerpts are neg's top
        groups.setdefault(key, []).append(Item(kind, r.split, acts, pred, r.error))
    by_neuron: dict[tuple, list] = {}
    for key, items in sorted(groups.items(), key=lambda kv: str(kv[0])):
        neuron, side, explainer, simulator, mode, control, source, cand, phash, ehash = key
        source = None if source is None or source != source else int(source)  # NaN: none
        c = Candidate(model, layer, neuron, explainer, cand, simulator, texts.get(ehash, ""),
                      side=side, mode=mode, sim_prompt_hash=phash, explanation_hash=ehash,
                      control=control, source_neuron=source)
        by_neuron.setdefault((neuron, side, explainer, simulator, mode, control), []).append(
            (c, items))
    out = []
    for cands in by_neuron.values():
        if cands[0][0].control != "none":  # a control: valid split only, never a chosen one
            out += [score_row(c, "valid", items, False) for c, items in cands]
            continue
        valid, best = mark_best([score_row(c, "valid", items, calibrate) for c, items in cands])
        out += valid
        for c, items in cands:
            if any(it.split == "test" for it in items):
                out.append(score_row(c, "test", items, calibrate, best=c.candidate == best))
    return out


def _explanation_texts(run_dir: Path, model: str, layer: int) -> dict[str, str]:
    """explanation_hash -> the text that was simulated (scores/ hold it; explanations/ too)."""
    ex = rundir.read(run_dir, "explanations", model=model, layer=layer,
                     columns=["explanation", "status"])
    out = {text_hash(t): t for t, st in zip(ex["explanation"], ex["status"]) if st == "ok"}
    sc = rundir.read(run_dir, "scores", model=model, layer=layer,
                     columns=["explanation", "explanation_hash"])
    out.update({h: t for t, h in zip(sc["explanation"], sc["explanation_hash"]) if h})
    return out
