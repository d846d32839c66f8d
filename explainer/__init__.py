"""explain: automated neuron interpretability (record, describe, simulate, score, report)."""


class ExplainError(Exception):
    """Bad input: one sentence naming the value and what would be valid (the CLI exits 2)."""


__all__ = ["ExplainError"]
