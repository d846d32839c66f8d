"""A value slot without a digit among the simulator's alternatives predicts 0 and is counted
(issue 27): simulations carry the count, scores the share, the report a warning past 20%;
`--strict-values` keeps the old rule; unreadable answers are cached, transport errors retried."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explainer import config as C
from explainer import prompts
from explainer import run as rundir
from explainer.simulate import prompt as SP
from explainer.simulate import simulators
from explainer.simulate import stage as simulate
from tests import runfactory as RF
from tests import simfake
from tests.fake_openai import FakeOpenAI, Reply

CTX, N_EXCERPTS = 16, 20
NEURONS = (0, 1, 2)
NO_DIGIT = {"unknown": -0.05, " the": -3.0}  # a row where the simulator put no digit


def _blank(k: int) -> bool:
    """Which value slots of an excerpt get a digit-free row: every fourth, from the second."""
    return k % 4 == 1


def _run(tmp_path):
    run = RF.make_run(tmp_path / "run", n_layers=1, d_mlp=4, n_excerpts=N_EXCERPTS, ctx=CTX,
                      layers=(0,), n_random=12)
    rundir.write_rows(run, "explanations", [
        rundir.ExplanationRow(RF.MODEL, 0, n, "fake-explainer", "p" * 12, 0,
                              simfake.explanation(0, n), 10, 5, "ok", None) for n in NEURONS])
    return run


def _ev(row: dict) -> float:
    """The expected value (0-10 scale) over the digits of one row of alternatives, written out
    here apart from the parser: 0 when the row holds none."""
    mass = {int(t): math.exp(lp) for t, lp in row.items() if t.strip().isdigit()}
    total = sum(mass.values())
    return 0.0 if total == 0 else 10 / 9 * sum(v * m for v, m in mass.items()) / total


class Blanking:
    """The scripted simulator, with digit-free rows at some value slots of every excerpt; keeps
    what a correct reader must predict, per excerpt (by its listed tokens)."""

    def __init__(self, top_cap: int | None = None):
        self.inner = simfake.Handler("truth", CTX, N_EXCERPTS)
        self.top_cap = top_cap  # refuse (HTTP 400) requests asking for more alternatives
        self.want: dict[tuple, list[float]] = {}  # (explanation, tokens shown) -> predictions
        self.asked: list[int] = []  # `logprobs` of each simulator request

    def __call__(self, req):
        body = req.body or {}
        if self.top_cap is not None and (body.get("logprobs") or 0) > self.top_cap:
            return Reply.error(400, message="logprobs too large")
        reply = self.inner(req)
        if "Neuron: " not in str(body.get("prompt", "")):
            return reply
        self.asked.append(body["logprobs"])
        lp = reply.body["choices"][0]["logprobs"]
        toks, top = lp["tokens"], lp["top_logprobs"]
        slots = [i for i, t in enumerate(toks) if t == "unknown" and i and toks[i - 1] == "\t"]
        for k, i in enumerate(slots):
            if _blank(k):
                top[i] = dict(NO_DIGIT)
        question = body["prompt"].rsplit("<start>\n", 1)[1]
        shown = tuple(ln.rsplit("\t", 1)[0] for ln in question.split("\n")
                      if ln.endswith("\tunknown"))
        expl = body["prompt"].rsplit("Neuron: ", 1)[1].split("\n", 1)[0]
        self.want[(expl, shown)] = [_ev(top[i]) for i in slots]
        return reply


def _cfg(run, fake, **kw):
    kw.setdefault("mode", "logprob")
    return C.SimulateConfig(run=run, simulator="fake-model",
                            llm=C.LLMConfig(base_url=fake.base_url, concurrency=4,
                                            max_retries=0), **kw)


def test_digit_free_slots_predict_zero_and_scores_match_an_independent_computation(tmp_path):
    run = _run(tmp_path)
    handler = Blanking()
    with FakeOpenAI(handler) as fake:
        simulate.run(_cfg(run, fake))
    assert set(handler.asked) == {simulators.LOGPROBS_TRIED[0]}  # the fake takes any number
    tokens = dict(zip(*(rundir.read(run, "excerpts")[c] for c in ("excerpt_id", "tokens"))))
    sims = rundir.read(run, "simulations")
    assert len(sims) and (sims["status"] == "ok").all()
    for r in sims.itertuples():
        shown = tuple(prompts.show_token(t) for t in tokens[r.excerpt_id])
        want = handler.want[(simfake.explanation(0, r.neuron), shown)]
        assert np.allclose(r.predicted, want, atol=1e-4)
        assert r.n_no_digit == sum(_blank(k) for k in range(len(shown))) == 4
    rec = rundir.read(run, "records")
    real = {(int(n), k, int(e)): np.asarray(a, float) for n, k, e, a in zip(
        rec["neuron"], rec["kind"], rec["excerpt_id"], rec["activations"])}
    scores = rundir.read(run, "scores")
    for s in scores.itertuples():
        mine = sims[(sims["neuron"] == s.neuron) & (sims["split"] == s.split)]
        x = np.concatenate([real[(s.neuron, k, e)] for k, e in zip(mine["kind"], mine["excerpt_id"])])
        y = np.concatenate([handler.want[(simfake.explanation(0, s.neuron),
                                          tuple(prompts.show_token(t) for t in tokens[e]))]
                            for e in mine["excerpt_id"]])
        assert s.status == "ok" and s.score == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-4)
        assert s.no_digit_share == pytest.approx(mine["n_no_digit"].sum() / len(y)) == 0.25
    # The report shows the share beside the pair, and warns past 20%.
    from explainer.views import digits, report

    text = digits.section(report.headline(scores))
    assert "25.0% of" in text and "fake-explainer / fake-model (logprob)" in text
    assert "warning: fake-model (logprob)" in text and "25%" in text


def test_strict_values_fails_the_same_answers_as_before(tmp_path):
    run = _run(tmp_path)
    with FakeOpenAI(Blanking()) as fake:
        simulate.run(_cfg(run, fake, strict_values=True))
    sims, scores = rundir.read(run, "simulations"), rundir.read(run, "scores")
    assert len(sims) and (sims["status"] == "failed").all() and sims["predicted"].isna().all()
    assert sims["error"].str.contains("token 1: no value 0-9 among the top log-prob").all()
    assert (scores["status"] == "failed").all() and scores["score"].isna().all()


def test_as_many_alternatives_as_the_endpoint_takes(tmp_path):
    run = _run(tmp_path)
    handler = Blanking(top_cap=20)  # vLLM's default --max-logprobs
    with FakeOpenAI(handler) as fake:
        simulate.run(_cfg(run, fake))
    assert set(handler.asked) == {20}
    assert (rundir.read(run, "scores")["status"] == "ok").all()


def test_parse_echo_counts_digit_free_slots_and_strict_refuses_them():
    p = SP.logprob_prompt("x", ["a", "b", "c"], [])
    toks, offsets, pos = [], [], 0
    for part in simfake.fake_tokens(p.text)[0]:
        toks.append(part)
        offsets.append(pos)
        pos += len(part)
    slots = [i for i, t in enumerate(toks) if t == "unknown" and toks[i - 1] == "\t"]
    top = [None] * len(toks)
    top[slots[0]], top[slots[1]], top[slots[2]] = {"9": 0.0}, dict(NO_DIGIT), {"0": -0.1}
    got = SP.parse_echo(p, toks, top, offsets, shift=0)
    assert got.predicted == pytest.approx([10.0, 0.0, 0.0]) and got.no_digit == (1,)
    strict = SP.parse_echo(p, toks, top, offsets, shift=0, strict=True)
    assert strict.predicted is None and strict.failure == SP.ANSWER and "token 1" in strict.error
    # split back per excerpt: the counted slots follow their excerpt
    two = SP.split_parsed(SP.Parsed([1.0, 0.0, 2.0, 0.0], None, "logprob", (1, 3)), [2, 2])
    assert [x.no_digit for x in two] == [(1,), (1,)]


class Mixed:
    """Chat answers: neuron 0's requests fail in transport (HTTP 500), neuron 1's answer cannot
    be read, neuron 2's is fine; `fixed` makes every answer good."""

    def __init__(self):
        self.inner = simfake.Handler("truth", CTX, N_EXCERPTS)
        self.fixed = False
        self.sent: list[int] = []

    def __call__(self, req):
        text = str((req.body or {}).get("messages", ""))
        neuron = next((n for n in NEURONS if f"neuron L0N{n} " in text), None)
        if neuron is not None:
            self.sent.append(neuron)
        if not self.fixed and neuron == 0:
            return Reply.error(500, message="the simulator is down")
        if not self.fixed and neuron == 1:
            return Reply.chat("I would rather not rate these tokens.")
        return self.inner(req)


def test_failures_by_kind_transport_retried_unreadable_not_resent(tmp_path, capsys):
    run = _run(tmp_path)
    handler = Mixed()
    with FakeOpenAI(handler) as fake:
        simulate.run(_cfg(run, fake, mode="chat"))
        line = [ln for ln in capsys.readouterr().err.splitlines() if "failed excerpts" in ln][0]
        assert "got no answer (transport errors): they are retried on the next run" in line
        assert "cannot be read: it is cached" in line and "try --mode logprob" in line
        handler.fixed, handler.sent = True, []
        simulate.run(_cfg(run, fake, mode="chat"))
    assert set(handler.sent) == {0}  # only the transport failures went out again
    sc = rundir.read(run, "scores")
    status = dict(zip(sc[sc["split"] == "valid"]["neuron"], sc[sc["split"] == "valid"]["status"]))
    assert status == {0: "ok", 1: "failed", 2: "ok"}
