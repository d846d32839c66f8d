"""Hand-made run directories with known scores, written through store (report/show/view tests).

Two subject models of different sizes (the bigger one sorts first by name, so ordering by size
is visible), two explainers, decoy candidates that are not chosen, test-split rows, and neurons
whose score is undefined or failed. `make_run` returns the truth it wrote, so tests compare the
report against numbers computed here, not by the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explainer import run as rundir

SIM = "smollm2-135m"
EXPLAINERS = ("smollm2-135m", "baseline-tokens")
# Name order is the opposite of size order on purpose.
MODELS = {
    "a-big-gpt2": {"n_layers": 4, "d_mlp": 16, "n_params": 5_000_000, "layers": (0, 2, 3)},
    "z-tiny-gpt2": {"n_layers": 2, "d_mlp": 8, "n_params": 120_000, "layers": (0, 1)},
}
WORDS = ["The", " cat", " sat", " on", " <b>mat</b>", " &", " dog", "\n", " ran", " away",
         " quickly", "."]
CTX = 8
N_EXCERPTS = 12


@dataclass
class Truth:
    """What was written: headline (valid, chosen-candidate) rows keyed by (model, layer, explainer)."""

    scores: dict = field(default_factory=dict)  # -> list of (neuron, score|None, top, random, status)
    test: dict = field(default_factory=dict)  # -> list of test scores of chosen candidates
    explanations: dict = field(default_factory=dict)  # (model, layer, neuron, explainer) -> text


def _status(neuron: int, dead: int | None = None) -> str:
    # Neuron 1 gets a constant prediction (counts as 0), neuron 2 a failed call, neuron `dead`
    # (when given) a constant real activation (left out and counted); the rest are scored.
    if neuron == dead:
        return "constant_activation"
    return {1: "constant_prediction", 2: "failed"}.get(neuron, "ok")


def counted(score, status):
    """What a report should count for a headline: the score, 0 for a constant prediction, or
    None (left out) for a dead neuron or a failure."""
    return score if status == "ok" else 0.0 if status == "constant_prediction" else None


def _score_rows(model, layer, n_neurons, rng, truth: Truth, dead: int | None = None):
    rows = []
    for explainer in EXPLAINERS:
        key = (model, layer, explainer)
        truth.scores[key], truth.test[key] = [], []
        shift = 0.25 if explainer == EXPLAINERS[0] else 0.0
        for neuron in range(n_neurons):
            status = _status(neuron, dead)
            s = float(np.clip(rng.normal(0.35 + shift - 0.1 * layer, 0.3), -1, 1))
            if neuron == 3:
                s = 0.95  # at least one neuron clears 0.8 in every group
            top, rnd, test = s + 0.05, s - 0.2, s - 0.03
            text = f"{explainer} says neuron {neuron} of layer {layer} likes cats & <dogs>"
            truth.explanations[(model, layer, neuron, explainer)] = text
            ok = status == "ok"
            truth.scores[key].append((neuron, s if ok else None, top if ok else None,
                                      rnd if ok else None, status))
            if ok or status == "constant_prediction":
                truth.test[key].append(test if ok else 0.0)
            for cand, best in ((0, True), (1, False)):
                # The decoy candidate scores higher but is not the chosen one.
                val = s if cand == 0 else min(1.0, s + 0.5)
                for split, v in (("valid", val), ("test", test if cand == 0 else 0.0)):
                    rows.append(rundir.ScoreRow(
                        model=model, layer=layer, neuron=neuron, explainer=explainer,
                        candidate=cand, simulator=SIM, split=split,
                        explanation=text if cand == 0 else "decoy",
                        score=v if ok else None, score_top=top if ok else None,
                        score_random=rnd if ok else None, rsquared=0.1 if ok else None,
                        abs_dev_explained=0.2 if ok else None, n_tokens=80,
                        best=best if status != "failed" else False, status=status,
                        error="HTTP 500" if status == "failed" else None))
    return rows


def _excerpts(run: Path, model: str, rng):
    ids = list(range(100, 100 + N_EXCERPTS))
    tokens = [[WORDS[(e + i) % len(WORDS)] for i in range(CTX)] for e in ids]
    rundir.write_columns(run, "excerpts", {
        "excerpt_id": ids, "token_ids": [[(e + i) % len(WORDS) for i in range(CTX)] for e in ids],
        "tokens": tokens}, model=model)
    return ids


def output_side(neuron: int) -> dict:
    """The neurons/ output-side columns of a neuron: WORDS from index neuron on, promoted with
    falling effects, suppressed with rising ones (known, so views can be checked)."""
    promoted = [WORDS[(neuron + i) % len(WORDS)] for i in range(10)]
    suppressed = [WORDS[(neuron + 5 + i) % len(WORDS)] for i in range(10)]
    return {"promoted_ids": list(range(10)), "promoted_values": [2.0 - 0.1 * i for i in range(10)],
            "promoted_tokens": promoted, "suppressed_ids": list(range(10, 20)),
            "suppressed_values": [-1.5 + 0.1 * i for i in range(10)],
            "suppressed_tokens": suppressed}


def _neuron_tables(run, model, layer, n_neurons, ids, rng):
    recs = {k: [] for k in rundir.table("records").schema.names}
    sims = []
    stats = {k: [] for k in rundir.table("neurons").schema.names}
    splits = ("explain", "calibrate", "valid", "test")
    for neuron in range(n_neurons):
        acts_all = []
        for kind, chosen in (("top", ids[:8]), ("random", ids[8:])):
            for rank, eid in enumerate(chosen):
                a = np.abs(rng.normal(0, 1, CTX)).astype(np.float32) * (3 if kind == "top" else 0.3)
                split = splits[rank % 4] if kind == "top" else splits[1 + rank % 3]
                acts_all.append(a)
                for k, v in (("neuron", neuron), ("excerpt_id", eid), ("kind", kind),
                             ("rank", rank), ("split", split), ("activations", a.tolist()),
                             ("max_activation", float(a.max()))):
                    recs[k].append(v)
                if split in ("valid", "test"):
                    for explainer in EXPLAINERS:
                        pred = None if _status(neuron) == "failed" else \
                            np.round(10 * a / a.max()).tolist()
                        sims.append(rundir.SimulationRow(
                            model=model, layer=layer, neuron=neuron, explainer=explainer,
                            candidate=0, simulator=SIM, mode="logprob", excerpt_id=eid, kind=kind,
                            split=split, predicted=pred,
                            status="failed" if pred is None else "ok", error=None))
        flat = np.concatenate(acts_all)
        for k, v in (("neuron", neuron), ("mean", float(flat.mean())), ("std", float(flat.std())),
                     ("max", float(flat.max())), ("min", float(flat.min())),
                     ("density", float((flat > 0).mean())), ("n_tokens", int(flat.size)),
                     ("quantiles", np.quantile(flat, [0.5, 0.9, 0.99]).astype(float).tolist()),
                     *output_side(neuron).items()):
            stats[k].append(v)
    rundir.write_columns(run, "records", recs, model=model, layer=layer)
    rundir.write_columns(run, "neurons", stats, model=model, layer=layer)
    rundir.write_rows(run, "simulations", sims)


def make_run(run: Path, n_neurons: int = 10, seed: int = 0, full: bool = True,
             dead: int | None = None) -> Truth:
    """Write a two-model run under `run`; `full` adds excerpts, records, neurons, simulations;
    `dead` names a neuron whose scores are undefined because its activation is constant."""
    rng = np.random.default_rng(seed)
    truth = Truth()
    meta = {"format": 1, "models": {}}
    for model, spec in MODELS.items():
        meta["models"][rundir.model_key(model)] = {
            "model": model, "n_layers": spec["n_layers"], "d_mlp": spec["d_mlp"],
            "n_params": spec["n_params"]}
        ids = _excerpts(run, model, rng) if full else None
        for layer in spec["layers"]:
            rundir.write_rows(run, "scores", _score_rows(model, layer, n_neurons, rng, truth,
                                                         dead))
            expl = [rundir.ExplanationRow(
                model=model, layer=layer, neuron=n, explainer=ex, prompt_hash="abc123abc123",
                candidate=0, explanation=truth.explanations[(model, layer, n, ex)],
                prompt_tokens=400, completion_tokens=20, status="ok", error=None)
                for n in range(n_neurons) for ex in EXPLAINERS]
            rundir.write_rows(run, "explanations", expl)
            if full:
                _neuron_tables(run, model, layer, n_neurons, ids, rng)
    rundir.write_run_json(run, meta)
    return truth
