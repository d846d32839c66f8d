"""`explain describe --cascade E1,E2,... --accept T` and `--revise N`: spend a strong explainer
only where a cheap one fails, with the method's own scorer deciding (FrugalGPT's cascade, with
the simulation score as the judge), and let an explainer correct itself after seeing where its
simulation went wrong.

A composer, like pipeline.py: it runs the describe and simulate stages level by level (they
still meet only at the run directory) and asks the explainer for revisions (describe/revise.py). Per
level: explain the neurons still pending, simulate and score them on the valid split (test split
deferred), revise those below T up to N rounds, keep those at T or above, pass the rest on.
Finally the test split is simulated for the one explanation each neuron keeps (the first one
accepted, else the best on the valid split: `score.cascade.choose_level`), so choosing never
inflates the number reported. Every level's explanations stay in `explanations/` with their
`level`; the ledger names each call's level (stages describe:L1, simulate:L1, revise:L1, ...).
Resumable: each stage skips its finished work, and the revision requests are cached.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from explainer import ExplainError
from explainer import config
from explainer import run as rundir
from explainer.run.specs import parse_spec

Key = tuple[int, str, int]  # (layer, side, neuron)


@dataclass(frozen=True)
class Level:
    """One rung of the cascade."""

    level: int  # 1, 2, ...
    explainer: str  # the explainer's name at its endpoint
    label: str  # the name its explanations are stored under (explainer_label)


def run(cfg: config.CascadeConfig) -> str:
    """Run every level on the selected neurons; returns the per-level summary table."""
    from explainer import describe
    from explainer.run.evidence import explainer_label
    from explainer.simulate import simulators

    from explainer import cascade_accept

    _check(cfg)
    by = cascade_accept.accept_by(cfg)
    d, s = cfg.describe, cfg.simulate
    run_dir = Path(d.run)
    levels = [Level(i + 1, e, explainer_label(e, d.evidence))
              for i, e in enumerate(cfg.explainers)]
    endpoint = simulators.endpoint_of(s.simulator, s.llm.base_url)
    phash = simulators.prompt_hash(s.simulator, s.excerpts_per_prompt, endpoint)
    valid: dict[Key, list[float | None]] = {}
    pending: set[Key] | None = None  # None: everything the user selected
    model = None
    for lv in levels:
        if pending is not None and not pending:
            break
        _say(f"cascade: level {lv.level} ({lv.explainer}) on "
             + ("the selected neurons" if pending is None else f"{len(pending)} neurons"))
        if pending is None:
            describe.run(replace(d, explainer=lv.explainer, level=lv.level))
            model, keys = _selection(d)
        else:
            keys = pending
            for (layer, side), neurons in _groups(keys).items():
                describe.run(replace(d, explainer=lv.explainer, level=lv.level, model=model,
                                     layers=str(layer), sides=side, neurons=_spec(neurons)))
        scores = _judge(cfg, lv, model, keys, phash) if by == "simulation" else \
            cascade_accept.judge_level(cfg, lv.level, lv.label, model, keys)
        for k in keys:
            valid.setdefault(k, [None] * len(levels))[lv.level - 1] = scores.get(k)
        pending = {k for k in keys if not _accepted(scores.get(k), cfg.accept)}
    chosen = _choose(valid, cfg.accept)
    for lv in levels:  # the held-back test split, only for the explanation each neuron keeps
        mine = {k for k, i in chosen.items() if i == lv.level - 1}
        if mine:
            _simulate(cfg, lv, model, mine, test=True)
    _remember(run_dir, model, cfg, levels, phash)
    return summary(run_dir, model, levels, valid, chosen, s.simulator, phash, cfg.accept,
                   scale="valid score" if by == "simulation" else f"{by} balanced accuracy")


def _check(cfg: config.CascadeConfig) -> None:
    names = cfg.explainers
    if not names or any(not n.strip() for n in names):
        raise ExplainError(f"--cascade {','.join(names)}: name one explainer or more, cheapest "
                           "first (E1,E2,...)")
    if len(set(names)) < len(names):
        raise ExplainError(f"--cascade {','.join(names)}: an explainer appears twice")
    from explainer import cascade_accept

    cascade_accept.check(cfg)  # --accept-by, and --accept on its scale
    if cfg.revise < 0:
        raise ExplainError(f"--revise {cfg.revise}: must be 0 or more")
    base = [n for n in names if n.startswith("baseline-")]
    if cfg.revise and base:
        raise ExplainError(f"--revise {cfg.revise}: {base[0]} uses no LLM and cannot revise; "
                           "drop --revise or the baseline")
    if cfg.simulate.simulator == config.BASELINE_SIMULATOR and cfg.revise:
        raise ExplainError("--revise: needs an LLM simulator's predictions, not baseline-lexical")


def _accepted(score: float | None, accept: float | None) -> bool:
    return accept is not None and score is not None and score >= accept


def _choose(valid: dict[Key, list[float | None]], accept: float | None) -> dict[Key, int]:
    from explainer.score.cascade import choose_level

    out = {}
    for k, scores in valid.items():
        i = choose_level(scores, accept)
        if i is not None:
            out[k] = i
    return out


def _judge(cfg: config.CascadeConfig, lv: Level, model: str, keys: set[Key],
           phash: str) -> dict[Key, float | None]:
    """Valid-split scores of a level's explanations, after up to N revision rounds."""
    from explainer.describe import revise

    _simulate(cfg, lv, model, keys, test=False)
    scores = valid_scores(cfg.describe.run, model, lv.label, cfg.simulate.simulator, phash, keys)
    for rnd in range(1, cfg.revise + 1):
        todo = {k for k in keys if k in scores and not _accepted(scores[k], cfg.accept)}
        if not todo:
            break
        _say(f"cascade: level {lv.level}, revision {rnd} of {len(todo)} neurons")
        if not revise.run(cfg, lv, model, todo, rnd, phash):
            break
        _simulate(cfg, lv, model, todo, test=False)
        scores.update(valid_scores(cfg.describe.run, model, lv.label, cfg.simulate.simulator,
                                   phash, todo))
    return scores


