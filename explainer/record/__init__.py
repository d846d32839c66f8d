"""Stage `record`: run a hooked subject model over a corpus and keep each neuron's excerpts.

The subject model itself (resolve, load, read MLP activations) is plumbing in
`explainer.subject`, shared with judge; `corpus` turns a corpus spec into excerpts; `samplers` and `kernels` keep the exact
top-k, the random sample and the running statistics; `stage` runs the pass and writes `excerpts/`,
`records/` and `neurons/`. Imports plumbing only (`run`, `subject`, `config`).
"""


def run(cfg):
    """`explain record` (see `explainer.record.stage.run`)."""
    from explainer.record.stage import run as _run

    return _run(cfg)
