"""Stage `simulate`: a simulator LLM predicts each token's activation from the explanation alone.

Reads `explanations/`, `records/` and `excerpts/`; writes `simulations/` and `scores/`. Per neuron
and explanation candidate it simulates the first `n_top` valid-split top excerpts and `n_random`
valid-split random ones (plus the calibrate split with `--calibrate`), scores every candidate on
the valid split, marks the best, and simulates and scores the best one on the held-back test
split too, so that choosing among candidates does not inflate the reported number.

`--control shuffled` (control.py) then scores each chosen explanation on another neuron too.

Resumable: predictions already stored (same simulator, mode and explanation) are reused, and a
neuron whose scores are complete is skipped; failed excerpts are retried on the next run.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError
from explainer import progress
from explainer import run as rundir
from explainer import config
from explainer.run.specs import parse_spec
from explainer.score import rows as score_rows
from explainer.simulate.reuse import Done as _Done
from explainer.simulate import grouped
from explainer.simulate import prompt as simulate_prompt

log = logging.getLogger(__name__)

MODES = ("auto", "logprob", "chat")
FLUSH_NEURONS = 16  # neurons buffered before a write; a kill loses at most this much work


@dataclass(frozen=True)
class _Excerpt:
    excerpt_id: int
    kind: str  # the record's kind: top | bottom | random
    split: str  # calibrate | valid | test
    tokens: tuple[str, ...]  # the subject model's tokens
    real: tuple[float, ...]  # activations as the side sees them (negated for neg), per token

    @property
    def scored_as(self) -> str:
        """top or random: a side's own top excerpts (bottom ones for neg) score as 'top'."""
        return "random" if self.kind == "random" else "top"


@dataclass(frozen=True)
class _Job:
    """One neuron's explanation candidates by one explainer, and the excerpts to simulate."""

    layer: int
    neuron: int
    explainer: str
    candidates: tuple[tuple[int, str], ...]  # (candidate, explanation)
    excerpts: tuple[_Excerpt, ...]
    side: str = "pos"


def run(cfg: config.SimulateConfig) -> Path:
    """Simulate and score the selected neurons' explanations; returns the run's scores/ folder."""
    if cfg.mode not in MODES:
        raise ExplainError(f"--mode {cfg.mode!r}: expected one of {', '.join(MODES)}")
    if cfg.n_top < 0 or cfg.n_random < 0 or cfg.n_top + cfg.n_random == 0:
        raise ExplainError(f"--n-top {cfg.n_top} --n-random {cfg.n_random}: need at least one "
                           "excerpt to score (both >= 0)")
    if cfg.excerpts_per_prompt < 1:
        raise ExplainError(f"--excerpts-per-prompt {cfg.excerpts_per_prompt}: must be 1 or more")
    if cfg.control not in config.CONTROLS:
        raise ExplainError(f"--control {cfg.control}: expected one of {', '.join(config.CONTROLS)}")
    from explainer.simulate import simulators

    run_dir = Path(cfg.run)
    endpoint = simulators.endpoint_of(cfg.simulator, cfg.llm.base_url)
    model, layers = rundir.explained_layers(run_dir, cfg.model, cfg.layers)
    from dataclasses import replace

    from explainer import engine

    engine.check(cfg.engine)
    units = _explained(run_dir, model, layers, cfg)
    if units and (cfg.engine.engine == "ray" or engine.several_blocks(units, cfg.engine)):
        # Blocks of neurons, each this same function on a Ray actor or here (memory follows a
        # block). Controls derange whole layers, so they run here once the blocks are done.
        engine.run_stage(run, replace(cfg, control="none", compact=False), units, "simulate")
        _compact(run_dir, model, [la for la, _ in units])  # once, not once per block
        if cfg.control == "none":
            return run_dir / "scores"
        cfg = replace(cfg, engine=config.EngineConfig())
    jobs: list[_Job] = []
    for layer in layers:
        jobs += _jobs(run_dir, model, layer, cfg)
    if not jobs:
        raise ExplainError(f"--neurons {cfg.neurons}: no explained neuron among them in layer(s) "
                           f"{', '.join(map(str, layers))}; run `explain describe` for them first")
    name = cfg.simulator if endpoint is None else endpoint.model
    asyncio.run(_run(cfg, endpoint, name, model, jobs))
    if cfg.compact:
        _compact(run_dir, model, sorted({j.layer for j in jobs}))
    return run_dir / "scores"


