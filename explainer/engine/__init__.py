"""Where a stage's work runs: in this process (`local`, the default, never imports Ray) or on a
Ray cluster (`ray`).

With `--engine ray`, a stage hands `run_stage` its own entry point, its config and the neurons
it would work on; they are cut into deterministic blocks (`BLOCK` consecutive neurons of one
layer), and each block is that same entry point, run on a Ray actor with the config narrowed to
the block and the local engine (`ray_engine.py`). The local engine does the same, one block
after another in this process, when the work spans several blocks: a stage then holds one
block's jobs at a time, so its memory does not grow with the number of neurons. So both engines run the same code on each
neuron and write the same rows; resuming works the same (a block skips what is done). Each
actor is a separate writer: its own Parquet files (writer id = host.pid) and its own ledger
file, which the driver merges into the run's ledger when the stage ends. Plumbing: imports no stage.

`blocks.py` cuts the work and picks the engine, `local.py` runs blocks in this process,
`ray_engine.py` on Ray actors; this module only re-exports.
"""

from explainer.engine.blocks import (BLOCK, _spec, blocks, check, ledger_counts, run_stage,
                                     several_blocks)

__all__ = ["BLOCK", "blocks", "check", "ledger_counts", "run_stage", "several_blocks"]
