"""The shuffled-explanation control of `explain simulate --control shuffled`.

A score means something only if the explanation is specific to its neuron: another neuron's
explanation, simulated on this neuron's excerpts, should score lower. So each neuron's chosen
explanation (its best valid candidate under this simulator) is also simulated and scored on a
different neuron of the same layer and side, picked by a seeded derangement of the selected
neurons that have a chosen explanation: a permutation with no fixed point, the same on every run
(and for every simulator) given the seed and the neurons. Only the target's valid split is
simulated; the rows are marked `control = 'shuffled'`, with `source_neuron` naming the neuron
the explanation was written for, and `best` false, so nothing that picks chosen candidates
mistakes them for a neuron's own score.

Resumable like the rest: a prediction is reused when the simulator, its mode family, its prompt
hash, the explanation's text and its source neuron all match.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from explainer import run as rundir
from explainer.score import rows as score_rows

SHUFFLED = rundir.query.SHUFFLED


@dataclass(frozen=True)
class ControlJob:
    """One chosen explanation, simulated on another neuron's valid excerpts."""

    layer: int
    neuron: int  # the target: whose excerpts are simulated and whose activations are scored
    side: str
    explainer: str
    source: int  # the neuron the explanation was written for
    candidate: int  # the source's chosen candidate
    explanation: str
    excerpts: tuple  # the target's valid-split excerpts (stage._Excerpt)


def derangement(neurons: Sequence[int], key: str) -> dict[int, int]:
    """target -> source over `neurons`: no neuron gets its own, seeded by `key` (a string).

    The neurons, shuffled by `random.Random(key)`, form one cycle: each passes its explanation
    to the next. Fewer than two neurons have no derangement ({}).
    """
    order = sorted(set(int(n) for n in neurons))
    if len(order) < 2:
        return {}
    random.Random(key).shuffle(order)
    return {order[(i + 1) % len(order)]: order[i] for i in range(len(order))}


def chosen(run_dir: Path, model: str, layer: int, simulator: str, mode: str | None,
           phash: str) -> dict[tuple, tuple[int, str]]:
    """(neuron, side, explainer) -> (candidate, explanation_hash) of each chosen explanation."""
    sc = rundir.query.chosen(rundir.query.read_scores(run_dir, model, layer), "valid",
                             simulator=simulator, mode=mode, prompt_hash=phash)
    return {(int(n), sd, e): (int(c), h) for n, sd, e, c, h in zip(
        sc["neuron"], sc["side"], sc["explainer"], sc["candidate"], sc["explanation_hash"])}


def plan(run_dir: Path, model: str, jobs: Sequence, simulator: str, mode: str | None,
         phash: str, seed: int) -> list[ControlJob]:
    """The control jobs of the selected neurons (stage._Job's), from the stored chosen ones."""
    out: list[ControlJob] = []
    for layer in sorted({j.layer for j in jobs}):
        best = chosen(run_dir, model, layer, simulator, mode, phash)
        groups: dict[tuple[str, str], dict[int, object]] = {}
        for j in (j for j in jobs if j.layer == layer):
            pick = best.get((j.neuron, j.side, j.explainer))
            texts = dict(j.candidates)
            # Only a chosen explanation whose text is still the described one takes part.
            if pick is not None and pick[0] in texts and \
                    score_rows.text_hash(texts[pick[0]]) == pick[1]:
                groups.setdefault((j.side, j.explainer), {})[j.neuron] = (j, pick[0],
                                                                          texts[pick[0]])
        for (side, explainer), members in sorted(groups.items()):
            pairs = derangement(list(members), f"{seed}/{model}/{layer}/{side}/{explainer}")
            for target, source in sorted(pairs.items()):
                tjob = members[target][0]
                _, cand, text = members[source]
                valid = tuple(ex for ex in tjob.excerpts if ex.split == "valid")
                out.append(ControlJob(layer, target, side, explainer, source, cand, text, valid))
    return out


