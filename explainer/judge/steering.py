"""`explain judge --method steering`: does the neuron write what its explanation says?

For an explanation of what a neuron *writes* (`--evidence outputs`, `baseline-logits`), the
check needs no LLM: add k x the neuron's mean top activation (its mean max over its top
excerpts, in the side's units; k = `--steer-k`, default 1: the neuron held at its typical top
firing at every position, docs/reference.md) to its activation at every position of a fixed set
of the run's random excerpts, and measure how much the next-token log-probability of each token
the explanation names rises:

    gain(S) = mean over excerpts, positions (BOS excluded) and ids in S of
              log p_steered(id) - log p(id)

The named tokens S are the explanation's quoted words, tokenised by the subject (the first token
of each word with and without a leading space, `reading.named_ids`). The score is gain(own S)
minus gain(S of another neuron's explanation of the same layer, side and explainer) on the same
steered passes, the other picked by the shuffled control's seeded derangement among the
explanations that name tokens. An explanation that names no token is `undefined` (no score,
never 0); one whose group holds no other explanation naming tokens keeps its `gain` with status
`no_control`. Rows: `method = steering`, `simulator = subject` (the subject model judges),
`split = random`, `gain` and `steer_k` stored; control shuffled rows hold the source's gain.

No LLM, deterministic: an explanation already scored under the same settings is skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from explainer import ExplainError
from explainer import config
from explainer import run as rundir
from explainer.judge import reading, texts
from explainer.judge.generation import SHUFFLED, Expl, derangement, explanations
from explainer.judge.sampling import rng_for, side_of
from explainer.run.query import text_hash

METHOD = "steering"
JUDGE = "subject"  # the simulator column: no LLM, the subject model itself
SPLIT = "random"
MODE = "forward"
N_EXCERPTS = 16  # random excerpts steered per layer (the same for every neuron of the layer)
UNDEFINED = "undefined"
DONE = {"ok", UNDEFINED, "no_control"}


def settings(cfg: config.JudgeConfig) -> str:
    import hashlib

    text = f"k={cfg.steer_k};n={N_EXCERPTS};seed={cfg.seed};named=first-token-both-forms"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run(cfg: config.JudgeConfig) -> Path:
    """Steer each selected explanation's neuron and score the named tokens' gain; returns
    scores/."""
    if not cfg.steer_k > 0:
        raise ExplainError(f"--steer-k {cfg.steer_k}: must be above 0")
    engine = getattr(cfg, "engine", None)
    if engine is not None and getattr(engine, "engine", "local") != "local":
        raise ExplainError(f"--engine {engine.engine}: --method steering runs in this process "
                           "only (the subject model is loaded once, here)")
    run_dir = Path(cfg.run)
    model, layers = rundir.explained_layers(run_dir, cfg.model, cfg.layers)
    phash = settings(cfg)
    todo: dict[int, list[Expl]] = {}
    n_all = 0
    for layer in layers:
        ex = explanations(run_dir, model, layer, cfg.explainer, cfg.neurons)
        n_all += len(ex)
        if ex and not _done(run_dir, model, layer, ex, phash):
            todo[layer] = ex
    if not n_all:
        raise ExplainError(f"--neurons {cfg.neurons}: no explained neuron among them in layer(s) "
                           f"{', '.join(map(str, layers))}; run `explain describe` for them first")
    if not todo:
        print("judge: every selected explanation already scored by steering, skipped",
              file=sys.stderr)
        return run_dir / "scores"
    subject = reading.load_subject(run_dir, model, cfg.device)
    from explainer import progress

    label = "judge steering"
    with progress.bar(label) as bar:  # one steered pass per explanation naming a token
        task = bar.add_task(label, total=sum(len(ex) for ex in todo.values()))
        for layer, ex in sorted(todo.items()):
            rows = layer_rows(run_dir, model, subject, layer, ex, cfg, phash,
                              lambda: bar.advance(task))
            rundir.write_rows(run_dir, "scores", rows, prefix="judge")
            rundir.compact(run_dir, "scores", model, layer)
    return run_dir / "scores"


def _done(run_dir: Path, model: str, layer: int, ex: list[Expl], phash: str) -> bool:
    sc = rundir.query.select(rundir.query.read_scores(run_dir, model, layer), method=METHOD,
                             prompt_hash=phash)
    have = {(int(n), sd, e, int(c), h) for n, sd, e, c, h, st in zip(
        sc["neuron"], sc["side"], sc["explainer"], sc["candidate"], sc["explanation_hash"],
        sc["status"]) if st in DONE}
    return all((e.neuron, e.side, e.explainer, e.candidate, text_hash(e.explanation)) in have
               for e in ex)


def excerpt_ids(run_dir: Path, model: str, layer: int, seed: int) -> list[int]:
    """N_EXCERPTS of the layer's random excerpts, a seeded pick (the same for every neuron)."""
    rec = rundir.read(run_dir, "records", model=model, layer=layer,
                      columns=["excerpt_id", "kind"])
    ids = sorted(set(int(e) for e in rec.loc[rec["kind"] == "random", "excerpt_id"]))
    rng = rng_for(seed, model, layer, METHOD)
    return sorted(rng.sample(ids, min(N_EXCERPTS, len(ids))))


