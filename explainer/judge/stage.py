"""Stage `judge`: a judge LLM, holding only the explanation, tells activating excerpts apart.

* detection: which of these excerpts contain what the explanation names? Positives are held-out
  activating excerpts, negatives the neuron's random excerpts with no activating token.
* fuzzing: are the highlighted tokens of this excerpt the ones the explanation names? Each
  positive is shown with its activating tokens highlighted, and again as a decoy with as many
  other tokens highlighted.

Reads `explanations/`, `records/`, `excerpts/` (and `scores/` for resuming and for the candidate
simulation chose); writes one `judgments/` row per (explanation, excerpt item) and one `scores/`
row per explanation (`method` = detection | fuzzing, `split` = heldout, `score` = balanced
accuracy). Every explanation of a neuron-side is judged on the same prompts (seeded), so
explainers are compared on equal terms. Resumable: an explanation already scored with the same
judge, prompts, settings and explanation text is skipped; a rerun re-sends only the prompts whose
answer could not be read (readable answers are cached in the run's LLM ledger).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError
from explainer import config
from explainer import run as rundir
from explainer.run.specs import parse_spec
from explainer.judge import prompt as judge_prompt
from explainer.judge import sampling as judge_sampling
from explainer.score import classify

DONE = {"ok", classify.ONE_CLASS, classify.NO_ITEMS}  # statuses that a rerun does not redo
# Scorers beside the LLM judges that run the subject model (judge/generation.py, steering.py).
SUBJECT_METHODS = ("generation", "steering")
METHODS = judge_prompt.METHODS + SUBJECT_METHODS


@dataclass(frozen=True)
class _Target:
    """One neuron-side's questions, shared by every explanation of it."""

    threshold: float
    batches: tuple[tuple[judge_sampling.Item, ...], ...]
    why: str | None  # why nothing is asked (no positives, one class), or None
    status: str = "ok"  # no_items | one_class when nothing is asked
    sampling: str = "explain"  # the preset that drew the items
    params: str = ""  # every parameter of the preset and where the positives came from (JSON)
    n_bins: int = judge_sampling.N_BINS  # activation bins of the positives (recall per bin)


@dataclass(frozen=True)
class _Job:
    layer: int
    neuron: int
    side: str
    explainer: str
    candidate: int
    explanation: str
    best: bool  # the candidate simulation chose (else the lowest-numbered one)
    target: _Target


text_hash = rundir.query.text_hash  # 12 hex of an explanation's text (explanation_hash)


def run(cfg: config.JudgeConfig) -> Path:
    """Judge the selected explanations with one method; returns the run's judgments/ folder."""
    if cfg.method in SUBJECT_METHODS:
        from explainer.judge import generation, steering

        return (generation if cfg.method == "generation" else steering).run(cfg)
    _check(cfg)
    from explainer import llm

    run_dir = Path(cfg.run)
    endpoint = llm.resolve(cfg.judge, cfg.llm.base_url)
    model, layers = rundir.explained_layers(run_dir, cfg.model, cfg.layers)
    units = _units(run_dir, model, layers, cfg) if cfg.engine.engine == "ray" else []
    if units:  # this same function on blocks of neurons, on Ray actors
        from explainer import engine

        engine.run_stage(run, cfg, units, "judge")
        return run_dir / "judgments"
    phash = judge_prompt.prompt_hash(cfg.method, _settings(cfg))
    jobs: list[_Job] = []
    n_explained = 0
    for layer in layers:
        n, todo = _jobs(run_dir, model, layer, cfg, endpoint.model, phash)
        n_explained += n
        jobs += todo
    if not n_explained:
        raise ExplainError(f"--neurons {cfg.neurons}: no explained neuron among them in layer(s) "
                           f"{', '.join(map(str, layers))}; run `explain describe` for them first")
    if jobs:
        from explainer.judge import ask

        asyncio.run(ask.run(cfg, endpoint, model, jobs, phash))
    return run_dir / "judgments"


def _units(run_dir: Path, model: str, layers: list[int], cfg: config.JudgeConfig) -> list:
    """(layer, explained neurons) pairs: what the Ray engine cuts into blocks."""
    d_mlp = int((rundir.model_meta(run_dir, model) or {}).get("d_mlp") or 1 << 30)
    among = None if str(cfg.neurons).strip() == "all" else \
        parse_spec(cfg.neurons, d_mlp, "neuron", f"{model} layer")
    units = [(la, rundir.explained_neurons(run_dir, model, la, cfg.explainer, among))
             for la in layers]
    return [(la, ns) for la, ns in units if ns]


