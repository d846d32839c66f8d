"""Scoring: pure metrics, score rows from simulated excerpts, and `explain score`.

`metrics` maps arrays to numbers (no I/O, logging or LLM); `rows` turns a candidate's simulated
excerpts into score rows with the failure policy and the best-candidate choice, shared by every
stage that scores; `rescore` is the `explain score` command. Imports only `run` (never a stage),
so stages that score may import it.
"""


def run(cfg):
    """`explain score`: recompute every score of the run from its simulations (see rescore)."""
    from explainer.score.rescore import run as rescore

    return rescore(cfg)
