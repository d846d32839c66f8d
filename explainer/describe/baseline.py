"""The explainers that need no LLM: `baseline-tokens` names the tokens with the highest mean
activation (the published token-lookup floor every LLM explainer is compared against), and its
output twin `baseline-logits` names the tokens the neuron's output promotes most.
"""

from __future__ import annotations

from explainer import prompts

Excerpt = list[tuple[str, float]]


def explanation(excerpts: list[Excerpt], k: int = 3) -> str | None:
    """The token-lookup floor: the k tokens with the highest mean activation, or None if none fire.

    Tokens are grouped by their text without surrounding spaces, so " the" and "the" count as one.
    """
    sums: dict[str, list[float]] = {}
    for ex in excerpts:
        for tok, a in ex:
            key = tok.strip() or tok
            s = sums.setdefault(key, [0.0, 0])
            s[0] += a
            s[1] += 1
    means = sorted(((s / n, tok) for tok, (s, n) in sums.items()), key=lambda x: (-x[0], x[1]))
    top = [tok for mean, tok in means[:k] if mean > 0]
    if not top:
        return None
    quoted = [_quote(t) for t in top]
    if len(quoted) == 1:
        return f"the token {quoted[0]}"
    return f"the tokens {', '.join(quoted[:-1])} and {quoted[-1]}"


def logits_explanation(promoted: list[tuple[str, float]], k: int = 3) -> str | None:
    """`baseline-logits`, the output twin: the k distinct tokens the neuron promotes most
    (direct effect on the logits), said as where it fires: just before them. None if none is
    promoted (every effect <= 0).

    Tokens are grouped by their text without surrounding spaces, like `explanation` does.
    """
    top: list[str] = []
    for tok, value in promoted:  # largest effect first
        key = tok.strip() or tok
        if value > 0 and key not in top:
            top.append(key)
        if len(top) == k:
            break
    if not top:
        return None
    quoted = [_quote(t) for t in top]
    if len(quoted) == 1:
        return f"the token before {quoted[0]}"
    return f"the token before {', '.join(quoted[:-1])} or {quoted[-1]}"


def _quote(tok: str) -> str:
    # Written as every prompt writes a token, so the simulator can match it to what it sees.
    return '"' + prompts.show_token(tok).replace('"', '\\"') + '"'
