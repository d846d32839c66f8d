"""Score rows from simulated excerpts: shared by `explain simulate` and `explain score`.

Pure: no I/O, no LLM. The metrics are the functions of `metrics.py`; this module only gathers a
candidate's excerpts per split, applies the failure policy and picks the best candidate. An
excerpt whose simulation failed makes the whole split's score `failed` (with the first reason):
scoring the rest would silently compare neurons on different excerpts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from explainer.run.query import text_hash  # noqa: F401  (score rows' explanation_hash)
from explainer.run.rows import ScoreRow
from explainer.score import metrics


@dataclass(frozen=True)
class Item:
    """One simulated excerpt of one candidate: its real activations and the prediction."""

    kind: str  # top (the side's own top excerpts) | random
    split: str  # calibrate | valid | test
    real: tuple[float, ...]
    predicted: tuple[float, ...] | None  # None when the simulation failed
    error: str | None
    excerpt_id: int = -1  # excerpts are pooled in (kind, excerpt_id) order, whoever gathers them
    n_no_digit: int = 0  # value slots predicted 0 for want of a digit (simulate/prompt.py)


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
    side: str = "pos"
    mode: str = ""  # the simulator's mode, so scores made differently are never mixed
    sim_prompt_hash: str = ""
    explanation_hash: str = ""
    control: str = "none"  # none | shuffled (scored on another neuron than its own)
    source_neuron: int | None = None  # the neuron the explanation was written for


def as_stored(values) -> tuple[float, ...]:
    """Predictions as the simulations table keeps them (float32), so a score computed while
    simulating equals the one `explain score` recomputes from the stored rows, bit for bit."""
    return tuple(float(v) for v in np.asarray(values, dtype=np.float32))


def _failure(items: Sequence[Item]) -> str | None:
    bad = [it for it in items if it.predicted is None]
    if bad:
        return f"{len(bad)} of {len(items)} excerpts failed to simulate: {bad[0].error}"
    for it in items:
        if len(it.predicted) != len(it.real):
            return f"{len(it.predicted)} predictions for {len(it.real)} tokens"
    return None


def calibration(items: Sequence[Item]) -> tuple[metrics.Calibration | None, str | None]:
    """The linear calibration fitted on a candidate's calibrate-split items (or why none)."""
    cal = [it for it in items if it.split == "calibrate"]
    if not cal:
        return None, "no calibrate-split simulations to fit the calibration on"
    why = _failure(cal)
    if why:
        return None, f"calibration split: {why}"
    real = np.concatenate([np.asarray(it.real, np.float64) for it in cal])
    pred = np.concatenate([np.asarray(it.predicted, np.float64) for it in cal])
    return metrics.fit_calibration(real, pred), None


INCOMPLETE = "incomplete"  # a split's excerpts are not all simulated: never scored on a subset


def score_row(cand: Candidate, split: str, items: Sequence[Item], calibrate: bool,
              best: bool = False, missing: str | None = None) -> ScoreRow:
    """`_score_row` with the share of the split's predicted value slots that had no digit."""
    from dataclasses import replace

    done = [it for it in items if it.split == split and it.predicted is not None]
    return replace(_score_row(cand, split, items, calibrate, best, missing),
                   no_digit_share=no_digit_share(sum(it.n_no_digit for it in done),
                                                 sum(len(it.predicted) for it in done)))


def no_digit_share(n_no_digit: int, n_slots: int) -> float | None:
    """Share of value slots predicted 0 for want of a digit; None with no slot predicted."""
    return n_no_digit / n_slots if n_slots else None


def _score_row(cand: Candidate, split: str, items: Sequence[Item], calibrate: bool,
               best: bool = False, missing: str | None = None) -> ScoreRow:
    """The score row of one candidate on one split (`items` may hold other splits too);
    `missing` says which of the split's excerpts have no simulation (status incomplete)."""
    # One pooling order for every caller, so the same predictions give the same bits.
    mine = sorted((it for it in items if it.split == split), key=lambda it: (it.kind,
                                                                            it.excerpt_id))
    n_tokens = sum(len(it.real) for it in mine)
    if missing is not None:
        return _row(cand, split, None, n_tokens, best, INCOMPLETE, missing)
    why = _failure(mine) if mine else f"no {split}-split excerpts recorded for this neuron"
    cal = None  # without --calibrate, R^2 and absolute deviation stay null
    if why is None and calibrate:
        cal, why = calibration(sorted(items, key=lambda it: (it.kind, it.excerpt_id)))
    if why is not None:
        return _row(cand, split, None, n_tokens, best, "failed", why)
    top = [(it.real, it.predicted) for it in mine if it.kind == "top"]
    rand = [(it.real, it.predicted) for it in mine if it.kind == "random"]
    return _row(cand, split, metrics.score_excerpts(top, rand, cal), 0, best, None, None)


def _row(cand: Candidate, split: str, s: metrics.Scores | None, n_tokens: int, best: bool,
         status: str | None, error: str | None) -> ScoreRow:
    return ScoreRow(
        model=cand.model, layer=cand.layer, neuron=cand.neuron, explainer=cand.explainer,
        candidate=cand.candidate, simulator=cand.simulator, split=split,
        explanation=cand.explanation,
        score=s.score if s else None, score_top=s.score_top if s else None,
        score_random=s.score_random if s else None, rsquared=s.rsquared if s else None,
        abs_dev_explained=s.abs_dev_explained if s else None,
        n_tokens=s.n_tokens if s else n_tokens, best=best,
        status=s.status if s else status, error=error, side=cand.side, mode=cand.mode,
        control=cand.control,
        source_neuron=cand.neuron if cand.source_neuron is None else cand.source_neuron,
        sim_prompt_hash=cand.sim_prompt_hash, explanation_hash=cand.explanation_hash,
        status_top=s.status_top if s else None, status_random=s.status_random if s else None)


def mark_best(rows: Sequence[ScoreRow]) -> tuple[list[ScoreRow], int | None]:
    """Valid-split rows of one neuron's candidates with `best` set; also the best candidate.

    Candidates compare by the value a report counts, so a constant prediction (0) beats a
    negative correlation and is chosen rather than leaving the neuron without a best candidate.
    """
    from dataclasses import replace

    i = metrics.choose_best([metrics.counted(r.score, r.status) for r in rows])
    return [replace(r, best=(k == i)) for k, r in enumerate(rows)], \
        (rows[i].candidate if i is not None else None)
