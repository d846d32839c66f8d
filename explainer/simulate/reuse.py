"""What a rerun of `simulate` may reuse: stored predictions made under the same conditions.

A prediction is reused only when everything that made it matches: simulator, mode (family),
simulator prompt files and the explanation's text; a neuron is complete when its valid scores
(and the chosen candidate's test score) exist under those conditions.
"""

from __future__ import annotations

from pathlib import Path

from explainer import run as rundir
from explainer.score import rows as SS


class Done:
    """Stored predictions that can be reused, and the neurons whose scores are complete.

    A prediction is reused only when everything that made it matches: the simulator, its mode,
    its prompt files (sim_prompt_hash) and the explanation's text (explanation_hash); a change
    of any of them re-simulates. Controls are never reused as own scores.
    """

    def __init__(self, run_dir: Path, model: str, layer: int, simulator: str,
                 mode: str | None, prompt_hash: str, neurons: set[int]):
        # Only these neurons' rows: memory follows the block, not the layer.
        sims = rundir.read_neurons(run_dir, "simulations", model, layer, neurons)
        sims = sims[(sims["simulator"] == simulator) & (sims["status"] == "ok")
                    & (sims["control"] == "none") & (sims["sim_prompt_hash"] == prompt_hash)]
        sc = rundir.read_neurons(run_dir, "scores", model, layer, neurons)
        sc = sc[(sc["simulator"] == simulator) & (sc["method"] == "simulation")
                & (sc["control"] == "none") & (sc["sim_prompt_hash"] == prompt_hash)]
        if mode is not None:  # predictions of another mode are not reused
            sims = sims[sims["mode"].map(SS.mode_family) == SS.mode_family(mode)]
            sc = sc[sc["mode"].map(SS.mode_family) == SS.mode_family(mode)]
        self.pred = {(int(n), sd, e, int(c), k, int(x), h): tuple(float(v) for v in p)
                     for n, sd, e, c, k, x, h, p in zip(
                         sims["neuron"], sims["side"], sims["explainer"], sims["candidate"],
                         sims["kind"], sims["excerpt_id"], sims["explanation_hash"],
                         sims["predicted"])}
        self.scored = {(int(n), sd, e, int(c), s, h) for n, sd, e, c, s, h, st in zip(
            sc["neuron"], sc["side"], sc["explainer"], sc["candidate"], sc["split"],
            sc["explanation_hash"], sc["status"]) if st != "failed"}
        self.best = {(int(n), sd, e): int(c) for n, sd, e, c, s, b in zip(
            sc["neuron"], sc["side"], sc["explainer"], sc["candidate"], sc["split"], sc["best"])
            if s == "valid" and b}

    def reusable(self, job, cand: int, text: str, ex) -> tuple | None:
        return self.pred.get((job.neuron, job.side, job.explainer, cand, ex.kind,
                              ex.excerpt_id, SS.text_hash(text)))

    def complete(self, job, splits: tuple, test: bool = True) -> bool:
        texts = dict(job.candidates)
        for cand, text in job.candidates:
            if (job.neuron, job.side, job.explainer, cand, "valid",
                    SS.text_hash(text)) not in self.scored:
                return False
            for ex in job.excerpts:
                if ex.split in splits and ex.split != "test" and \
                        self.reusable(job, cand, text, ex) is None:
                    return False
        best = self.best.get((job.neuron, job.side, job.explainer))
        return not test or best is None or best not in texts or (
            job.neuron, job.side, job.explainer, best, "test",
            SS.text_hash(texts[best])) in self.scored
