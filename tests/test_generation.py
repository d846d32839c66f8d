"""`explain judge --method generation` on a tiny GPT-2 with a hand-set token detector, through the
fake OpenAI server with scripted generators (tests/generationfake.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from explainer import ExplainError
from explainer import config as C
from explainer import run as rundir
from explainer.judge import generation as G
from explainer.judge import reading, texts
from explainer.judge import stage
from tests import generationfake as GF
from tests.fake_openai import FakeOpenAI

WORD = "value"  # one token (" value") of the tiny tokenizer, present but rare in the corpus
OTHERS = {0: 'the token "with"', 1: 'the token "that"'}


@pytest.fixture(scope="module")
def detector(tmp_path_factory, tiny_gpt2):
    return GF.detector_gpt2(tiny_gpt2, tmp_path_factory.mktemp("m") / "detector-gpt2",
                            " " + WORD)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, detector, tiny_corpus):
    from explainer import record

    run = tmp_path_factory.mktemp("gen") / "run"
    record.run(C.RecordConfig(run=run, model=str(detector), corpus=str(tiny_corpus), layers="0",
                              n_excerpts=128, ctx=64, sides="both"))
    key = rundir.models_in(run, "records")[0]
    expl = {GF.DETECTOR: f'the token "{WORD}"', GF.ANY: "every token", **OTHERS}
    rundir.write_rows(run, "explanations", [
        rundir.ExplanationRow(key, 0, n, "manual", "p" * 12, 0, t, 0, 0, "ok", None)
        for n, t in expl.items()] + [  # two negative sides: a group of their own
        rundir.ExplanationRow(key, 0, n, "manual", "p" * 12, 0, t, 0, 0, "ok", None, side="neg")
        for n, t in OTHERS.items()])
    return run


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _generate(run, style, **kw):
    with FakeOpenAI(GF.Generator(style, **{k: kw.pop(k) for k in ("n_bad",) if k in kw})) as fake:
        stage.run(C.JudgeConfig(run=run, method="generation", judge="fake-model",
                                llm=C.LLMConfig(base_url=fake.base_url, concurrency=2,
                                                max_retries=0), **kw))
        return fake.completions()


def _rows(run, control="none", side="pos"):
    sc = rundir.read(run, "scores")
    sc = sc[(sc["method"] == "generation") & (sc["control"] == control) & (sc["side"] == side)]
    return {int(r.neuron): r for r in sc.itertuples(index=False)}


@pytest.fixture(scope="module")
def exact(recorded, tmp_path_factory):
    run = _copy(recorded, tmp_path_factory.mktemp("exact") / "run")
    asked = _generate(run, "exact")
    return run, asked


def test_texts_holding_the_detected_token_score_high(exact):
    run, asked = exact
    # one call per explanation (10 kept at once); the negative sides' two explanations repeat
    # two positive ones word for word, so their requests are answered from the cache
    assert asked == 4
    rows = _rows(run)
    d = rows[GF.DETECTOR]
    assert d.status == "ok" and d.score > 0.9 and d.auroc_other > 0.9
    assert d.mad is None or d.mad != d.mad or d.mad > 3  # undefined when no window fires
    assert (d.n_written, d.n_kept) == (13, 10)  # a restatement, a duplicate, an empty line
    # The stored AUROC is the Mann-Whitney statistic of the stored maxes, recomputed here.
    g = rundir.read(run, "generations")
    g = g[(g["neuron"] == GF.DETECTOR) & (g["judge"] == "fake-model")]
    own = g[(g["role"] == "own") & (g["status"] == "kept")]["max_activation"].to_numpy()
    win = g[g["role"] == "window"]["max_activation"].to_numpy()
    wins = np.mean([(o > w) + 0.5 * (o == w) for o in own for w in win])
    assert d.score == pytest.approx(wins, abs=1e-6)
    assert sorted(g[g["role"] == "own"]["status"]) == sorted(["kept"] * 10 + [
        "restates", "duplicate", "empty"])


def test_stored_activations_are_the_hf_models_behind_bos_and_lead_in(exact, detector):
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    run, _ = exact
    g = rundir.read(run, "generations")
    g = g[(g["neuron"] == GF.DETECTOR) & (g["role"] == "own") & (g["status"] == "kept")]
    tok = AutoTokenizer.from_pretrained(detector)
    hf = GPT2LMHeadModel.from_pretrained(detector).eval()
    got = {}
    hf.transformer.h[0].mlp.act.register_forward_hook(lambda m, i, o: got.update(a=o))
    lead = tok(reading.LEAD_IN, add_special_tokens=False)["input_ids"]
    for r in g.itertuples():
        ids = tok(" " + r.text, add_special_tokens=False)["input_ids"]
        assert list(r.token_ids) == ids
        with torch.no_grad():
            hf(torch.tensor([[tok.bos_token_id] + lead + ids]))
        want = got["a"][0, 1 + len(lead):, GF.DETECTOR].numpy()
        np.testing.assert_allclose(r.activations, want, atol=1e-4)
        assert (WORD in r.text.split()) == (max(want) > 2.0)  # the detector works as built


def test_windows_match_the_kept_texts_lengths_and_cut_the_random_excerpts(exact):
    run, _ = exact
    g = rundir.read(run, "generations")
    ex = rundir.read(run, "excerpts")
    toks = dict(zip(ex["excerpt_id"], ex["tokens"]))
    rec = rundir.read(run, "records")
    for n in (GF.DETECTOR, GF.ANY):
        mine = g[g["neuron"] == n]
        lengths = [len(t) for t in mine[(mine["role"] == "own") & (mine["status"] == "kept")]
                   ["tokens"]]
        win = mine[mine["role"] == "window"].sort_values("index")
        rand = rec[(rec["neuron"] == n) & (rec["kind"] == "random")]
        assert len(win) == len(rand)
        acts = dict(zip(rand["excerpt_id"], rand["activations"]))
        # Each kept text's length, dealt round-robin (cut where an excerpt is shorter).
        got = sorted(len(t) for t in win["tokens"])
        assert got == sorted(min(lengths[i % len(lengths)], 64) for i in range(len(win)))
        for w in win.itertuples():
            assert int(w.start) >= 1
            s = int(w.start)
            assert list(w.tokens) == list(toks[w.excerpt_id][s:s + len(w.tokens)])
            np.testing.assert_allclose(w.activations,
                                       acts[w.excerpt_id][s:s + len(w.tokens)])


def test_a_neuron_firing_on_every_token_is_chance_only_with_matched_lengths(exact):
    run, _ = exact
    a = _rows(run)[GF.ANY]
    assert a.status == "ok" and 0.3 <= a.score <= 0.7
    # Unmatched: the same texts against whole random excerpts (64 tokens, the max over more).
    rec = rundir.read(run, "records")
    full = [max(v) for v in rec[(rec["neuron"] == GF.ANY) & (rec["kind"] == "random")]
            ["activations"]]
    g = rundir.read(run, "generations")
    own = g[(g["neuron"] == GF.ANY) & (g["role"] == "own") & (g["status"] == "kept")]
    unmatched = G.auroc(list(own["max_activation"]), full)
    assert unmatched < 0.45 and a.score - unmatched > 0.1


def test_unrelated_texts_score_chance_and_the_shuffled_control_pairs(recorded, tmp_path):
    run = _copy(recorded, tmp_path / "run")
    _generate(run, "unrelated")
    d = _rows(run)[GF.DETECTOR]
    assert d.status == "ok" and 0.3 <= d.score <= 0.7
    shuf = _rows(run, "shuffled")
    chosen = sorted([GF.DETECTOR, GF.ANY, *OTHERS])
    pairs = G.derangement(chosen, f"0/{rundir.models_in(run, 'records')[0]}/0/pos/manual")
    assert {n: int(r.source_neuron) for n, r in shuf.items()} == pairs


def test_the_derangement_is_the_shuffled_controls():
    from explainer.simulate.control import derangement

    for n in (2, 3, 7):
        nodes = random.Random(n).sample(range(50), n)
        assert G.derangement(nodes, f"key{n}") == derangement(nodes, f"key{n}")


def test_too_few_texts_is_no_score_after_one_more_ask_and_a_rerun_asks_nothing(recorded,
                                                                              tmp_path):
    run = _copy(recorded, tmp_path / "run")
    asked = _generate(run, "exact", n_texts=5, n_bad=0)
    assert asked == 4
    with FakeOpenAI(lambda req: __import__("tests.fake_openai", fromlist=["Reply"]).Reply.chat(
            "One short line of text.\nAnother short line of text.\nA third line here.")) as fake:
        cfg = C.JudgeConfig(run=run, method="generation", judge="fake-small",
                            llm=C.LLMConfig(base_url=fake.base_url, max_retries=0))
        stage.run(cfg)
        assert fake.completions() == 8  # asked twice each: 3 texts kept, 5 needed
    sc = rundir.read(run, "scores")
    small = sc[(sc["simulator"] == "fake-small") & (sc["control"] == "none")]
    assert (small["status"] == "too_few_texts").all() and small["score"].isna().all()
    assert (small["n_kept"] == 3).all()
    before = len(rundir.files(run, "scores"))
    with FakeOpenAI(GF.Generator("exact")) as fake:  # everything is done: nothing asked
        stage.run(C.JudgeConfig(run=run, method="generation", judge="fake-model", n_texts=5,
                                llm=C.LLMConfig(base_url=fake.base_url)))
        assert fake.completions() == 0
    assert len(rundir.files(run, "scores")) == before


def test_bad_input_is_one_error_and_nothing_written(recorded, tmp_path):
    run = _copy(recorded, tmp_path / "run")
    with pytest.raises(ExplainError, match="--n-texts 3"):
        stage.run(C.JudgeConfig(run=run, method="generation", n_texts=3))
    with pytest.raises(ExplainError, match="--method 'generate'"):
        stage.run(C.JudgeConfig(run=run, method="generate"))
    assert not rundir.files(run, "scores") and not rundir.files(run, "generations")


def test_the_screen_drops_restatements_duplicates_and_empty_lines():
    expl = 'the token "by"'
    answer = "\n".join(["Here are five sentences:", '1. The token "by" is present here.',
                        "2. The house was built by my grandfather.", "3) by", "",
                        "- The house was built by my grandfather!", "the token by",
                        '"He sat by the window all afternoon."', "We left by the back door.",
                        "She passed by quickly and waved."])
    got = [(t.text, t.status) for t in texts.screen([answer], expl, 2)]
    assert got == [("Here are five sentences:", "empty"),
                   ('The token "by" is present here.', "restates"),
                   ("The house was built by my grandfather.", "kept"),
                   ("by", "short"),
                   ("The house was built by my grandfather!", "duplicate"),
                   ("the token by", "restates"),
                   ("He sat by the window all afternoon.", "kept"),
                   ("We left by the back door.", "extra"),
                   ("She passed by quickly and waved.", "extra")]
    assert texts.quoted('the token before "an", "a" or "the"') == ["an", "a", "the"]


def test_report_pairs_own_with_shuffled_and_the_page_shows_the_texts(exact, tmp_path):
    from explainer.views import generation as GV
    from explainer.views import html, report

    run, _ = exact
    text = report.run(C.ReportConfig(run=run))
    assert "fake-model (generation)" in text
    p = GV.paired(rundir.read(run, "scores"))
    assert len(p) == 6 and set(p["mode"]) == {"generation"}
    for r in p.itertuples():  # own = the chosen explanation's AUROC, shuffled = the control's
        assert r.own == pytest.approx(_rows(run, side=r.side)[r.neuron].score)
        assert r.shuffled == pytest.approx(_rows(run, "shuffled", r.side)[r.neuron].score)
    index = html.run(C.ViewConfig(run=run, out=tmp_path / "view"))
    page = (tmp_path / "view" / "neurons").glob(f"*/L0/N{GF.DETECTOR}.html")
    page = next(page).read_text()
    assert "Generation and steering" in page and "AUROC vs windows 1.000" in page
    assert page.count('data-role="own"') == 10 and "restates" in page and index


def test_mad_and_windows_against_numpy():
    own, ctl = [3.0, 4.0, 5.0], [0.0, 1.0, 2.0, 1.0]
    assert G.mad(own, ctl) == pytest.approx((np.mean(own) - np.mean(ctl)) / np.std(ctl, ddof=1))
    assert G.mad(own, [1.0, 1.0]) is None and G.mad(own, [1.0]) is None
    ex = [(e, tuple(f"t{e}.{i}" for i in range(8)), tuple(float(i) for i in range(8)))
          for e in range(6)]
    w = G.windows(ex, [3, 5, 20], random.Random(0))
    assert sorted(len(x.acts) for x in w) == [3, 3, 5, 5, 8, 8]  # 20 is cut to the excerpt
    for x in w:
        assert x.tokens == tuple(f"t{x.excerpt_id}.{i}" for i in range(x.start,
                                                                       x.start + len(x.acts)))
        assert x.start >= 1 or len(x.acts) == 8


def test_copies_of_the_worked_example_are_dropped():
    ex = texts.example_texts()
    assert len(ex) == 6 and ex[0] == "The river rose after three days of rain."
    got = texts.screen(["The river rose after two days of rain.\n"
                        "She was born in May and moved to the coast as a child."],
                       'the token "May"', 10, ex)
    assert [t.status for t in got] == ["copied", "kept"]


def test_a_label_before_a_text_is_not_part_of_it():
    got = texts.screen(['river: The river rose after rain.', '2. "Bank": Bank staff left early.',
                        "The reason is simple: we left early.", "slowly:"],
                       'the tokens "river", "Bank" and "slowly"', 10)
    assert [(t.text, t.status) for t in got] == [
        ("The river rose after rain.", "kept"), ("Bank staff left early.", "kept"),
        ("The reason is simple: we left early.", "kept"), ("slowly:", "empty")]


def test_the_generator_is_sampled_with_a_seed_per_ask(recorded, tmp_path):
    """Greedy decoding looped the embedded generator; both asks sample, each with its seed."""
    run = _copy(recorded, tmp_path / "run")
    with FakeOpenAI(GF.Generator("exact", n_bad=0)) as fake:
        fake.push(*[GF.Reply.chat("One line only.\nAnd a second one.")] * 4)
        stage.run(C.JudgeConfig(run=run, method="generation", judge="fake-model",
                                neurons=str(GF.DETECTOR),
                                llm=C.LLMConfig(base_url=fake.base_url, max_retries=0)))
        asks = [r.body for r in fake.requests if r.path.endswith("/chat/completions")]
    assert [(b["temperature"], b.get("seed")) for b in asks] == [(texts.TEMPERATURE, 0),
                                                                 (texts.TEMPERATURE, 1)]


def test_every_score_is_the_auroc_of_the_stored_maxes_on_both_sides(exact):
    run, _ = exact
    g = rundir.read(run, "generations")
    sc = rundir.read(run, "scores")
    sc = sc[(sc["method"] == "generation") & (sc["control"] == "none")]
    assert set(sc["side"]) == {"pos", "neg"}
    for r in sc.itertuples():
        mine = g[(g["neuron"] == r.neuron) & (g["side"] == r.side)]
        own = mine[(mine["role"] == "own") & (mine["status"] == "kept")]
        for t in own.itertuples():  # the stored max is the max of the stored side's values
            assert t.max_activation == pytest.approx(max(t.activations))
        win = mine[mine["role"] == "window"]["max_activation"]
        assert r.score == pytest.approx(G.auroc(list(own["max_activation"]), list(win)))
        other = mine[mine["role"] == "other"]["max_activation"]
        assert r.auroc_other == pytest.approx(G.auroc(list(own["max_activation"]),
                                                      list(other)))


def test_explain_run_judge_methods_generation(tmp_path, tiny_gpt2, tiny_corpus):
    from explainer import pipeline

    run = tmp_path / "run"
    with FakeOpenAI(GF.Generator("exact")) as fake:
        out = pipeline.run(C.RunConfig(
            run=run, model=str(tiny_gpt2), corpus=str(tiny_corpus), layers="0", neurons="0-5",
            n_excerpts=64, explainers=("baseline-tokens",), simulator="fake-model", mode="chat",
            lexical=False, control="none", judge_methods=("generation",),
            llm=C.LLMConfig(base_url=fake.base_url, max_retries=0)))
    assert "fake-model (generation)" in out
    sc = rundir.read(run, "scores")
    gen = sc[sc["method"] == "generation"]
    assert len(gen[gen["control"] == "none"]) == 6 and (gen["status"] == "ok").all()
    with pytest.raises(ExplainError, match="--judge-methods generate"):
        pipeline.run(C.RunConfig(run=tmp_path / "other", judge_methods=("generate",)))
