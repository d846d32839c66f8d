"""Pure scoring metrics of simulated against real activations (REFERENCE.md, Scores).

Everything here maps arrays to numbers: no I/O, logging or LLM. A metric that is undefined on its
input (a constant side makes a correlation 0/0) returns `value=None` with a status naming why,
never NaN and never a silent 0. How each status counts in a mean is decided in one place,
`counted`: a constant prediction is the explanation failing (0), a dead neuron is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

OK = "ok"
CONSTANT_PREDICTION = "constant_prediction"
CONSTANT_ACTIVATION = "constant_activation"
ZERO_ACTIVATION = "zero_activation"  # mean(real^2) or mean|real| is 0: the ratio is undefined
NO_TOKENS = "no_tokens"
# A neuron whose real activation is constant on the scored excerpts: nothing to explain there.
DEAD = frozenset({CONSTANT_ACTIVATION, ZERO_ACTIVATION})
# Relative spread under which a side counts as constant: float32 storage of a constant array can
# leave a spread of ~1e-7 times its size, which would otherwise give a meaningless correlation.
_REL_EPS = 1e-6


@dataclass(frozen=True)
class Metric:
    """One metric's value, or None with the reason it is undefined."""

    value: float | None
    status: str  # ok | constant_prediction | constant_activation | zero_activation | no_tokens


@dataclass(frozen=True)
class Calibration:
    """A linear map `slope * pred + intercept` from simulated to real activations."""

    slope: float
    intercept: float
    status: str  # ok | negative_slope (slope clamped to 0) | constant_prediction | no_tokens

    def apply(self, pred: np.ndarray) -> np.ndarray:
        """Calibrated predictions."""
        return self.slope * np.asarray(pred, dtype=np.float64) + self.intercept


@dataclass(frozen=True)
class Scores:
    """All scores of one explanation on one split."""

    score: float | None  # correlation over top + random concatenated (the headline)
    score_top: float | None
    score_random: float | None
    rsquared: float | None  # None without a calibration: 0-10 predictions vs raw units
    abs_dev_explained: float | None  # likewise
    n_tokens: int
    status: str  # the headline's status
    status_top: str = OK  # why score_top is undefined (counted like the headline: `counted`)
    status_random: str = OK


IDENTITY = Calibration(1.0, 0.0, OK)


def counted(score: float | None, status: str) -> float | None:
    """The value a mean over neurons counts: the score; 0 for a constant prediction (the
    explanation predicted nothing, which is a failure of the explanation, not of the neuron);
    None (left out, and counted apart) for a dead neuron, a failure or no tokens."""
    if status == OK and score is not None:
        return float(score)
    return 0.0 if status == CONSTANT_PREDICTION else None


def counted_values(scores: Sequence[float | None], statuses: Sequence[str | None]) -> np.ndarray:
    """`counted` over two columns (NaN and None read as undefined): NaN where a row is left
    out. A missing status (a row written before the column existed) counts the value alone."""
    out = []
    for v, st in zip(scores, statuses):
        value = None if v is None or v != v else float(v)
        if st is None or st != st:  # no status stored: the value decides
            st = OK if value is not None else ""
        c = counted(value, st)
        out.append(np.nan if c is None else c)
    return np.asarray(out, dtype=np.float64)


def _flat(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).ravel()


def _is_constant(x: np.ndarray) -> bool:
    spread = float(np.max(x) - np.min(x))
    return spread <= _REL_EPS * max(1.0, float(np.max(np.abs(x))))


def correlation(real, pred) -> Metric:
    """Pearson correlation of real and predicted activations (flattened)."""
    r, p = _flat(real), _flat(pred)
    if r.shape != p.shape:
        raise ValueError(f"real has {r.size} values, pred {p.size}")
    if r.size == 0:
        return Metric(None, NO_TOKENS)
    if _is_constant(r):
        return Metric(None, CONSTANT_ACTIVATION)
    if _is_constant(p):
        return Metric(None, CONSTANT_PREDICTION)
    rc, pc = r - r.mean(), p - p.mean()
    value = float(np.dot(rc, pc) / np.sqrt(np.dot(rc, rc) * np.dot(pc, pc)))
    return Metric(min(1.0, max(-1.0, value)), OK)


