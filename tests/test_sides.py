"""Both signs of a neuron through describe, simulate and score; simulations keep provenance.

The negative side of a gated neuron is its own explanation target: it is explained from the
neuron's bottom excerpts and scored on them and its random excerpts, every activation negated.
A stored prediction is reused only when simulator, mode, simulator prompt and explanation text
all match.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from explainer import config as C
from explainer import describe, prompts, simulate
from explainer import run as rundir
from explainer.score import rows as SS
from tests import runfactory as RF
from tests import simfake
from tests.fake_openai import FakeOpenAI

CTX, N_EXCERPTS = 16, 20


def _sided_run(tmp_path):
    """Gated neurons (runfactory.gated_activations): one activation per token for every record
    kind, so a side's top (or bottom) excerpts and its random ones read the same neuron."""
    return RF.make_gated_run(tmp_path / "run", d_mlp=8, n_excerpts=N_EXCERPTS, ctx=CTX,
                             n_random=12)


def _sim_cfg(run, fake, **kw):
    return C.SimulateConfig(run=run, simulator="fake-model", neurons="0-2", **kw,
                            llm=C.LLMConfig(base_url=fake.base_url, concurrency=4,
                                            max_retries=0))


def _explanations(run) -> None:
    """An explanation per side that the scripted simulator reads as 'this neuron's truth'."""
    rows = [rundir.ExplanationRow(RF.MODEL, 0, n, "fake-explainer", "p" * 12, 0,
                                  simfake.explanation(0, n if side == "pos" else (n + 1) % 8),
                                  1, 1, "ok", None, side=side)
            for n in range(3) for side in ("pos", "neg")]
    rundir.write_rows(run, "explanations", rows)


def test_baseline_explains_the_negative_side_from_negated_bottom_excerpts(tmp_path):
    run = _sided_run(tmp_path)
    describe.run(C.DescribeConfig(run=run, explainer=C.BASELINE_EXPLAINER, neurons="0-3"))
    ex = rundir.read(run, "explanations").set_index(["neuron", "side"])["explanation"]
    for n in range(4):
        # Independently: bottom excerpts are where neuron n + 1's trigger sits.
        assert RF.trigger(0, n).strip() in ex[(n, "pos")]
        assert RF.trigger(0, (n + 1) % 8).strip() in ex[(n, "neg")]
        assert ex[(n, "pos")] != ex[(n, "neg")]


def test_negative_side_scores_its_negated_bottom_and_random_excerpts(tmp_path):
    run = _sided_run(tmp_path)
    _explanations(run)
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_sim_cfg(run, fake, mode="logprob"))
    sims = rundir.read(run, "simulations")
    sc = rundir.read(run, "scores")
    assert set(sims["side"]) == {"pos", "neg"}
    assert set(sims[sims.side == "neg"]["kind"]) == {"bottom", "random"}
    assert "bottom" not in set(sims[sims.side == "pos"]["kind"])
    rec = rundir.read(run, "records").set_index(["neuron", "kind", "excerpt_id"])
    for n in range(3):
        for side in ("pos", "neg"):
            mine = sims[(sims.neuron == n) & (sims.side == side) & (sims.split == "valid")]
            real = np.concatenate([np.asarray(rec.loc[(n, k, e), "activations"])
                                   for k, e in zip(mine.kind, mine.excerpt_id)])
            real = -real if side == "neg" else real  # the negative side sees them negated
            pred = np.concatenate(mine.predicted.to_numpy())
            row = sc[(sc.neuron == n) & (sc.side == side) & (sc.split == "valid")].iloc[0]
            assert row.score == pytest.approx(np.corrcoef(real, pred)[0, 1], abs=1e-6)
            assert row["mode"] == "logprob" and row.sim_prompt_hash and row.explanation_hash
    # Each side's explanation names its own trigger (neg: the next neuron's, where the gated
    # neuron goes most negative), so both sides score well above chance (the opposite trigger
    # is part of the real activations but not of the predictions: not near 1).
    valid = sc[sc.split == "valid"]
    assert (valid["score"] > 0.5).all(), valid[["neuron", "side", "score"]]


def test_a_changed_prompt_mode_or_explanation_re_simulates(tmp_path, monkeypatch):
    run = _sided_run(tmp_path)
    _explanations(run)
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_sim_cfg(run, fake, mode="logprob"))
        first = fake.completions()
        simulate.run(_sim_cfg(run, fake, mode="logprob"))
        assert fake.completions() == first  # nothing changed: nothing sent
        # An edited simulator prompt file: every prediction is made again.
        edited = tmp_path / "prompts"
        shutil.copytree(prompts.PROMPTS_DIR, edited)
        path = edited / "simulate_logprob.txt"
        path.write_text(path.read_text().replace("Most tokens get 0", "Most tokens are 0"))
        monkeypatch.setattr(prompts, "PROMPTS_DIR", edited)
        simulate.run(_sim_cfg(run, fake, mode="logprob"))
        assert fake.completions() > first
        # Another mode is scored apart, not mixed with the logprob scores.
        simulate.run(_sim_cfg(run, fake, mode="chat"))
        assert fake.count("/chat/completions") > 0
        before = fake.completions()  # (counts chat requests too)
        # A re-described neuron: only its explanation is simulated again.
        rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
            RF.MODEL, 0, 1, "fake-explainer", "p" * 12, 0,
            simfake.explanation(0, 1) + " again", 1, 1, "ok", None, side="pos")])
        simulate.run(_sim_cfg(run, fake, mode="logprob"))
        sent = fake.completions() - before
    sims = rundir.read(run, "simulations")
    redone = sims[(sims["mode"] == "logprob") & (sims.explanation_hash == SS.text_hash(
        simfake.explanation(0, 1) + " again"))]
    # Exactly that neuron and side's valid and test excerpts were sent (each distinct excerpt
    # once: runfactory's random excerpts may also be top ones), nothing else.
    assert sent == redone.excerpt_id.nunique() > 0
    assert set(zip(redone.neuron, redone.side)) == {(1, "pos")}
    sc = rundir.read(run, "scores")
    valid = sc[sc.split == "valid"]
    assert set(valid["mode"]) == {"logprob", "chat"}
    # Provenance in the key: each (prompt, text) keeps its own rows, none overwrites another.
    assert not valid.duplicated(["neuron", "side", "explainer", "candidate", "simulator",
                                 "mode", "sim_prompt_hash", "explanation_hash"]).any()
    hashes = set(valid[valid["mode"] == "logprob"]["sim_prompt_hash"])
    assert len(hashes) == 2  # the old prompt's rows stay beside the newest prompt's
    assert len(valid[valid["mode"] == "chat"]) == 6  # 3 neurons x 2 sides, once
