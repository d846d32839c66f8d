"""`explain simulate --excerpts-per-prompt K`: K excerpts of a neuron in one prompt, read back
per excerpt by position, stored exactly as with K = 1 (and never mixed with K = 1's)."""

from __future__ import annotations

import pytest

from explainer import ExplainError
from explainer import config as C
from explainer import prompts
from explainer import run as rundir
from explainer.simulate import prompt as SP
from explainer.simulate import stage as simulate
from tests import runfactory as RF
from tests import simfake
from tests.fake_openai import FakeOpenAI
from tests.test_simulate import CTX, N_EXCERPTS, ODD, _cfg, _run


def _thirds(tokens):
    n = len(tokens)
    return [tokens[: n // 3], tokens[n // 3: 2 * n // 3], tokens[2 * n // 3:]]


def test_one_excerpt_is_the_papers_prompt_and_hash():
    ex = SP.load_examples()
    # Independently of the merging code: K = 1 asks in the paper's format, a question block
    # shaped exactly like the few-shot blocks (the shot file), "unknown" in place of each value.
    p = SP.logprob_prompt_many("x", [ODD], ex)
    question = prompts.fill(prompts.load("simulate_logprob_shot"), "simulate_logprob_shot",
                            explanation="x", listing="".join(
                                f"{prompts.show_token(t)}\t{SP.PLACEHOLDER}\n" for t in ODD))
    assert p.text.endswith(question.rstrip("\n") + "\n")
    assert p.text.count("Neuron: x\n") == 1 and len(p.offsets) == len(ODD)
    assert [p.text[o:o + len(SP.PLACEHOLDER)] for o in p.offsets] == [SP.PLACEHOLDER] * len(ODD)
    for e in ex:  # every few-shot block, with its values, before the question
        shot = prompts.fill(prompts.load("simulate_logprob_shot"), "simulate_logprob_shot",
                            explanation=e.explanation,
                            listing="".join(f"{t}\t{v}\n" for t, v in zip(e.tokens, e.values)))
        assert shot in p.text[: len(p.text) - len(question)]
    # chat: the instructions, one user/assistant pair per example, then the excerpt's tokens
    # numbered 0..N-1 one per line, with no "# excerpt" header (that is the merged format's)
    msgs = SP.chat_messages_many("x", [ODD], ex)
    assert msgs[0] == {"role": "system", "content": prompts.load("simulate_chat_system").strip()}
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * len(ex) + ["user"]
    assert [m["content"] for m in msgs[2:-1:2]] == \
        ["\n".join(f"{k}\t{v}" for k, v in enumerate(e.values)) for e in ex]
    last = msgs[-1]["content"]
    assert "# excerpt" not in last and last.startswith("Neuron: x\n")
    listed = [ln for ln in last.split("\n") if "\t" in ln]
    assert listed == [f"{k}\t{prompts.show_token(t)}" for k, t in enumerate(ODD)]
    assert SP.prompt_hash(1) == prompts.prompt_hash(*SP.FILES)
    assert len({SP.prompt_hash(k) for k in (1, 2, 5, 10)}) == 4


def test_merged_logprob_prompt_shares_the_preamble_and_gives_every_token_a_slot():
    ex = SP.load_examples()
    parts = _thirds(ODD)
    p = SP.logprob_prompt_many("odd tokens", parts, ex)
    one = SP.logprob_prompt("odd tokens", parts[0], ex)
    assert p.text.count(ex[0].explanation) == 1  # the few-shot preamble once
    assert p.text.startswith(one.text[: one.offsets[0]])
    assert len(p.offsets) == len(ODD)
    for k, off in enumerate(p.offsets):
        assert p.text[off:off + len(SP.PLACEHOLDER) + 1] == SP.PLACEHOLDER + "\n"
        line_start = p.text.rindex("\n", 0, off) + 1
        assert p.text[line_start:off - 1] == prompts.show_token(ODD[k])
    assert p.text.count("Neuron: odd tokens\n<start>\n") == 3


@pytest.mark.parametrize("shift", [0, 1])
def test_merged_echo_answer_splits_back_per_excerpt_by_position(shift):
    parts = _thirds(ODD)
    p = SP.logprob_prompt_many("odd tokens", parts, SP.load_examples())
    toks, offs = simfake.fake_tokens(p.text)
    top = [{t: -0.1} for t in toks]
    # token k's slot holds value k % 10 (all mass on it), placed where the convention puts it
    slot = {off: k for k, off in enumerate(p.offsets)}
    for i, off in enumerate(offs):
        if off in slot:
            top[i - shift] = {str(slot[off] % 10): 0.0}
    got = SP.split_parsed(SP.parse_echo(p, toks, top, offs, shift=shift), [len(x) for x in parts])
    want = [SP.TO_DISPLAY * (k % 10) for k in range(len(ODD))]
    assert [x.error for x in got] == [None] * 3
    assert [v for x in got for v in x.predicted] == pytest.approx(want)
    assert [len(x.predicted) for x in got] == [len(x) for x in parts]


def test_merged_chat_round_trip_and_a_short_answer_fails_every_excerpt():
    parts = _thirds(ODD)
    msgs = SP.chat_messages_many("odd tokens", parts, SP.load_examples())
    assert msgs[:-1] == SP.chat_messages("odd tokens", ODD, SP.load_examples())[:-1]
    user = msgs[-1]["content"].rstrip("\n").split("\n")
    listing = [ln for ln in user[2:] if not ln.startswith("# excerpt")]
    assert [ln.split("\t", 1)[1] for ln in listing] == [prompts.show_token(t) for t in ODD]
    assert [int(ln.split("\t", 1)[0]) for ln in listing] == list(range(len(ODD)))
    answer = "\n".join(f"{k}\t{k % 10}" for k in reversed(range(len(ODD))))
    got = SP.split_parsed(SP.parse_chat(answer, len(ODD)), [len(x) for x in parts])
    assert [v for x in got for v in x.predicted] == \
        pytest.approx([SP.TO_DISPLAY * (k % 10) for k in range(len(ODD))])
    short = SP.split_parsed(SP.parse_chat("0\t1", len(ODD)), [len(x) for x in parts])
    assert all(x.predicted is None and "misses" in x.error for x in short)


def _sims(run):
    s = rundir.read(run, "simulations")
    return {(int(n), k, int(e), sp): tuple(p) for n, k, e, sp, p in
            zip(s["neuron"], s["kind"], s["excerpt_id"], s["split"], s["predicted"])}


def _asked(fake):
    return [r for r in fake.requests if "Neuron: " in str(r.body)]


@pytest.mark.parametrize("mode", ["logprob", "chat"])
def test_k5_stores_what_k1_stores_on_a_deterministic_simulator(tmp_path, mode):
    runs = {}
    for k in (1, 5):
        run = _run(tmp_path / f"k{k}", neurons=range(3))
        with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS)) as fake:
            simulate.run(_cfg(run, fake, mode=mode, excerpts_per_prompt=k))
            runs[k] = (run, len(_asked(fake)))
    (r1, n1), (r5, n5) = runs[1], runs[5]
    # 9 valid + 9 test excerpts per neuron: 2 + 2 requests at K=5; up to 18 at K=1 (an
    # excerpt that is both a valid top and a test random one is asked once, then cached)
    assert n5 == 3 * 4 and n1 >= 3 * 14
    s1, s5 = _sims(r1), _sims(r5)
    assert s1.keys() == s5.keys() and len(s1) == 3 * 18
    for key in s1:
        assert s5[key] == pytest.approx(s1[key], abs=1e-6)
    sc1, sc5 = rundir.read(r1, "scores"), rundir.read(r5, "scores")
    assert sorted(sc1["score"]) == pytest.approx(sorted(sc5["score"]))
    assert set(sc5["sim_prompt_hash"]) == {SP.prompt_hash(5)} != set(sc1["sim_prompt_hash"])