def rsquared(real, pred) -> Metric:
    """1 - mean((real - pred)^2) / mean(real^2): meaningful after calibration."""
    r, p = _flat(real), _flat(pred)
    if r.size == 0:
        return Metric(None, NO_TOKENS)
    denom = float(np.mean(r * r))
    if denom == 0.0:
        return Metric(None, ZERO_ACTIVATION)
    return Metric(1.0 - float(np.mean((r - p) ** 2)) / denom, OK)


def abs_dev_explained(real, pred) -> Metric:
    """1 - mean|real - pred| / mean|real|."""
    r, p = _flat(real), _flat(pred)
    if r.size == 0:
        return Metric(None, NO_TOKENS)
    denom = float(np.mean(np.abs(r)))
    if denom == 0.0:
        return Metric(None, ZERO_ACTIVATION)
    return Metric(1.0 - float(np.mean(np.abs(r - p))) / denom, OK)


def fit_calibration(real, pred) -> Calibration:
    """Least-squares line from predicted to real, with the slope constrained to be >= 0.

    A negative slope would flip the sign of every prediction and so reward an explanation whose
    simulation anti-correlates; the constrained optimum is then slope 0 at the mean of `real`.
    """
    r, p = _flat(real), _flat(pred)
    if r.size == 0:
        return Calibration(1.0, 0.0, NO_TOKENS)
    if _is_constant(p):
        return Calibration(0.0, float(r.mean()), CONSTANT_PREDICTION)
    pc = p - p.mean()
    slope = float(np.dot(pc, r - r.mean()) / np.dot(pc, pc))
    if slope < 0.0:
        return Calibration(0.0, float(r.mean()), "negative_slope")
    return Calibration(slope, float(r.mean() - slope * p.mean()), OK)


def score_excerpts(top: Sequence[tuple[Sequence[float], Sequence[float]]],
                   random: Sequence[tuple[Sequence[float], Sequence[float]]],
                   calibration: Calibration | None = None) -> Scores:
    """Score (real, predicted) pairs of top and random excerpts, pooled before correlating.

    Correlations are pooled over the concatenation (not averaged per excerpt) as published, so an
    excerpt with no activity still counts. They are invariant to the (non-negative) calibration;
    R^2 and absolute deviation are computed on the calibrated predictions, and are None without a
    calibration: raw predictions are on the 0-10 scale, the activations in the model's units.
    """
    def cat(pairs, i):
        return np.concatenate([_flat(p[i]) for p in pairs]) if pairs else np.zeros(0)

    real_t, pred_t, real_r, pred_r = cat(top, 0), cat(top, 1), cat(random, 0), cat(random, 1)
    real, pred = np.concatenate([real_t, real_r]), np.concatenate([pred_t, pred_r])
    if real.shape != pred.shape or real_t.shape != pred_t.shape:
        raise ValueError("every excerpt needs one prediction per real activation")
    head = correlation(real, pred)
    top, rand = correlation(real_t, pred_t), correlation(real_r, pred_r)
    cal = calibration.apply(pred) if calibration is not None else None
    return Scores(
        score=head.value,
        score_top=top.value,
        score_random=rand.value,
        rsquared=rsquared(real, cal).value if cal is not None else None,
        abs_dev_explained=abs_dev_explained(real, cal).value if cal is not None else None,
        n_tokens=int(real.size),
        status=head.status, status_top=top.status, status_random=rand.status,
    )


def choose_best(scores: Sequence[float | None]) -> int | None:
    """Index of the highest defined score (the first on a tie), or None when none is defined."""
    best = None
    for i, s in enumerate(scores):
        if s is not None and (best is None or s > scores[best]):
            best = i
    return best


def mean_defined(values: Sequence[float | None]) -> tuple[float | None, int]:
    """Mean of the defined values and how many were undefined (never NaN in a mean)."""
    ok = [v for v in values if v is not None]
    return (float(np.mean(ok)) if ok else None), len(values) - len(ok)


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of the mean; (None, None) with no values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return None, None
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    # Chunks keep memory bounded for layers of thousands of neurons (at most CHUNK_INDICES
    # indices drawn at once).
    chunk = max(1, min(n_boot, CHUNK_INDICES // x.size))
    means = np.concatenate([x[rng.integers(0, x.size, (min(chunk, n_boot - i), x.size))].mean(1)
                            for i in range(0, n_boot, chunk)])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


CHUNK_INDICES = 4_000_000  # bootstrap indices drawn at once (≈ 32 MB of int64)
