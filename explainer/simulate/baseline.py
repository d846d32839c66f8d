"""`baseline-lexical` behind the simulators' `predict` call: no LLM, no endpoint, no prompt.

The matcher itself is `lexical.py` (pure); this wraps it as a simulator (mode `lexical`), and
hashes its source as the simulator's "prompt hash", so editing the matcher re-simulates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from explainer import config as C
from explainer.simulate import prompt as SP


class LexicalSimulator:
    """The baseline-lexical simulator: thousands of excerpts a second, in this process."""

    mode = "lexical"
    workers = 1  # pure Python: nothing to overlap

    async def predict(self, explanation: str, tokens: Sequence[str], key: str) -> SP.Parsed:
        from explainer.simulate import lexical

        return SP.Parsed(lexical.predict(explanation, tokens), None, self.mode)

    def summary(self) -> str:
        return f"{C.BASELINE_SIMULATOR}: no LLM, 0 tokens, $0"


def source_hash() -> str:
    """12 hex of lexical.py's source: what shapes this simulator's predictions."""
    import hashlib

    from explainer.simulate import lexical

    return hashlib.sha256(Path(lexical.__file__).read_bytes()).hexdigest()[:12]
