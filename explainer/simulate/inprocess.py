"""The embedded simulator evaluated in-process: value-token logits read straight from llama.cpp.

Why not the embedded server: llama-cpp-python's `echo` + `logprobs` computes a full-vocabulary
log-softmax and sort per prompt token in Python (~40 ms a token on 2 cores, 36 s for an
818-token prompt), while this evaluates the same tokens with llama.cpp directly (~2.4 s with
`Llama.eval`, less here) and computes the raw logits only at the value slots. It tokenises the prompt exactly as the server does, so both
give the same predictions (tests/test_simulate.py compares them). The few-shot prefix is shared
by every prompt, so its evaluated state is kept and only the rest is evaluated again.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path

from explainer.llm.embedded import native_output_to
from explainer.simulate import prompt as SP

N_CTX = 4096  # one 64-token excerpt with the few-shot prefix needs ~700; 10 merged ones ~3,000


class _Evaluator:
    """Shared by both back-ends: llama.cpp's own tokenizer, slot lookup, expected values.

    Tokenising with llama.cpp in both keeps the prompt identical, token for token, to what the
    embedded server evaluates, so the back-ends differ only in arithmetic.
    """

    def _setup(self, llm) -> None:
        self._llm = llm
        self._evaluated: list[int] = []  # tokens whose state is in the KV cache, in order
        self._rows: dict[int, list[float]] = {}  # position -> value logits read there
        self.calls = 0
        self.prompt_tokens = 0  # tokens of every prompt, as an endpoint would bill them
        self.evaluated_tokens = 0  # tokens actually run through the model (prefix reused)
        self.value_ids = [self._single_token(v) for v in SP.VALUES]

    def _common_prefix(self, ids: list[int]) -> int:
        n = 0
        for a, b in zip(self._evaluated, ids):
            if a != b:
                break
            n += 1
        return min(n, len(ids) - 1)  # evaluate at least one token so the state is current

    def _single_token(self, text: str) -> int:
        ids = self._llm.tokenize(text.encode(), add_bos=False, special=False)
        if len(ids) != 1:
            raise RuntimeError(f"value {text!r} is {len(ids)} tokens for the embedded simulator")
        return ids[0]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt, as llama-cpp-python's server makes them (BOS if the model adds one)."""
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        bos = self._llm.token_bos()
        if self._llm._model.add_bos_token() and bos >= 0:
            ids = [bos] + ids
        return ids

    def _byte_starts(self, ids: list[int]) -> list[int]:
        # Byte offset in the prompt where each token starts (BOS adds no text).
        starts, pos = [], 0
        bos = self._llm.token_bos()
        for i, t in enumerate(ids):
            starts.append(pos)
            if not (i == 0 and t == bos):
                pos += len(self._llm.detokenize([t]))
        return starts

    def predict(self, prompt: SP.LogprobPrompt) -> SP.Parsed:
        """Expected value (0-10 scale) at every value slot of an all-at-once prompt."""
        ids = self.tokenize(prompt.text)
        if len(ids) >= self.n_ctx:
            return SP.Parsed(None, f"prompt of {len(ids)} tokens exceeds the simulator's "
                                   f"context of {self.n_ctx}", "logprob")
        first = {}  # byte offset -> index of the token starting there
        for i, b in enumerate(self._byte_starts(ids)):
            first.setdefault(b, i)
        rows = []
        for k, off in enumerate(prompt.offsets):
            i = first.get(len(prompt.text[:off].encode("utf-8")))
            if not i:  # no token starts at the slot (merged with a neighbour), or it is first
                return SP.Parsed(None, f"token {k}: the simulator's tokenizer merged its value "
                                       "slot with a neighbour", "logprob")
            rows.append(i - 1)  # the logits after token i-1 predict token i (the slot)
        logits = self._eval(ids, rows)  # (n_slots, 10)
        self.calls += 1
        self.prompt_tokens += len(ids)
        return SP.Parsed([_expected(row) for row in logits], None, "logprob")


