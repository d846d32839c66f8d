"""The report's lines on value slots without a digit.

Where the simulator's returned alternatives at a value slot held no digit, that slot predicts 0
(simulate/prompt.py, as the paper's reference code does) and is counted: each simulation score
row carries the share of its split's predicted slots that had none (`no_digit_share`). A pair
whose share is high is scored largely on zeros it did not choose, so the report shows the share
beside each explainer / simulator pair and warns past `WARN`.
"""

from __future__ import annotations

WARN = 0.20  # past this share of slots without a digit, a pair's scores say little
PAIR = ["model", "explainer", "simulator", "mode", "side"]


def shares(head) -> list[tuple[tuple, float, int]]:
    """(pair, pooled share, slots) per explainer / simulator pair of the headline rows (each
    row weighted by its tokens); pairs whose rows carry no share (older runs) are left out."""
    if head.empty or "no_digit_share" not in head:
        return []
    rows = head[head["no_digit_share"].notna()]
    out = []
    for key, g in rows.groupby(PAIR, sort=True, dropna=False):
        slots = int(g["n_tokens"].sum())
        if slots:
            out.append((key, float((g["no_digit_share"] * g["n_tokens"]).sum() / slots), slots))
    return out


def section(head) -> str:
    """The lines to append to the report ('' when no pair had a slot without a digit)."""
    found = shares(head)
    if not any(share > 0 for _, share, _ in found):
        return ""
    lines = ["", "Value slots with no digit among the simulator's alternatives (valid split; "
                 "each predicted 0, counted):"]
    for (model, explainer, simulator, mode, side), share, slots in found:
        lines.append(f"  {model}  {explainer} / {simulator}" + (f" ({mode})" if mode else "")
                     + (f"  {side} side" if side != "pos" else "")
                     + f"  {share:.1%} of {slots:,} slots")
    for (model, explainer, simulator, mode, side), share, _ in found:
        if share > WARN:
            lines.append(f"warning: {simulator}" + (f" ({mode})" if mode else "")
                         + f" put no digit among its alternatives at {share:.0%} of the value "
                         f"slots of {explainer}'s explanations on {model}: those scores rest on "
                         "zeros it did not choose; try --mode chat or a stronger simulator")
    return "\n".join(lines)
