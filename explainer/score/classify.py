"""Pure classification metrics of a judge's yes/no answers against the true labels.

Numbers in, numbers out: no I/O, logging or LLM. The detection and fuzzing judges (stage
`judge`) score an explanation by how well a model holding only the explanation tells activating
excerpts (label True) from the rest. A metric that is undefined on its input (no positive
label, no positive prediction, a single class) is None, never NaN and never a silent 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

OK = "ok"
ONE_CLASS = "one_class"  # the judged items hold only positives or only negatives
NO_ITEMS = "no_items"


@dataclass(frozen=True)
class Classification:
    """A judge's metrics on one explanation (docs/reference.md, Detection and fuzzing)."""

    accuracy: float | None
    balanced_accuracy: float | None  # (recall + specificity) / 2; chance is 0.5
    f1: float | None
    precision: float | None
    recall: float | None
    auroc: float | None  # None unless every judged item has a probability
    recall_by_quantile: list[float | None]  # recall on the positives of each activation bin
    n_items: int
    status: str  # ok | one_class | no_items


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def confusion(labels: Sequence[bool], predictions: Sequence[bool]) -> tuple[int, int, int, int]:
    """(true positives, false positives, true negatives, false negatives)."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predictions, dtype=bool)
    return (int((y & p).sum()), int((~y & p).sum()), int((~y & ~p).sum()), int((y & ~p).sum()))


def balanced_accuracy(labels: Sequence[bool], predictions: Sequence[bool]) -> float | None:
    """Mean of the recall on each class; None unless both classes are present."""
    tp, fp, tn, fn = confusion(labels, predictions)
    if not (tp + fn) or not (tn + fp):
        return None
    return (tp / (tp + fn) + tn / (tn + fp)) / 2.0


def f1(precision: float | None, recall: float | None) -> float | None:
    """Harmonic mean of precision and recall (0 when both are 0; None when either is undefined)."""
    if precision is None or recall is None:
        return None
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    for end in range(1, len(x) + 1):  # close a run of equal values at each change
        if end == len(x) or xs[end] != xs[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2.0
            start = end
    return ranks


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve: P(a positive outscores a negative), ties counting 1/2.

    Computed from average ranks (the Mann-Whitney U statistic); None with a single class.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    r = _average_ranks(s)
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def recall_by_bin(labels: Sequence[bool], predictions: Sequence[bool],
                  bins: Sequence[int | None], n_bins: int) -> list[float | None]:
    """Recall on the positives of each bin 0..n_bins-1 (None for a bin without positives)."""
    out: list[float | None] = []
    for b in range(n_bins):
        hits = [bool(p) for y, p, q in zip(labels, predictions, bins) if y and q == b]
        out.append(_ratio(sum(hits), len(hits)))
    return out


def classify(labels: Sequence[bool], predictions: Sequence[bool],
             probabilities: Sequence[float | None] | None = None,
             bins: Sequence[int | None] | None = None, n_bins: int = 0) -> Classification:
    """All metrics of one explanation's judged items (items that failed are left out first)."""
    y = [bool(v) for v in labels]
    p = [bool(v) for v in predictions]
    quant = recall_by_bin(y, p, bins, n_bins) if bins is not None else []
    if not y:
        return Classification(None, None, None, None, None, None, quant, 0, NO_ITEMS)
    tp, fp, tn, fn = confusion(y, p)
    prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    area = None
    if probabilities is not None and all(v is not None for v in probabilities):
        area = auroc(y, [float(v) for v in probabilities])
    both = bool(tp + fn) and bool(tn + fp)
    return Classification(
        accuracy=(tp + tn) / len(y), balanced_accuracy=balanced_accuracy(y, p),
        f1=f1(prec, rec), precision=prec, recall=rec, auroc=area, recall_by_quantile=quant,
        n_items=len(y), status=OK if both else ONE_CLASS)


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson over average ranks); None with under 3 pairs or a
    constant side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 3 or a.size != b.size:
        return None
    ra, rb = _average_ranks(a) - (a.size + 1) / 2.0, _average_ranks(b) - (b.size + 1) / 2.0
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float(np.clip((ra * rb).sum() / den, -1, 1)) if den > 0 else None
