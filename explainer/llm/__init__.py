"""LLM plumbing: every explainer, simulator and judge request goes through here.

`endpoint` resolves where requests go; `client.LLM` is the cached client (concurrency,
de-duplication, cache, ledger) built on `transport` (retries), `ledger` (SQLite cache, call log,
prices) and, for the embedded model, `inprocess` (its answers in this process, on `torchlm`);
`probe` asks an endpoint what it can do; `embedded` finds the embedded model's files; `wire`
reads the OpenAI answer format; `server` runs llama-cpp-python's server over the embedded GGUF
for the tests and benchmarks (the `serve` extra). Imports no
stage. Nothing here starts, loads or reads anything at import time.
"""

from explainer.llm.client import LLM
from explainer.llm.endpoint import DUMMY_KEY, Endpoint, resolve
from explainer.llm.probe import Capabilities, probe
from explainer.llm.wire import Completion, LLMError

__all__ = ["DUMMY_KEY", "LLM", "Capabilities", "Completion", "Endpoint", "LLMError", "probe",
           "resolve"]
