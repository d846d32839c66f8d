"""Stage describe: display, parsing, baseline, and full runs against the fake and embedded LLMs."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
from typer.testing import CliRunner

from explainer import ExplainError
from explainer import run as rundir
from explainer import config as C
from explainer.describe import stage as describe
from explainer.describe import baseline
from explainer.describe import prompt as P
from tests import plainread
from tests import runfactory as RF
from tests.fake_openai import FakeOpenAI, Reply

FAST = C.LLMConfig(concurrency=4, timeout_s=2.0, max_retries=2, backoff_s=0.02,
                   retry_budget_s=10.0)


@pytest.fixture
def run(tmp_path):
    return RF.make_run(tmp_path / "run")


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def _cfg(run, fake, **kw):
    llm = dataclasses.replace(kw.pop("llm", FAST), base_url=fake.base_url)
    return C.DescribeConfig(run=run, explainer="fake-model", llm=llm, **kw)


def _rows(run):
    return rundir.read(run, "explanations").sort_values(["layer", "neuron", "candidate"])


# --- pure parts -----------------------------------------------------------------------------


def test_scale_matches_reference_formula():
    acts = [[-1.0, 0.0, 0.35, 2.0], [1.99, 0.7]]
    m = 2.0
    want = [[math.floor(10 * max(a, 0) / m) for a in ex] for ex in acts]
    assert P.scale(acts) == want == [[0, 0, 1, 10], [9, 3]]
    assert P.scale([[-1.0, 0.0]]) == [[0, 0]]  # nothing positive: all zero, no division


def test_sparse_neuron_gets_nonzero_repeat():
    sparse = [[(f" w{i}", 1.0 if i == 3 else 0.0) for i in range(20)]]
    text = P.question(sparse)
    assert "only the tokens with a value above 0" in text
    # a token at 0 stands alone on its line, once (the repeat lists only w3)
    assert text.count(" w3\t10") == 2 and text.count("\n w4\n") == 1 and "\t0" not in text
    dense = [[(f" w{i}", 1.0) for i in range(5)]]
    assert "above 0" not in P.question(dense)


@pytest.mark.parametrize("answer, want", [
    ("words about boats", "words about boats"),
    ("Explanation: words about boats.", "words about boats"),
    ('"the token cat".', "the token cat"),
    ("Sure! Here is my answer:\n1. names of months. They appear often.", "names of months"),
    ("This neuron fires on numbers after a dollar sign.", "numbers after a dollar sign"),
    ("<think>hmm, boats?</think>\n**boats and ships**", "boats and ships"),
    ("- plural nouns\n- verbs", "plural nouns"),
    ("", None),
    ("   \n  ", None),
    ("...", None),
    ("I'm sorry, I cannot help with that.", None),
    ("x" * 400, None),
])
def test_parse_explanation(answer, want):
    assert P.parse_explanation(answer) == want


def test_baseline_matches_mean_activation():
    excerpts = [[(" cat", 3.0), (" dog", 1.0), ("cat", 1.0), (" sky", -1.0)],
                [(" dog", 1.0), (" sea", 2.5), (" sky", 0.5)]]
    # means: cat 2.0, dog 1.0, sea 2.5, sky -0.25 -> sea, cat, dog
    assert baseline.explanation(excerpts) == 'the tokens "sea", "cat" and "dog"'
    assert baseline.explanation([[(" a", -1.0)]]) is None


# --- whole runs -------------------------------------------------------------------------------


def test_baseline_run_writes_trigger_tokens(run):
    out = describe.run(C.DescribeConfig(run=run, explainer=C.BASELINE_EXPLAINER))
    assert out == run / "explanations"
    df = _rows(run)
    assert len(df) == 16 and set(df["status"]) == {"ok"} and set(df["prompt_hash"]) == {"none"}
    for row in df.itertuples():
        # independent: the only token with a positive activation is the neuron's trigger
        assert row.explanation == f'the token "{RF.trigger(row.layer, row.neuron).strip()}"'


def test_llm_run_sends_the_neurons_excerpts(run, fake):
    describe.run(_cfg(run, fake, layers="1", neurons="0-3"))
    df = _rows(run)
    assert list(df["neuron"]) == [0, 1, 2, 3] and set(df["status"]) == {"ok"}
    assert set(df["explanation"]) == {"words about topic"}
    assert set(df["prompt_hash"]) == {P.prompt_hash()} and set(df["prompt_tokens"]) == {100}
    sent = {r.body["messages"][-1]["content"] for r in fake.requests if r.method == "POST"}
    want = {P.question(RF.explain_excerpts(1, n)) for n in range(4)}
    assert sent == want


def test_rerun_sends_nothing_and_cache_answers(run, fake):
    describe.run(_cfg(run, fake))
    # Neurons with the same excerpts and values share a prompt, so the cache answers repeats.
    distinct = {P.question(RF.explain_excerpts(lay, n)) for lay in (0, 1) for n in range(8)}
    assert fake.completions() == len(distinct) < 16
    n_before = len(fake.requests)
    describe.run(_cfg(run, fake))  # everything done: not even a model list
    assert len(fake.requests) == n_before
    shutil.rmtree(run / "explanations")
    describe.run(_cfg(run, fake))  # rows gone, answers cached: zero completion requests
    assert fake.completions() == len(distinct) and len(_rows(run)) == 16


def test_candidates_differ_and_are_kept(run, fake):
    describe.run(_cfg(run, fake, layers="0", neurons="2", candidates=3))
    df = _rows(run)
    assert list(df["candidate"]) == [0, 1, 2]
    assert df["explanation"].nunique() == 3  # the fake answers by seed
    temps = {r.body["temperature"] for r in fake.requests if r.method == "POST"}
    assert temps == {1.0}
    describe.run(_cfg(run, fake, layers="0", neurons="2", candidates=3))
    assert fake.completions() == 3


def test_completion_api(run, fake):
    describe.run(_cfg(run, fake, layers="0", neurons="0", api="completion"))
    post = [r for r in fake.requests if r.method == "POST"]
    assert post[0].path.endswith("/v1/completions") and post[0].body["stop"] == ["\n"]
    assert _rows(run)["explanation"].tolist() == ["words about topic"]


def test_faults_end_in_rows_and_rerun_fills_failures(run, fake):
    # With one request at a time, neuron 0 gets 429, 500, 500 then an empty answer (unusable);
    # neuron 1 only malformed bodies (retries run out); neuron 2 a refusal (unusable); neuron 3
    # a timeout, then a dead server that comes back before the next retry.
    fake.push(Reply.error(429, retry_after=0.1), Reply.error(500), Reply.error(500),
              Reply.empty(), *[Reply.malformed()] * 4, Reply.chat("I'm sorry, I cannot"),
              Reply.hang(5), Reply.outage(0.3))
    cfg = _cfg(run, fake, layers="0", llm=C.LLMConfig(concurrency=1, timeout_s=1.0,
                                                      max_retries=3, backoff_s=0.2))
    describe.run(cfg)
    df = _rows(run)
    assert len(df) == 8  # every neuron has an explanation or a recorded failure
    failed = df[df["status"] == "failed"]
    assert len(failed) == 3 and failed["explanation"].isna().all()
    assert failed["error"].str.contains("unusable answer|malformed").all()
    n = fake.completions()
    describe.run(cfg)
    df = _rows(run)
    assert set(df["status"]) == {"ok"} and fake.completions() == n + 3
    plainread.assert_one_row_per_key(run, "explanations")  # the rewritten rows compacted


def test_api_key_never_reaches_the_run(run, fake, monkeypatch):
    secret = "sk-test-SECRET"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    fake.push(Reply.error(500, message=f"bad key {secret}"), Reply.error(400, message=secret))
    describe.run(_cfg(run, fake, layers="0"))
    assert any(r.headers.get("authorization") == f"Bearer {secret}" for r in fake.requests)
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("kw, message", [
    ({"layers": "5"}, "--layers 5: tiny has layers 0-1"),
    ({"neurons": "8"}, "--neurons 8: tiny layer has neurons 0-7"),
    ({"candidates": 0}, "--candidates 0"),
    ({"model": "gpt2"}, "--model gpt2: not in this run"),
])
def test_bad_input(run, fake, kw, message):
    with pytest.raises(ExplainError, match=message):
        describe.run(_cfg(run, fake, **kw))
    assert not (run / "explanations").exists()


def test_unrecorded_layer_names_recorded_ones(tmp_path, fake):
    run = RF.make_run(tmp_path / "r", n_layers=3, layers=(0, 2))
    with pytest.raises(ExplainError, match=r"no records for layer 1 .*recorded layers: 0, 2"):
        describe.run(_cfg(run, fake, layers="1"))


def test_unknown_model_and_unreachable_endpoint(run, fake):
    with pytest.raises(ExplainError, match="'nope' is not served"):
        describe.run(C.DescribeConfig(run=run, explainer="nope",
                                      llm=C.LLMConfig(base_url=fake.base_url)))
    fake.stop()
    with pytest.raises(ExplainError, match="cannot reach"):
        describe.run(_cfg(run, fake))
    assert not (run / "explanations").exists()


def test_cli_describe(run, fake):
    from cli import app

    res = CliRunner().invoke(app, ["describe", "--run", str(run), "--layer", "0",
                                   "--explainer", C.BASELINE_EXPLAINER])
    assert res.exit_code == 0 and res.stdout.strip() == str(run / "explanations")
    res = CliRunner().invoke(app, ["describe", "--run", str(run), "--layer", "9",
                                   "--explainer", "fake-model", "--base-url", fake.base_url])
    assert res.exit_code == 2 and "tiny has layers 0-1" in res.stderr


@pytest.mark.slow
def test_embedded_end_to_end(run):
    describe.run(C.DescribeConfig(run=run, layers="0", neurons="0-1",
                                  llm=C.LLMConfig(timeout_s=120)))
    df = _rows(run)
    assert len(df) == 2 and set(df["explainer"]) == {C.EMBEDDED_LLM}
    ok = df[df["status"] == "ok"]
    # a 135M model may ramble; what it gives must be one clean phrase, the rest a failure row;
    # but not every answer may fail, or the check below holds vacuously (all() of nothing)
    assert len(ok) >= 1, df[["neuron", "status", "error"]]
    assert all(0 < len(t) <= P.MAX_CHARS and "\n" not in t for t in ok["explanation"])
    failed = df[df["status"] != "ok"]
    assert failed["explanation"].isna().all() and (failed["error"].str.len() > 0).all()
    assert (df["prompt_tokens"][df["status"] == "ok"] > 0).all()