class Done:
    """Stored control predictions that can be reused, and the controls already scored."""

    def __init__(self, run_dir: Path, model: str, layer: int, simulator: str,
                 mode: str | None, phash: str):
        sims = rundir.query.simulations(
            rundir.read(run_dir, "simulations", model=model, layer=layer),
            simulator=simulator, mode=mode, prompt_hash=phash, control=SHUFFLED)
        sc = rundir.query.select(rundir.query.read_scores(run_dir, model, layer),
                                 control=SHUFFLED, simulator=simulator, mode=mode,
                                 prompt_hash=phash, split="valid")
        self.pred = {(int(n), sd, e, int(s), h, k, int(x)): tuple(float(v) for v in p)
                     for n, sd, e, s, h, k, x, p in zip(
                         sims["neuron"], sims["side"], sims["explainer"],
                         sims["source_neuron"], sims["explanation_hash"], sims["kind"],
                         sims["excerpt_id"], sims["predicted"])}
        self.scored = {(int(n), sd, e, int(s), h) for n, sd, e, s, h, st in zip(
            sc["neuron"], sc["side"], sc["explainer"], sc["source_neuron"],
            sc["explanation_hash"], sc["status"]) if st not in ("failed", score_rows.INCOMPLETE)}

    def reusable(self, job: ControlJob, ex) -> tuple | None:
        return self.pred.get((job.neuron, job.side, job.explainer, job.source,
                              score_rows.text_hash(job.explanation), ex.kind, ex.excerpt_id))

    def complete(self, job: ControlJob) -> bool:
        return (job.neuron, job.side, job.explainer, job.source,
                score_rows.text_hash(job.explanation)) in self.scored


def pending(run_dir: Path, model: str, jobs: Sequence, simulator: str, mode: str | None,
            phash: str, seed: int) -> list[ControlJob]:
    """The control jobs not yet scored (read before any simulator is opened)."""
    todo = plan(run_dir, model, jobs, simulator, mode, phash, seed)
    done = {lay: Done(run_dir, model, lay, simulator, mode, phash)
            for lay in sorted({j.layer for j in todo})}
    return [j for j in todo if not done[j.layer].complete(j)]


async def run(sim, run_dir: Path, model: str, jobs: Sequence, simulator: str, phash: str,
              seed: int, writer) -> int:
    """Simulate and score the pending controls with an open simulator; returns how many."""
    import sys

    todo = pending(run_dir, model, jobs, simulator, sim.mode, phash, seed)
    if not todo:
        return 0
    done = {lay: Done(run_dir, model, lay, simulator, sim.mode, phash)
            for lay in sorted({j.layer for j in todo})}
    from explainer import progress

    async def one(job: ControlJob) -> None:
        writer.add(*await _control(sim, job, model, simulator, done[job.layer], phash))

    await progress.drain("control", todo, one, sim.workers, writer.flush)
    print(f"simulate: {len(todo)} shuffled controls scored ({writer.n_defined} defined, "
          f"{writer.n_failed} failed excerpts), seed {seed}", file=sys.stderr)
    return len(todo)


async def _control(sim, job: ControlJob, model: str, simulator: str, done: Done,
                   phash: str) -> tuple[list, list]:
    """Simulate one control on its target's valid excerpts; returns (simulation rows, score)."""
    ehash = score_rows.text_hash(job.explanation)
    sims: list[rundir.SimulationRow] = []

    async def one(ex) -> score_rows.Item:
        pred = done.reusable(job, ex)
        if pred is not None:
            return score_rows.Item(ex.scored_as, ex.split, ex.real, pred, None, ex.excerpt_id)
        key = f"L{job.layer}/N{job.neuron}/from{job.source}/{ex.split}/{ex.excerpt_id}"
        parsed = await sim.predict(job.explanation, ex.tokens, key)
        ok = parsed.predicted is not None and len(parsed.predicted) == len(ex.tokens)
        err = None if ok else (parsed.error or "wrong number of predictions")
        sims.append(rundir.SimulationRow(
            model=model, layer=job.layer, neuron=job.neuron, explainer=job.explainer,
            candidate=job.candidate, simulator=simulator, mode=parsed.mode,
            excerpt_id=ex.excerpt_id, kind=ex.kind, split=ex.split,
            predicted=list(parsed.predicted) if ok else None, status="ok" if ok else "failed",
            error=err, side=job.side, control=SHUFFLED, source_neuron=job.source,
            sim_prompt_hash=phash, explanation_hash=ehash,
            n_no_digit=len(parsed.no_digit) if ok else 0))
        return score_rows.Item(ex.scored_as, ex.split, ex.real,
                               score_rows.as_stored(parsed.predicted) if ok else None, err,
                               ex.excerpt_id, len(parsed.no_digit) if ok else 0)

    items = list(await asyncio.gather(*(one(ex) for ex in job.excerpts)))
    cand = score_rows.Candidate(model, job.layer, job.neuron, job.explainer, job.candidate,
                                simulator, job.explanation, side=job.side, mode=sim.mode,
                                sim_prompt_hash=phash, explanation_hash=ehash, control=SHUFFLED,
                                source_neuron=job.source)
    # No calibration: a control is simulated on the valid split only.
    return sims, [score_rows.score_row(cand, "valid", items, calibrate=False)]
