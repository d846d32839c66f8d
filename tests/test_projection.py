"""`explain report --cost --project N --price MODEL`: the projected bill, checked against the
ledger's rows read here with sqlite3 and priced by hand."""

from __future__ import annotations

import math
import re
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from explainer import ExplainError
from explainer import config as C
from explainer.judge import stage
from explainer.views import projection, report
from tests import judgefake as JF
from tests.fake_openai import FakeOpenAI

MINI = (0.15, 0.60)  # gpt-4o-mini in prices.json, live; batch is half


def _run(tmp_path):
    run = JF.make_run(tmp_path / "run", d_mlp=3)
    for method, neurons in (("detection", "all"), ("fuzzing", "0")):
        with FakeOpenAI(JF.Judge("perfect")) as fake:
            stage.run(C.JudgeConfig(run=run, method=method, neurons=neurons, judge="fake-model",
                                    llm=C.LLMConfig(base_url=fake.base_url, max_retries=0)))
    return run


def _by_hand(run, n):
    """Per neuron dollars at gpt-4o-mini, each (stage, request) once, straight from the file."""
    with sqlite3.connect(run / "llm.sqlite") as db:
        rows = db.execute("SELECT stage, request, key, prompt_tokens, completion_tokens, status "
                          "FROM calls ORDER BY id").fetchall()
    seen, usd = set(), {}
    for st, req, key, pt, ct, status in rows:
        m = re.match(r"^L(\d+)/N(\d+)\b", key or "")
        if status != "ok" or not m or (st, req) in seen:
            continue
        seen.add((st, req))
        k = (int(m.group(1)), int(m.group(2)))
        usd[k] = usd.get(k, 0.0) + (pt * MINI[0] + ct * MINI[1]) / 1e6
    v = np.array(list(usd.values()))
    return v, n * v.mean()


def test_projection_is_the_measured_mean_per_neuron_times_n_with_its_interval(tmp_path):
    run = _run(tmp_path)
    n = 36_864
    v, want = _by_hand(run, n)
    assert len(v) == 3  # neurons 1 and 2 had no fuzzing call: they count 0 there
    from explainer.views import cost

    p = projection.project(cost.read_calls(run), n, "gpt-4o-mini")
    assert p.measured == 3 and p.usd == pytest.approx(want)
    assert p.usd_batch == pytest.approx(want / 2)
    half = 1.96 * math.sqrt(n * n * v.var(ddof=1) / 3 + n * v.var(ddof=1))
    assert (p.low, p.high) == (pytest.approx(max(0, want - half)), pytest.approx(want + half))
    fz = next(s for s in p.stages if s.stage == "judge-fuzzing")
    det = next(s for s in p.stages if s.stage == "judge-detection")
    assert fz.usd + det.usd == pytest.approx(want)
    text = report.run(C.ReportConfig(run=run, cost=True, project=n, price="gpt-4o-mini"))
    assert f"Projected bill for {n:,} neurons at gpt-4o-mini's prices" in text
    assert f"projected: ${want:,.2f} live" in text


def test_without_a_price_the_fake_model_projects_unknown_and_cli_works(tmp_path):
    from cli import app

    run = _run(tmp_path)
    res = CliRunner().invoke(app, ["report", "--run", str(run), "--cost", "--project", "100"])
    assert res.exit_code == 0, res.output
    assert "projected: unknown" in res.output
    res = CliRunner().invoke(app, ["report", "--run", str(run), "--cost", "--project", "100",
                                   "--price", "gpt-4o-mini"])
    assert res.exit_code == 0 and "through the batch interface" in res.output


@pytest.mark.parametrize("kw, why", [
    ({"cost": True, "project": 0}, "--project 0: the number of neurons"),
    ({"cost": True, "project": 10, "price": "gpt-9"}, "--price gpt-9: not in prices.json"),
    ({"project": 10}, "--project/--price: only with --cost"),
    ({"cost": True, "price": "gpt-4o-mini"}, "--price gpt-4o-mini: only with --project"),
])
def test_bad_projection_options_are_refused(tmp_path, kw, why):
    run = _run(tmp_path)
    with pytest.raises(ExplainError, match=re.escape(why)):
        report.run(C.ReportConfig(run=run, **kw))


def test_a_gated_run_projects_per_neuron_side(tmp_path):
    from explainer import run as rundir
    from explainer.views import cost

    run = _run(tmp_path)
    # explanations of the negative side too (a gated MLP's two signs): two sides per neuron
    rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
        JF.MODEL, 0, n, "fake-explainer", "p" * 12, 0, "x", 1, 1, "ok", None, side="neg")
        for n in range(3)])
    assert projection.sides_per_neuron(run) == 2.0
    one = projection.project(cost.read_calls(run), 1000, "gpt-4o-mini")
    text = projection.run(run, 1000, "gpt-4o-mini")
    assert "2 sides each" in text and f"projected: ${one.usd / 2:,.2f} live" in text
