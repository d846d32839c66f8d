"""Stage `judge`: detection and fuzzing scores, cheaper judges beside simulation.

`sampling` picks each neuron's positives, negatives and decoys (pure); `prompt` builds the
judge's prompts and reads its per-excerpt yes/no answers (pure); `stage` reads `explanations/`,
`records/` and `excerpts/`, asks the judge through `llm`, and writes `judgments/` and `scores/`
(rows with `method` detection or fuzzing). Imports plumbing only and the shared `score` rules.
"""


def run(cfg):
    """`explain judge` (see `explainer.judge.stage.run`)."""
    from explainer.judge.stage import run as _run

    return _run(cfg)
