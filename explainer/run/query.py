"""The questions every reader asks of a run's scores and simulations, answered in one place.

A score row is one explanation's score under stated conditions: its method (simulation, or a
judge's detection / fuzzing), the simulator (or judge) and its mode family, the side, whether it
is the neuron's own explanation or a control, the simulator prompt (`sim_prompt_hash`) and the
explanation's text (`explanation_hash`). Readers never filter the table by hand; they ask here:

* `select`: rows of one kind (own simulation scores by default), optionally narrowed;
* `chosen`: each neuron side's chosen score per `CHOICE` group (the candidate marked best);
* `pairs`: a neuron's own chosen score beside the shuffled control scored on it;
* `judged`: one judge row per neuron side, method, explainer and judge;
* `judge_targets`: the candidate a given simulator chose, for the judges;
* `simulations`: stored predictions made under given conditions (reuse, revision).

DataFrames in, DataFrames out; pure filters (no I/O) besides `read_scores`. The selection rule
(docs/reference.md §6): per group the row marked `best` on the split; if a group holds several
(scores of an explanation text described since), the newest one, which a read returns last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection

from explainer.run.schema import DEFAULTS, mode_family

SIMULATION = "simulation"
OWN = "none"  # control: the neuron's own explanation
SHUFFLED = "shuffled"  # control: another neuron's chosen explanation, scored on this one
# the judges whose rows the report shows per neuron (detection, fuzzing; generation and
# steering rows are read by their own views)
JUDGE_METHODS = ("detection", "fuzzing")

# What tells one neuron side's chosen score from another's. Two simulator prompt versions are
# two groups, so a report never pools them into one mean.
CHOICE = ["model", "layer", "neuron", "side", "explainer", "simulator", "mode",
          "sim_prompt_hash"]
# One judge row per neuron side, judge (stored as `simulator`) and method.
JUDGED = ["model", "layer", "neuron", "side", "explainer", "simulator", "method"]


def text_hash(text: str) -> str:
    """12 hex identifying an explanation's text: the `explanation_hash` of every simulation,
    score and judgment made from it."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def filled(frame):
    """`frame` with every provenance column present and no nulls in it (a frame built by hand,
    or read from files older than the column, reads the contract's defaults)."""
    out = frame.copy()
    for col, value in {**DEFAULTS, "mode": "", "best": False}.items():
        if col in ("evidence", "level"):
            continue
        if col not in out:
            out[col] = value
        elif out[col].isna().any():
            out[col] = out[col].where(out[col].notna(), value)
    return out


def select(scores, *, method: str = SIMULATION, control: str | None = OWN,
           simulator: str | None = None, mode: str | None = None,
           prompt_hash: str | None = None, split: str | None = None, side: str | None = None,
           explainer: str | None = None):
    """Rows of `method` and `control` (None: any), narrowed by the arguments given; `mode`
    compares by family (`chat` finds chat-logprob too)."""
    sc = filled(scores)
    keep = sc["method"] == method
    if control is not None:
        keep &= sc["control"] == control
    for col, value in (("simulator", simulator), ("sim_prompt_hash", prompt_hash),
                       ("split", split), ("side", side), ("explainer", explainer)):
        if value is not None:
            keep &= sc[col] == value
    if mode is not None:
        keep &= sc["mode"].map(mode_family) == mode_family(mode)
    return sc[keep]


def chosen(scores, split: str = "valid", *, stand_in: bool = False,
           current: Collection[tuple] | None = None, **narrow):
    """Each neuron side's chosen own-simulation row on `split`, one per `CHOICE` group.

    `stand_in`: a group with no row marked best (every candidate failed) keeps its lowest
    candidate, so it is counted as failed rather than dropped. `current`: the (model, layer,
    neuron, side, explainer, candidate, explanation_hash) still described (see
    `current_explanations`); rows of texts described since are stale and left out. `narrow` as
    in `select`.
    """
    sc = without_stale(select(scores, split=split, **narrow), current)
    if sc.empty:
        return sc.reset_index(drop=True)
    import numpy as np

    best = sc["best"].astype(bool).to_numpy()
    # A best row: the newest (a read returns rows in write order); a stand-in: the lowest
    # candidate.
    sc = sc.assign(_pick=np.where(best, -np.arange(len(sc)), sc["candidate"].to_numpy()),
                   _best=best)
    if not stand_in:
        sc = sc[sc["_best"]]
    order = sc.sort_values(["_best", "_pick"], ascending=[False, True], kind="stable")
    return order.drop_duplicates(CHOICE, keep="first").drop(columns=["_pick", "_best"]) \
        .sort_values(CHOICE).reset_index(drop=True)


def without_stale(scores, current: Collection[tuple] | None):
    """`scores` without the rows of an explanation text described since (`current` as in
    `chosen`; None keeps every row; a row of an explanation that explanations/ does not hold
    stays). A control row belongs to its source neuron's text."""
    if current is None or scores.empty:
        return scores
    sc = filled(scores)
    source = sc["source_neuron"] if "source_neuron" in sc else sc["neuron"]
    owner = sc["neuron"].where(sc["control"] == OWN, source)
    now = {k[:-1]: k[-1] for k in current}  # a candidate's row -> its current text's hash
    # kept: no hash ('': written before provenance), no such explanation, or its current text
    keep = [not h or now.get((m, int(la), int(n), sd, e, int(c)), h) == h
            for m, la, n, sd, e, c, h in zip(sc["model"], sc["layer"], owner, sc["side"],
                                             sc["explainer"], sc["candidate"],
                                             sc["explanation_hash"])]
    return scores[keep]


