"""One neuron as data: its excerpts with real and simulated activations, scores and statistics.

`explain show` (terminal.py) and `explain view` (html.py) render the same `NeuronView`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explainer import ExplainError
from explainer import run as rundir
from explainer.run.evidence import OutputTokens, output_tokens

N_TOP = 6  # excerpts shown per kind in the terminal; simulated ones first
N_RANDOM = 4


@dataclass(frozen=True)
class Excerpt:
    """One excerpt of the neuron with its real and (maybe) simulated activations.

    A bottom excerpt (the negative side of a gated neuron) carries its activations negated,
    as that side's explainer and simulator saw them, so one shading reads both sides.
    """

    kind: str  # top | bottom | random | quantile
    rank: int
    split: str
    excerpt_id: int
    tokens: list[str]
    real: list[float]
    simulated: list[float] | None


@dataclass(frozen=True)
class NeuronView:
    """Everything shown about one neuron (also used by the HTML viewer)."""

    model: str  # run.json name
    model_key: str
    layer: int
    neuron: int
    stats: dict | None
    scores: list[dict]  # valid-split rows, one per (explainer, candidate, simulator), best first
    headline: dict | None  # the chosen row whose simulations are shown
    excerpts: list[Excerpt]
    sides: tuple[str, ...] = ("pos",)  # ("pos", "neg") where the negative side was recorded
    heads: dict | None = None  # side -> the chosen row whose simulations that side shows


def output_sides(view: NeuronView) -> list[tuple[str, OutputTokens]]:
    """Each recorded side's promoted and suppressed next tokens (what the neuron writes);
    empty for a run recorded before record kept them."""
    if not view.stats:
        return []
    sides = [(s, output_tokens(view.stats, s)) for s in view.sides]
    return [(s, o) for s, o in sides if o is not None]


def resolve_model(run: Path, model: str | None) -> str:
    """The partition key of the subject model, or ExplainError naming the valid ones."""
    run = Path(run)
    if not run.is_dir():
        raise ExplainError(f"--run {run}: no such run directory (create it with `explain record`)")
    keys = sorted(set(rundir.models_in(run, "records")) | set(rundir.models_in(run, "scores"))
                  | set(rundir.read_run_json(run).get("models", {})))
    if not keys:
        raise ExplainError(f"--run {run}: holds no recorded model yet (run `explain record`)")
    if model is None:
        if len(keys) > 1:
            raise ExplainError(f"--model is needed: the run holds {', '.join(keys)}")
        return keys[0]
    if rundir.model_key(model) not in keys:
        raise ExplainError(f"--model {model}: the run holds {', '.join(keys)}")
    return rundir.model_key(model)


def _clean(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return None
    return x.item() if hasattr(x, "item") else x


def rows_by_neuron(df) -> dict[int, list[dict]]:
    """A layer's table as plain rows grouped by neuron (one pass; cheap per-neuron access)."""
    out: dict[int, list[dict]] = {}
    for r in df.to_dict("records"):
        out.setdefault(int(r["neuron"]), []).append({k: _clean(v) for k, v in r.items()})
    return out


def neuron_view(name: str, mkey: str, layer: int, neuron: int, records: list[dict],
                stats: dict | None, scores: list[dict], sims: list[dict], tokens: dict,
                n_top: int = N_TOP, n_random: int = N_RANDOM) -> NeuronView:
    """Assemble one neuron's view from its plain rows (see `rows_by_neuron`)."""
    own = [r for r in scores if r["split"] == "valid" and r.get("method", "simulation")
           == "simulation" and r.get("control", "none") == "none"]
    rows = sorted(own, key=lambda r: (r.get("side", "pos") != "pos", not r["best"],
                                      r["score"] is None, -(r["score"] or 0.0)))
    heads = {}
    for side in ("pos", "neg"):
        mine = [r for r in rows if r.get("side", "pos") == side]
        best = [r for r in mine if r["best"] and r["score"] is not None]
        head = max(best, key=lambda r: r["score"]) if best else (mine[0] if mine else None)
        if head is not None:
            heads[side] = head
    predicted = {side: _predicted(sims, head) for side, head in heads.items()}
    excerpts = []
    # The negative side's own excerpts are its bottom ones; random excerpts show the positive
    # side's predictions (the negative side's are there too, on the neuron page of the viewer).
    for kind, n, side in (("top", n_top, "pos"), ("bottom", n_top, "neg"),
                          ("random", n_random, "pos"), ("quantile", n_top, "pos")):
        pred = predicted.get(side, {})
        sign = -1.0 if kind == "bottom" else 1.0
        # Simulated excerpts first: they are the ones whose two shadings can be compared.
        chosen = sorted((r for r in records if r["kind"] == kind),
                        key=lambda r: (int(r["excerpt_id"]) not in pred, r["rank"]))[:n]
        for r in chosen:
            eid = int(r["excerpt_id"])
            real = [sign * float(a) for a in r["activations"]]
            words = list(tokens.get(eid, [f"#{i}" for i in range(len(real))]))
            excerpts.append(Excerpt(kind, int(r["rank"]), r["split"], eid, words, real,
                                    pred.get(eid)))
    sides = ("pos", "neg") if any(r["kind"] == "bottom" for r in records) else ("pos",)
    head = heads.get("pos") or next(iter(heads.values()), None)
    return NeuronView(name, mkey, int(layer), int(neuron), stats, rows, head, excerpts, sides,
                      heads)


def _predicted(sims: list[dict], head: dict) -> dict[int, list[float]]:
    """excerpt id -> the predictions of the simulation behind a score row."""
    return {int(r["excerpt_id"]): list(r["predicted"]) for r in sims
            if r["predicted"] is not None and r["explainer"] == head["explainer"]
            and r["candidate"] == head["candidate"] and r["simulator"] == head["simulator"]
            and r.get("side", "pos") == head.get("side", "pos")
            and r.get("control", "none") == "none"
            and r.get("explanation_hash", "") == head.get("explanation_hash", "")}


def load_neuron(run: Path, mkey: str, layer: int, neuron: int, n_top: int = N_TOP,
                n_random: int = N_RANDOM) -> NeuronView:
    """Read one neuron's rows from the run and assemble its view."""
    t = {name: rows_by_neuron(rundir.read(run, name, mkey, layer)).get(neuron, [])
         for name in ("records", "neurons", "scores", "simulations")}
    if not t["records"] and not t["scores"]:
        raise ExplainError(f"--neuron {neuron}: layer {layer} of {mkey} has no records or "
                           "scores for it (see `explain report` for what the run holds)")
    ex = rundir.read(run, "excerpts", mkey)
    tokens = dict(zip(ex["excerpt_id"].astype(int), ex["tokens"]))
    name = rundir.read_run_json(run).get("models", {}).get(mkey, {}).get("model", mkey)
    stats = t["neurons"][0] if t["neurons"] else None
    return neuron_view(name, mkey, layer, neuron, t["records"], stats, t["scores"],
                       t["simulations"], tokens, n_top, n_random)
