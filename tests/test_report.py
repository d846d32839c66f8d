"""report: numbers against a hand-made run with known scores, ordering by size, formats, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from explainer import ExplainError
from explainer.views import report
from explainer import run as rundir
from explainer.config import ReportConfig
from tests.reportfactory import EXPLAINERS, MODELS, counted, make_run


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return run, make_run(run, n_neurons=10, full=False, dead=4)


def _rows(run, by):
    scores, meta = report.load(run)
    return report.aggregate(scores, meta, by)


def test_layer_rows_match_known_scores(scored):
    run, truth = scored
    rows = _rows(run, "layer")
    assert len(rows) == sum(len(s["layers"]) for s in MODELS.values()) * len(EXPLAINERS)
    for r in rows:
        written = truth.scores[(r.model, r.layer, r.explainer)]
        # A constant prediction counts as a score of 0; the dead and the failed neuron are left
        # out of every mean and counted in their own columns.
        ok = np.array([counted(s, st) for _, s, _, _, st in written if st != "failed"
                       and counted(s, st) is not None])
        assert r.n_neurons == len(written) == 10
        assert r.n_scored == ok.size == 8
        assert r.n_dead == 1 and r.n_failed == 1
        assert r.mean == pytest.approx(ok.mean())
        assert 0.0 in ok and r.mean < np.mean(ok[ok != 0.0])  # the zero is in, not dropped
        assert r.median == pytest.approx(np.median(ok))
        assert r.share_good == pytest.approx((ok >= 0.8).mean())
        assert r.mean_top == pytest.approx(
            np.mean([counted(t, st) for _, _, t, _, st in written if counted(t, st) is not None]))
        assert r.mean_random == pytest.approx(
            np.mean([counted(x, st) for _, _, _, x, st in written if counted(x, st) is not None]))
        assert r.mean_test == pytest.approx(np.mean(truth.test[(r.model, r.layer, r.explainer)]))
        assert r.depth == pytest.approx(r.layer / (MODELS[r.model]["n_layers"] - 1))
        assert r.n_params == MODELS[r.model]["n_params"]


def test_decoy_candidates_are_not_counted(scored):
    run, _ = scored
    scores = rundir.read(run, "scores")
    head = report.headline(scores)
    assert (head["candidate"] == 0).all()
    assert len(head) == len(scores) // 4  # 2 candidates x 2 splits per neuron and pair


def test_bootstrap_interval_brackets_mean_and_is_seeded(scored):
    run, truth = scored
    for r in _rows(run, "layer"):
        assert r.ci_low <= r.mean <= r.ci_high
    x = np.random.default_rng(5).normal(0.2, 0.3, 400)
    lo, hi = report.bootstrap_ci(x, n_boot=4000, seed=1)
    assert (lo, hi) == report.bootstrap_ci(x, n_boot=4000, seed=1)
    # Independent check: the normal-theory interval of a mean of 400 draws.
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.01)
    assert hi == pytest.approx(x.mean() + half, abs=0.01)
    assert report.bootstrap_ci([]) == (None, None)
    assert report.bootstrap_ci([0.4]) == (0.4, 0.4)


def test_chunked_bootstrap_matches_numpy_reference():
    # With a single chunk the draw sequence is numpy's own: compare with a direct computation.
    x = np.linspace(-0.5, 0.9, 50)
    rng = np.random.default_rng(3)
    means = x[rng.integers(0, x.size, (500, x.size))].mean(1)
    want = np.quantile(means, [0.025, 0.975])
    assert report.bootstrap_ci(x, n_boot=500, seed=3) == pytest.approx(tuple(want))


def test_models_ordered_by_size_and_pooled(scored):
    run, truth = scored
    rows = _rows(run, "model")
    assert [r.model for r in rows] == ["z-tiny-gpt2"] * 2 + ["a-big-gpt2"] * 2
    for r in rows:
        pooled = [counted(s, st) for (m, _, ex), written in truth.scores.items()
                  if m == r.model and ex == r.explainer
                  for _, s, _, _, st in written if counted(s, st) is not None]
        assert r.layer is None and r.n_scored == len(pooled)
        assert r.mean == pytest.approx(np.mean(pooled))
        assert r.n_failed == len(MODELS[r.model]["layers"])
    layer_rows = _rows(run, "layer")
    assert [r.model for r in layer_rows][0] == "z-tiny-gpt2"


def test_pairs_pool_all_models(scored):
    run, truth = scored
    pairs = _rows(run, "pair")
    assert {r.explainer for r in pairs} == set(EXPLAINERS)
    for r in pairs:
        pooled = [counted(s, st) for (_, _, ex), w in truth.scores.items() if ex == r.explainer
                  for _, s, _, _, st in w if counted(s, st) is not None]
        assert r.mean == pytest.approx(np.mean(pooled))
        assert r.model == "z-tiny-gpt2, a-big-gpt2"


def test_formats(scored):
    run, _ = scored
    table = report.run(ReportConfig(run=run))
    assert "Score by layer" in table and "Score by model" in table
    assert "Score by explainer / simulator" in table
    assert table.index("z-tiny-gpt2") < table.index("a-big-gpt2")
    assert "5.0M" in table and "120K" in table
    csv_text = report.run(ReportConfig(run=run, format="csv", by="model"))
    lines = csv_text.splitlines()
    assert lines[0].startswith("model,layer,depth,explainer,simulator,n_params")
    assert len(lines) == 1 + 4
    data = json.loads(report.run(ReportConfig(run=run, format="json")))
    assert data["by"] == "layer" and len(data["rows"]) == 10 and len(data["models"]) == 4
    assert data["rows"][0]["n_failed"] == 1


def test_bad_input(tmp_path, scored):
    run, _ = scored
    with pytest.raises(ExplainError, match="--by depth"):
        report.run(ReportConfig(run=run, by="depth"))
    with pytest.raises(ExplainError, match="--format xml"):
        report.run(ReportConfig(run=run, format="xml"))
    with pytest.raises(ExplainError, match="no such run"):
        report.run(ReportConfig(run=tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExplainError, match="no scores"):
        report.run(ReportConfig(run=tmp_path / "empty"))
    with pytest.raises(ExplainError, match="--plot"):
        report.run(ReportConfig(run=run, plot=tmp_path / "x.svg"))
    assert not (tmp_path / "x.svg").exists()


def test_cli_report_show_view(scored, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    run, _ = scored
    runner = CliRunner()
    res = runner.invoke(app, ["report", "--run", str(run), "--format", "json", "--by", "model"])
    assert res.exit_code == 0, res.output
    assert [r["model"] for r in json.loads(res.stdout)["rows"]][:1] == ["z-tiny-gpt2"]
    res = runner.invoke(app, ["report", "--run", str(run), "--by", "depth"])
    assert res.exit_code == 2 and "error: --by depth" in res.output
    res = runner.invoke(app, ["show", "--run", str(run), "--layer", "0", "--neuron", "3",
                              "--model", "z-tiny-gpt2"])
    assert res.exit_code == 0 and "neuron 3" in res.stdout
    res = runner.invoke(app, ["view", "--run", str(run), "--out", str(tmp_path / "site")])
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path / "site" / "index.html")