def pairs(scores, current: Collection[tuple] | None = None):
    """Each neuron side's own chosen valid score beside the shuffled control scored on it,
    matched on `CHOICE` (so both come from one simulator prompt): CHOICE + score_own,
    status_own, score_ctl, status_ctl, source_neuron."""
    ctl = select(scores, control=SHUFFLED, split="valid")
    own = chosen(scores, "valid", stand_in=True, current=current)
    cols = CHOICE + ["score_own", "status_own", "score_ctl", "status_ctl", "source_neuron"]
    if ctl.empty or own.empty:
        import pandas as pd

        return pd.DataFrame(columns=cols)
    ctl = ctl.drop_duplicates(CHOICE, keep="last")
    merged = ctl[CHOICE + ["score", "status", "source_neuron"]].merge(
        own[CHOICE + ["score", "status"]], on=CHOICE, how="inner", suffixes=("_ctl", "_own"))
    return merged[cols]


def judged(scores, key: list[str] = JUDGED, methods: tuple[str, ...] = JUDGE_METHODS):
    """One judge row of `methods` per `key` group (`JUDGED`, or finer): the candidate marked
    best (the one its simulator chose), else the lowest-numbered one."""
    sc = filled(scores)
    rows = sc[sc["method"].isin(methods)]
    if rows.empty:
        return rows.reset_index(drop=True)
    order = rows.sort_values(["best", "candidate"], ascending=[False, True], kind="stable")
    return order.drop_duplicates(key, keep="first").sort_values(key).reset_index(drop=True)


def judged_by(scores, method: str, judge: str, prompt_hash: str):
    """The rows `judge` wrote by `method` under its prompt hash (what a rerun need not redo)."""
    return select(scores, method=method, control=None, simulator=judge,
                  prompt_hash=prompt_hash)


def simulators(scores) -> list[str]:
    """Simulators with own simulation scores, in name order."""
    return sorted(set(select(scores)["simulator"]))


def following(scores, judge: str | None) -> str | None:
    """The simulator whose chosen candidate a judge marks `best`: the judge's own model where
    it simulated (`explain run` judges with its simulator), else the LLM simulator (the first by
    name if several), never the lexical baseline; None without one."""
    from explainer.config import BASELINE_SIMULATOR

    have = simulators(scores)
    if judge in have:
        return judge
    llms = [s for s in have if s != BASELINE_SIMULATOR]
    return llms[0] if llms else None


def judge_targets(scores, simulator: str) -> dict[tuple[int, int, str, str], int]:
    """(layer, neuron, side, explainer) -> the candidate `simulator` chose on the valid split
    (its newest choice where it scored under several prompts or modes)."""
    best = select(scores, simulator=simulator, split="valid")
    best = best[best["best"].astype(bool)]
    return {(int(la), int(n), sd, e): int(c) for la, n, sd, e, c in zip(
        best["layer"], best["neuron"], best["side"], best["explainer"], best["candidate"])}


def cascade_levels(scores, labels: list[str], simulator: str, prompt_hash: str,
                   split: str = "valid") -> list:
    """Per cascade level (its explainer label), the chosen rows on `split` under the cascade's
    simulator and prompt."""
    return [chosen(scores, split, simulator=simulator, prompt_hash=prompt_hash,
                   explainer=label) for label in labels]


def simulations(sims, *, simulator: str, mode: str | None, prompt_hash: str,
                control: str = OWN, split: str | None = None, explainer: str | None = None):
    """Stored `ok` predictions of `simulator` in `mode`'s family (None: any) under
    `prompt_hash`, of own explanations or a control."""
    sm = filled(sims)
    keep = (sm["simulator"] == simulator) & (sm["status"] == "ok") \
        & (sm["control"] == control) & (sm["sim_prompt_hash"] == prompt_hash)
    if mode is not None:
        keep &= sm["mode"].map(mode_family) == mode_family(mode)
    if split is not None:
        keep &= sm["split"] == split
    if explainer is not None:
        keep &= sm["explainer"] == explainer
    return sm[keep]


def current_explanations(run: Path, model: str | None = None,
                         layer: int | None = None) -> set[tuple] | None:
    """(model, layer, neuron, side, explainer, candidate, explanation_hash) of each candidate's
    current text (its newest `ok` row); None when the run holds no explanations."""
    from explainer.run.parquet import read

    ex = read(run, "explanations", model=model, layer=layer,
              columns=["neuron", "side", "explainer", "candidate", "explanation", "status"])
    if ex.empty:
        return None
    now: dict[tuple, str] = {}
    for m, la, n, sd, e, c, text, st in zip(ex["model"], ex["layer"], ex["neuron"], ex["side"],
                                            ex["explainer"], ex["candidate"], ex["explanation"],
                                            ex["status"]):
        if st == "ok":  # newest row last: a re-described candidate's text wins
            now[(m, int(la), int(n), sd, e, int(c))] = text
    return {(*k, text_hash(t)) for k, t in now.items()}


def read_scores(run: Path, model: str | None = None, layer: int | None = None,
                neurons: Collection[int] | None = None):
    """The scores table (a model, a layer, some neurons of it) as a DataFrame."""
    if neurons is not None and model is not None and layer is not None:
        from explainer.run.select import read_neurons

        return read_neurons(run, "scores", model, layer, neurons)
    from explainer.run.parquet import read

    return read(run, "scores", model=model, layer=layer)