def _compact(run_dir: Path, model: str, layers) -> None:
    for layer in sorted(set(layers)):  # one file, one row per key, for plain readers
        for table in ("simulations", "scores"):
            rundir.compact(run_dir, table, model, layer)


# --- what to simulate ---------------------------------------------------------------------


def _jobs(run_dir: Path, model: str, layer: int, cfg: config.SimulateConfig) -> list[_Job]:
    ex = rundir.selected_explanations(run_dir, model, layer, cfg.explainer, cfg.neurons)
    if ex.empty:
        return []
    splits = ("calibrate", "valid", "test") if cfg.calibrate else ("valid", "test")
    splits += ("explain",) if cfg.explain_split else ()  # for revision: what the explainer saw
    chosen = _excerpts(run_dir, model, layer, set(int(n) for n in ex["neuron"]), splits, cfg)
    cands: dict[tuple, dict[int, str]] = {}
    for r in ex.itertuples(index=False):  # newest row last: a re-described candidate wins
        cands.setdefault((int(r.neuron), r.side, r.explainer), {})[int(r.candidate)] = \
            r.explanation
    return [_Job(layer, n, e, tuple(sorted(c.items())), chosen.get((n, side), ()), side)
            for (n, side, e), c in sorted(cands.items())]


def _excerpts(run_dir: Path, model: str, layer: int, neurons: set[int], splits: tuple,
              cfg: config.SimulateConfig) -> dict[tuple[int, str], tuple[_Excerpt, ...]]:
    """Per (neuron, side), the first n_top top and n_random random excerpts (by rank) of each
    split: the positive side's top excerpts are kind 'top'; the negative side's are kind
    'bottom', and it sees every activation negated (its random excerpts are the same ones)."""
    rec = rundir.read_neurons(run_dir, "records", model, layer, neurons,
                              columns=["neuron", "excerpt_id", "kind", "rank", "split",
                                       "activations"])
    rec = rec[rec["neuron"].isin(neurons) & rec["split"].isin(splits)
              & rec["kind"].isin(["top", "bottom", "random"])].sort_values(
        ["neuron", "split", "kind", "rank"])
    need = {"top": cfg.n_top, "bottom": cfg.n_top, "random": cfg.n_random}
    rec = rec[rec.groupby(["neuron", "split", "kind"]).cumcount()
              < rec["kind"].map(need).astype(int)]
    ids = set(int(e) for e in rec["excerpt_id"])
    toks = rundir.read(run_dir, "excerpts", model=model, columns=["excerpt_id", "tokens"])
    toks = {int(e): tuple(t) for e, t in zip(toks["excerpt_id"], toks["tokens"]) if int(e) in ids}
    out: dict[tuple[int, str], list[_Excerpt]] = {}
    for n, e, k, s, a in zip(rec["neuron"], rec["excerpt_id"], rec["kind"], rec["split"],
                             rec["activations"]):
        if int(e) not in toks:
            raise ExplainError(f"--run {run_dir}: records of layer {layer} name excerpt {e}, "
                               "which excerpts/ lacks; re-record the run")
        real = tuple(float(x) for x in a)
        if len(real) != len(toks[int(e)]):
            raise ExplainError(f"--run {run_dir}: excerpt {e} has {len(toks[int(e)])} tokens but "
                               f"{len(real)} activations in layer {layer}; re-record the run")
        if k != "bottom":
            out.setdefault((int(n), "pos"), []).append(_Excerpt(int(e), k, s, toks[int(e)], real))
        if k != "top":
            neg = tuple(-x for x in real)
            out.setdefault((int(n), "neg"), []).append(_Excerpt(int(e), k, s, toks[int(e)], neg))
    return {n: tuple(v) for n, v in out.items()}


