"""How many intra-op threads a generation's decoding steps use, chosen by timing both.

A decoding step is a few hundred tiny products. On an idle 2-core machine two threads make a
step of 8 sequences faster (describe's 59 steps: 7.1 s against 11.4 s with one thread), but
while other work shares the cores each product waits at a barrier for a thread that is not
running: 380-1400 ms a step with two threads against 85 ms with one. Neither count is right
everywhere, so the first steps of every generation try both and the rest use the faster.

The thread count changed no answer where it was checked: the products of the decoding shapes
(8 rows against SmolLM2's weights and head, float32 and bfloat16) came out bit for bit the same
with one thread or two on this machine, describe's 8 demo answers were the same text, and the
tests' greedy answers still equal `generate()`'s while the first steps switch.
"""

from __future__ import annotations

import time

WARM = 1  # steps run before timing (the first allocates the step's buffers)
TRIES = 2  # timed steps per choice; the fastest of each is compared


class DecodeThreads:
    """Sets the thread count before each decoding step; restores the caller's count on close.

    Steps 0 .. WARM - 1 use every thread, then TRIES timed steps with every thread and TRIES
    with one, then the choice with the faster best step. With one thread to begin with there
    is nothing to choose.
    """

    def __init__(self, torch):
        self.torch = torch
        self.full = torch.get_num_threads()
        self.best: dict[int, float] = {}
        self.chosen: int | None = None if self.full > 1 else self.full
        self._started = 0.0

    def _plan(self, step: int) -> int | None:
        """Thread count to time at `step`, or None when the step is not timed."""
        if step < WARM:
            return None
        k = (step - WARM) // TRIES
        return (self.full, 1)[k] if k < 2 else None

    def before(self, step: int) -> None:
        if self.chosen is None and step >= WARM + 2 * TRIES:
            self.chosen = min(self.best, key=lambda n: (self.best[n], -n))
        threads = self.chosen or self._plan(step) or self.full
        if self.torch.get_num_threads() != threads:
            self.torch.set_num_threads(threads)
        self._started = time.perf_counter()

    def after(self, step: int) -> None:
        planned = self._plan(step) if self.chosen is None else None
        if planned is not None:
            took = time.perf_counter() - self._started
            self.best[planned] = min(self.best.get(planned, took), took)

    def close(self) -> None:
        self.torch.set_num_threads(self.full)
