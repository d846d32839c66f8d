"""What an explainer may be shown about a neuron (`explanations.evidence`), and the output side
of one neuron as seen from one of its sides.

`record` stores, per neuron, the tokens its positive direction promotes and suppresses most
(`neurons/` columns promoted_* and suppressed_*: the direct effect on the logits per unit of
activation). The negative side (`side = 'neg'`) studies the negated activation, whose direct
effect is the negated vector: what the positive side suppresses, the negative side promotes, with
the sign flipped so that promoted values are always positive. describe and the views read the
lists through `output_tokens`, so every consumer flips the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

EVIDENCE = ("inputs", "outputs", "both")  # inputs: top excerpts (the paper); outputs: top tokens
SIDES = ("pos", "neg")


@dataclass(frozen=True)
class OutputTokens:
    """One side's top promoted and suppressed next tokens with their direct logit effects."""

    promoted: tuple[tuple[str, float], ...]  # (token, value > 0 usually), largest first
    suppressed: tuple[tuple[str, float], ...]  # (token, value < 0 usually), most negative first


def _pairs(tokens, values) -> tuple[tuple[str, float], ...]:
    return tuple((str(t), float(v)) for t, v in zip(tokens, values))


def output_tokens(row: dict, side: str = "pos") -> OutputTokens | None:
    """The output side of a neurons/ row (a dict of its columns) for `side`; None when the row
    was recorded before these columns existed."""
    if side not in SIDES:
        raise ValueError(f"side {side!r}: expected one of {SIDES}")
    cols = ("promoted_tokens", "promoted_values", "suppressed_tokens", "suppressed_values")
    if any(row.get(c) is None for c in cols):
        return None
    up = _pairs(row["promoted_tokens"], row["promoted_values"])
    down = _pairs(row["suppressed_tokens"], row["suppressed_values"])
    if side == "neg":  # the negated activation writes the negated vector
        up, down = tuple((t, -v) for t, v in down), tuple((t, -v) for t, v in up)
    return OutputTokens(up, down)


def explainer_label(explainer: str, evidence: str) -> str:
    """The name explanations are stored under: the explainer's own name for input evidence (and
    for the no-LLM baselines, whose names say what they read), else `NAME+outputs` or
    `NAME+both`. Every table downstream keys on `explainer`, so the variants of one LLM are
    simulated, scored, judged and reported apart; the `evidence` column says the same."""
    if evidence == "inputs" or explainer.startswith("baseline-"):
        return explainer
    return f"{explainer}+{evidence}"


def split_label(explainer: str) -> tuple[str, str]:
    """(explainer's own name, evidence) of a stored explainer name (`explainer_label` undone)."""
    name, _, suffix = explainer.rpartition("+")
    if name and suffix in ("outputs", "both"):
        return name, suffix
    return explainer, "outputs" if explainer == "baseline-logits" else "inputs"
