"""Which excerpts and neurons a run names: the splits of kept excerpts, and layer/neuron specs.

The splits are part of the run directory's contract (each `records/` row carries one), so they
live with it; specs (`all`, `3`, `0-5`, `0,4,8`) are how every stage and view names the layers
and neurons it works on.
"""

from __future__ import annotations

from explainer import ExplainError

# Split of top excerpts by interleaved rank (REFERENCE.md): rank r goes to SPLITS[r % 4].
SPLITS = ("explain", "calibrate", "valid", "test")
# Random excerpts are never shown to the explainer, so they cycle over the other splits.
RANDOM_SPLITS = ("calibrate", "valid", "test")


def spread_layers(n_layers: int, count: int = 4) -> str:
    """`count` layers evenly spread from the first to the last, as a layer spec."""
    picks = sorted({round(i * (n_layers - 1) / max(count - 1, 1)) for i in range(count)})
    return ",".join(str(p) for p in picks)


def parse_spec(spec: str, n: int, what: str, owner: str) -> list[int]:
    """Parse `all`, `3`, `0-5` or `0,4,8` into sorted indices below n, or raise ExplainError."""
    text = str(spec).strip()
    valid = f"{owner} has {what}s 0-{n - 1}"
    if text == "all":
        return list(range(n))
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if lo_i > hi_i:
                    raise ValueError
                items = range(lo_i, hi_i + 1)
            else:
                items = [int(part)]
        except ValueError:
            raise ExplainError(
                f"--{what}s {spec!r}: expected all, N, A-B or A,B,C ({valid})") from None
        for i in items:
            if not 0 <= i < n:
                raise ExplainError(f"--{what}s {spec}: {valid}")
            out.add(i)
    if not out:
        raise ExplainError(f"--{what}s {spec!r}: names no {what} ({valid})")
    return sorted(out)
