"""The rule that picks a cascade's explanation (`explain describe --cascade`): pure, no I/O.

Shared by the cascade that runs the levels and by `report --cost`, which recomputes the choice
from the stored scores, so both always agree.
"""

from __future__ import annotations

from typing import Sequence


def choose_level(valid: Sequence[float | None], accept: float | None) -> int | None:
    """Index of the level whose explanation a neuron keeps: the first whose valid-split score
    (as a report counts it) reaches `accept`, else the best one (the first on a tie); None when
    no level has a defined score. Levels a neuron never reached are None."""
    if accept is not None:
        for i, s in enumerate(valid):
            if s is not None and s >= accept:
                return i
    best = None
    for i, s in enumerate(valid):
        if s is not None and (best is None or s > valid[best]):
            best = i
    return best
