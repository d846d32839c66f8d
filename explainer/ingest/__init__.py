"""Stage `ingest` (`explain import`): other tools' neuron records turned into a run directory.

`openai` reads and checks the JSON of OpenAI's `neuron-explainer` (the records and explanations
published with Bills et al., 2023); `stage` writes them as `run.json`, `excerpts/`, `records/`,
`neurons/`, `explanations/` and `scores/`, so the paper's data describes, simulates and scores
like a recorded run. Named `ingest` because `import` is a Python keyword. Imports plumbing only.
"""


def run(cfg):
    """`explain import` (see `explainer.ingest.stage.run`)."""
    from explainer.ingest.stage import run as _run

    return _run(cfg)