def test_k1_predictions_are_not_reused_at_k5_and_resume_within_k5(tmp_path):
    run = _run(tmp_path, neurons=[0, 1])
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake, mode="logprob"))
        n = len(_asked(fake))
        simulate.run(_cfg(run, fake, mode="logprob", excerpts_per_prompt=5))
        assert len(_asked(fake)) == n + 2 * 4  # simulated again, K=5 at a time
        simulate.run(_cfg(run, fake, mode="logprob", excerpts_per_prompt=5))
        assert len(_asked(fake)) == n + 2 * 4  # done: nothing sent
    # The K=5 rows sit beside the K=1 ones (the prompt hash is part of the key); no score
    # mixes the two formats: each one's predictions are all of its own hash.
    sc, sims = rundir.read(run, "scores"), rundir.read(run, "simulations")
    assert len(sc) == 2 * 2 * 2
    assert set(sc["sim_prompt_hash"]) == {SP.prompt_hash(5), SP.prompt_hash(1)}
    assert sims.groupby("sim_prompt_hash").size().to_dict() == \
        {SP.prompt_hash(1): 2 * 18, SP.prompt_hash(5): 2 * 18}


def test_a_failed_merged_prompt_fails_its_excerpts_and_is_retried(tmp_path):
    run = _run(tmp_path, neurons=[0])
    handler = simfake.Handler("error", CTX, N_EXCERPTS)  # no answer: asked again next run
    with FakeOpenAI(handler) as fake:
        simulate.run(_cfg(run, fake, mode="chat", excerpts_per_prompt=5))
        sims = rundir.read(run, "simulations")
        assert len(sims) == 9 and (sims["status"] == "failed").all()
        handler.style = "truth"
        simulate.run(_cfg(run, fake, mode="chat", excerpts_per_prompt=5))
    sc = rundir.read(run, "scores")
    assert (sc["status"] == "ok").all() and (sc["score"] > 0.99).all()


def test_bad_k_is_refused(tmp_path):
    run = _run(tmp_path, neurons=[0])
    with pytest.raises(ExplainError, match="--excerpts-per-prompt 0"):
        simulate.run(C.SimulateConfig(run=run, simulator="x", excerpts_per_prompt=0,
                                      llm=C.LLMConfig(base_url="http://127.0.0.1:9/v1")))
    assert not (run / "simulations").exists()
    assert RF.MODEL  # the hand-built run is untouched otherwise
