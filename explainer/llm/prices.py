"""The batch column of prices.json and the names it prices (the live column is read by
`ledger.price`). Providers bill requests sent through their batch interface at a discount
(OpenAI: half, results within 24 h); `batch_usd_per_million_tokens` holds those rates.
"""

from __future__ import annotations

import json
from functools import lru_cache


@lru_cache(maxsize=4)
def _table(path: str, column: str) -> dict[str, tuple[float, float]]:
    data = json.loads(open(path).read())
    return {k: (float(v[0]), float(v[1])) for k, v in data.get(column, {}).items()}


def batch_price(model: str) -> tuple[float, float] | None:
    """(prompt, completion) USD per million tokens through the batch interface, or None."""
    from explainer.llm import ledger

    table = _table(str(ledger.PRICES), "batch_usd_per_million_tokens")
    return table.get(model) or table.get(model.rsplit("/", 1)[-1])


def models() -> list[str]:
    """The models prices.json prices (live), sorted."""
    from explainer.llm import ledger

    return sorted(_table(str(ledger.PRICES), "usd_per_million_tokens"))