# --- running ------------------------------------------------------------------------------


async def _run(cfg: config.SimulateConfig, endpoint, name: str, model: str,
               jobs: list[_Job]) -> None:
    from explainer.simulate import control, simulators

    splits = ("calibrate", "valid") if cfg.calibrate else ("valid",)
    splits += ("explain",) if cfg.explain_split else ()  # simulated, never scored
    # Before any endpoint is touched: with --mode auto, predictions of either mode count as done.
    mode = None if cfg.mode == "auto" or endpoint is None else cfg.mode
    phash = simulators.prompt_hash(cfg.simulator, cfg.excerpts_per_prompt, endpoint)
    done = {lay: _Done(cfg.run, model, lay, name, mode, phash,
                       {j.neuron for j in jobs if j.layer == lay})
            for lay in sorted({j.layer for j in jobs})}
    todo = [j for j in jobs if not done[j.layer].complete(j, splits, cfg.test)]
    if len(todo) < len(jobs):
        print(f"simulate: {len(jobs) - len(todo)} neurons already scored, skipped",
              file=sys.stderr)
    shuffled = cfg.control == control.SHUFFLED
    if not todo and not (shuffled and control.pending(cfg.run, model, jobs, name, mode, phash,
                                                      cfg.seed)):
        return
    async with simulators.open_simulator(cfg, endpoint) as sim:
        if todo:
            await _own(sim, cfg, name, model, todo, splits, phash)
        if shuffled:
            await control.run(sim, Path(cfg.run), model, jobs, name, phash, cfg.seed,
                              _Writer(Path(cfg.run)))
        print(f"simulate: {'LLM ' if endpoint is not None else ''}{sim.summary()}",
              file=sys.stderr)


async def _own(sim, cfg: config.SimulateConfig, name: str, model: str, todo: list[_Job],
               splits: tuple, phash: str) -> None:
    """Simulate and score each job's own explanations with an open simulator."""
    done = {lay: _Done(cfg.run, model, lay, name, sim.mode, phash,
                       {j.neuron for j in todo if j.layer == lay})
            for lay in sorted({j.layer for j in todo})}
    writer = _Writer(Path(cfg.run))

    async def one(job: _Job) -> None:
        writer.add(*await _neuron(sim, job, model, name, done[job.layer], splits,
                                  cfg.calibrate, phash, k=cfg.excerpts_per_prompt, test=cfg.test))

    await progress.drain("simulate", todo, one, sim.workers, writer.flush)
    # which failures a rerun retries (no answer) and which it reads again from the cache
    note = simulate_prompt.failure_note(getattr(sim, "failures", {}), sim.mode)
    print(f"simulate: {writer.n_scores} neurons x explanations scored "
          f"({writer.n_defined} defined, {writer.n_failed} failed excerpts"
          f"{'; ' + note if note else ''}), mode {sim.mode}", file=sys.stderr)