def _check(cfg: config.JudgeConfig) -> None:
    from explainer import engine

    engine.check(cfg.engine)  # Ray installed and its cluster answering, before any file
    if cfg.method not in judge_prompt.METHODS:
        raise ExplainError(f"--method {cfg.method!r}: expected one of {', '.join(METHODS)}")
    if cfg.sampling not in judge_sampling.PRESETS:
        raise ExplainError(f"--sampling {cfg.sampling!r}: expected one of "
                           f"{', '.join(judge_sampling.PRESETS)}")
    pre = preset_of(cfg)
    if pre.excerpts_per_prompt < 1:
        raise ExplainError(f"--excerpts-per-prompt {pre.excerpts_per_prompt}: must be 1 or more")
    if pre.n_positive < 1 or pre.n_negative < 0:
        raise ExplainError(f"--n-positive {pre.n_positive} --n-negative {pre.n_negative}: need "
                           "at least one positive and no negative count below 0")
    if not 0 < pre.fraction <= 1:
        raise ExplainError(f"--fraction {pre.fraction}: must be in (0, 1]")


def prompt_hash_of(cfg: config.JudgeConfig) -> str:
    """The prompt hash that cfg's score rows carry (`sim_prompt_hash`): files and settings."""
    return judge_prompt.prompt_hash(cfg.method, _settings(cfg))


def preset_of(cfg: config.JudgeConfig) -> judge_sampling.Preset:
    """The sampling preset named by cfg, with the counts and fraction it overrides."""
    return judge_sampling.preset(cfg.sampling, n_positive=cfg.n_positive,
                                 n_negative=cfg.n_negative, fraction=cfg.fraction,
                                 excerpts_per_prompt=cfg.excerpts_per_prompt)


def _settings(cfg: config.JudgeConfig) -> str:
    """What shapes the prompts besides the prompt files (a change re-judges). The explain
    preset keeps the string it had before presets, so its rows and cached answers still match."""
    pre = preset_of(cfg)
    base = (f"k={pre.excerpts_per_prompt};pos={pre.n_positive};neg={pre.n_negative};"
            f"f={pre.fraction};seed={cfg.seed};bins={judge_sampling.N_BINS}")
    return base if pre.name == "explain" else f"{base};{judge_sampling.params(pre, '')}"


# --- what to judge -------------------------------------------------------------------------


def _explanations(run_dir: Path, model: str, layer: int, cfg: config.JudgeConfig):
    return rundir.selected_explanations(run_dir, model, layer, cfg.explainer, cfg.neurons)


def _jobs(run_dir: Path, model: str, layer: int, cfg: config.JudgeConfig, judge: str,
          phash: str) -> tuple[int, list[_Job]]:
    """(explanations selected, the jobs of those not judged yet) in one layer."""
    ex = _explanations(run_dir, model, layer, cfg)
    texts: dict[tuple, str] = {}
    for r in ex.itertuples(index=False):  # newest row last: a re-described candidate wins
        texts[(int(r.neuron), r.side, r.explainer, int(r.candidate))] = r.explanation
    sc = rundir.query.read_scores(run_dir, model, layer)
    mine = rundir.query.judged_by(sc, cfg.method, judge, phash)
    done = {(int(n), sd, e, int(c), h) for n, sd, e, c, h, st in zip(
        mine["neuron"], mine["side"], mine["explainer"], mine["candidate"],
        mine["explanation_hash"], mine["status"]) if st in DONE}
    simulator = rundir.query.following(sc, judge)
    chosen = {} if simulator is None else {
        (n, sd, e): c for (_, n, sd, e), c in rundir.query.judge_targets(sc, simulator).items()}
    todo = {k: t for k, t in texts.items() if (*k, text_hash(t)) not in done}
    if len(todo) < len(texts):
        print(f"judge: layer {layer}: {len(texts) - len(todo)} explanations already judged "
              f"({cfg.method}, {judge}), skipped", file=sys.stderr)
    targets = _targets(run_dir, model, layer, {(n, s) for n, s, _, _ in todo}, cfg)
    lowest: dict[tuple, int] = {}
    for n, s, e, c in texts:
        lowest[(n, s, e)] = min(c, lowest.get((n, s, e), c))
    return len(texts), [_Job(layer, n, s, e, c, t, c == chosen.get((n, s, e), lowest[(n, s, e)]),
                             targets[(n, s)]) for (n, s, e, c), t in sorted(todo.items())]


def _targets(run_dir: Path, model: str, layer: int, wanted: set[tuple[int, str]],
             cfg: config.JudgeConfig) -> dict[tuple[int, str], _Target]:
    """Per (neuron, side), its threshold and the prompts' items (see sampling)."""
    if not wanted:
        return {}
    rec = rundir.read(run_dir, "records", model=model, layer=layer,
                     columns=["neuron", "excerpt_id", "kind", "rank", "split", "activations"])
    rec = rec[rec["neuron"].isin({n for n, _ in wanted})]
    toks = rundir.read(run_dir, "excerpts", model=model, columns=["excerpt_id", "tokens"])
    ids = set(int(e) for e in rec["excerpt_id"])
    toks = {int(e): tuple(t) for e, t in zip(toks["excerpt_id"], toks["tokens"]) if int(e) in ids}
    by_neuron: dict[int, list] = {}
    for r in rec.itertuples(index=False):
        by_neuron.setdefault(int(r.neuron), []).append(r)
    out = {}
    # record's quantile bins (--quantile-bins), what the delphi preset spreads positives over
    bins = int(((rundir.model_meta(run_dir, model) or {}).get("settings") or {})
               .get("quantile_bins") or 0)
    for neuron, side in wanted:
        out[(neuron, side)] = _target(by_neuron.get(neuron, []), toks, side, cfg,
                                      (cfg.seed, model, layer, neuron, side, cfg.method), bins)
    return out


