"""Stage `describe`: an explainer LLM reads a neuron's top excerpts and writes one phrase.

`prompt` builds what the explainer sees and parses its answer (pure); `baseline` is the
`baseline-tokens` explainer that needs no LLM; `stage` reads `records/`, writes `explanations/`.
Imports plumbing only (`run`, `llm`, `prompts`, `config`).
"""


def run(cfg):
    """`explain describe` (see `explainer.describe.stage.run`)."""
    from explainer.describe.stage import run as _run

    return _run(cfg)