async def _neuron(sim, job: _Job, model: str, simulator: str, done: _Done, splits: tuple,
                  calibrate: bool, phash: str, *, k: int = 1,
                  test: bool = True) -> tuple[list, list]:
    """Simulate and score one job, K excerpts per prompt (grouped.py); returns (simulation
    rows, score rows). With `test` False the best one's test split waits (a cascade level)."""
    sims: list[rundir.SimulationRow] = []

    def item(cand: int, text: str, ex: _Excerpt, parsed) -> score_rows.Item:
        ok = parsed.predicted is not None and len(parsed.predicted) == len(ex.tokens)
        err = None if ok else (parsed.error or "wrong number of predictions")
        n_none = len(parsed.no_digit) if ok else 0  # value slots without a digit, predicted 0
        sims.append(rundir.SimulationRow(
            model=model, layer=job.layer, neuron=job.neuron, explainer=job.explainer,
            candidate=cand, simulator=simulator, mode=parsed.mode, excerpt_id=ex.excerpt_id,
            kind=ex.kind, split=ex.split, predicted=list(parsed.predicted) if ok else None,
            status="ok" if ok else "failed", error=err, side=job.side,
            source_neuron=job.neuron, sim_prompt_hash=phash,
            explanation_hash=score_rows.text_hash(text), n_no_digit=n_none))
        return score_rows.Item(ex.scored_as, ex.split, ex.real,
                               score_rows.as_stored(parsed.predicted) if ok else None, err,
                               ex.excerpt_id, n_none)

    async def items_of(cand: int, text: str, wanted: tuple) -> list[score_rows.Item]:
        def reuse(ex: _Excerpt) -> score_rows.Item | None:
            pred = done.reusable(job, cand, text, ex)
            return None if pred is None else score_rows.Item(ex.scored_as, ex.split, ex.real,
                                                             pred, None, ex.excerpt_id,
                                                             done.no_digit_of(job, cand, text, ex))

        return await grouped.items(sim, [ex for ex in job.excerpts if ex.split in wanted], k,
                                   text, f"L{job.layer}/N{job.neuron}/c{cand}", reuse,
                                   lambda ex, parsed: item(cand, text, ex, parsed))

    per_cand = await asyncio.gather(*(items_of(c, t, splits) for c, t in job.candidates))
    cands = [score_rows.Candidate(model, job.layer, job.neuron, job.explainer, c, simulator, t,
                                  side=job.side, mode=sim.mode, sim_prompt_hash=phash,
                                  explanation_hash=score_rows.text_hash(t))
             for c, t in job.candidates]
    rows, best = score_rows.mark_best([score_rows.score_row(c, "valid", it, calibrate)
                                       for c, it in zip(cands, per_cand)])
    if best is not None and test:
        i = [c.candidate for c in cands].index(best)
        held = await items_of(best, cands[i].explanation, ("test",))
        rows.append(score_rows.score_row(cands[i], "test", per_cand[i] + held, calibrate,
                                         best=True))
    return sims, rows


class _Writer:
    """Buffers rows of finished neurons; simulations are written before their scores."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.sims: list = []
        self.scores: list = []
        self.n_neurons = self.n_scores = self.n_defined = self.n_failed = 0

    def add(self, sims: list, scores: list) -> None:
        self.sims += sims
        self.scores += scores
        self.n_neurons += 1
        valid = [r for r in scores if r.split == "valid"]
        self.n_scores += len(valid)
        self.n_defined += sum(r.score is not None for r in valid)
        self.n_failed += sum(r.status == "failed" for r in sims)
        if self.n_neurons % FLUSH_NEURONS == 0:
            self.flush()

    def flush(self) -> None:
        if self.sims:
            rundir.write_rows(self.run_dir, "simulations", self.sims, prefix="simulate")
        if self.scores:
            rundir.write_rows(self.run_dir, "scores", self.scores, prefix="simulate")
        self.sims, self.scores = [], []


def _explained(run_dir: Path, model: str, layers: list[int], cfg: config.SimulateConfig) -> list:
    """(layer, neurons with an explanation to simulate): what the engines cut into blocks."""
    d_mlp = int((rundir.model_meta(run_dir, model) or {}).get("d_mlp") or 1 << 30)
    among = None if str(cfg.neurons).strip() == "all" else \
        parse_spec(cfg.neurons, d_mlp, "neuron", f"{model} layer")
    units = [(lay, rundir.explained_neurons(run_dir, model, lay, cfg.explainer, among))
             for lay in layers]
    return [(lay, ns) for lay, ns in units if ns]
