"""`explain describe --cascade ... --accept-by detection|fuzzing|simulation`: which scorer decides
that a level's explanation is good enough (FrugalGPT: the scorer that decides must be cheap).

A composer beside cascade.py. With a judge (detection or fuzzing), a level's explanations are
judged by the run's simulator LLM on held-out excerpts and kept at balanced accuracy >= --accept;
no simulation is spent on a level's explanation until it is the one a neuron keeps. Then, as
with simulation, the kept explanation is simulated and scored on valid and test, so the report's
headline keeps its meaning. The ledger names the calls of each part per level:
describe:LN, judge-<method>:LN (accepting), simulate:LN (accepting by simulation, valid split),
score:LN (the kept explanation's final scoring); `report --cost` sums them per part.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from explainer import ExplainError
from explainer import config as C
from explainer import run as rundir

ACCEPT_BY = ("detection", "fuzzing", "simulation")
# what each rule's --accept is measured on, and its range
SCALES = {"simulation": ("correlation", -1.0, 1.0),
          "detection": ("balanced accuracy", 0.0, 1.0),
          "fuzzing": ("balanced accuracy", 0.0, 1.0)}
# a judge's score rows that count (as the report counts them); others leave the neuron pending
COUNTED = ("ok", "partial")


def accept_by(cfg: C.CascadeConfig) -> str:
    """The rule in force: the one named, else the cheapest judge the simulator can serve.

    Detection is the cheapest (measured on the demo: 0.18 of a simulation's prompt tokens per
    neuron, fuzzing 0.25); a judge needs an LLM, so with the baseline simulator, and with
    --revise (which reads the simulation's per-token predictions), simulation decides."""
    if cfg.accept_by is not None:
        return cfg.accept_by
    if cfg.revise or cfg.simulate.simulator == C.BASELINE_SIMULATOR:
        return "simulation"
    return "detection"


def check(cfg: C.CascadeConfig) -> None:
    """Refuse a rule, threshold or combination that cannot work, naming the scale."""
    if cfg.accept_by is not None and cfg.accept_by not in ACCEPT_BY:
        raise ExplainError(f"--accept-by {cfg.accept_by!r}: expected one of "
                           f"{', '.join(ACCEPT_BY)}")
    by = accept_by(cfg)
    name, lo, hi = SCALES[by]
    if cfg.accept is not None and not (math.isfinite(cfg.accept) and lo <= cfg.accept <= hi):
        raise ExplainError(f"--accept {cfg.accept}: --accept-by {by} accepts on {name}, "
                           f"between {lo:g} and {hi:g}")
    if by != "simulation" and cfg.simulate.simulator == C.BASELINE_SIMULATOR:
        raise ExplainError(f"--accept-by {by}: the judge is the simulator's LLM, and "
                           f"{C.BASELINE_SIMULATOR} is none; use --accept-by simulation")
    if by != "simulation" and cfg.revise:
        raise ExplainError(f"--revise {cfg.revise}: revision reads the simulation's per-token "
                           f"predictions; use --accept-by simulation, or drop --revise")


def judge_config(cfg: C.CascadeConfig, level: int, label: str, model: str, layer: int,
                 neurons: str) -> C.JudgeConfig:
    """The judge's settings for one level and layer: the simulator's LLM and endpoint, the
    delphi preset, its calls ledgered as judge-<method>:L<level>."""
    s = cfg.simulate
    return C.JudgeConfig(run=cfg.describe.run, method=accept_by(cfg), layers=str(layer),
                         neurons=neurons, model=model, explainer=label, judge=s.simulator,
                         llm=s.llm, stage=f"judge-{accept_by(cfg)}:L{level}")


def judge_level(cfg: C.CascadeConfig, level: int, label: str, model: str,
                keys: set) -> dict:
    """Judge a level's explanations of `keys` ((layer, side, neuron)); returns each key's
    balanced accuracy (None where the judge could not score it: it stays pending)."""
    from explainer import judge

    out: dict = {}
    for layer in sorted({k[0] for k in keys}):
        neurons = ",".join(str(n) for n in sorted({k[2] for k in keys if k[0] == layer}))
        jcfg = judge_config(cfg, level, label, model, layer, neurons)
        judge.run(jcfg)
        out.update({k: v for k, v in judged(Path(cfg.describe.run), jcfg, layer).items()
                    if k in keys})
    return out


def judged(run_dir: Path, jcfg: C.JudgeConfig, layer: int) -> dict:
    """{(layer, side, neuron): balanced accuracy} of jcfg's judge rows in one layer (the chosen
    candidate's, written with jcfg's prompts and preset)."""
    from explainer import llm as L
    from explainer.judge.stage import prompt_hash_of

    judge_name = L.resolve(jcfg.judge, jcfg.llm.base_url).model
    sc = rundir.query.judged_by(rundir.query.read_scores(run_dir, jcfg.model, layer),
                                jcfg.method, judge_name, prompt_hash_of(jcfg))
    if sc.empty:
        return {}
    # the chosen candidate's row (run.query.judged: best, else the lowest candidate)
    sc = rundir.query.judged(sc[(sc["explainer"] == jcfg.explainer)
                                & (sc["sampling"] == jcfg.sampling)],
                             rundir.query.JUDGED + ["sampling"], (jcfg.method,))
    return {(layer, side, int(n)): (float(ba) if st in COUNTED and ba == ba else None)
            for side, n, ba, st in zip(sc["side"], sc["neuron"], sc["balanced_accuracy"],
                                       sc["status"])}


def entry(cfg: C.CascadeConfig, model: str) -> dict:
    """What run.json's cascade entry adds: the rule, its scale, and the judge's settings."""
    by = accept_by(cfg)
    out = {"accept_by": by, "accept_scale": SCALES[by][0]}
    if by != "simulation":
        from explainer import llm as L
        from explainer.judge.stage import prompt_hash_of

        jcfg = judge_config(cfg, 1, "", model, 0, "all")
        out.update({"judge": L.resolve(jcfg.judge, jcfg.llm.base_url).model,
                    "judge_prompt_hash": prompt_hash_of(jcfg), "sampling": jcfg.sampling})
    return out


def final_stage(level: int) -> str:
    """The ledger's name for the kept explanation's final scoring at a level."""
    return f"score:L{level}"


def simulate_config(cfg: C.CascadeConfig, level: int, test: bool) -> C.SimulateConfig:
    """Where a level's simulation calls go in the ledger: the valid split of accepting by
    simulation is accepting (simulate:LN); the rest is the final scoring (score:LN)."""
    accepting = not test and accept_by(cfg) == "simulation"
    return replace(cfg.simulate, stage=f"simulate:L{level}" if accepting else final_stage(level))
