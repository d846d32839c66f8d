"""Frequency-aware judge figures: firing density beside balanced accuracy, a density-weighted
mean, and the score-vs-density panel (views/density.py)."""

from __future__ import annotations

import numpy as np
import pytest

from explainer import config as C
from explainer import run as rundir
from explainer.judge import stage
from explainer.views import density, report
from tests import judgefake as JF
from tests.fake_openai import FakeOpenAI

D_MLP = 6
DENSITY = [0.5, 0.01, 0.2, 0.05, 0.3, 0.002]  # made up: what record would have measured


def _neurons(run):
    t = rundir.table("neurons")
    cols = {c: [None] * D_MLP for c in t.schema.names}
    cols.update(neuron=list(range(D_MLP)), density=DENSITY, n_tokens=[100] * D_MLP)
    rundir.write_columns(run, "neurons", cols, model=JF.MODEL, layer=0)


def _judged(tmp_path, style="random"):
    run = JF.make_run(tmp_path / "run", d_mlp=D_MLP)
    _neurons(run)
    with FakeOpenAI(JF.Judge(style, seed=3)) as fake:
        stage.run(C.JudgeConfig(run=run, method="detection", judge="fake-model",
                                llm=C.LLMConfig(base_url=fake.base_url, max_retries=0)))
    return run


def test_weighted_mean_is_sum_of_density_times_score_over_density():
    assert density.weighted_mean([1.0, 0.0], [0.9, 0.1]) == pytest.approx(0.9)
    assert density.weighted_mean([1.0, 0.5, float("nan")], [1.0, 3.0, 5.0]) == \
        pytest.approx((1.0 + 1.5) / 4.0)
    assert density.weighted_mean([1.0], [0.0]) is None and density.weighted_mean([], []) is None


def test_report_prints_density_and_the_weighted_mean_and_plots_the_panel(tmp_path):
    run = _judged(tmp_path)
    sc = rundir.read(run, "scores")
    sc = sc[sc["status"].isin(["ok", "partial"])].sort_values("neuron")
    s = sc["balanced_accuracy"].to_numpy(float)
    d = np.array([DENSITY[int(n)] for n in sc["neuron"]])
    want = float((s * d).sum() / d.sum())  # computed here, from the scores and the made-up d
    rows = density.aggregate(rundir.read(run, "scores"), run, {}, "layer")
    assert len(rows) == 1 and rows[0].n_scored == len(sc)
    assert rows[0].weighted_mean == pytest.approx(want)
    assert rows[0].mean_density == pytest.approx(d.mean())
    assert rows[0].mean == pytest.approx(s.mean()) and rows[0].sampling == "delphi"
    png = tmp_path / "report.png"
    text = report.run(C.ReportConfig(run=run, plot=png))
    assert "Judges by firing density" in text and "density-weighted mean" in text
    line = next(ln for ln in text.splitlines() if "detection" in ln and "delphi" in ln
                and f"{d.mean():.4f}" in ln)
    assert f"{want:.3f}" in line
    from PIL import Image

    assert Image.open(png).size[0] == round(6.3 * 3 * 110)  # depth, histogram, density panels
    data = __import__("json").loads(report.run(C.ReportConfig(run=run, format="json")))
    assert data["density"][0]["weighted_mean"] == pytest.approx(want)


def test_a_negative_side_reads_the_share_at_or_below_zero(tmp_path):
    run = _judged(tmp_path, "perfect")
    sc = rundir.read(run, "scores")
    neg = sc.assign(side="neg")
    got = density.with_density(neg, run)
    assert np.allclose(sorted(got["density"]), sorted(1 - np.array(DENSITY)))
