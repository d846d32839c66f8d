"""The embedded simulator: the all-at-once prompt, evaluated by PyTorch in this process.

It sends what `_Echo` sends to any endpoint (the same prompt, through the same LLM client,
cache and ledger), to the in-process backend (`llm/inprocess.py`), and asks for less: instead
of the top log-probabilities of every prompt token (a full-vocabulary softmax and sort at ~600
positions, and an answer of that size to cache), only the rows of the value slots, each over
the ten value tokens. The expected value over those is what `_Echo` computes from the top
alternatives, with every value present, so no slot ever lacks a digit.

Why in-process at all: llama-cpp-python's server computes echo log-probabilities in Python at
~40 ms a token (36 s for an 818-token prompt); PyTorch runs the same prompt in a few hundred
milliseconds here, and shares the few-shot prefix and the forward pass between the excerpts in
flight together (llm/torchlm.py).
"""

from __future__ import annotations

from explainer.simulate import prompt as SP
from explainer.simulate.simulators import _Echo


class InProcess(_Echo):
    """`_Echo` on the in-process backend: the value slots' rows only (OpenAI's row convention,
    shift 0, which that backend follows)."""

    def __init__(self, llm, workers: int, strict: bool = False):
        super().__init__(llm, workers, shift=0, top=len(SP.VALUES), strict=strict)

    def _ask(self, prompt: SP.LogprobPrompt) -> dict:
        # No answer token: nothing is generated, so the prompt is evaluated exactly once.
        return {"max_tokens": 0, "logprobs": len(SP.VALUES),
                "echo_offsets": list(prompt.offsets), "logprob_tokens": list(SP.VALUES)}