class Embedded(_Evaluator):
    """The embedded GGUF evaluated by llama.cpp itself: the server's exact arithmetic."""

    def __init__(self, model_path: Path, n_threads: int | None = None, n_ctx: int = N_CTX,
                 log_path: Path | None = None):
        threads = n_threads or os.cpu_count() or 1
        with _no_extra_buffers(), native_output_to(log_path):
            from llama_cpp import Llama

            self._setup(Llama(model_path=str(model_path), n_ctx=n_ctx, logits_all=False,
                              n_threads=threads, n_threads_batch=threads, verbose=False))
        self.n_ctx = n_ctx

    def _eval(self, ids: list[int], rows: list[int]) -> list[list[float]]:
        """Evaluate `ids` (reusing the cached prefix); the value-token logits at `rows`."""
        n = self._common_prefix(ids)
        llm, want = self._llm, set(rows)
        # Outputs (the 49k-wide vocabulary projection) only where a value is read: ~20% of the
        # compute of this small model, and no full-vocabulary copy per token.
        kept = {r: v for r, v in self._rows.items() if r < n}
        llm._ctx.kv_cache_seq_rm(-1, n, -1)
        for start in range(n, len(ids), llm.n_batch):
            chunk = ids[start:start + llm.n_batch]
            llm._batch.set_batch(batch=chunk, n_past=start, logits_all=False)
            for j in range(len(chunk)):
                llm._batch.batch.logits[j] = (start + j) in want
            llm._ctx.decode(llm._batch)
            for j in range(len(chunk)):
                if start + j in want:
                    out = llm._ctx.get_logits_ith(j)  # float* over the vocabulary
                    kept[start + j] = [out[v] for v in self.value_ids]
        llm.n_tokens = len(ids)
        self._evaluated, self._rows = list(ids), kept
        self.evaluated_tokens += len(ids) - n
        return [kept[r] for r in rows]



class EmbeddedTorch(_Evaluator):
    """The same embedded model, dequantised to float32 and run by PyTorch (same interface).

    On CPUs where llama.cpp gets only AVX2 kernels, PyTorch's float32 matmuls are several times
    faster on 2 cores. The token ids are llama.cpp's (a vocabulary-only load), so the prompt is
    the server's; llama.cpp multiplies Q4_1 weights by 8-bit-quantised activations and PyTorch
    the dequantised weights in float32, so predictions agree closely, not bit for bit
    (tests/test_simulate.py bounds the difference).
    """

    def __init__(self, model_path: Path, checkpoint: Path, log_path: Path | None = None):
        import torch
        from llama_cpp import Llama
        from transformers import AutoModelForCausalLM

        self._torch = torch
        with native_output_to(log_path):  # llama.cpp's load warnings go to the run's log
            self._setup(Llama(model_path=str(model_path), vocab_only=True, verbose=False))
        self._model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
        head = self._model.get_output_embeddings().weight
        self._head = head[self.value_ids].detach()  # (10, d_model): only value logits are read
        self._cache = None
        self.n_ctx = N_CTX

    def _eval(self, ids: list[int], rows: list[int]) -> list[list[float]]:
        torch = self._torch
        n = self._common_prefix(ids)
        if self._cache is None or n == 0:
            from transformers import DynamicCache

            self._cache, n = DynamicCache(), 0
        elif len(self._evaluated) > n:
            # Keep the shared prefix's keys and values, drop the rest (a negative count). Never
            # crop(0) when the prompt extends the last one: transformers 4.x reads 0 as "keep 0
            # tokens" and empties the cache, while 5.x treats it as a no-op.
            self._cache.crop(-(len(self._evaluated) - n))
        kept = {r: v for r, v in self._rows.items() if r < n}
        with torch.inference_mode(), warnings.catch_warnings():
            # transformers 5.x renames past_key_values; the old name works across versions.
            warnings.simplefilter("ignore", FutureWarning)
            out = self._model.model(input_ids=torch.tensor([ids[n:]]),
                                    past_key_values=self._cache, use_cache=True)
            hidden = out.last_hidden_state[0]  # (len(ids) - n, d_model)
            new = [r for r in rows if r >= n]
            if new:
                logits = hidden[torch.tensor(new) - n] @ self._head.T  # (rows, 10)
                kept.update(zip(new, logits.tolist()))
        self._evaluated, self._rows = list(ids), kept
        self.evaluated_tokens += len(ids) - n
        return [kept[r] for r in rows]


def _expected(row: list[float]) -> float:
    top = max(row)
    w = [math.exp(x - top) for x in row]  # softmax over the value tokens only
    return SP.TO_DISPLAY * sum(v * p for v, p in enumerate(w)) / sum(w)


@contextlib.contextmanager
def _no_extra_buffers():
    """Load weights without llama.cpp's "extra" buffer types (AMX/repacked weights).

    A llama.cpp built with GGML_NATIVE on a CPU that advertises AMX puts Q4_1 weights in AMX
    buffers, and the first matmul dies with SIGILL where the kernel (e.g. a Firecracker VM) does
    not enable AMX state. Plain buffers give the same logits; Llama() has no argument for this,
    so its default model parameters are patched for the duration of the load.
    """
    import llama_cpp.llama as ll

    orig = ll.llama_cpp.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p

    ll.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        ll.llama_cpp.llama_model_default_params = orig
