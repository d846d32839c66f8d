"""`explain score`: recompute every score of a run from its stored simulations (no LLM).

Reads `simulations/`, `records/` and `explanations/`; rewrites `scores/`, removing the old files
of a layer only once the new ones are in place (the judges' rows are carried over as they are).
It writes exactly the rows `simulate` wrote (tests/test_score_equals_simulate.py): the same
groups (a mode by its family, the prompt and explanation hashes apart), the same pooling order,
the best candidate chosen among each candidate's current text; a group that lacks excerpts its
split needs is `incomplete`, never scored on a subset.
"""

from __future__ import annotations

import sys
from pathlib import Path

from explainer import ExplainError
from explainer import config
from explainer import run as rundir
from explainer.score.rows import Candidate, Item, mark_best, score_row, text_hash


def run(cfg: config.ScoreConfig) -> Path:
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
            judged = _judge_rows(run_dir, model, layer)  # not made from simulations: kept
            rows = _rescore_layer(run_dir, model, layer, cfg.calibrate)
            if rows:
                rundir.write_rows(run_dir, "scores", rows, prefix="score")
            if judged.num_rows:
                rundir.write_columns(run_dir, "scores", {c: judged.column(c) for c in
                                                         rundir.table("scores").schema.names},
                                     model=model, layer=layer, prefix="score-judges")
            rundir.remove_files(old)  # only once the replacement is in place
            rundir.compact(run_dir, "scores", model, layer)  # rows written meanwhile, if any
            n_rows += len(rows)
            n_ok += sum(r.status == "ok" for r in rows)
    print(f"score: {n_rows} score rows from stored simulations ({n_ok} defined, "
          f"{n_rows - n_ok} undefined or failed; no LLM calls)", file=sys.stderr)
    return run_dir / "scores"


def _judge_rows(run_dir: Path, model: str, layer: int):
    """The layer's score rows of other methods than simulation (the judges'), as Arrow."""
    import pyarrow.compute as pc

    sc = rundir.read_arrow(run_dir, "scores", model, layer)
    return sc.filter(pc.not_equal(sc.column("method"), rundir.query.SIMULATION))


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


def _groups(sims, real: dict) -> dict[tuple, dict[tuple, Item]]:
    """Per simulated explanation (everything that tells one from another, the mode by family),
    its items by (kind, excerpt_id): the newest row of an excerpt wins."""
    groups: dict[tuple, dict[tuple, Item]] = {}
    for r in sims.itertuples(index=False):
        source = None if r.source_neuron is None or r.source_neuron != r.source_neuron \
            else int(r.source_neuron)  # NaN: none
        key = (int(r.neuron), r.side, r.explainer, r.simulator, rundir.mode_family(r.mode),
               r.sim_prompt_hash, r.control, source, int(r.candidate), r.explanation_hash)
        acts = real.get((int(r.neuron), r.kind, int(r.excerpt_id)))
        if acts is None:
            continue  # the records were re-made without this excerpt; it no longer counts
        if r.side == "neg":  # the negative side sees every activation negated
            acts = tuple(-a for a in acts)
        pred = tuple(float(x) for x in r.predicted) if r.status == "ok" else None
        kind = "random" if r.kind == "random" else "top"  # bottom excerpts are neg's top
        none = getattr(r, "n_no_digit", 0)  # slots predicted 0 for want of a digit
        groups.setdefault(key, {})[(r.kind, int(r.excerpt_id))] = Item(
            kind, r.split, acts, pred, r.error, int(r.excerpt_id),
            int(none) if pred is not None and none == none and none else 0)
    return groups


def _missing(key: tuple, items: dict, needed: dict, split: str) -> str | None:
    """Why a group cannot be scored on `split`: excerpts of the split that the explainer's other
    simulations under the same conditions hold and this one lacks (a killed or narrowed run)."""
    have = {k for k, it in items.items() if it.split == split}
    want = needed.get((*key[:6], split), set())
    lack = want - have
    if not have or not lack:
        return None
    return (f"{len(lack)} of the {len(want)} {split}-split excerpts simulated for this neuron "
            f"are missing (e.g. excerpt {sorted(lack)[0][1]}); rerun `explain simulate`")


def _rescore_layer(run_dir: Path, model: str, layer: int, calibrate: bool) -> list:
    sims = rundir.read(run_dir, "simulations", model=model, layer=layer)
    groups = _groups(sims, real_activations(run_dir, model, layer))
    texts = _explanation_texts(run_dir, model, layer)
    current = rundir.query.current_explanations(run_dir, model, layer)
    # The excerpts each split needs: every excerpt any simulation of the same neuron side,
    # explainer, simulator, mode family and prompt holds (candidates and controls alike).
    needed: dict[tuple, set] = {}
    for key, items in groups.items():
        for k, it in items.items():
            needed.setdefault((*key[:6], it.split), set()).add(k)
    by_neuron: dict[tuple, list] = {}
    for key, items in sorted(groups.items(), key=lambda kv: str(kv[0])):
        neuron, side, explainer, simulator, mode, phash, control, source, cand, ehash = key
        c = Candidate(model, layer, neuron, explainer, cand, simulator, texts.get(ehash, ""),
                      side=side, mode=mode, sim_prompt_hash=phash, explanation_hash=ehash,
                      control=control, source_neuron=source)
        by_neuron.setdefault(key[:7], []).append((c, key, items))
    out = []
    for cands in by_neuron.values():
        if cands[0][0].control != rundir.query.OWN:  # a control: valid split only, never chosen
            out += [score_row(c, "valid", items.values(), False,
                              missing=_missing(key, items, needed, "valid"))
                    for c, key, items in cands]
            continue
        # Only a candidate's current text can be chosen, as simulate chooses among them.
        live = [current is None or (model, layer, c.neuron, c.side, c.explainer, c.candidate,
                                    c.explanation_hash) in current for c, _, _ in cands]
        valid = [score_row(c, "valid", items.values(), calibrate,
                           missing=_missing(key, items, needed, "valid"))
                 for c, key, items in cands]
        marked, best = mark_best([r for r, ok in zip(valid, live) if ok])
        marked = iter(marked)
        out += [next(marked) if ok else r for r, ok in zip(valid, live)]
        for (c, key, items), ok in zip(cands, live):
            if any(it.split == "test" for it in items.values()):
                out.append(score_row(c, "test", items.values(), calibrate,
                                     best=ok and c.candidate == best,
                                     missing=_missing(key, items, needed, "test")))
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
