"""`explain judge` (detection, fuzzing) through the fake OpenAI server with scripted judges."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from explainer import ExplainError
from explainer import config as C
from explainer import run as rundir
from explainer.judge import prompt as P
from explainer.judge import sampling as SA
from explainer.judge import stage
from tests import judgefake as JF
from tests.fake_openai import FakeOpenAI


def _cfg(run, fake, **kw):
    kw.setdefault("judge", "fake-model")
    kw.setdefault("sampling", "explain")  # these tests pin the explain preset's definitions
    return C.JudgeConfig(run=run, llm=C.LLMConfig(base_url=fake.base_url, concurrency=4,
                                                  max_retries=0), **kw)


def _judge(run, style, method, **kw):
    with FakeOpenAI(JF.Judge(style, **{k: kw.pop(k) for k in ("logprobs",) if k in kw})) as fake:
        stage.run(_cfg(run, fake, method=method, **kw))
        return fake.completions()


def _scores(run, method):
    sc = rundir.read(run, "scores")
    return sc[sc["method"] == method].sort_values("neuron").reset_index(drop=True)


@pytest.mark.parametrize("method", ["detection", "fuzzing"])
def test_perfect_judge_scores_one_and_labels_are_true(tmp_path, method):
    run = JF.make_run(tmp_path / "run")
    _judge(run, "perfect", method)
    sc = _scores(run, method)
    assert len(sc) == 6 and (sc["status"] == "ok").all()
    assert (sc["balanced_accuracy"] == 1.0).all() and (sc["auroc"] == 1.0).all()
    assert (sc["score"] == sc["balanced_accuracy"]).all() and (sc["split"] == "heldout").all()
    j = rundir.read(run, "judgments")
    j = j[j["method"] == method]
    # Labels, checked independently from the known activations: a positive holds the word.
    for r in j.itertuples():
        words = [t.strip() for t in JF.tokens(r.excerpt_id)]
        if method == "detection":
            assert r.label == (JF.WORDS[r.neuron] in words)
            assert r.kind == ("random" if not r.label else r.kind)
            assert r.split != "explain"
        else:
            hl = [words[i] for i in r.highlighted]
            assert r.label == all(w == JF.WORDS[r.neuron] for w in hl) and len(hl) > 0
            assert len(hl) == words.count(JF.WORDS[r.neuron])  # decoys: as many highlighted
    assert (j.groupby("neuron")["label"].sum() == 10).all()  # n_positive
    assert np.allclose(j["threshold"], [0.1 * max(max(JF.activations(n, e)) for e in range(120))
                                        for n in j["neuron"]], rtol=1e-6)


def test_always_yes_is_chance_and_random_is_near_chance(tmp_path):
    run = JF.make_run(tmp_path / "run", d_mlp=12)
    _judge(run, "always_yes", "detection")
    sc = _scores(run, "detection")
    assert (sc["balanced_accuracy"] == 0.5).all() and (sc["recall"] == 1.0).all()
    assert (sc["auroc"] == 0.5).all()
    run2 = JF.make_run(tmp_path / "run2", d_mlp=12)
    _judge(run2, "random", "detection")
    sc = _scores(run2, "detection")
    # 12 neurons x 20 items: the pooled mean's standard error is about 0.5 / sqrt(240) = 0.03.
    assert abs(sc["balanced_accuracy"].mean() - 0.5) < 0.1
    assert abs(sc["auroc"].mean() - 0.5) < 0.1


def test_unreadable_answers_fail_their_excerpt_and_are_asked_again(tmp_path):
    run = JF.make_run(tmp_path / "run")
    first = _judge(run, "garble", "detection")
    sc = _scores(run, "detection")
    j = rundir.read(run, "judgments")
    failed = j[j["status"] == "failed"]
    assert len(failed) > 0 and failed["prediction"].isna().all()
    assert failed["error"].str.contains("no answer line").all()
    assert (sc["n_failed"] == j.groupby("neuron")["status"].apply(
        lambda s: (s == "failed").sum()).to_numpy()).all()
    assert set(sc["status"]) == {"partial"} and (sc["n_judged"] + sc["n_failed"] == 20).all()
    assert sc["auroc"].isna().all()  # no logprobs came back
    # The readable answers are still right; unreadable prompts were not cached: asked again.
    ok = j[j["status"] == "ok"]
    assert (ok["prediction"] == ok["label"]).all()
    again = _judge(run, "perfect", "detection")
    assert again == first
    sc = _scores(run, "detection")
    assert set(sc["status"]) == {"ok"} and (sc["balanced_accuracy"] == 1.0).all()
    assert _judge(run, "perfect", "detection") == 0  # finished: nothing sent


def test_without_logprobs_there_is_no_auroc(tmp_path):
    run = JF.make_run(tmp_path / "run")
    _judge(run, "perfect", "fuzzing", logprobs=False)
    sc = _scores(run, "fuzzing")
    assert (sc["balanced_accuracy"] == 1.0).all() and sc["auroc"].isna().all()
    assert rundir.read(run, "judgments")["probability"].isna().all()


def test_every_explainer_gets_the_same_prompts(tmp_path):
    run = JF.make_run(tmp_path / "run", d_mlp=2, explainers=("a", "b"))
    rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
        JF.MODEL, 0, n, "b", "p" * 12, 0, f'the word "{JF.WORDS[n]}" and more', 10, 5, "ok",
        None) for n in range(2)])
    with FakeOpenAI(JF.Judge("perfect")) as fake:
        stage.run(_cfg(run, fake, method="detection"))
        users = [r.body["messages"][-1]["content"] for r in fake.requests if r.body]
    by = {}
    for u in users:
        head, rest = u.split("\n", 1)
        by.setdefault("b" if "and more" in head else "a", []).append(rest)
    assert len(by["a"]) == 8 and sorted(by["a"]) == sorted(by["b"])


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    run = JF.make_run(tmp_path / "run")
    for kw in ({"method": "vibes"}, {"excerpts_per_prompt": 0}, {"fraction": 0.0},
               {"explainer": "nobody"}):
        with FakeOpenAI(JF.Judge()) as fake, pytest.raises(ExplainError):
            stage.run(_cfg(run, fake, **kw))
    assert not (run / "judgments").exists()
    from cli import app

    res = CliRunner().invoke(app, ["judge", "--run", str(run), "--method", "nope"])
    assert res.exit_code == 2 and "--method" in res.output


# --- pure parts ---------------------------------------------------------------------------


def _ex(eid, acts, kind="top", split="valid", rank=0):
    return SA.Excerpt(eid, kind, split, rank, tuple(f" w{i}" for i in range(len(acts))),
                      tuple(acts))


def test_sampling_threshold_positives_negatives_decoys():
    tops = [_ex(0, [0, 10, 0], split="explain"), _ex(1, [0, 9, 0]), _ex(2, [3, 0, 0], rank=1),
            _ex(3, [0, 0.5, 0], rank=2)]
    tau = SA.threshold(tops, 0.1)
    assert tau == 1.0
    pos = SA.positives(tops, [_ex(9, [0, 5.5, 0], kind="quantile")], tau, 10, {0})
    assert [p.excerpt.excerpt_id for p in pos] == [1, 9, 2]  # strongest bin first, round robin
    assert [p.quantile for p in pos] == [4, 2, 1]  # bins of 9, 5.5, 3 over (0, 10]
    rand = [_ex(5, [0.2, 0.9, 0], "random", rank=1), _ex(6, [1.0, 0, 0], "random", rank=0),
            _ex(7, [0, 0, 0.1], "random", rank=2)]
    assert [n.excerpt.excerpt_id for n in SA.negatives(rand, tau, 5)] == [5, 7]
    fz = SA.fuzz_items(pos, tau, SA.rng_for(0))
    for t, d in zip(fz[::2], fz[1::2]):
        assert t.label and not d.label and len(t.highlighted) == len(d.highlighted)
        assert not set(t.highlighted) & set(d.highlighted)
    bs = SA.batches(fz, 2, SA.rng_for(1))
    assert all(len({i.excerpt.excerpt_id for i in b}) == len(b) for b in bs)
    assert sorted(map(id, sum(bs, []))) == sorted(map(id, fz))
    assert SA.batches(fz, 2, SA.rng_for(1)) == bs  # seeded
    assert SA.side_of("neg") == ("bottom", None, -1.0)
    assert SA.threshold([_ex(0, [-1, -2])], 0.1) == math.inf


def test_prompt_parse_reads_each_line_and_never_guesses():
    got = P.parse("Sure!\n1: yes\n2) No\n* 3. YES\n5: no\n4 maybe", 4)
    assert [a.prediction for a in got] == [True, False, True, None]
    assert "excerpt 4" in got[3].error
    both = P.parse("1: yes\n1: no", 1)[0]
    assert both.prediction is None and "both" in both.error
    assert P.excerpt_text([" a", " b", "\n", " c"], [1, 2]) == " a<< b\\n>> c"


# --- report and cost ----------------------------------------------------------------------


def test_report_shows_judges_with_chance_and_rank_correlation(tmp_path):
    from explainer.views import judged, report

    run = JF.make_run(tmp_path / "run", d_mlp=8)
    _judge(run, "perfect", "detection")
    _judge(run, "random", "fuzzing")
    # Simulation rows for the same neurons, so methods can be correlated (score = neuron / 10).
    rundir.write_rows(run, "scores", [rundir.ScoreRow(
        JF.MODEL, 0, n, "fake-explainer", 0, "sim", "valid", "x", n / 10, None, None, None,
        None, 80, True, "ok", None) for n in range(8)])
    scores = rundir.read(run, "scores")
    rows = judged.aggregate(scores, {}, "layer")
    by = {r.method: r for r in rows}
    fz = _scores(run, "fuzzing")
    assert by["detection"].mean == 1.0 and by["detection"].chance == 0.5
    assert by["fuzzing"].mean == pytest.approx(fz["balanced_accuracy"].mean())
    assert by["fuzzing"].n_scored == 8 and by["fuzzing"].items == 160
    corr = {(c.a, c.b): c for c in judged.correlations(scores, {})}
    stats = pytest.importorskip("scipy.stats")
    want = stats.spearmanr(np.arange(8) / 10, fz["balanced_accuracy"]).statistic
    # a judge is named with its sampling preset: two presets are two methods here
    assert corr[("simulation", "fuzzing (explain)")].rho == pytest.approx(want)
    assert corr[("simulation", "fuzzing (explain)")].n == 8
    text = report.run(C.ReportConfig(run=run))
    assert "Judges: balanced accuracy" in text and "chance" in text and "simulation ~ fuzzing (explain)" in text
    data = __import__("json").loads(report.run(C.ReportConfig(run=run, format="json")))
    assert {j["method"] for j in data["judges"]} == {"detection", "fuzzing"}


def test_report_cost_counts_each_request_once_per_stage_and_model(tmp_path):
    from explainer.views import cost, report

    run = JF.make_run(tmp_path / "run", d_mlp=3)
    _judge(run, "perfect", "detection")
    _judge(run, "perfect", "fuzzing", neurons="0")
    rows = {r.stage: r for r in cost.cost_rows(cost.read_calls(run))}
    j = rundir.read(run, "judgments")
    det = j[j["method"] == "detection"]
    assert rows["judge-detection"].neurons == 3 and rows["judge-fuzzing"].neurons == 1
    # 20 items per neuron in prompts of 5: 4 calls each; the fake bills len(user) // 4 tokens.
    assert rows["judge-detection"].calls == 12 == rows["judge-detection"].sent
    assert rows["judge-detection"].completion_tokens == 4 * len(det)
    assert rows["judge-detection"].usd is None  # no price for fake-model
    # A cache hit is the same request: counted once.
    calls = cost.read_calls(run)
    again = [__import__("dataclasses").replace(c, cached=True) for c in calls]
    assert cost.cost_rows(calls + again) == cost.cost_rows(calls)
    text = report.run(C.ReportConfig(run=run, cost=True))
    assert "judge-detection" in text and "prompt/neuron" in text


def test_show_and_view_list_each_judgment(tmp_path):
    from explainer.views import html as view
    from explainer.views import terminal

    run = JF.make_run(tmp_path / "run", d_mlp=2)
    _judge(run, "garble", "fuzzing")
    text = terminal.run(C.ShowConfig(run=run, layer=0, neuron=1))
    assert "Judgments" in text and "decoy" in text and "real highlights" in text
    assert "unreadable" in text and "yes" in text
    index = view.run(C.ViewConfig(run=run, out=tmp_path / "site"))
    page = (tmp_path / "site" / "neurons" / JF.MODEL / "L0" / "N1.html").read_text()
    assert index.endswith("index.html") and "<h2>Judgments</h2>" in page
    j = rundir.read(run, "judgments")
    assert page.count("<mark>") >= len(j[(j["neuron"] == 1)])  # every judged excerpt marked
    assert f"<mark> {JF.WORDS[1]}</mark>" in page


@pytest.mark.parametrize("method", P.METHODS)
def test_messages_carry_a_worked_example_in_the_answer_format(method):
    msgs = P.messages(method, "the word x", [([" a", " x"], [1] if method == "fuzzing" else None)])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    shot = msgs[2]["content"]
    n = len(P._LINE.findall(shot))
    assert n == 3 and all(a.prediction is not None for a in P.parse(shot, n))
    assert msgs[3]["content"].startswith("Description: the word x\n\n1) ")
    assert ("<< x>>" in msgs[3]["content"]) == (method == "fuzzing")


def test_run_refuses_an_unknown_judge_method_before_recording(tmp_path):
    from cli import app

    res = CliRunner().invoke(app, ["run", "--run", str(tmp_path / "r"), "--judge-methods",
                                   "detection,vibes"])
    assert res.exit_code == 2 and "vibes" in res.output
    assert not (tmp_path / "r").exists()


def test_a_plain_read_has_one_row_per_key_after_a_rerun(tmp_path):
    import pandas as pd

    run = JF.make_run(tmp_path / "run", d_mlp=2)
    _judge(run, "garble", "detection")
    _judge(run, "perfect", "detection")  # the partial rows are redone and replace the old
    plain = pd.read_parquet(run / "judgments")
    assert len(plain) == len(rundir.read(run, "judgments")) == 40
    sc = pd.read_parquet(run / "scores")
    assert len(sc) == 2 and (sc["status"] == "ok").all()


def _chosen_by(run, simulator, candidate, d_mlp):
    """Simulation score rows in which `simulator` chose `candidate` for every neuron."""
    rundir.write_rows(run, "scores", [rundir.ScoreRow(
        model=JF.MODEL, layer=0, neuron=n, explainer="fake-explainer", candidate=c,
        simulator=simulator, split="valid", explanation="x", score=0.5 if c == candidate
        else 0.1, score_top=None, score_random=None, rsquared=None, abs_dev_explained=None,
        n_tokens=8, best=c == candidate, status="ok", error=None, mode="logprob",
        sim_prompt_hash=simulator[:6]) for n in range(d_mlp) for c in (0, 1)])


# The judge's own model simulated; or another LLM did (the judge follows it, not the lexical).
@pytest.mark.parametrize("simulator", ["fake-model", "another-llm"])
def test_judges_mark_the_candidate_their_simulator_chose_not_the_lexical_one(tmp_path,
                                                                             simulator):
    run = JF.make_run(tmp_path / "run", d_mlp=2)
    rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
        JF.MODEL, 0, n, "fake-explainer", "p" * 12, 1, JF.explanation(n) + " or so", 10, 5,
        "ok", None) for n in range(2)])
    _chosen_by(run, simulator, 0, 2)  # the LLM simulator chose candidate 0
    _chosen_by(run, C.BASELINE_SIMULATOR, 1, 2)  # the lexical baseline, written last, chose 1
    with FakeOpenAI(JF.Judge("perfect")) as fake:
        stage.run(_cfg(run, fake, method="detection"))
    sc = _scores(run, "detection")
    assert len(sc) == 4  # both candidates judged, the chosen one labelled
    assert sorted(zip(sc["neuron"], sc["candidate"], sc["best"])) == \
        [(0, 0, True), (0, 1, False), (1, 0, True), (1, 1, False)]