def _target(rows: list, toks: dict, side: str, cfg: config.JudgeConfig, seed: tuple,
            recorded_bins: int = 0) -> _Target:
    top_kind, q_kind, sign = judge_sampling.side_of(side)
    kinds: dict[str, list[judge_sampling.Excerpt]] = {}
    for r in rows:
        if int(r.excerpt_id) not in toks:
            raise ExplainError(f"--run {cfg.run}: records name excerpt {r.excerpt_id}, which "
                               "excerpts/ lacks; re-record the run")
        kinds.setdefault(r.kind, []).append(judge_sampling.Excerpt(
            int(r.excerpt_id), r.kind, r.split, int(r.rank), toks[int(r.excerpt_id)],
            tuple(sign * float(a) for a in r.activations)))
    tops = kinds.get(top_kind, [])
    pre = preset_of(cfg)
    if pre.name == "delphi":
        return _delphi_target(kinds, top_kind, q_kind, pre, cfg, seed, recorded_bins)
    tau = judge_sampling.threshold(tops, pre.fraction)
    seen = {e.excerpt_id for e in tops if e.split == "explain"}
    pos = judge_sampling.positives(tops, kinds.get(q_kind, []) if q_kind else [], tau,
                                   pre.n_positive, seen)
    rng = judge_sampling.rng_for(*seed)
    if cfg.method == "detection":
        items = pos + judge_sampling.negatives(kinds.get("random", []), tau, pre.n_negative,
                                               seen | {i.excerpt.excerpt_id for i in pos})
    else:
        items = judge_sampling.fuzz_items(pos, tau, rng)
    said = {"sampling": pre.name, "params": judge_sampling.params(
        pre, "held-out-tops" + ("+recorded-quantiles" if kinds.get(q_kind or "") else ""))}
    if not pos:
        why = f"no held-out {top_kind} excerpt reaches the threshold ({len(tops)} recorded)"
        return _Target(tau, (), why, classify.NO_ITEMS, **said)
    if all(i.label for i in items):
        why = ("no random excerpt stays below the threshold" if cfg.method == "detection"
               else "every token of the positives activates: no decoy possible")
        return _Target(tau, (), why, classify.ONE_CLASS, **said)
    batches = judge_sampling.batches(items, pre.excerpts_per_prompt, rng)
    return _Target(tau, tuple(tuple(b) for b in batches), None, **said)


def _delphi_target(kinds: dict, top_kind: str, q_kind: str | None, pre: judge_sampling.Preset,
                   cfg: config.JudgeConfig, seed: tuple, recorded_bins: int) -> _Target:
    """The delphi preset's questions (sampling.py: quantile bins, the firing floor, decoys
    from non-activating excerpts)."""
    tops, randoms = kinds.get(top_kind, []), kinds.get("random", [])
    floor = judge_sampling.firing_floor(randoms)
    seen = {e.excerpt_id for e in tops if e.split == "explain"}
    rng = judge_sampling.rng_for(*seed)
    pos, source = judge_sampling.quantile_positives(
        tops, kinds.get(q_kind, []) if q_kind else [], floor, pre, recorded_bins, rng, seen)
    neg = judge_sampling.floor_negatives(randoms, floor, pre.n_negative,
                                         seen | {i.excerpt.excerpt_id for i in pos})
    items = pos + neg if cfg.method == "detection" else \
        judge_sampling.delphi_fuzz_items(pos, neg, pre.fraction, rng)
    said = {"sampling": pre.name, "params": judge_sampling.params(pre, source),
            "n_bins": recorded_bins if source == "recorded-quantiles" else pre.n_bins}
    if not pos:
        why = (f"no held-out {top_kind} excerpt rises above the firing floor {floor:.3g} "
               f"({len(tops)} recorded)")
        return _Target(floor, (), why, classify.NO_ITEMS, **said)
    if all(i.label for i in items):
        why = f"no random excerpt stays at or under the firing floor {floor:.3g}"
        return _Target(floor, (), why, classify.ONE_CLASS, **said)
    batches = judge_sampling.batches(items, pre.excerpts_per_prompt, rng)
    return _Target(floor, tuple(tuple(b) for b in batches), None, **said)
