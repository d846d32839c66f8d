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


def _bottom(layer: int, neuron: int, excerpt_id: int) -> list[float]:
    """The negative side of neuron n: it goes most negative on neuron n + 1's trigger."""
    return [-a for a in RF.activations(layer, (neuron + 1) % 8, excerpt_id, CTX)]


def _sided_run(tmp_path):
    run = RF.make_run(tmp_path / "run", n_layers=1, d_mlp=8, n_excerpts=N_EXCERPTS, ctx=CTX,
                      n_random=12)
    cols: dict[str, list] = {c: [] for c in rundir.table("records").schema.names}
    for n in range(8):
        ranked = sorted(range(N_EXCERPTS), key=lambda i: (min(_bottom(0, n, i)), i))
        for r, i in enumerate(ranked):
            acts = _bottom(0, n, i)
            for col, v in (("neuron", n), ("excerpt_id", i), ("kind", "bottom"), ("rank", r),
                           ("split", RF.SPLITS[r % 4]), ("activations", acts),
                           ("max_activation", max(acts))):
                cols[col].append(v)
    rundir.write_columns(run, "records", cols, model=RF.MODEL, layer=0)
    meta = rundir.read_run_json(run)
    meta["models"][RF.MODEL]["sides"] = ["pos", "neg"]
    rundir.write_run_json(run, meta)
    return run


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
    # The scripted simulator predicts the positive side's truth exactly.
    assert (sc[(sc.split == "valid") & (sc.side == "pos")]["score"] > 0.99).all()


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
    assert not valid.duplicated(["neuron", "side", "explainer", "candidate", "simulator",
                                 "mode"]).any()
    hashes = set(valid[valid["mode"] == "logprob"]["sim_prompt_hash"])
    assert len(hashes) == 1  # the newest prompt's rows replaced the old ones