def mean_top(run_dir: Path, model: str, layer: int, neurons: set[int]) -> dict:
    """(neuron, side) -> the mean over its top excerpts (bottom ones, negated, for neg) of their
    max activation in the side's units."""
    rec = rundir.read_neurons(run_dir, "records", model, layer, neurons,
                              columns=["neuron", "kind", "activations"])
    out: dict[tuple, list] = {}
    for side in ("pos", "neg"):
        kind, _, sign = side_of(side)
        for n, a in zip(rec.loc[rec["kind"] == kind, "neuron"],
                        rec.loc[rec["kind"] == kind, "activations"]):
            out.setdefault((int(n), side), []).append(max(sign * float(v) for v in a))
    return {k: sum(v) / len(v) for k, v in out.items()}


def gains(base, steered, cols: list[int]) -> float:
    """Mean over excerpts, positions and the named ids (columns `cols` of the kept ids) of the
    steered minus the plain log-probability."""
    return float((steered[..., cols] - base[..., cols]).mean())


def layer_rows(run_dir: Path, model: str, subject, layer: int, ex: list[Expl],
               cfg: config.JudgeConfig, phash: str, done=lambda: None) -> list:
    """The score rows of one layer's explanations (`done()` after each)."""
    import torch

    eids = excerpt_ids(run_dir, model, layer, cfg.seed)
    if not eids:
        raise ExplainError(f"--layer {layer}: the run kept no random excerpt there to steer on")
    exc = rundir.read(run_dir, "excerpts", model=model, columns=["excerpt_id", "token_ids"])
    by_id = {int(e): list(t) for e, t in zip(exc["excerpt_id"], exc["token_ids"])}
    tokens = torch.tensor([by_id[e] for e in eids])
    ids = {e.key: reading.named_ids(subject, texts.quoted(e.explanation)) for e in ex}
    keep = sorted({i for v in ids.values() for i in v})  # only these columns are kept
    named = {k: [keep.index(i) for i in v] for k, v in ids.items()}
    base = reading.log_probs(subject, tokens, keep)  # (B, ctx, len(keep))
    tops = mean_top(run_dir, model, layer, {e.neuron for e in ex})
    rows = []
    groups: dict[tuple, list[Expl]] = {}
    for e in ex:
        groups.setdefault((e.side, e.explainer), []).append(e)
    for (side, explainer), members in sorted(groups.items()):
        naming = {e.neuron: e for e in members if e.best and named[e.key]}
        source = derangement(naming, f"{cfg.seed}/{model}/{layer}/{side}/{explainer}")
        for e in members:
            rows += _rows(e, model, subject, base, tokens, keep, tops, named, naming, source,
                          cfg, phash)
            done()
    return rows


def _rows(e: Expl, model: str, subject, base, tokens, keep: list[int], tops: dict,
          named: dict, naming: dict, source: dict, cfg: config.JudgeConfig, phash: str) -> list:
    _, _, sign = side_of(e.side)
    top = tops.get((e.neuron, e.side))
    common = dict(model=model, layer=e.layer, neuron=e.neuron, explainer=e.explainer,
                  candidate=e.candidate, simulator=JUDGE, split=SPLIT, explanation=e.explanation,
                  score_top=None, score_random=None, rsquared=None, abs_dev_explained=None,
                  n_tokens=int(tokens.numel()), side=e.side, mode=MODE, method=METHOD,
                  sim_prompt_hash=phash, explanation_hash=text_hash(e.explanation),
                  steer_k=cfg.steer_k)
    if not named[e.key]:
        return [rundir.ScoreRow(**common, score=None, best=e.best, status=UNDEFINED,
                                error="the explanation names no token (no quoted word)")]
    if top is None or not top > 0:
        return [rundir.ScoreRow(**common, score=None, best=e.best, status="failed",
                                error=f"no positive top activation recorded on side {e.side}")]
    steered = reading.log_probs(subject, tokens, keep, e.layer, e.neuron,
                                sign * cfg.steer_k * top)
    own = gains(base, steered, named[e.key])
    src = naming.get(source.get(e.neuron, -1))
    if src is None:
        return [rundir.ScoreRow(**common, score=None, best=e.best, status="no_control",
                                error="no other explanation of this layer, side and explainer "
                                      "names a token", gain=own)]
    other = gains(base, steered, named[src.key])
    rows = [rundir.ScoreRow(**common, score=own - other, best=e.best, status="ok", error=None,
                            source_neuron=src.neuron, gain=own)]
    if e.best:
        rows.append(rundir.ScoreRow(**{**common, "explanation": src.explanation,
                                       "explanation_hash": text_hash(src.explanation)},
                                    score=other, best=False, status="ok", error=None,
                                    control=SHUFFLED, source_neuron=src.neuron, gain=other))
    return rows
