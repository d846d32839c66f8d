"""The judges' sampling presets: delphi's (quantile bins, firing floor, non-activating decoys)
and explain's (today's definitions, unchanged), through the fake OpenAI server."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from explainer import config as C
from explainer import run as rundir
from explainer.judge import stage
from tests import judgefake as JF
from tests.fake_openai import FakeOpenAI

B, K = 5, 3  # recorded quantile bins, samples per bin
QBASE = 1000  # excerpt ids of the quantile samples


def _judge(run, method, **kw):
    with FakeOpenAI(JF.Judge("perfect")) as fake:
        stage.run(C.JudgeConfig(run=run, method=method, judge="fake-model",
                                llm=C.LLMConfig(base_url=fake.base_url, concurrency=1,
                                                max_retries=0), **kw))
        return [r for r in fake.requests if r.path.endswith("/chat/completions")]


def _records(run, neuron):
    rec = rundir.read(run, "records", model=JF.MODEL, layer=0)
    return rec[rec["neuron"] == neuron]


def _with_quantiles(run, neuron=0):
    """Add K quantile samples per bin to `neuron`, each excerpt's max in the middle of its bin
    of the neuron's maximum, and say B bins in run.json (as record --quantile-k does)."""
    m = float(_records(run, neuron).query("kind == 'top'")["max_activation"].max())
    word, filler = JF.WORDS[neuron], JF.WORDS[-1]
    ids, toks, cols = [], [], {c: [] for c in rundir.table("records").schema.names}
    for b in range(B):
        for j in range(K):
            eid, rank = QBASE + b * K + j, b * K + j
            t = [" " + filler] * JF.CTX
            t[2] = " " + word
            acts = [0.01] * JF.CTX
            acts[2] = (b + 0.5) / B * m
            ids.append(eid)
            toks.append(t)
            for c, v in (("neuron", neuron), ("excerpt_id", eid), ("kind", "quantile"),
                         ("rank", rank), ("split", JF.SPLITS[rank % 4]), ("activations", acts),
                         ("max_activation", max(acts))):
                cols[c].append(v)
    rundir.write_columns(run, "excerpts", {"excerpt_id": ids, "token_ids": [[0] * JF.CTX] * len(ids),
                                           "tokens": toks}, model=JF.MODEL)
    rundir.write_columns(run, "records", cols, model=JF.MODEL, layer=0)

    def change(meta):
        meta["models"][JF.MODEL]["settings"] = {"quantile_bins": B, "quantile_k": K}

    rundir.update_run_json(run, change)
    return m


def _floor(run, neuron):
    """The documented firing floor, computed here from the records: max(0, median of the
    random excerpts' maxima)."""
    rnd = _records(run, neuron).query("kind == 'random'")
    return max(0.0, float(np.median([max(a) for a in rnd["activations"]]))), rnd


