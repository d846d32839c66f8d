"""`--accept-by`: a cascade whose levels are accepted by a cheap judge, on the scripted endpoints
of tests/acceptfake.py (cheap explainer right for 4 of 10 neurons, strong one always right)."""

from __future__ import annotations

import json

import pytest

from explainer import ExplainError
from explainer import cascade, cascade_accept
from explainer import config as C
from explainer import run as rundir
from explainer.views import cost as V
from tests import acceptfake as AF
from tests import runfactory as RF
from tests import test_cascade as T
from tests.fake_openai import FakeOpenAI


@pytest.fixture
def prices(tmp_path, monkeypatch):
    from explainer.llm import ledger

    monkeypatch.setattr(ledger, "PRICES", __import__("pathlib").Path(
        AF.prices_file(tmp_path / "prices.json")))
    ledger._prices.cache_clear()
    yield
    ledger._prices.cache_clear()


def _cascade(run, fake, **kw):
    d, s = T._configs(run, fake)
    return cascade.run(C.CascadeConfig(describe=d, simulate=s,
                                       explainers=("cheap-model", "strong-model"), **kw))


def test_detection_accepts_the_right_cheap_explanations_without_simulating_the_rest(
        tmp_path, prices):
    with FakeOpenAI(AF.handler, models=AF.MODELS) as fake:
        run = T._run(tmp_path / "cascade")
        out = _cascade(run, fake, accept=0.8, accept_by="detection")
    assert "detection balanced accuracy >= 0.8" in out and "chosen: 10 neurons" in out
    right = {n for n in range(T.D_MLP) if RF.trigger(0, n) in AF.CF.RIGHT}
    cheap, strong = T._test_scores(run, "cheap-model"), T._test_scores(run, "strong-model")
    assert set(cheap) == right and set(strong) == set(range(T.D_MLP)) - right
    assert min(cheap.values()) > 0.9 and min(strong.values()) > 0.9
    # No simulation was spent on a rejected explanation: the cheap model's wrong ones were
    # judged, never simulated.
    sims = rundir.read(run, "simulations")
    assert set(sims[sims["explainer"] == "cheap-model"]["neuron"]) == right
    sc = rundir.read(run, "scores")
    det = sc[(sc["method"] == "detection") & (sc["explainer"] == "cheap-model")]
    assert len(det) == T.D_MLP and (det["sampling"] == "delphi").all()
    assert {int(n) for n, b in zip(det["neuron"], det["balanced_accuracy"]) if b >= 0.8} == right
    stages = {r.stage for r in V.cost_rows(V.read_calls(run))}
    assert stages == {"describe:L1", "judge-detection:L1", "score:L1",
                      "describe:L2", "judge-detection:L2", "score:L2"}
    entry = rundir.read_run_json(run)["cascades"][RF.MODEL]
    assert entry["accept_by"] == "detection" and entry["accept_scale"] == "balanced accuracy"
    assert entry["accept"] == 0.8 and entry["judge"] == "sim-model" and entry["sampling"] == "delphi"
    # rerun: every part is done, nothing is sent
    with FakeOpenAI(AF.handler, models=AF.MODELS) as fake2:
        _cascade(run, fake2, accept=0.8, accept_by="detection")
        assert fake2.completions() == 0


def test_the_report_splits_each_level_into_describe_accept_and_final(tmp_path, prices):
    from explainer.views import report

    with FakeOpenAI(AF.handler, models=AF.MODELS) as fake:
        run = T._run(tmp_path / "cascade")
        _cascade(run, fake, accept=0.8, accept_by="detection")
    text = report.run(C.ReportConfig(run=run, cost=True))
    assert "describe $" in text and "accept $" in text and "final $" in text
    calls = V.cost_rows(V.read_calls(run))
    want = sum(r.usd for r in calls if r.stage == "judge-detection:L1")
    part = text[text.index("cascade spend by part"):].splitlines()
    line = next(ln for ln in part if ln.startswith("L1: ")).split()
    assert line[1] == "cheap-model" and line[3] == f"{want:.6f}"  # describe, accept, final
    describe = sum(r.usd for r in calls if r.stage == "describe:L2")
    final = sum(r.usd for r in calls if r.stage == "score:L2")
    line = next(ln for ln in part if ln.startswith("L2: ")).split()
    assert line[2] == f"{describe:.6f}" and line[4] == f"{final:.6f}"


def test_default_rule_is_the_cheapest_the_simulator_can_serve(tmp_path):
    run = T._run(tmp_path / "r")
    d, s = C.DescribeConfig(run=run), C.SimulateConfig(run=run, simulator="sim-model")
    cfg = C.CascadeConfig(describe=d, simulate=s, explainers=("a", "b"))
    assert cascade_accept.accept_by(cfg) == "detection"
    assert cascade_accept.accept_by(C.CascadeConfig(d, s, ("a",), revise=1)) == "simulation"
    lexical = C.SimulateConfig(run=run, simulator=C.BASELINE_SIMULATOR)
    assert cascade_accept.accept_by(C.CascadeConfig(d, lexical, ("a",))) == "simulation"


@pytest.mark.parametrize("kw, why", [
    ({"accept": 1.5, "accept_by": "detection"},
     "--accept 1.5: --accept-by detection accepts on balanced accuracy, between 0 and 1"),
    ({"accept": -0.2}, "--accept -0.2: --accept-by detection accepts on balanced accuracy"),
    ({"accept": 1.5, "accept_by": "simulation"},
     "--accept 1.5: --accept-by simulation accepts on correlation, between -1 and 1"),
    ({"accept_by": "vibes"}, "--accept-by 'vibes': expected one of detection, fuzzing, simulation"),
    ({"accept_by": "fuzzing", "revise": 1}, "--revise 1: revision reads the simulation"),
])
def test_bad_accept_rules_are_refused_before_anything_is_written(tmp_path, kw, why):
    run = T._run(tmp_path / "bad")
    d, s = C.DescribeConfig(run=run), C.SimulateConfig(run=run, simulator="sim-model")
    with pytest.raises(ExplainError) as err:
        cascade.run(C.CascadeConfig(describe=d, simulate=s, explainers=("a", "b"), **kw))
    assert why in str(err.value) and "\n" not in str(err.value)
    assert not (run / "explanations").exists()
    assert "cascades" not in json.loads((run / "run.json").read_text())
