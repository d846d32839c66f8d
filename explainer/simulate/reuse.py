"""What a rerun of `simulate` may reuse: stored predictions made under the same conditions.

A prediction is reused only when everything that made it matches: simulator, mode (family),
simulator prompt files and the explanation's text; a neuron is complete when its valid scores
(and the chosen candidate's test score) exist under those conditions.
"""

from __future__ import annotations

from pathlib import Path

from explainer import run as rundir
from explainer.score import rows as score_rows


class Done:
    """Stored predictions that can be reused, and the neurons whose scores are complete.

    A prediction is reused only when everything that made it matches: the simulator, its mode,
    its prompt files (sim_prompt_hash) and the explanation's text (explanation_hash); a change
    of any of them re-simulates. Controls are never reused as own scores.
    """

    def __init__(self, run_dir: Path, model: str, layer: int, simulator: str,
                 mode: str | None, prompt_hash: str, neurons: set[int]):
        # Only these neurons' rows: memory follows the block, not the layer.
        sims = rundir.query.simulations(
            rundir.read_neurons(run_dir, "simulations", model, layer, neurons),
            simulator=simulator, mode=mode, prompt_hash=prompt_hash)
        # predictions of another mode family are not reused (mode None: --mode auto, any)
        sc = rundir.query.select(rundir.query.read_scores(run_dir, model, layer, neurons),
                                 simulator=simulator, mode=mode, prompt_hash=prompt_hash)
        self.pred = {(int(n), sd, e, int(c), k, int(x), h): tuple(float(v) for v in p)
                     for n, sd, e, c, k, x, h, p in zip(
                         sims["neuron"], sims["side"], sims["explainer"], sims["candidate"],
                         sims["kind"], sims["excerpt_id"], sims["explanation_hash"],
                         sims["predicted"])}
        # value slots predicted 0 for want of a digit, per reusable prediction (0 before the
        # column existed: such slots failed their excerpt then)
        counts = sims["n_no_digit"] if "n_no_digit" in sims else [0] * len(sims)
        self.no_digit = {k: int(v) for k, v in zip(self.pred, counts) if v == v and v}
        self.scored = {(int(n), sd, e, int(c), s, h) for n, sd, e, c, s, h, st in zip(
            sc["neuron"], sc["side"], sc["explainer"], sc["candidate"], sc["split"],
            sc["explanation_hash"], sc["status"]) if st not in ("failed", score_rows.INCOMPLETE)}
        # (neuron, side, explainer) -> the chosen candidate and the text it was chosen as
        best = rundir.query.chosen(sc, "valid")
        self.best = {(int(n), sd, e): (int(c), h) for n, sd, e, c, h in zip(
            best["neuron"], best["side"], best["explainer"], best["candidate"],
            best["explanation_hash"])}

    def reusable(self, job, cand: int, text: str, ex) -> tuple | None:
        return self.pred.get((job.neuron, job.side, job.explainer, cand, ex.kind,
                              ex.excerpt_id, score_rows.text_hash(text)))

    def no_digit_of(self, job, cand: int, text: str, ex) -> int:
        return self.no_digit.get((job.neuron, job.side, job.explainer, cand, ex.kind,
                                  ex.excerpt_id, score_rows.text_hash(text)), 0)

    def complete(self, job, splits: tuple, test: bool = True) -> bool:
        texts = dict(job.candidates)
        for cand, text in job.candidates:
            if (job.neuron, job.side, job.explainer, cand, "valid",
                    score_rows.text_hash(text)) not in self.scored:
                return False
            for ex in job.excerpts:
                if ex.split in splits and ex.split != "test" and \
                        self.reusable(job, cand, text, ex) is None:
                    return False
        best, text = self.best.get((job.neuron, job.side, job.explainer), (None, None))
        if best is None:
            return True  # no candidate has a defined score: nothing to choose or test
        if best not in texts or score_rows.text_hash(texts[best]) != text:
            return False  # chosen among texts described since: choose again
        return not test or (job.neuron, job.side, job.explainer, best, "test", text) \
            in self.scored