def test_delphi_positives_span_every_recorded_bin_negatives_stay_under_the_floor(tmp_path):
    run = JF.make_run(tmp_path / "run", d_mlp=2)
    m = _with_quantiles(run)
    _judge(run, "detection", neurons="0")
    j = rundir.read(run, "judgments")
    assert (j["sampling"] == "delphi").all()
    params = json.loads(j["sampling_params"].iloc[0])
    assert params["positives_from"] == "recorded-quantiles" and params["n_positive"] == 50
    pos, neg = j[j["label"]], j[~j["label"]]
    # Every positive is a recorded quantile sample; its bin, recomputed here from its max.
    assert set(pos["kind"]) == {"quantile"} and len(pos) == B * K
    bins = [math.ceil(B * ((eid - QBASE) // K + 0.5) / B) - 1 for eid in pos["excerpt_id"]]
    assert sorted(pos["quantile"]) == sorted(bins) and set(bins) == set(range(B))
    # Negatives: random excerpts whose every token is at or under the firing floor.
    floor, rnd = _floor(run, 0)
    peak = {int(e): max(a) for e, a in zip(rnd["excerpt_id"], rnd["activations"])}
    assert len(neg) > 0 and set(neg["kind"]) == {"random"}
    assert all(peak[int(e)] <= floor for e in neg["excerpt_id"])
    # The floor leaves out the random excerpts that hold the neuron's word (they fire).
    hot = {e for e, p in peak.items() if p > floor}
    assert hot and not hot & set(int(e) for e in neg["excerpt_id"])
    assert np.allclose(j["threshold"], floor, rtol=1e-6) and floor < 0.3 < m
    sc = rundir.read(run, "scores")
    assert (sc["sampling"] == "delphi").all() and len(sc["recall_by_quantile"].iloc[0]) == B
    assert (sc["balanced_accuracy"] == 1.0).all()  # the perfect judge on the word


def test_delphi_fuzzing_decoys_come_from_non_activating_excerpts(tmp_path):
    run = JF.make_run(tmp_path / "run", d_mlp=2)
    _with_quantiles(run)
    _judge(run, "fuzzing", neurons="0")
    j = rundir.read(run, "judgments")
    floor, rnd = _floor(run, 0)
    quiet = {int(e) for e, a in zip(rnd["excerpt_id"], rnd["activations"]) if max(a) <= floor}
    true, decoy = j[j["label"]], j[~j["label"]]
    assert len(decoy) > 0 and set(decoy["excerpt_id"].astype(int)) <= quiet
    acts = {int(e): a for e, a in zip(_records(run, 0)["excerpt_id"],
                                      _records(run, 0)["activations"])}
    for r in true.itertuples():  # highlights: above 0.3 of the excerpt's own max
        a = acts[int(r.excerpt_id)]
        assert list(r.highlighted) == [i for i, v in enumerate(a) if v > 0.3 * max(a)]
    marked = math.ceil(np.mean([len(h) for h in true["highlighted"]]))
    assert all(len(h) == marked for h in decoy["highlighted"])


def test_delphi_without_quantile_samples_bins_the_held_out_top_excerpts(tmp_path):
    run = JF.make_run(tmp_path / "run", d_mlp=1)
    _judge(run, "detection")
    j = rundir.read(run, "judgments")
    pos = j[j["label"]]
    assert json.loads(j["sampling_params"].iloc[0])["positives_from"] == "top-bins"
    assert set(pos["kind"]) == {"top"} and set(pos["split"]) <= {"valid", "test"}
    assert set(pos["quantile"]) == set(range(10))  # 20 held-out tops in 10 bins of 2
    # Bins of equal count by rank: a higher bin never holds a weaker excerpt.
    peak = {int(e): m for e, m in zip(_records(run, 0)["excerpt_id"],
                                      _records(run, 0)["max_activation"])}
    by_bin = {}
    for e, q in zip(pos["excerpt_id"], pos["quantile"]):
        by_bin.setdefault(int(q), []).append(peak[int(e)])
    for b in range(9):
        assert max(by_bin[b]) <= min(by_bin[b + 1])


# sha256[:16] of the prompts sent and the judgment rows written by the judge before presets
# (commit cb930d3) on JF.make_run(d_mlp=4), perfect judge: `explain` must reproduce them.
BEFORE = {"detection": "aa76b4dace8f39d5", "fuzzing": "45d6c4d83c51dd78"}


@pytest.mark.parametrize("method", ["detection", "fuzzing"])
def test_explain_preset_reproduces_the_judgments_before_presets(tmp_path, method):
    run = JF.make_run(tmp_path / "run", d_mlp=4)
    sent = _judge(run, method, sampling="explain")
    msgs = sorted(json.dumps(r.body["messages"]) for r in sent)
    j = rundir.read(run, "judgments")
    assert (j["sampling"] == "explain").all()
    rows = sorted((int(r.neuron), int(r.excerpt_id), bool(r.label),
                   tuple(r.highlighted) if r.highlighted is not None else None,
                   int(r.quantile) if r.quantile == r.quantile and r.quantile is not None
                   else None, round(float(r.threshold), 6), r.prompt_hash)
                  for r in j.itertuples())
    digest = hashlib.sha256(json.dumps([msgs, rows], default=str).encode()).hexdigest()[:16]
    assert digest == BEFORE[method]


def test_two_presets_stay_in_separate_rows(tmp_path):
    from explainer.views import judged

    run = JF.make_run(tmp_path / "run", d_mlp=2)
    _judge(run, "detection", sampling="explain")
    _judge(run, "detection")
    sc = rundir.read(run, "scores")
    assert sorted(sc["sampling"]) == ["delphi", "delphi", "explain", "explain"]
    rows = judged.aggregate(sc, {})
    assert sorted(r.sampling for r in rows) == ["delphi", "explain"]
    assert all(r.n_neurons == 2 for r in rows)
    assert "delphi" in judged.render(rows, [])


def test_an_unknown_preset_is_refused_before_anything_is_written(tmp_path):
    from explainer import ExplainError

    run = JF.make_run(tmp_path / "run", d_mlp=1)
    with pytest.raises(ExplainError, match="--sampling 'deplhi': expected one of"):
        stage.run(C.JudgeConfig(run=run, method="detection", sampling="deplhi"))
    assert not (run / "judgments").exists()
