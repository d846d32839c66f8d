"""`explain judge --method steering` on the tiny GPT-2, against a brute-force forward pass of the
Hugging Face model with the same addition made by hand at the MLP output."""

from __future__ import annotations

import numpy as np
import pytest

from explainer import ExplainError
from explainer import config as C
from explainer import run as rundir
from explainer.judge import stage, steering

LAYER = 1


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_gpt2, tiny_corpus):
    from explainer import record

    run = tmp_path_factory.mktemp("steer") / "run"
    record.run(C.RecordConfig(run=run, model=str(tiny_gpt2), corpus=str(tiny_corpus),
                              layers=str(LAYER), n_excerpts=128, ctx=32))
    return run


def _single(tok, word: str) -> list[int]:
    """The ids steering names for a quoted word (its one-token forms), computed here apart."""
    forms = [tok(f, add_special_tokens=False)["input_ids"] for f in (" " + word, word)]
    return [f[0] for f in forms if len(f) == 1] or [forms[0][0]]


@pytest.fixture(scope="module")
def steered(recorded, tiny_gpt2):
    """Neurons whose top promoted and top suppressed tokens each name exactly that token, with
    two explanations each (candidate 0 names the promoted token, 1 the suppressed one), and one
    explanation that names no token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    key = rundir.models_in(recorded, "records")[0]
    nr = rundir.read(recorded, "neurons", layer=LAYER).sort_values("neuron")
    picked = []
    for r in nr.itertuples():
        up, down = r.promoted_tokens[0].strip(), r.suppressed_tokens[0].strip()
        if up and down and _single(tok, up) == [r.promoted_ids[0]] and \
                _single(tok, down) == [r.suppressed_ids[0]] and '"' not in up + down:
            picked.append((int(r.neuron), up, down))
        if len(picked) == 3:
            break
    assert len(picked) == 3
    rows = []
    for n, up, down in picked:
        rows += [rundir.ExplanationRow(key, LAYER, n, "manual", "p" * 12, 0,
                                       f'the token before "{up}"', 0, 0, "ok", None),
                 rundir.ExplanationRow(key, LAYER, n, "manual", "p" * 12, 1,
                                       f'the token before "{down}"', 0, 0, "ok", None)]
    rows.append(rundir.ExplanationRow(key, LAYER, 100, "manual", "p" * 12, 0,
                                      "punctuation at the end of a clause", 0, 0, "ok", None))
    rundir.write_rows(recorded, "explanations", rows)
    stage.run(C.JudgeConfig(run=recorded, method="steering"))
    sc = rundir.read(recorded, "scores")
    return picked, sc[sc["method"] == "steering"], tok


def test_promoted_tokens_gain_and_beat_suppressed_ones(steered):
    picked, sc, _ = steered
    own = sc[sc["control"] == "none"]
    for n, up, down in picked:
        g = own[own["neuron"] == n].set_index("candidate")["gain"]
        assert g[0] > 0 > g[1], (n, up, down, g.to_dict())  # as neurons/ output side says


def test_gains_equal_a_brute_force_forward_with_the_output_row_added(steered, recorded,
                                                                     tiny_gpt2):
    import torch
    from transformers import GPT2LMHeadModel

    picked, sc, tok = steered
    key = rundir.models_in(recorded, "records")[0]
    hf = GPT2LMHeadModel.from_pretrained(tiny_gpt2).eval()
    ids = steering.excerpt_ids(recorded, key, LAYER, 0)
    ex = rundir.read(recorded, "excerpts")
    token_ids = dict(zip(ex["excerpt_id"], ex["token_ids"]))
    x = torch.tensor([[tok.bos_token_id] + list(token_ids[e]) for e in ids])
    rec = rundir.read(recorded, "records", layer=LAYER)
    mlp = hf.transformer.h[LAYER].mlp
    state = {}

    def add_row(module, inputs, out):  # the neuron's output row W_out[n] (Conv1D: (d_mlp, d))
        if state:
            out = out.clone()
            out[:, 1:] += state["add"] * mlp.c_proj.weight[state["n"]]
        return out

    mlp.register_forward_hook(add_row)
    with torch.no_grad():
        base = torch.log_softmax(hf(x).logits[:, 1:], -1)
        for n, up, down in picked:
            top = rec[(rec["neuron"] == n) & (rec["kind"] == "top")]["activations"]
            state.update(n=n, add=float(np.mean([max(a) for a in top])))
            lp = torch.log_softmax(hf(x).logits[:, 1:], -1)
            for cand, word in ((0, up), (1, down)):
                want = float((lp - base)[..., _single(tok, word)].mean())
                got = sc[(sc["neuron"] == n) & (sc["candidate"] == cand)
                         & (sc["control"] == "none")]["gain"].item()
                assert got == pytest.approx(want, abs=2e-5)
            state.clear()


def test_score_is_own_minus_shuffled_and_no_token_is_undefined(steered):
    _, sc, _ = steered
    own = sc[(sc["control"] == "none") & (sc["neuron"] != 100)]
    shuf = sc[sc["control"] == "shuffled"].set_index("neuron")
    assert (own["status"] == "ok").all() and (own["steer_k"] == 1.0).all()
    for r in own.itertuples():
        assert r.score == pytest.approx(r.gain - shuf.loc[r.neuron, "gain"], abs=1e-9)
        assert int(r.source_neuron) == int(shuf.loc[r.neuron, "source_neuron"]) != r.neuron
    none = sc[sc["neuron"] == 100]
    assert list(none["status"]) == ["undefined"] and none["score"].isna().all()


def test_rerun_skips_and_bad_k_is_refused(steered, recorded):
    before = len(rundir.files(recorded, "scores"))
    stage.run(C.JudgeConfig(run=recorded, method="steering"))
    assert len(rundir.files(recorded, "scores")) == before
    with pytest.raises(ExplainError, match="--steer-k 0"):
        stage.run(C.JudgeConfig(run=recorded, method="steering", steer_k=0.0))