def _simulate(cfg: config.CascadeConfig, lv: Level, model: str, keys: set[Key], test: bool) -> None:
    from explainer import cascade_accept, simulate

    for layer, neurons in sorted(_by_layer(keys).items()):
        simulate.run(replace(cfg.simulate, run=cfg.describe.run, model=model, layers=str(layer),
                             neurons=_spec(neurons), explainer=lv.label,
                             stage=cascade_accept.simulate_config(cfg, lv.level, test).stage,
                             test=test,
                             explain_split=cfg.revise > 0))


def valid_scores(run_dir: Path, model: str, label: str, simulator: str, phash: str,
                 keys: set[Key], split: str = "valid") -> dict[Key, float | None]:
    """The counted score (a constant prediction is 0) of each key's best explanation by `label`
    on `split`; keys with no such score are left out."""
    from explainer.score.metrics import counted

    out: dict[Key, float | None] = {}
    for layer in sorted({k[0] for k in keys}):
        sc = rundir.query.chosen(rundir.query.read_scores(run_dir, model, layer), split,
                                 simulator=simulator, prompt_hash=phash, explainer=label)
        for side, n, score, status in zip(sc["side"], sc["neuron"], sc["score"], sc["status"]):
            k = (layer, side, int(n))
            if k in keys:
                value = None if score is None or math.isnan(score) else float(score)
                out[k] = counted(value, status)
    return out


def _selection(d: config.DescribeConfig) -> tuple[str, set[Key]]:
    """The (layer, side, neuron)s the user selected (describe has already validated them)."""
    models = rundir.read_run_json(d.run).get("models", {})
    model = rundir.model_key(d.model) if d.model else next(iter(models))
    entry = models[model]
    if str(d.layers).strip() == "all":
        layers = rundir.layers_in(d.run, "records", model)
    else:
        layers = parse_spec(d.layers, int(entry["n_layers"]), "layer", model)
    neurons = parse_spec(d.neurons, int(entry["d_mlp"]), "neuron", f"{model} layer")
    sides = list(entry.get("sides") or ["pos"])
    sides = sides if d.sides == "all" else [d.sides]
    return model, {(la, sd, n) for la in layers for sd in sides for n in neurons}


def _by_layer(keys: set[Key]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for layer, _, n in keys:
        out.setdefault(layer, set()).add(n)
    return out


def _groups(keys: set[Key]) -> dict[tuple[int, str], set[int]]:
    out: dict[tuple[int, str], set[int]] = {}
    for layer, side, n in keys:
        out.setdefault((layer, side), set()).add(n)
    return dict(sorted(out.items()))


def _spec(neurons) -> str:
    return ",".join(str(n) for n in sorted(neurons))


def _remember(run_dir: Path, model: str, cfg: config.CascadeConfig, levels: list[Level],
              phash: str) -> None:
    """run.json keeps the cascade's settings, so `report --cost` can redo its choice."""
    entry = {"levels": [lv.label for lv in levels], "accept": cfg.accept,
             "revise": cfg.revise, "simulator": cfg.simulate.simulator,
             "sim_prompt_hash": phash}
    from explainer import cascade_accept

    entry.update(cascade_accept.entry(cfg, model))  # the accept rule, its scale, the judge

    def change(meta: dict) -> None:
        meta.setdefault("cascades", {})[model] = entry

    rundir.update_run_json(run_dir, change)


def summary(run_dir: Path, model: str, levels: list[Level], valid: dict, chosen: dict,
            simulator: str, phash: str, accept: float | None, scale: str = "valid score") -> str:
    """Per level: neurons it explained, how many it kept, their mean valid score (on the
    accept rule's scale); then the kept explanations' mean test score."""
    lines = [f"cascade of {model}, accept at {scale} >= "
             f"{'-' if accept is None else f'{accept:g}'}, simulator {simulator}",
             f"{'level':>5}  {'explainer':<28} {'neurons':>7} {'kept':>5} {'mean valid':>10} "
             f"{'test (kept)':>11}"]
    tests: list[float] = []
    for lv in levels:
        handled = [k for k, v in valid.items() if v[lv.level - 1] is not None]
        kept = {k for k, i in chosen.items() if i == lv.level - 1}
        vals = [valid[k][lv.level - 1] for k in handled]
        test = valid_scores(run_dir, model, lv.label, simulator, phash, kept, split="test")
        tests += [t for t in test.values() if t is not None]
        mine = [t for t in test.values() if t is not None]
        lines.append(f"{lv.level:>5}  {lv.label:<28} {len(handled):>7} {len(kept):>5} "
                     f"{_mean(vals):>10} {_mean(mine):>11}")
    lines.append(f"chosen: {len(chosen)} neurons, mean test score {_mean(tests)} "
                 f"(`explain report --cost --run {run_dir}` for what each level cost)")
    return "\n".join(lines)


def _mean(values) -> str:
    """The mean of the defined values, formatted ('-' when none is defined)."""
    from explainer.score.metrics import mean_defined

    mean = mean_defined(list(values))[0]
    return "-" if mean is None else f"{mean:.3f}"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
