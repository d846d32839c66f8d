"""report: numbers against a hand-made run with known scores, ordering by size, formats, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from explainer import ExplainError
from explainer.views import report
from explainer import run as rundir
from explainer.config import ReportConfig
from explainer.score import metrics
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
    lo, hi = metrics.bootstrap_ci(x, n_boot=4000, seed=1)
    assert (lo, hi) == metrics.bootstrap_ci(x, n_boot=4000, seed=1)
    # Independent check: the normal-theory interval of a mean of 400 draws.
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.01)
    assert hi == pytest.approx(x.mean() + half, abs=0.01)
    assert metrics.bootstrap_ci([]) == (None, None)
    assert metrics.bootstrap_ci([0.4]) == (0.4, 0.4)


@pytest.mark.parametrize("n", [50, 51])  # chunks of an even and an odd number of draws
def test_chunked_bootstrap_matches_numpy_reference(monkeypatch, n):
    # A chunk of 7 resamples: 500 resamples take 72 draws of the generator, not one. numpy's
    # stream is the same however it is cut, so the result must equal one direct draw of all.
    x = np.linspace(-0.5, 0.9, n)
    rng = np.random.default_rng(3)
    means = x[rng.integers(0, x.size, (500, x.size))].mean(1)
    want = np.quantile(means, [0.025, 0.975])
    calls = []
    real = np.random.default_rng

    class Counting:  # the generator, counting its draws
        def __init__(self, seed):
            self.rng = real(seed)

        def integers(self, low, high, size):
            calls.append(size)
            return self.rng.integers(low, high, size)

    monkeypatch.setattr(metrics, "CHUNK_INDICES", 7 * n)
    monkeypatch.setattr(np.random, "default_rng", Counting)
    assert metrics.bootstrap_ci(x, n_boot=500, seed=3) == pytest.approx(tuple(want), abs=1e-12)
    assert len(calls) == 72 and calls[0] == (7, n) and calls[-1] == (3, n)


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


def _rows_of(items_by_neuron):
    """Valid-split score rows of neurons given as (top pairs, random pairs) of (real, pred)."""
    from explainer.score import rows as score_rows

    out = []
    for n, (top, rand) in enumerate(items_by_neuron):
        items = [score_rows.Item("top", "valid", tuple(r), tuple(p), None, i)
                 for i, (r, p) in enumerate(top)]
        items += [score_rows.Item("random", "valid", tuple(r), tuple(p), None, 100 + i)
                  for i, (r, p) in enumerate(rand)]
        cand = score_rows.Candidate("m", 0, n, "ex", 0, "sim", "text", mode="logprob")
        out.append(score_rows.score_row(cand, "valid", items, False, best=True))
    return out


def test_top_and_random_columns_count_a_constant_prediction_as_0(tmp_path):
    rng = np.random.default_rng(0)
    real = [rng.normal(size=8) for _ in range(5)]
    noisy = [r + rng.normal(size=8) for r in real]
    rows = _rows_of([
        # 0: predicts the top excerpts exactly, the random ones as one constant
        ([(real[0], 2 * real[0])], [(real[1], np.zeros(8))]),
        # 1: the random excerpts' activation is constant (dead there): left out of that column
        ([(real[2], noisy[2])], [(np.full(8, 0.3), noisy[1])]),
        # 2: both defined
        ([(real[3], noisy[3])], [(real[4], noisy[4])]),
    ])
    assert [r.status_random for r in rows] == ["constant_prediction", "constant_activation",
                                               "ok"]
    assert all(r.status == "ok" for r in rows)  # the headline is defined for every neuron
    rundir.write_rows(tmp_path, "scores", rows)
    rundir.write_run_json(tmp_path, {"format": 1, "models": {"m": {"model": "m"}}})
    (row,) = _rows(tmp_path, "model")
    # Independently: np.corrcoef of what was scored, 0 for the constant prediction, the neuron
    # dead on its random excerpts left out, as the headline counts them.
    assert row.mean_random == pytest.approx(np.mean([0.0, np.corrcoef(real[4], noisy[4])[0, 1]]))
    assert row.mean_top == pytest.approx(np.mean([1.0, np.corrcoef(real[2], noisy[2])[0, 1],
                                                  np.corrcoef(real[3], noisy[3])[0, 1]]))
    assert row.n_scored == 3


def test_a_report_over_two_simulator_prompts_shows_them_apart(tmp_path, monkeypatch):
    import shutil

    from explainer import config, prompts
    from explainer.simulate import stage as simulate
    from tests import runfactory, simfake
    from tests.fake_openai import FakeOpenAI

    run = runfactory.make_run(tmp_path / "run", n_layers=1, d_mlp=8, n_excerpts=20, ctx=16,
                              n_random=12)
    rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
        runfactory.MODEL, 0, n, "fake-explainer", "p" * 12, 0, simfake.explanation(0, n), 1, 1,
        "ok", None) for n in range(4)])

    def simulate_neurons(fake, neurons):
        simulate.run(config.SimulateConfig(
            run=run, simulator="fake-model", mode="logprob", neurons=neurons,
            llm=config.LLMConfig(base_url=fake.base_url, concurrency=4, max_retries=0)))

    with FakeOpenAI(simfake.Handler("truth", 16, 20)) as fake:
        simulate_neurons(fake, "0-3")
        edited = tmp_path / "prompts"  # an edited simulator prompt, then half the neurons again
        shutil.copytree(prompts.PROMPTS_DIR, edited)
        path = edited / "simulate_logprob.txt"
        path.write_text(path.read_text().replace("Most tokens get 0", "Most tokens are 0"))
        monkeypatch.setattr(prompts, "PROMPTS_DIR", edited)
        simulate_neurons(fake, "0-1")
    hashes = rundir.read(run, "scores")["sim_prompt_hash"]
    old, new = list(dict.fromkeys(hashes))
    data = json.loads(report.run(ReportConfig(run=run, format="json")))
    by_hash = {r["sim_prompt_hash"]: r for r in data["rows"]}
    assert len(data["rows"]) == 2 and set(by_hash) == {old, new}  # two rows, never one mean
    assert by_hash[old]["n_neurons"] == 4 and by_hash[new]["n_neurons"] == 2
    text = report.run(ReportConfig(run=run))
    assert "prompt" in text and old[:6] in text and new[:6] in text
    note = [ln for ln in text.splitlines() if ln.startswith("note:")]
    assert len(note) == 1 and "2 neuron sides" in note[0] and f"older prompt than {new[:6]}" \
        in note[0] and "explain simulate" in note[0]
