"""Classification metrics against brute force and scipy (sklearn is not installed here)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from explainer.score import classify as K


def _brute_auroc(y, s):
    pos = [v for v, t in zip(s, y) if t]
    neg = [v for v, t in zip(s, y) if not t]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_brute_force_and_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    n = 40 + 10 * seed
    y = rng.random(n) < 0.4
    # Coarse probabilities so ties occur; predictions from a threshold.
    s = np.round(np.clip(0.3 * y + rng.random(n) * 0.8, 0, 1), 1)
    p = s >= 0.5
    c = K.classify(y, p, list(s))
    tp = sum(a and b for a, b in zip(y, p))
    fp = sum((not a) and b for a, b in zip(y, p))
    tn = sum((not a) and (not b) for a, b in zip(y, p))
    fn = sum(a and (not b) for a, b in zip(y, p))
    assert c.accuracy == pytest.approx((tp + tn) / n)
    assert c.precision == pytest.approx(tp / (tp + fp))
    assert c.recall == pytest.approx(tp / (tp + fn))
    assert c.balanced_accuracy == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert c.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert c.auroc == pytest.approx(_brute_auroc(y, s))
    u = stats.mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    assert c.auroc == pytest.approx(u / (y.sum() * (~y).sum()))
    assert c.status == "ok" and c.n_items == n


def test_hand_computed_and_undefined_cases():
    # 2 positives (one found), 2 negatives (one false alarm)
    c = K.classify([1, 1, 0, 0], [1, 0, 1, 0], [0.9, 0.2, 0.6, 0.1], bins=[3, 0, None, None],
                   n_bins=4)
    assert (c.accuracy, c.balanced_accuracy, c.precision, c.recall, c.f1) == (0.5, 0.5, 0.5, 0.5, 0.5)
    assert c.auroc == 0.75  # pairs: 0.9>0.6, 0.9>0.1, 0.2<0.6, 0.2>0.1
    assert c.recall_by_quantile == [0.0, None, None, 1.0]
    # Only positives: accuracy is defined, balanced accuracy and AUROC are not.
    one = K.classify([1, 1], [1, 0], [0.7, 0.2])
    assert one.status == "one_class" and one.balanced_accuracy is None and one.auroc is None
    assert one.accuracy == 0.5 and one.recall == 0.5
    # Never says yes: precision undefined, F1 too; a missing probability drops AUROC.
    none = K.classify([1, 0], [0, 0], [0.4, None])
    assert none.precision is None and none.f1 is None and none.auroc is None
    assert none.balanced_accuracy == 0.5
    empty = K.classify([], [])
    assert empty.status == "no_items" and empty.accuracy is None


def test_perfect_and_constant_judges():
    y = [True] * 5 + [False] * 7
    perfect = K.classify(y, y, [0.9 if v else 0.1 for v in y])
    assert perfect.balanced_accuracy == 1.0 and perfect.auroc == 1.0 and perfect.f1 == 1.0
    always = K.classify(y, [True] * 12, [0.8] * 12)
    assert always.balanced_accuracy == 0.5 and always.auroc == 0.5 and always.recall == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_rank_correlation_matches_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    x = np.round(rng.random(30), 1)  # ties
    y = np.round(x + rng.normal(0, 0.3, 30), 1)
    assert K.rank_correlation(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert K.rank_correlation([1, 2, 3], [5, 5, 5]) is None
    assert K.rank_correlation([1, 2], [1, 2]) is None
