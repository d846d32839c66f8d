"""`explain import --format openai`: neuron-explainer JSON written here, imported, then described,
simulated (scripted fake endpoint) and scored like any recorded run."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from explainer import config as C
from explainer import describe, simulate
from explainer import run as rundir
from explainer.ingest import stage as ingest
from tests.fake_openai import FakeOpenAI, Reply, default_handler

CTX = 6
WORDS = [" the", " cat", " sat", " on", " a", " mat", " dog", " ran", " far", " away"]


def _tokens(i: int) -> list[str]:
    return [WORDS[(i * 3 + k) % len(WORDS)] for k in range(CTX)]


def _acts(layer: int, neuron: int, i: int) -> list[float]:
    # The neuron fires on " cat" (layer 0) or " dog" (layer 1), more on later excerpts.
    target = " cat" if layer == 0 else " dog"
    return [round(1.0 + 0.1 * i + 0.01 * neuron, 4) if t == target else -0.05 + 0.01 * k
            for k, t in enumerate(_tokens(i))]


def _record(layer: int, neuron: int, i: int) -> dict:
    return {"dataclass_name": "ActivationRecord", "tokens": _tokens(i),
            "activations": _acts(layer, neuron, i)}


def neuron_record(layer: int, neuron: int, n_top: int = 10, n_random: int = 7) -> dict:
    top = sorted(range(20), key=lambda i: -max(_acts(layer, neuron, i)))[:n_top]
    return {"dataclass_name": "NeuronRecord",
            "neuron_id": {"dataclass_name": "NeuronId", "layer_index": layer,
                          "neuron_index": neuron},
            "random_sample": [_record(layer, neuron, 20 + i) for i in range(n_random)],
            "random_sample_by_quantile": [[_record(layer, neuron, 40 + b * 2 + j)
                                           for j in range(2)] for b in range(2)],
            "quantile_boundaries": [0.0, 0.5, 1.0], "mean": 0.1, "variance": 0.2,
            "skewness": float("nan"), "kurtosis": 3.0,
            "most_positive_activation_records": [_record(layer, neuron, i) for i in top]}


def explanations(layer: int, neuron: int) -> dict:
    word = "cat" if layer == 0 else "dog"
    return {"dataclass_name": "NeuronSimulationResults",
            "neuron_id": {"layer_index": layer, "neuron_index": neuron},
            "scored_explanations": [
                {"explanation": f"the word {word}",
                 "scored_simulation": {"scored_sequence_simulations": [
                     {"true_activations": [0.0] * CTX}, {"true_activations": [1.0] * CTX}],
                     "ev_correlation_score": 0.61}},
                {"explanation": "animals", "scored_simulation": {
                    "scored_sequence_simulations": [], "ev_correlation_score": float("nan")}}]}


def write_sample(root) -> list:
    """Files laid out as the published data: records/<layer>/<n>.json, explanations/<layer>/<n>.jsonl."""
    for layer in (0, 1):
        for neuron in (0, 3):
            rec = root / "records" / str(layer) / f"{neuron}.json"
            rec.parent.mkdir(parents=True, exist_ok=True)
            rec.write_text(json.dumps(neuron_record(layer, neuron)))
            ex = root / "explanations" / str(layer) / f"{neuron}.jsonl"
            ex.parent.mkdir(parents=True, exist_ok=True)
            ex.write_text(json.dumps(explanations(layer, neuron)) + "\n")
    return [root / "records", root / "explanations"]


def test_import_writes_records_splits_stats_and_published_explanations(tmp_path):
    paths = write_sample(tmp_path / "in")
    run = tmp_path / "run"
    out = ingest.run(C.ImportConfig(paths=tuple(paths), run=run, model="gpt2"))
    assert "4 neurons in 2 layers" in out and "8 published explanations" in out
    meta = rundir.model_meta(run, "gpt2")
    assert (meta["n_layers"], meta["d_mlp"], meta["source"]) == (12, 3072, "openai-import")
    assert meta["layers_done"] == [0, 1]

    ex = rundir.read(run, "excerpts", model="gpt2")
    tokens_of = {int(e): tuple(t) for e, t in zip(ex["excerpt_id"], ex["tokens"])}
    assert all(len(t) == 0 for t in ex["token_ids"])
    # Sequences repeat every 10 (see _tokens): shared across neurons, but a neuron's own repeat
    # within one kind is its own excerpt, so (neuron, kind, excerpt_id) stays a key.
    assert len(ex) < 4 * (10 + 7 + 4)

    rec = rundir.read(run, "records", model="gpt2", layer=1)
    n3 = rec[rec["neuron"] == 3]
    src = neuron_record(1, 3)
    top = n3[n3["kind"] == "top"].sort_values("rank")
    # Interleaved as the paper: 10 top records -> 2 full rounds of 4, ranks 8 and 9 unused.
    assert list(top["split"]) == ["explain", "calibrate", "valid", "test"] * 2 + ["unused"] * 2
    for r, (eid, acts) in enumerate(zip(top["excerpt_id"], top["activations"])):
        want = src["most_positive_activation_records"][r]
        assert tokens_of[eid] == tuple(want["tokens"])
        np.testing.assert_allclose(acts, want["activations"], rtol=1e-6)
    rnd = n3[n3["kind"] == "random"].sort_values("rank")
    assert list(rnd["split"]) == ["calibrate", "valid", "test"] * 2 + ["unused"]
    assert not n3.duplicated(["kind", "excerpt_id"]).any()
    quant = n3[n3["kind"] == "quantile"].sort_values("rank")
    assert list(quant["rank"]) == [0, 1, 2, 3]

    neurons = rundir.read(run, "neurons", model="gpt2", layer=1).set_index("neuron")
    sample = np.concatenate([r["activations"] for r in src["random_sample"]])
    every = np.concatenate([r["activations"] for r in src["most_positive_activation_records"]
                            + src["random_sample"]
                            + [r for b in src["random_sample_by_quantile"] for r in b]])
    assert neurons.loc[3, "mean"] == pytest.approx(sample.mean())
    assert neurons.loc[3, "std"] == pytest.approx(sample.std())
    assert neurons.loc[3, "density"] == pytest.approx((sample > 0).mean())
    assert neurons.loc[3, "max"] == pytest.approx(every.max())
    assert neurons.loc[3, "min"] == pytest.approx(every.min())
    assert neurons.loc[3, "n_tokens"] == sample.size

    expl = rundir.read(run, "explanations", model="gpt2", layer=0)
    assert set(expl["explainer"]) == {"openai-published"}
    assert sorted(expl[expl["neuron"] == 0]["explanation"]) == ["animals", "the word cat"]
    sc = rundir.read(run, "scores", model="gpt2", layer=0)
    best = sc[sc["best"]]
    assert list(best["explanation"]) == ["the word cat"] * 2
    assert best["score"].tolist() == [0.61, 0.61] and set(best["n_tokens"]) == {2 * CTX}
    assert set(sc[~sc["best"]]["status"]) == {"failed"}  # the paper's NaN stays undefined

    again = ingest.run(C.ImportConfig(paths=tuple(paths), run=run, model="gpt2"))
    assert again.startswith("nothing to do")


def _handler(req):
    """Echo + logprobs: 9 at tokens the explanation names, 0 elsewhere (every slot its own token)."""
    body = req.body or {}
    prompt = body.get("prompt", "")
    if "/completions" not in req.path or "chat" in req.path or "Neuron: " not in prompt:
        return default_handler(req)
    toks = re.findall(r"\t|\n|[^\t\n]+", prompt)
    offsets = np.cumsum([0] + [len(t) for t in toks[:-1]]).tolist()
    head, _, listing = prompt.rpartition("Neuron: ")
    expl = listing.split("\n", 1)[0]
    top = [{t: -0.1} for t in toks]
    slots = [i for i, t in enumerate(toks) if t == "unknown" and offsets[i] > len(head)]
    for i, line in zip(slots, listing.split("\n")[2:]):
        word = line.rsplit("\t", 1)[0].strip()
        top[i] = {"9": 0.0} if word and word in expl.split() else {"0": 0.0}
    return Reply.completion(prompt, logprobs={"tokens": toks, "text_offset": offsets,
                                              "token_logprobs": [-0.1] * len(toks),
                                              "top_logprobs": top})


def test_imported_run_describes_simulates_and_scores(tmp_path):
    run = tmp_path / "run"
    ingest.run(C.ImportConfig(paths=tuple(write_sample(tmp_path / "in")), run=run,
                              model="gpt2"))
    describe.run(C.DescribeConfig(run=run, neurons="0,3", explainer=C.BASELINE_EXPLAINER))
    with FakeOpenAI(_handler) as fake:
        simulate.run(C.SimulateConfig(run=run, simulator="fake-model", mode="logprob",
                                      llm=C.LLMConfig(base_url=fake.base_url)))
    sc = rundir.read(run, "scores", model="gpt2")
    mine = sc[(sc["simulator"] == "fake-model") & (sc["split"] == "valid")]
    assert set(mine["explainer"]) == {"openai-published", "baseline-tokens"}
    # Independently: "the word cat" predicts 10 on " the" and " cat", 0 elsewhere, on the 2 valid top
    # records (ranks 2, 6) and 2 valid random ones (ranks 1, 4).
    rec = rundir.read(run, "records", model="gpt2", layer=0)
    rec = rec[(rec["neuron"] == 0) & (rec["split"] == "valid")
              & rec["kind"].isin(["top", "random"])].sort_values(["kind", "rank"],
                                                                             ascending=[False, True])
    toks = rundir.read(run, "excerpts", model="gpt2").set_index("excerpt_id")["tokens"]
    real = np.concatenate([a for a in rec["activations"]])
    pred = np.concatenate([[10.0 if t in (" the", " cat") else 0.0 for t in toks[e]]
                           for e in rec["excerpt_id"]])
    row = mine[(mine["layer"] == 0) & (mine["neuron"] == 0)
               & (mine["explanation"] == "the word cat")]
    assert row["score"].iloc[0] == pytest.approx(np.corrcoef(real, pred)[0, 1], abs=1e-5)


@pytest.mark.parametrize("content, message", [
    ("{not json", "neither JSON nor JSON lines"),
    (json.dumps({"hello": 1}), "neither a neuron record"),
    (json.dumps({**neuron_record(0, 0), "neuron_id": {"layer_index": -1, "neuron_index": 0}}),
     "layer_index is -1"),
    (json.dumps({**neuron_record(0, 0), "most_positive_activation_records": [
        {"tokens": ["a", "b"], "activations": [1.0]}]}), "2 tokens but activations 1"),
    (json.dumps({**neuron_record(0, 0), "random_sample": [
        {"tokens": ["a"], "activations": [math.inf]}]}), "expected a finite number"),
    (json.dumps(explanations(0, 0)), "no neuron record found"),
    (json.dumps([neuron_record(0, 0), explanations(0, 1)]), "have no neuron record"),
    (json.dumps(neuron_record(0, 5000)), "gpt2 has layers 0-11 and neurons 0-3071"),
])
def test_bad_files_fail_in_one_line_and_write_nothing(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    run = tmp_path / "run"
    result = CliRunner().invoke(_app(), ["import", str(bad), "--run", str(run),
                                         "--model", "gpt2"])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not run.exists()


def test_two_records_of_one_neuron_are_refused(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.jsonl"
    a.write_text(json.dumps(neuron_record(0, 1)))
    b.write_text(json.dumps(neuron_record(0, 1)) + "\n")
    with pytest.raises(Exception, match="appears twice"):
        ingest.run(C.ImportConfig(paths=(a, b), run=tmp_path / "run", model="gpt2"))
    assert not (tmp_path / "run").exists()


def test_gpt2_shapes_agree_with_the_subject_models():
    from explainer.subject import models as subject

    for name, (n_layers, d_mlp, n_params) in ingest.GPT2.items():
        spec = subject.KNOWN[name]
        assert (spec.n_layers, spec.d_mlp, spec.n_params) == (n_layers, d_mlp, n_params)


def _app():
    from explainer.cli import app

    return app
