"""Metric functions against hand-computed values and independent numpy/scipy computations."""

import math

import numpy as np
import pytest

from explainer.score import metrics as S


def test_correlation_hand_computed():
    # real = [0, 1, 2], pred = [0, 1, 1]: cov = 1/3 * (1*... ) worked out by hand -> sqrt(3)/2
    m = S.correlation([0, 1, 2], [0, 1, 1])
    assert m.status == "ok"
    assert m.value == pytest.approx(math.sqrt(3) / 2)
    assert S.correlation([1, 2, 3], [3, 2, 1]).value == pytest.approx(-1.0)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_numpy_and_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    real = rng.normal(size=300).astype(np.float32)
    pred = (0.5 * real + rng.normal(size=300)).astype(np.float32)
    r64, p64 = real.astype(np.float64), pred.astype(np.float64)
    assert S.correlation(real, pred).value == pytest.approx(np.corrcoef(r64, p64)[0, 1], abs=1e-12)
    assert S.correlation(real, pred).value == pytest.approx(stats.pearsonr(r64, p64)[0], abs=1e-9)
    assert S.rsquared(real, pred).value == pytest.approx(
        1 - np.mean((r64 - p64) ** 2) / np.mean(r64 ** 2))
    assert S.abs_dev_explained(real, pred).value == pytest.approx(
        1 - np.mean(np.abs(r64 - p64)) / np.mean(np.abs(r64)))


def test_rsquared_and_abs_dev_hand_computed():
    # real [1, 3], pred [2, 2]: mse 1, mean real^2 5 -> 0.8; mean abs dev 1, mean |real| 2 -> 0.5
    assert S.rsquared([1, 3], [2, 2]).value == pytest.approx(0.8)
    assert S.abs_dev_explained([1, 3], [2, 2]).value == pytest.approx(0.5)


def test_undefined_cases_have_status_not_nan():
    assert S.correlation([1, 2, 3], [5, 5, 5]) == S.Metric(None, "constant_prediction")
    assert S.correlation([0, 0, 0], [1, 2, 3]) == S.Metric(None, "constant_activation")
    assert S.correlation([], []) == S.Metric(None, "no_tokens")
    assert S.rsquared([0, 0], [1, 2]) == S.Metric(None, "zero_activation")
    assert S.abs_dev_explained([0, 0], [1, 2]) == S.Metric(None, "zero_activation")
    # float32 rounding of a constant must still count as constant, not as a noisy correlation
    const = np.full(64, 0.1, dtype=np.float32) * np.float32(3.0)
    assert S.correlation([0, 1] * 32, const).status == "constant_prediction"
    with pytest.raises(ValueError):
        S.correlation([1, 2], [1, 2, 3])


def test_score_excerpts_pools_before_correlating():
    rng = np.random.default_rng(0)
    top = [(rng.normal(size=8), rng.normal(size=8)) for _ in range(3)]
    rand = [(rng.normal(size=8), rng.normal(size=8)) for _ in range(2)]
    s = S.score_excerpts(top, rand)
    real = np.concatenate([p[0] for p in top + rand])
    pred = np.concatenate([p[1] for p in top + rand])
    assert s.score == pytest.approx(np.corrcoef(real, pred)[0, 1])
    rt, pt = np.concatenate([p[0] for p in top]), np.concatenate([p[1] for p in top])
    assert s.score_top == pytest.approx(np.corrcoef(rt, pt)[0, 1])
    per_excerpt_mean = np.mean([np.corrcoef(a, b)[0, 1] for a, b in top + rand])
    assert s.score != pytest.approx(per_excerpt_mean)
    assert s.n_tokens == 40 and s.status == "ok"


def test_score_excerpts_undefined_headline():
    s = S.score_excerpts([([0, 1, 2], [3, 3, 3])], [([0, 0, 0], [3, 3, 3])])
    assert s.score is None and s.status == "constant_prediction"
    assert s.score_random is None and s.score_top is None
    # R^2 compares 0-10 predictions with raw units unless calibrated: null without a calibration
    assert s.rsquared is None and s.abs_dev_explained is None
    s = S.score_excerpts([([0, 1, 2], [3, 3, 3])], [([0, 0, 0], [3, 3, 3])], S.IDENTITY)
    assert s.rsquared is not None  # still defined: real is not all zero


def test_constant_prediction_counts_as_zero_and_dead_neurons_are_left_out():
    assert S.counted(0.4, "ok") == 0.4
    assert S.counted(None, "constant_prediction") == 0.0
    for status in ("constant_activation", "zero_activation", "failed", "no_tokens"):
        assert S.counted(None, status) is None
    assert S.DEAD == {"constant_activation", "zero_activation"}


def test_best_candidate_prefers_a_constant_prediction_to_a_negative_score():
    from explainer.run.rows import ScoreRow
    from explainer.score.rows import mark_best

    def row(cand, score, status):
        return ScoreRow(model="m", layer=0, neuron=0, explainer="e", candidate=cand,
                        simulator="s", split="valid", explanation="x", score=score,
                        score_top=None, score_random=None, rsquared=None, abs_dev_explained=None,
                        n_tokens=10, best=False, status=status, error=None)

    rows, best = mark_best([row(0, -0.3, "ok"), row(1, None, "constant_prediction")])
    assert best == 1 and [r.best for r in rows] == [False, True]
    rows, best = mark_best([row(0, None, "constant_activation"), row(1, None, "failed")])
    assert best is None and not any(r.best for r in rows)


def test_calibration_fits_least_squares_and_guards_negative_slope():
    rng = np.random.default_rng(1)
    pred = rng.uniform(0, 10, size=200)
    real = 0.3 * pred + 1.5 + rng.normal(scale=0.01, size=200)
    cal = S.fit_calibration(real, pred)
    slope, intercept = np.polyfit(pred, real, 1)
    assert cal.status == "ok"
    assert (cal.slope, cal.intercept) == pytest.approx((slope, intercept))
    neg = S.fit_calibration(-real, pred)
    assert neg.status == "negative_slope" and neg.slope == 0.0
    assert neg.intercept == pytest.approx(np.mean(-real))
    # the guard keeps the sign: an anti-correlated simulation still scores negative after calibration
    s = S.score_excerpts([(-real, pred)], [], neg)
    assert s.score < -0.99
    assert S.fit_calibration(real, np.ones(200)).status == "constant_prediction"


def test_calibration_improves_rsquared():
    rng = np.random.default_rng(2)
    pred = rng.uniform(0, 10, size=100)
    real = 0.2 * pred + rng.normal(scale=0.1, size=100)
    raw = S.score_excerpts([(real, pred)], [], S.IDENTITY)
    cal = S.score_excerpts([(real, pred)], [], S.fit_calibration(real, pred))
    assert raw.score == pytest.approx(cal.score)
    assert cal.rsquared > 0.9 > raw.rsquared


def test_choose_best_and_mean_defined():
    assert S.choose_best([0.1, None, 0.5, 0.5]) == 2
    assert S.choose_best([None, None]) is None
    assert S.choose_best([]) is None
    assert S.mean_defined([0.2, None, 0.4]) == (pytest.approx(0.3), 1)
    assert S.mean_defined([None]) == (None, 1)
