"""Score rows from simulations: shared by `explain simulate` and `explain score` (no LLM here).

The metrics themselves are the pure functions of `score.py`; this module only gathers a
candidate's excerpts per split, applies the failure policy and picks the best candidate. An
excerpt whose simulation failed makes the whole split's score `failed` (with the first reason):
scoring the rest would silently compare neurons on different excerpts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from explainer import ExplainError, store
from explainer import config as C
from explainer import score as S


@dataclass(frozen=True)
class Item:
    """One simulated excerpt of one candidate: its real activations and the prediction."""

    kind: str  # top | random
    split: str  # calibrate | valid | test
    real: tuple[float, ...]
    predicted: tuple[float, ...] | None  # None when the simulation failed
    error: str | None


@dataclass(frozen=True)
class Candidate:
    """What identifies one explanation being scored."""

    model: str
    layer: int
    neuron: int
    explainer: str
    candidate: int
    simulator: str
    explanation: str


def _failure(items: Sequence[Item]) -> str | None:
    bad = [it for it in items if it.predicted is None]
    if bad:
        return f"{len(bad)} of {len(items)} excerpts failed to simulate: {bad[0].error}"
    for it in items:
        if len(it.predicted) != len(it.real):
            return f"{len(it.predicted)} predictions for {len(it.real)} tokens"
    return None


def calibration(items: Sequence[Item]) -> tuple[S.Calibration | None, str | None]:
    """The linear calibration fitted on a candidate's calibrate-split items (or why none)."""
    cal = [it for it in items if it.split == "calibrate"]
    if not cal:
        return None, "no calibrate-split simulations to fit the calibration on"
    why = _failure(cal)
    if why:
        return None, f"calibration split: {why}"
    real = np.concatenate([np.asarray(it.real, np.float64) for it in cal])
    pred = np.concatenate([np.asarray(it.predicted, np.float64) for it in cal])
    return S.fit_calibration(real, pred), None


def score_row(cand: Candidate, split: str, items: Sequence[Item], calibrate: bool,
              best: bool = False) -> store.ScoreRow:
    """The score row of one candidate on one split (`items` may hold other splits too)."""
    mine = [it for it in items if it.split == split]
    why = _failure(mine) if mine else f"no {split}-split excerpts recorded for this neuron"
    cal = S.IDENTITY
    if why is None and calibrate:
        fitted, why = calibration(items)
        cal = fitted or cal
    if why is not None:
        return _row(cand, split, None, sum(len(it.real) for it in mine), best, "failed", why)
    top = [(it.real, it.predicted) for it in mine if it.kind == "top"]
    rand = [(it.real, it.predicted) for it in mine if it.kind == "random"]
    return _row(cand, split, S.score_excerpts(top, rand, cal), 0, best, None, None)


def _row(cand: Candidate, split: str, s: S.Scores | None, n_tokens: int, best: bool,
         status: str | None, error: str | None) -> store.ScoreRow:
    return store.ScoreRow(
        model=cand.model, layer=cand.layer, neuron=cand.neuron, explainer=cand.explainer,
        candidate=cand.candidate, simulator=cand.simulator, split=split,
        explanation=cand.explanation,
        score=s.score if s else None, score_top=s.score_top if s else None,
        score_random=s.score_random if s else None, rsquared=s.rsquared if s else None,
        abs_dev_explained=s.abs_dev_explained if s else None,
        n_tokens=s.n_tokens if s else n_tokens, best=best,
        status=s.status if s else status, error=error)


def mark_best(rows: Sequence[store.ScoreRow]) -> tuple[list[store.ScoreRow], int | None]:
    """Valid-split rows of one neuron's candidates with `best` set; also the best candidate."""
    from dataclasses import replace

    i = S.choose_best([r.score for r in rows])
    return [replace(r, best=(k == i)) for k, r in enumerate(rows)], \
        (rows[i].candidate if i is not None else None)


# --- `explain score`: recompute every score from simulations/ -------------------------------


