"""The controls that say whether a score means anything: shuffled explanations (simulate
--control shuffled, the report's specificity table) and the baseline-lexical simulator, on
runfactory neurons that fire on distinct tokens (neuron n of layer L fires on RF.trigger(L, n))."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from explainer import ExplainError
from explainer import config as C
from explainer import run as rundir
from explainer.simulate import control, lexical, simulators
from explainer.simulate import stage as simulate
from explainer.views import controls as V
from tests import runfactory as RF
from tests import simfake
from tests.fake_openai import FakeOpenAI

CTX, N_EXCERPTS, N_RANDOM = 16, 20, 12
NEURONS = range(8)


def _run(tmp_path, text=simfake.explanation, neurons=NEURONS):
    run = RF.make_run(tmp_path / "run", n_layers=2, d_mlp=8, n_excerpts=N_EXCERPTS, ctx=CTX,
                      layers=(0,), n_random=N_RANDOM)
    rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
        RF.MODEL, 0, n, "fake-explainer", "p" * 12, 0, text(0, n), 10, 5, "ok", None)
        for n in neurons])
    return run


class Names(simfake.Handler):
    """Predicts 9 exactly on the token the explanation names ("... fires on<token>")."""

    def _values(self, expl, tokens):
        named = expl.split("fires on", 1)[1]
        return [1.0 if t == named else 0.0 for t in tokens]


class Ignores(simfake.Handler):
    """Ignores the explanation: predicts 9 on every " cat" and " sky", whatever it is told."""

    def _values(self, expl, tokens):
        return [1.0 if t in (" cat", " sky") else 0.0 for t in tokens]


def _cfg(run, fake, **kw):
    return C.SimulateConfig(run=run, simulator="fake-model", mode="logprob", control="shuffled",
                            llm=C.LLMConfig(base_url=fake.base_url, concurrency=4,
                                            max_retries=0), **kw)


def _valid_excerpts(neuron: int, n_top: int = 5, n_random: int = 5) -> list[int]:
    """Independently: the valid-split top and random excerpts of a runfactory neuron."""
    ids = list(range(N_EXCERPTS))
    ranked = sorted(ids, key=lambda i: (-max(RF.activations(0, neuron, i, CTX)), i))
    top = [i for r, i in enumerate(ranked) if RF.SPLITS[r % 4] == "valid"][:n_top]
    rand = [i for r, i in enumerate(ids[:N_RANDOM]) if RF.SPLITS[1 + r % 3] == "valid"]
    return top + rand[:n_random]


def _corr_named(target: int, source: int) -> float:
    """Pearson of 'predict 10 on the source's trigger' with the target's real activations."""
    real, pred = [], []
    for i in _valid_excerpts(target):
        toks = RF.excerpt_tokens(i, CTX)
        real += RF.activations(0, target, i, CTX)
        pred += [10.0 if t == RF.trigger(0, source) else 0.0 for t in toks]
    if np.std(pred) == 0:
        return 0.0  # a constant prediction counts as 0
    return float(np.corrcoef(real, pred)[0, 1])


def test_derangement_is_seeded_and_has_no_fixed_point():
    a = control.derangement(range(8), "0/tiny/0/pos/x")
    assert sorted(a) == sorted(a.values()) == list(range(8))
    assert all(t != s for t, s in a.items())
    assert a == control.derangement(list(reversed(range(8))), "0/tiny/0/pos/x")
    assert any(control.derangement(range(8), f"{seed}/tiny/0/pos/x") != a for seed in (1, 2, 3))
    assert control.derangement([5], "k") == {}


def test_explanation_that_names_the_tokens_beats_its_shuffle(tmp_path):
    run = _run(tmp_path)
    with FakeOpenAI(Names("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake))
        n = fake.completions()
        simulate.run(_cfg(run, fake))  # everything stored: not even a probe
        assert fake.completions() == n
    sc = rundir.read(run, "scores")
    ctl = sc[sc["control"] == "shuffled"].sort_values("neuron")
    assert len(ctl) == 8 and (ctl["split"] == "valid").all() and not ctl["best"].any()
    # a derangement of the 8 neurons, provenance kept
    assert sorted(ctl["source_neuron"]) == list(range(8))
    assert (ctl["source_neuron"] != ctl["neuron"]).all()
    sims = rundir.read(run, "simulations")
    assert set(sims[sims["control"] == "shuffled"]["split"]) == {"valid"}
    for t, s, score, status in zip(ctl["neuron"], ctl["source_neuron"], ctl["score"],
                                   ctl["status"]):
        got = 0.0 if status == "constant_prediction" else score
        assert got == pytest.approx(_corr_named(int(t), int(s)), abs=1e-5)
    rows = V.aggregate(sc, {}, by="model")
    assert len(rows) == 1
    r = rows[0]
    own = np.array([_corr_named(n, n) for n in NEURONS])
    shuf = np.array([_corr_named(int(t), int(s)) for t, s in zip(ctl["neuron"],
                                                                ctl["source_neuron"])])
    assert r.n_pairs == 8 and r.own == pytest.approx(own.mean(), abs=1e-5)
    assert r.shuffled == pytest.approx(shuf.mean(), abs=1e-5)
    assert r.diff > 0.7 and r.diff_low > 0 and r.verdict == "signal"
    # `explain score` recomputes the controls from their simulations, never marking one best
    from cli import app

    res = CliRunner().invoke(app, ["score", "--run", str(run)])
    assert res.exit_code == 0, res.output
    again = rundir.read(run, "scores")
    again = again[again["control"] == "shuffled"].sort_values("neuron")
    assert not again["best"].any() and list(again["source_neuron"]) == list(ctl["source_neuron"])
    assert np.allclose(again["score"].fillna(0), ctl["score"].fillna(0))


def test_simulator_that_ignores_the_explanation_shows_no_signal(tmp_path):
    run = _run(tmp_path)
    with FakeOpenAI(Ignores("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake))
    from cli import app

    res = CliRunner().invoke(app, ["report", "--run", str(run), "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = [r for r in json.loads(res.stdout)["controls"] if r["layer"] is None]
    assert len(rows) == 1 and rows[0]["n_pairs"] == 8
    assert rows[0]["diff_low"] <= 0 <= rows[0]["diff_high"]
    assert rows[0]["verdict"] == V.NO_SIGNAL
    png = tmp_path / "r.png"
    res = CliRunner().invoke(app, ["report", "--run", str(run), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "Specificity" in res.stdout and V.NO_SIGNAL in res.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the own-score tables never count a control row: 8 neurons, not 8 own + 8 shuffled
    data = json.loads(CliRunner().invoke(app, ["report", "--run", str(run), "--format",
                                               "json"]).stdout)
    assert [r["n_neurons"] for r in data["rows"] + data["models"]] == [8, 8]
    assert len(rundir.read(run, "scores")) == 8 * 3  # valid, test and the control, each


def _quoted(layer, neuron):
    return f'the token "{RF.trigger(layer, neuron).strip()}"'


def test_lexical_simulator_through_the_stage(tmp_path):
    wrong = {0: 'the word "zebra"', 1: _quoted(0, 5)}  # absent, and another neuron's token
    run = _run(tmp_path, text=lambda lay, n: wrong.get(n, _quoted(lay, n)), neurons=range(4))
    cfg = C.SimulateConfig(run=run, simulator=C.BASELINE_SIMULATOR,
                           llm=C.LLMConfig(base_url="http://127.0.0.1:9/v1"))  # never asked
    simulate.run(cfg)
    sc = rundir.read(run, "scores")
    v = sc[sc["split"] == "valid"].set_index("neuron")
    assert set(sc["simulator"]) == {C.BASELINE_SIMULATOR} and set(sc["mode"]) == {"lexical"}
    assert (v.loc[[2, 3], "score"] > 0.9).all()
    for n in (2, 3):
        assert v.loc[n, "score"] == pytest.approx(_corr_named(n, n), abs=1e-5)
    assert v.loc[0, "status"] == "constant_prediction"  # names nothing here: counted as 0
    assert abs(v.loc[1, "score"]) < 0.3
    assert v.loc[1, "score"] == pytest.approx(_corr_named(1, 5), abs=1e-5)
    assert set(sc["sim_prompt_hash"]) == {simulators.prompt_hash(C.BASELINE_SIMULATOR, 1, None)}
    assert simulators.prompt_hash(C.BASELINE_SIMULATOR, 1, None) == hashlib.sha256(
        open(lexical.__file__, "rb").read()).hexdigest()[:12]
    # with the control: the lexical simulator sees the quoted explanations are specific
    simulate.run(C.SimulateConfig(run=run, simulator=C.BASELINE_SIMULATOR, control="shuffled",
                                  neurons="2-3"))
    rows = V.aggregate(rundir.read(run, "scores"), {}, by="model")
    assert [r.n_pairs for r in rows] == [2] and rows[0].diff > 0.9


def test_lexical_prediction_edit_resimulates(tmp_path, monkeypatch):
    run = _run(tmp_path, text=_quoted, neurons=range(2))
    simulate.run(C.SimulateConfig(run=run, simulator=C.BASELINE_SIMULATOR))
    n = len(rundir.read(run, "simulations"))
    from explainer.simulate import baseline

    monkeypatch.setattr(baseline, "source_hash", lambda: "edited00000")  # lexical.py edited
    simulate.run(C.SimulateConfig(run=run, simulator=C.BASELINE_SIMULATOR))
    # Simulated again under the new hash, beside the old rows (the hash is part of the key).
    sims = rundir.read(run, "simulations")
    assert (sims["sim_prompt_hash"] == "edited00000").sum() == n and len(sims) == 2 * n


def test_bad_control_is_refused(tmp_path):
    run = _run(tmp_path, neurons=range(2))
    with pytest.raises(ExplainError, match="--control"):
        simulate.run(C.SimulateConfig(run=run, simulator=C.BASELINE_SIMULATOR,
                                      control="reversed"))
    assert not rundir.files(run, "scores")
