"""`explain puzzles`: known-answer neuron puzzles that measure a simulator (and an explainer).

`data` loads and checks a puzzles file (`puzzles.json` ships with the package); `stage` runs a
simulator on every puzzle's true and false explanations and scores them as the pipeline does.
This package is a composer, like `pipeline.py`, not a stage: it has no run-directory input to
meet another stage at, so it calls the simulator (`simulate.simulators`, `simulate.lexical`) and,
with --explain, the explainer's prompt (`describe.prompt`, `describe.baseline`) directly, and
renders with `views.puzzles`. It writes only the `puzzles/` table, through `explainer.run`.
"""


def run(cfg):
    """`explain puzzles` (see `explainer.puzzles.stage.run`)."""
    from explainer.puzzles.stage import run as _run

    return _run(cfg)