def rescore(cfg: C.ScoreConfig) -> Path:
    """Recompute all scores of a run from its stored simulations; returns the scores/ folder."""
    run_dir = Path(cfg.run)
    models = store.models_in(run_dir, "simulations")
    if not models:
        raise ExplainError(f"--run {run_dir}: has no simulations yet; run `explain simulate` first")
    n_rows = n_ok = 0
    for model in models:
        for layer in store.layers_in(run_dir, "simulations", model):
            old = store.files(run_dir, "scores", model, layer)
            rows = _rescore_layer(run_dir, model, layer, cfg.calibrate)
            if rows:
                store.write_rows(run_dir, "scores", rows, prefix="score")
            store.remove_files(old)  # only once the replacement is in place
            n_rows += len(rows)
            n_ok += sum(r.status == "ok" for r in rows)
    print(f"score: {n_rows} score rows from stored simulations ({n_ok} defined, "
          f"{n_rows - n_ok} undefined or failed; no LLM calls)", file=sys.stderr)
    return run_dir / "scores"


def real_activations(run_dir: Path, model: str, layer: int) -> dict[tuple, tuple[float, ...]]:
    """(neuron, kind, excerpt_id) -> the recorded activations, for the scored splits."""
    rec = store.read(run_dir, "records", model=model, layer=layer,
                     columns=["neuron", "excerpt_id", "kind", "split", "activations"])
    rec = rec[rec["split"].isin(["calibrate", "valid", "test"])]
    return {(int(n), k, int(e)): tuple(float(x) for x in a)
            for n, k, e, a in zip(rec["neuron"], rec["kind"], rec["excerpt_id"],
                                  rec["activations"])}


def _rescore_layer(run_dir: Path, model: str, layer: int, calibrate: bool) -> list:
    sims = store.read(run_dir, "simulations", model=model, layer=layer)
    real = real_activations(run_dir, model, layer)
    texts = _explanation_texts(run_dir, model, layer)
    groups: dict[tuple, list[Item]] = {}
    for r in sims.itertuples(index=False):
        key = (int(r.neuron), r.explainer, r.simulator, int(r.candidate))
        acts = real.get((int(r.neuron), r.kind, int(r.excerpt_id)))
        if acts is None:
            continue  # the records were re-made without this excerpt; it no longer counts
        pred = tuple(float(x) for x in r.predicted) if r.status == "ok" else None
        groups.setdefault(key, []).append(Item(r.kind, r.split, acts, pred, r.error))
    by_neuron: dict[tuple, list] = {}
    for (neuron, explainer, simulator, cand), items in sorted(groups.items()):
        text = texts.get((neuron, explainer, cand), "")
        c = Candidate(model, layer, neuron, explainer, cand, simulator, text)
        by_neuron.setdefault((neuron, explainer, simulator), []).append((c, items))
    out = []
    for cands in by_neuron.values():
        valid, best = mark_best([score_row(c, "valid", items, calibrate) for c, items in cands])
        out += valid
        for c, items in cands:
            if any(it.split == "test" for it in items):
                out.append(score_row(c, "test", items, calibrate, best=c.candidate == best))
    return out


def _explanation_texts(run_dir: Path, model: str, layer: int) -> dict[tuple, str]:
    # The text that was simulated: the old score rows hold it; explanations/ is the fallback.
    out = {}
    ex = store.read(run_dir, "explanations", model=model, layer=layer,
                    columns=["neuron", "explainer", "candidate", "explanation", "status"])
    for n, e, c, t, s in zip(ex["neuron"], ex["explainer"], ex["candidate"], ex["explanation"],
                             ex["status"]):
        if s == "ok":
            out[(int(n), e, int(c))] = t
    sc = store.read(run_dir, "scores", model=model, layer=layer,
                    columns=["neuron", "explainer", "candidate", "explanation"])
    for n, e, c, t in zip(sc["neuron"], sc["explainer"], sc["candidate"], sc["explanation"]):
        out[(int(n), e, int(c))] = t
    return out
