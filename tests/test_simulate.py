"""`explain simulate` / `explain score` through the fake OpenAI server, and prompt alignment."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from explainer import ExplainError
from explainer import run as rundir
from explainer import config as C
from explainer import prompts
from explainer.simulate import prompt as SP
from explainer.simulate import stage as simulate
from tests import runfactory as RF
from tests import plainread, simfake
from tests.fake_openai import FakeOpenAI

CTX, N_EXCERPTS = 16, 20  # excerpt token lists are all different below 20 excerpts


def _run(tmp_path, neurons=range(4), layers=(0,), candidates=1):
    run = RF.make_run(tmp_path / "run", n_layers=2, d_mlp=8, n_excerpts=N_EXCERPTS, ctx=CTX,
                      layers=layers, n_random=12)
    rows = [rundir.ExplanationRow(RF.MODEL, lay, n, "fake-explainer", "p" * 12, c,
                                 simfake.explanation(lay, n) + ("" if c == 0 else " maybe"),
                                 10, 5, "ok", None)
            for lay in layers for n in neurons for c in range(candidates)]
    rundir.write_rows(run, "explanations", rows)
    return run


def _cfg(run, fake, **kw):
    kw.setdefault("simulator", "fake-model")
    return C.SimulateConfig(run=run, llm=C.LLMConfig(base_url=fake.base_url, concurrency=4,
                                                     max_retries=0), **kw)


def _scores(run):
    sc = rundir.read(run, "scores")
    return sc[sc["split"] == "valid"].sort_values(["neuron", "candidate"])


@pytest.mark.parametrize("mode,shift", [("logprob", 0), ("logprob", 1), ("chat", 0)])
def test_true_activations_score_near_one(tmp_path, mode, shift):
    run = _run(tmp_path)
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS, shift=shift)) as fake:
        out = simulate.run(_cfg(run, fake, mode=mode))
    assert out == run / "scores"
    sc = _scores(run)
    assert len(sc) == 4 and (sc["status"] == "ok").all()
    assert (sc["score"] >= 0.99).all(), sc[["neuron", "score"]]
    # without --calibrate, R^2 would compare 0-10 predictions with raw units: left null
    assert sc["rsquared"].isna().all() and sc["abs_dev_explained"].isna().all()
    sims = rundir.read(run, "simulations")
    assert set(sims["mode"]) == {"chat-logprob" if mode == "chat" else "logprob"}
    # 5 valid top + 4 valid random excerpts per neuron, plus the same for the test split
    assert (sims["split"] == "valid").sum() == 4 * 9 and (sims["split"] == "test").sum() == 4 * 9
    assert all(len(p) == CTX for p in sims["predicted"])
    if mode == "logprob":  # the probed convention is kept with the run, per endpoint
        endpoints = rundir.read_run_json(run)["endpoints"]
        assert list(endpoints.values()) == [{"echo_shift": shift}]
        assert list(endpoints)[0].endswith("|fake-model")


@pytest.mark.parametrize("shift", [0, 1])
def test_number_heavy_excerpts_read_from_the_probed_row(tmp_path, shift):
    # The row before every value slot holds 0.9 digit mass (a number that seems to go on), the
    # slot itself 0.2: a guess from digit mass reads the wrong row; the probe does not guess.
    run = _run(tmp_path, neurons=[0, 1])
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS, shift=shift,
                                    number_rows=True)) as fake:
        simulate.run(_cfg(run, fake, mode="auto"))
    sc = _scores(run)
    assert (sc["status"] == "ok").all() and (sc["score"] >= 0.99).all(), sc[["score", "status"]]
    assert set(rundir.read(run, "simulations")["mode"]) == {"logprob"}


def test_a_changed_echo_convention_is_refused(tmp_path):
    run = _run(tmp_path, neurons=[0])
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS, shift=0)) as fake:
        rundir.update_endpoint_meta(run, f"127.0.0.1:{fake.port}", "fake-model", echo_shift=1)
        with pytest.raises(ExplainError, match="shifted by 0 row.*recorded 1"):
            simulate.run(_cfg(run, fake, mode="logprob"))
    assert not (run / "simulations").exists()


def test_chat_without_logprobs_uses_stated_values(tmp_path):
    run = _run(tmp_path, neurons=[0])
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS, chat_logprobs=False)) as fake:
        simulate.run(_cfg(run, fake, mode="chat"))
    assert set(rundir.read(run, "simulations")["mode"]) == {"chat"}
    assert _scores(run)["score"].iloc[0] > 0.9


@pytest.mark.parametrize("mode", ["logprob", "chat"])
def test_shuffled_scores_near_zero(tmp_path, mode):
    run = _run(tmp_path, neurons=range(8))
    with FakeOpenAI(simfake.Handler("shuffled", CTX, N_EXCERPTS, seed=1)) as fake:
        simulate.run(_cfg(run, fake, mode=mode))
    s = _scores(run)["score"].to_numpy(dtype=float)
    assert abs(np.nanmean(s)) < 0.15 and np.nanmax(np.abs(s)) < 0.5


@pytest.mark.parametrize("mode", ["logprob", "chat"])
def test_garbage_is_recorded_as_failed_and_not_resent(tmp_path, mode):
    run = _run(tmp_path, neurons=[0, 1])
    handler = simfake.Handler("garbage", CTX, N_EXCERPTS)
    # strict: garbage echo rows hold no digit at any slot, which otherwise predicts 0 there
    cfg = dict(mode=mode, strict_values=True)
    with FakeOpenAI(handler) as fake:
        simulate.run(_cfg(run, fake, **cfg))
        sims, sc = rundir.read(run, "simulations"), _scores(run)
        assert (sims["status"] == "failed").all() and sims["predicted"].isna().all()
        assert sims["error"].str.len().min() > 10
        assert (sc["status"] == "failed").all() and sc["score"].isna().all()
        # An unreadable answer is deterministic (temperature 0), so it is cached: a rerun
        # reads it again instead of paying for it again, whatever the server says now.
        first = {_body(r) for r in fake.requests if "Neuron: " in _body(r)}
        n = len(fake.requests)
        handler.style = "truth"
        simulate.run(_cfg(run, fake, **cfg))
        again = [_body(r) for r in fake.requests[n:] if "Neuron: " in _body(r)]
    assert len(first) >= 9 and again == []
    assert (_scores(run)["status"] == "failed").all()
    # the rerun rewrote every row; plain readers see each key once (compacted, one file)
    for table in ("simulations", "scores"):
        plainread.assert_one_row_per_key(run, table)
        assert len(rundir.files(run, table)) == 1


def _body(req) -> str:
    import json

    return json.dumps(req.body or {}, sort_keys=True)


def test_auto_mode_and_resume(tmp_path):
    run = _run(tmp_path, neurons=[0, 1])
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake))
        assert set(rundir.read(run, "simulations")["mode"]) == {"logprob"}
        n = fake.completions()
        simulate.run(_cfg(run, fake))  # everything done: no request at all, not even a probe
        assert fake.completions() == n
    first = rundir.read(run, "scores")
    rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
        RF.MODEL, 0, 2, "fake-explainer", "p" * 12, 0, simfake.explanation(0, 2), 1, 1, "ok", None)])
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake, neurons="0-2"))  # neuron 2 is new; 0 and 1 are skipped
        asked = [r for r in fake.requests if "Neuron: " in str((r.body or {}).get("prompt"))]
        assert asked and all("L0N2" in r.body["prompt"] for r in asked)  # none for 0 and 1
    sims = rundir.read(run, "simulations")
    assert (sims["neuron"] == 2).sum() == 18  # 9 valid + 9 test excerpts
    assert len(rundir.read(run, "scores")) == len(first) + 2


def test_candidates_best_and_test_split(tmp_path):
    run = _run(tmp_path, neurons=[0, 1], candidates=3)

    class Worse(simfake.Handler):  # candidate 1's explanation ("... maybe") is simulated noisily
        def _values(self, expl, tokens):
            vals = super()._values(expl, tokens)
            return [v if "maybe" not in expl else (v + self.rng.random()) / 2 for v in vals]

    with FakeOpenAI(Worse("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake, mode="logprob"))
    sc = rundir.read(run, "scores")
    valid = sc[sc["split"] == "valid"]
    assert len(valid) == 6 and valid.groupby("neuron")["best"].sum().tolist() == [1, 1]
    assert (valid[valid["best"]]["candidate"] == 0).all()
    test = sc[sc["split"] == "test"]
    assert len(test) == 2 and (test["candidate"] == 0).all() and test["best"].all()
    sims = rundir.read(run, "simulations")
    assert set(sims[sims["split"] == "test"]["candidate"]) == {0}


def test_score_command_recomputes_without_llm(tmp_path):
    run = _run(tmp_path, neurons=[0, 1])
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake, mode="logprob", calibrate=True))
    before = rundir.read(run, "scores").sort_values(["neuron", "split"]).reset_index(drop=True)
    old_files = rundir.files(run, "scores")
    from cli import app

    res = CliRunner().invoke(app, ["score", "--run", str(run), "--calibrate"])
    assert res.exit_code == 0, res.output
    after = rundir.read(run, "scores").sort_values(["neuron", "split"]).reset_index(drop=True)
    assert not set(old_files) & set(rundir.files(run, "scores"))  # superseded files removed
    plainread.assert_one_row_per_key(run, "scores")
    cols = ["neuron", "split", "candidate", "best", "status", "n_tokens"]
    assert after[cols].equals(before[cols])
    assert np.allclose(after["score"], before["score"]) and after["rsquared"].gt(0.9).all()
    # an independent check of one headline score from the stored rows
    sims = rundir.read(run, "simulations")
    rec = rundir.read(run, "records", layer=0)
    v = sims[(sims["neuron"] == 0) & (sims["split"] == "valid")]
    real, pred = [], []
    for e, k, p in zip(v["excerpt_id"], v["kind"], v["predicted"]):
        r = rec[(rec["neuron"] == 0) & (rec["excerpt_id"] == e) & (rec["kind"] == k)]
        real += list(r["activations"].iloc[0])
        pred += list(p)
    head = after[(after["neuron"] == 0) & (after["split"] == "valid")]["score"].iloc[0]
    assert head == pytest.approx(np.corrcoef(real, pred)[0, 1], abs=1e-6)


def test_score_calibrate_without_calibrate_split_refuses_and_keeps_scores(tmp_path):
    from cli import app

    run = _run(tmp_path, neurons=[0, 1])
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake, mode="logprob"))  # no calibrate split simulated
    files = {f: f.read_bytes() for f in rundir.files(run, "scores")}
    res = CliRunner().invoke(app, ["score", "--run", str(run), "--calibrate"])
    assert res.exit_code == 2 and "calibrate split" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert {f: f.read_bytes() for f in rundir.files(run, "scores")} == files  # nothing touched
    assert (rundir.read(run, "scores")["status"] == "ok").all()


def test_bad_input_exits_2(tmp_path):
    from cli import app

    run = RF.make_run(tmp_path / "run", n_excerpts=8)
    runner = CliRunner()
    res = runner.invoke(app, ["simulate", "--run", str(run), "--layer", "0"])
    assert res.exit_code == 2 and "explain describe" in res.output
    rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
        RF.MODEL, 0, 0, "x", "p", 0, "words", 1, 1, "ok", None)])
    res = runner.invoke(app, ["simulate", "--run", str(run), "--mode", "fast"])
    assert res.exit_code == 2 and "--mode 'fast'" in res.output
    res = runner.invoke(app, ["simulate", "--run", str(run), "--layer", "1"])
    assert res.exit_code == 2 and "layer 1" in res.output
    res = runner.invoke(app, ["score", "--run", str(run)])
    assert res.exit_code == 2 and "no simulations" in res.output
    assert not (run / "simulations").exists() and not (run / "scores").exists()
    with pytest.raises(ExplainError):
        simulate.run(C.SimulateConfig(run=run, n_top=0, n_random=0))


# --- alignment edge cases, both prompt formats ------------------------------------------------

ODD = [" ", "   ", "\t", "\n", "\n\n", "a\tb", "\r\n", "\ufffd", "\ufffd\ufffd", "\xe2\x80",
       "<0xE2>", "x" * 300, "10", " 9", "3.14", "0", "unknown", "\tunknown\n", "", "<end>",
       "Neuron: x", " café", "日本"]


def test_logprob_prompt_gives_every_token_its_own_slot():
    p = SP.logprob_prompt("odd tokens", ODD, SP.load_examples())
    assert len(p.offsets) == len(ODD)
    for k, off in enumerate(p.offsets):
        assert p.text[off:off + len(SP.PLACEHOLDER) + 1] == SP.PLACEHOLDER + "\n"
        line_start = p.text.rindex("\n", 0, off) + 1
        assert p.text[line_start:off - 1] == prompts.show_token(ODD[k])  # one line per token
    assert "x" * 300 not in p.text


@pytest.mark.parametrize("shift", [0, 1])
def test_parse_echo_aligns_odd_tokens_by_position(shift):
    p = SP.logprob_prompt("odd tokens", ODD, SP.load_examples())
    toks, offs = simfake.fake_tokens(p.text)
    top = [{t: -0.1} for t in toks]
    want = []
    for k, off in enumerate(p.offsets):
        i = offs.index(off)
        v = k % 10
        top[i - shift] = {str(v): -0.05, str((v + 1) % 10): -3.0}
        a, b = np.exp(-0.05), np.exp(-3.0)
        want.append(SP.TO_DISPLAY * (v * a + ((v + 1) % 10) * b) / (a + b))
    got = SP.parse_echo(p, toks, top, offs, shift=shift)
    assert got.error is None and got.predicted == pytest.approx(want)


def test_parse_echo_reads_the_given_row_even_where_its_neighbour_has_more_digit_mass():
    p = SP.logprob_prompt("dates", [" 2019", "-", "03", "-", "12"], [])
    toks, offs = simfake.fake_tokens(p.text)
    top = [{t: -0.1} for t in toks]
    for k, off in enumerate(p.offsets):
        i = offs.index(off)
        top[i] = {str(k): np.log(0.1), "unknown": np.log(0.9)}  # the slot: value k, little mass
        top[i - 1] = {"0": np.log(0.5), "1": np.log(0.45), "\t": np.log(0.05)}  # digits go on
    got = SP.parse_echo(p, toks, top, offs, shift=0)
    assert got.predicted == pytest.approx([SP.TO_DISPLAY * k for k in range(5)])


def test_parse_echo_fails_when_a_slot_is_merged():
    p = SP.logprob_prompt("x", ["a", "b"], [])
    toks, offs = simfake.fake_tokens(p.text.replace("\tunknown", "\u0001unknown"))
    got = SP.parse_echo(p, toks, [{"0": -0.1}] * len(toks), offs, shift=0)
    assert got.predicted is None and "token 0" in got.error


def test_chat_round_trip_with_odd_tokens():
    msgs = SP.chat_messages("odd tokens", ODD, SP.load_examples())
    listing = msgs[-1]["content"].rstrip("\n").split("\n")[2:]
    assert len(listing) == len(ODD)
    assert [ln.split("\t", 1)[1] for ln in listing] == [prompts.show_token(t) for t in ODD]
    answer = "\n".join(f"{k}\t{k % 10}" for k in reversed(range(len(ODD))))  # any order
    got = SP.parse_chat(answer, len(ODD))
    assert got.predicted == pytest.approx([SP.TO_DISPLAY * (k % 10) for k in range(len(ODD))])


@pytest.mark.parametrize("answer,why", [
    ("0\t1\n1\t2", "misses 1 of 3"), ("0\t1\n0\t2\n1\t1\n2\t1", "twice"),
    ("0\t1\n1\t2\n2\t11", "outside"), ("Sure! Here you go.", "no 'index"),
    ("0\t1\n1\t1\n2\t1\n3\t1", "beyond"),
    ("0\t1\n10\n2\t3", "misses 1 of 3")])  # "10" has no separator: not token 1, value 0
def test_chat_answers_that_cannot_be_aligned_fail(answer, why):
    got = SP.parse_chat(answer, 3)
    assert got.predicted is None and why in got.error


# --- the embedded model -------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_end_to_end_every_valid_token_predicted(tmp_path):
    from cli import app
    from explainer.describe import stage as describe

    run = RF.make_run(tmp_path / "run", n_layers=1, d_mlp=3, n_excerpts=12, ctx=8, n_random=6)
    describe.run(C.DescribeConfig(run=run, explainer=C.BASELINE_EXPLAINER))
    res = CliRunner().invoke(app, ["simulate", "--run", str(run), "--layer", "0"])
    assert res.exit_code == 0, res.output
    sims = rundir.read(run, "simulations")
    valid = sims[sims["split"] == "valid"]
    assert len(valid) == 3 * (3 + 2)  # 3 valid top (ranks 2, 6, 10) + 2 valid random each
    assert (valid["status"] == "ok").all() and set(valid["mode"]) == {"logprob"}
    assert all(len(p) == 8 and all(0 <= v <= 10 for v in p) for p in valid["predicted"])
    res = CliRunner().invoke(app, ["score", "--run", str(run)])
    assert res.exit_code == 0, res.output
    sc = rundir.read(run, "scores")
    assert set(sc["split"]) == {"valid", "test"} and len(sc) == 6
    assert sc["status"].isin(["ok", "constant_prediction", "constant_activation"]).all()
