"""Stage `simulate`: a simulator predicts each token's activation from the explanation alone.

`prompt` builds simulator prompts and parses answers (pure); `simulators` puts the echo-logprob,
chat and in-process simulators behind one `predict` (the embedded model is evaluated in this
process by `llm.inprocess`); `stage` reads `explanations/` and `records/`, writes `simulations/`
and `scores/`.
Imports plumbing only (`run`, `llm`, `prompts`, `config`) and the shared scoring rules (`score`).
"""


def run(cfg):
    """`explain simulate` (see `explainer.simulate.stage.run`)."""
    from explainer.simulate.stage import run as _run

    return _run(cfg)
