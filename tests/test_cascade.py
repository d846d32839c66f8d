"""`explain describe --cascade E1,E2 --accept T` and `--revise N` against scripted endpoints
(tests/cascadefake.py): a cheap explainer right for 40% of neurons, a strong one always right,
a simulator that predicts high exactly on the words an explanation names."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from explainer import ExplainError
from explainer import cascade
from explainer import config as C
from explainer import run as rundir
from explainer.views import cost as V
from tests import cascadefake as CF
from tests import runfactory as RF
from tests.fake_openai import FakeOpenAI

D_MLP = 10  # one neuron per word of the vocabulary: 4 the cheap explainer gets right


@pytest.fixture
def prices(tmp_path, monkeypatch):
    from explainer.llm import ledger

    monkeypatch.setattr(ledger, "PRICES", Path(CF.prices_file(tmp_path / "prices.json")))
    ledger._prices.cache_clear()
    yield
    ledger._prices.cache_clear()


def _run(root: Path) -> Path:
    return RF.make_run(root, n_layers=1, d_mlp=D_MLP, n_excerpts=20, ctx=16, n_random=12)


def _configs(run: Path, fake, k: int = 1):
    llm = C.LLMConfig(base_url=fake.base_url, concurrency=4, max_retries=0)
    return (C.DescribeConfig(run=run, layers="0", explainer="strong-model", llm=llm),
            C.SimulateConfig(run=run, simulator="sim-model", mode="chat", llm=llm,
                             excerpts_per_prompt=k))


def _test_scores(run: Path, explainer: str) -> dict[int, float]:
    sc = rundir.read(run, "scores")
    sc = sc[(sc["explainer"] == explainer) & (sc["split"] == "test") & sc["best"]]
    return {int(n): (0.0 if s != s else float(s)) for n, s in zip(sc["neuron"], sc["score"])}


def _dollars(run: Path) -> float:
    rows = V.cost_rows(V.read_calls(run))
    assert all(r.usd is not None for r in rows)
    return sum(r.usd for r in rows)


def _strong_alone(tmp_path, fake, k: int = 1) -> tuple[float, float]:
    from explainer import describe, simulate

    run = _run(tmp_path / "strong")
    d, s = _configs(run, fake, k)
    describe.run(d)
    simulate.run(s)
    scores = _test_scores(run, "strong-model")
    assert len(scores) == D_MLP
    return sum(scores.values()) / D_MLP, _dollars(run)


def test_cascade_keeps_the_score_for_less(tmp_path, prices):
    with FakeOpenAI(CF.handler, models=CF.MODELS) as fake:
        strong_score, strong_usd = _strong_alone(tmp_path, fake)
        run = _run(tmp_path / "cascade")
        d, s = _configs(run, fake)
        out = cascade.run(C.CascadeConfig(describe=d, simulate=s,
                                          explainers=("cheap-model", "strong-model"),
                                          accept=0.8, accept_by="simulation"))
    assert "chosen: 10 neurons" in out
    # Independently: the cheap explanation is kept exactly where it names the neuron's word.
    cheap, strong = _test_scores(run, "cheap-model"), _test_scores(run, "strong-model")
    right = {n for n in range(D_MLP) if RF.trigger(0, n) in CF.RIGHT}
    assert set(cheap) == right and set(strong) == set(range(D_MLP)) - right
    ex = rundir.read(run, "explanations")
    assert ex.groupby("explainer")["level"].agg(set).to_dict() == \
        {"cheap-model": {1}, "strong-model": {2}}
    assert (ex["explainer"] == "cheap-model").sum() == D_MLP
    score = (sum(cheap.values()) + sum(strong.values())) / D_MLP
    usd = _dollars(run)
    print(f"cascade score {score:.3f} vs strong {strong_score:.3f}; "
          f"cost ${usd:.5f} vs ${strong_usd:.5f} ({usd / strong_usd:.3f})")
    assert strong_score > 0.9 and score >= 0.95 * strong_score
    # Escalating 60% costs 0.6 of the strong run's describe+simulate plus the cheap level and
    # its judging: at these prices about 0.61-0.62 of the strong explainer alone.
    assert usd <= 0.65 * strong_usd
    # the ledger names every call's level
    stages = {r.stage for r in V.cost_rows(V.read_calls(run))}
    # simulate:LN accepts (valid split); score:LN is the kept explanation's test split
    assert stages == {"describe:L1", "simulate:L1", "describe:L2", "simulate:L2",
                      "score:L1", "score:L2"}
    # rerun: everything is done, nothing is sent
    with FakeOpenAI(CF.handler, models=CF.MODELS) as fake2:
        d, s = _configs(run, fake2)
        cascade.run(C.CascadeConfig(describe=d, simulate=s,
                                    explainers=("cheap-model", "strong-model"), accept=0.8,
                                    accept_by="simulation"))
        assert not [r for r in fake2.requests if r.path.endswith("/completions")]


def test_revision_fixes_the_cheap_explanations_and_is_kept_only_when_better(tmp_path, prices):
    with FakeOpenAI(CF.handler, models=CF.MODELS) as fake:
        run = _run(tmp_path / "revise")
        d, s = _configs(run, fake)
        cascade.run(C.CascadeConfig(describe=d, simulate=s, explainers=("cheap-model",),
                                    revise=2))
    ex = rundir.read(run, "explanations")
    revised = ex[ex["candidate"] == 1]
    wrong = {n for n in range(D_MLP) if RF.trigger(0, n) not in CF.RIGHT}
    # a revision for every neuron (no --accept: all are revised), naming the missed word
    assert len(revised) == D_MLP and (revised["status"] == "ok").all()
    for n, text in zip(revised["neuron"], revised["explanation"]):
        if n in wrong:
            assert text == f"the word {RF.trigger(0, n).strip()}"
    sc = rundir.read(run, "scores")
    best = sc[(sc["split"] == "valid") & sc["best"]]
    chosen = dict(zip(best["neuron"], best["candidate"]))
    # wrong ones: the revision scores higher and is kept; right ones: the revision names
    # nothing missed ("the word nothing": constant, 0), so the original stays
    assert {n for n, c in chosen.items() if c == 1} == wrong
    test = _test_scores(run, "cheap-model")
    assert len(test) == D_MLP and min(test.values()) > 0.9
    stages = {r.stage for r in V.cost_rows(V.read_calls(run))}
    assert {"describe:L1", "simulate:L1", "revise:L1"} <= stages
    # the second round had nothing left to gain on the right ones, but was asked only of
    # neurons below no threshold: every revision request names its round's candidate
    assert not (ex["candidate"] > 2).any()


def test_bad_cascades_are_refused(tmp_path):
    run = _run(tmp_path / "bad")
    d = C.DescribeConfig(run=run)
    s = C.SimulateConfig(run=run)
    for names, accept, revise, why in [((), None, 0, "name one explainer"),
                                       (("a", "a"), None, 0, "appears twice"),
                                       (("a",), 2.0, 0, "--accept 2.0"),
                                       (("baseline-tokens",), None, 1, "cannot revise")]:
        with pytest.raises(ExplainError, match=why):
            cascade.run(C.CascadeConfig(describe=d, simulate=s, explainers=names,
                                        accept=accept, revise=revise))
    assert not (run / "explanations").exists()


def test_cli_describe_cascade(tmp_path, prices):
    from cli import app

    run = _run(tmp_path / "cli")
    with FakeOpenAI(CF.handler, models=CF.MODELS) as fake:
        res = CliRunner().invoke(app, [
            "describe", "--run", str(run), "--layer", "0", "--base-url", fake.base_url,
            "--cascade", "cheap-model,strong-model", "--accept", "0.8", "--accept-by", "simulation",
            "--simulator", "sim-model", "--mode", "chat", "--excerpts-per-prompt", "5"])
    assert res.exit_code == 0, res.output
    assert "chosen: 10 neurons" in res.output
    meta = rundir.read_run_json(run)["cascades"][RF.MODEL]
    assert meta["levels"] == ["cheap-model", "strong-model"] and meta["accept"] == 0.8
    res = CliRunner().invoke(app, ["report", "--run", str(run), "--cost"])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln.split() for ln in res.output.splitlines() if ln.strip()}
    assert lines["L1"][1:3] == ["cheap-model", "10"] and lines["L2"][1:3] == ["strong-model", "6"]
    assert lines["kept"][-2:] == ["10", "0.972"]  # every neuron kept once, its test score


def test_a_shared_cache_answers_a_second_run_and_the_ledger_says_what_it_saved(tmp_path, prices,
                                                                                monkeypatch):
    import sqlite3

    from explainer import describe

    monkeypatch.setenv("EXPLAIN_LLM_CACHE", str(tmp_path / "shared.sqlite"))
    with FakeOpenAI(CF.handler, models=CF.MODELS) as fake:
        for name in ("first", "second"):
            d, _ = _configs(_run(tmp_path / name), fake)
            describe.run(d)
        asked = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    assert len(asked) == D_MLP  # the second run sent nothing
    with sqlite3.connect(tmp_path / "second" / "llm.sqlite") as db:
        rows = db.execute("SELECT cached, cost_usd, saved_usd FROM calls").fetchall()
    assert len(rows) == D_MLP and all(c == 1 and cost == 0 and saved > 0
                                      for c, cost, saved in rows)
    first = V.cost_rows(V.read_calls(tmp_path / "first"))
    assert sum(r[2] for r in rows) == pytest.approx(sum(r.usd for r in first))
