"""A causal LM evaluated by PyTorch in this process: tokens, prompt log-probabilities, generation.

The arithmetic behind the in-process backend (`inprocess.py`, which speaks the OpenAI shapes).
It runs a `transformers` model (the embedded SmolLM2 checkpoint, or any Llama-like directory)
and keeps what makes a small CPU model fast enough:

* the key/value state of the last prompt's tokens, so a prompt that starts like the previous one
  (every simulator prompt shares its few-shot preamble; every describe prompt its instructions)
  evaluates only what is new;
* several prompts in one forward pass, right-padded behind that shared prefix (causal
  attention never looks right, so the padding needs no mask and changes nothing);
* the vocabulary projection only at the rows read, over only the tokens asked for;
* generation with a key/value cache, greedy at temperature 0, seeded sampling otherwise;
* the decoder in bfloat16 where the CPU multiplies bfloat16 natively (AVX-512 BF16, AMX): 1.6x
  the float32 speed on 2 cores, with the expected simulated value correlating 0.9995 with
  float32's (bench/bench_simulate.py prints both). The vocabulary projection stays float32, so
  the logits are exact given the final hidden state. `$EXPLAIN_LLM_DTYPE` (float32 | bfloat16)
  overrides the choice.

Not thread-safe by itself: `inprocess.Backend` calls it from one thread at a time.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from explainer.llm import passes
from explainer.llm.threads import DecodeThreads

log = logging.getLogger(__name__)

MIN_REUSE = 16  # a shared prefix shorter than this is recomputed (not worth the copies)


@dataclass(frozen=True)
class Encoded:
    """A text as token ids, with the character span of the text each token covers."""

    ids: tuple[int, ...]
    starts: tuple[int, ...]  # starts[i]: character offset in the text where token i begins
    pieces: tuple[str, ...]  # the text of each token; "".join(pieces) == the text

    def at(self, offset: int) -> int | None:
        """Index of the token that begins at character `offset`, None if none does."""
        import bisect

        i = bisect.bisect_left(self.starts, offset)
        # Tokens that cover no text of their own (the rest of a split character) start where
        # the next does: the first one with text is the one that begins there.
        while i < len(self.starts) and self.starts[i] == offset and not self.pieces[i]:
            i += 1
        return i if i < len(self.starts) and self.starts[i] == offset else None


@dataclass(frozen=True)
class Generated:
    """What one generation produced."""

    ids: tuple[int, ...]
    text: str
    finish_reason: str  # stop (end of turn or a stop string) | length
    evaluated: int  # tokens run through the model: the prompt's new part and the answer
    # per generated token: (its logprob, [(alternative id, logprob), ...]); empty unless asked
    logprobs: tuple[tuple[float, tuple[tuple[int, float], ...]], ...] = ()


class TorchLM:
    """A `transformers` causal LM and its tokenizer, from one checkpoint directory."""

    def __init__(self, checkpoint: Path, dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.dtype = dtype
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        # float32 copy taken before the cast: the head may be tied to the input embedding
        self.head = model.get_output_embeddings().weight.detach().clone()  # (vocab, d_model)
        self.model = model.to(getattr(torch, self.dtype))
        self.n_ctx = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.eos = {i for i in (self.tokenizer.eos_token_id,
                                getattr(self.model.config, "eos_token_id", None))
                    if isinstance(i, int)}
        self._prefix: tuple[int, ...] = ()  # tokens whose keys and values are kept
        self._kv: list = []  # per layer (keys, values), batch 1, len(_prefix) positions
        self.evaluated_tokens = 0  # tokens run through the model (a reused prefix is not)
        self._cache_arg: str | None = None  # the decoder's name for its key/value cache

    # --- tokens -----------------------------------------------------------------------------

    def encode(self, text: str) -> Encoded:
        """Token ids of `text` as the tokenizer makes them (special tokens read as such)."""
        enc = self.tokenizer(text, return_offsets_mapping=True)
        ids = tuple(int(i) for i in enc["input_ids"])
        raw = [int(a) for a, _ in enc["offset_mapping"]]
        # Byte-level tokens that split one character share its span; the first takes the text.
        starts, last = [], 0
        for a in raw:
            last = max(last, a)
            starts.append(last)
        bounds = starts[1:] + [len(text)]
        pieces = tuple(text[a:b] for a, b in zip(starts, bounds))
        return Encoded(ids, tuple(starts), pieces)

    def token_id(self, text: str) -> int | None:
        """The id of `text` when it is exactly one token, else None."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if len(ids) == 1 else None

    def piece(self, token_id: int) -> str:
        """The text of one token (a split character shows as U+FFFD, as servers do)."""
        return self.tokenizer.decode([token_id])

    def chat_text(self, messages: list[dict]) -> str:
        """Messages in the model's chat template, ready for the assistant's turn."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    # --- evaluation -------------------------------------------------------------------------

    def rows(self, batch: Sequence[Sequence[int]], want: Sequence[Sequence[int]]):
        """Final hidden states at rows `want[b]` of each sequence `batch[b]`: per sequence a
        (len(want[b]), d_model) tensor and how many of its first tokens were reused, not run.
        Row r holds what predicts token r + 1."""
        torch = self.torch
        out: list = [None] * len(batch)
        for group in passes.plan(batch, want):
            first = min(min(want[i], default=len(batch[i]) - 1) for i in group)
            with torch.inference_mode():
                hidden, n, _ = self._forward([batch[i] for i in group], first)
            for j, i in enumerate(group):
                out[i] = (hidden[j, torch.tensor(list(want[i]), dtype=torch.long) - n], n)
        return out

    def _forward(self, seqs: list[Sequence[int]], first_row: int):
        """Evaluate `seqs` behind the longest prefix they share with the kept one; returns
        ((batch, new positions, d_model) hidden states, index of the first new position, the
        batch's cache). Rows before `first_row` are not needed, so the reused prefix may cover
        them."""
        torch = self.torch
        limit = min(first_row, min(len(s) for s in seqs) - 1)  # at least one new token each
        shared = min(passes.common(*seqs), limit)
        if len(seqs) > 1 and shared - passes.common(self._prefix, seqs[0][:shared]) >= MIN_REUSE:
            self._forward([seqs[0][:shared]], shared)  # what they share: once, then kept
        n = min(passes.common(self._prefix, *seqs), limit)
        if n < MIN_REUSE:
            n = 0
        longest = max(len(s) for s in seqs)
        # Right padding with any id: causal attention keeps it out of every real position.
        x = torch.tensor([list(s[n:]) + [0] * (longest - len(s)) for s in seqs])
        cache = _cache([(k[:, :, :n], v[:, :, :n]) for k, v in self._kv] if n else [],
                       len(seqs))
        hidden = self._run(x, cache)
        self.evaluated_tokens += sum(len(s) - n for s in seqs)
        # Keep the batch's common prefix (all of it, for a batch of one) for the next call.
        keep = passes.common(*seqs) if len(seqs) > 1 else len(seqs[0])
        self._prefix = tuple(seqs[0][:keep])
        self._kv = [(k[:1, :, :keep], v[:1, :, :keep]) for k, v in _layers(cache)]
        return hidden, n, cache

    def _run(self, x, cache, **extra):
        """The decoder (final norm included) on ids `x` (batch, new) after what `cache` holds,
        which it extends in place; returns (batch, new, d_model). `extra`: attention_mask and
        position_ids, for sequences of different lengths decoded together."""
        if self._cache_arg is None:  # transformers 5.x renamed past_key_values to cache
            import inspect

            params = inspect.signature(self.model.model.forward).parameters
            self._cache_arg = "cache" if "cache" in params else "past_key_values"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            out = self.model.model(input_ids=x, use_cache=True, **{self._cache_arg: cache},
                                   **extra)
        return out.last_hidden_state.float()  # the head multiplies in float32

    def logprobs_among(self, hidden, token_ids: Sequence[int]):
        """Log-probabilities renormalised over `token_ids` only: (rows, len(token_ids))."""
        logits = hidden @ self.head[list(token_ids)].T
        return self.torch.log_softmax(logits.float(), dim=-1)

    def logprobs_full(self, hidden):
        """Log-probabilities over the whole vocabulary: (rows, vocab)."""
        return self.torch.log_softmax((hidden @ self.head.T).float(), dim=-1)

    # --- generation -------------------------------------------------------------------------

    def generate(self, ids: Sequence[int], max_tokens: int, *, temperature: float = 0.0,
                 seed: int = 0, stop: Sequence[str] = (), top_logprobs: int = 0,
                 logprobs: bool = False) -> Generated:
        """Continue `ids` by up to `max_tokens` tokens (greedy at temperature 0)."""
        return self.generate_many([Ask(tuple(ids), max_tokens, temperature, seed, tuple(stop),
                                       logprobs, top_logprobs)])[0]

    def generate_many(self, asks: Sequence["Ask"]) -> list[Generated]:
        """Continue every prompt of `asks` at once: one forward pass per generated token for
        all of them (on 2 cores a step of 8 costs about what a step of 1 does).

        The prompts run right-padded behind the prefix they share; decoding then masks each
        one's padding and gives each its own positions, so every answer is the one it gets
        alone (up to float rounding). Each stops at its own end of turn, stop string or
        max_tokens; the batch stops when all have.
        """
        torch = self.torch
        if not asks:
            return []
        seqs = [a.ids for a in asks]
        lens = [len(s) for s in seqs]
        states = [_Decoding(a, torch.Generator().manual_seed(int(a.seed))) for a in asks]
        with torch.inference_mode():
            hidden, reused, cache = self._forward(seqs, min(lens) - 1)
            if len(asks) == 1:
                cache = _cache(self._kv, 1)  # the whole prompt, kept for the next call
            last = torch.stack([hidden[b, n - 1 - reused] for b, n in enumerate(lens)])
            # Prompts of different lengths: each one's padding is masked while decoding.
            mask = torch.tensor([[1] * n + [0] * (max(lens) - n) for n in lens]) \
                if max(lens) != min(lens) else None
            self._decode(states, last, cache, mask, torch.tensor(lens))
            self.evaluated_tokens += sum(len(st.ids) for st in states)
        return [Generated(tuple(st.ids), st.text, st.finish, n - reused + len(st.ids),
                          tuple(st.lps)) for st, n in zip(states, lens)]

    def _decode(self, states: list["_Decoding"], last, cache, mask, pos) -> None:
        """Choose and run tokens until every state is done; `pos`: each prompt's length (the
        position of its first answer token), `mask` None: no padding."""
        torch = self.torch
        threads = DecodeThreads(torch)  # one thread or all: whichever steps faster here
        try:
            for step in range(max((st.ask.max_tokens for st in states), default=0)):
                threads.before(step)
                logits = last @ self.head.T  # (batch, vocab), float32
                nxt = []
                for b, st in enumerate(states):
                    if not st.done:
                        st.take(self, logits[b], int(pos[b]))
                    nxt.append(st.ids[-1] if st.ids and not st.done else 0)
                if all(st.done for st in states):
                    break
                x = torch.tensor(nxt).unsqueeze(1)
                if mask is not None:
                    mask = torch.cat([mask, torch.ones(len(states), 1, dtype=mask.dtype)], 1)
                    last = self._run(x, cache, attention_mask=mask,
                                     position_ids=(pos + step).unsqueeze(1))[:, -1]
                else:
                    last = self._run(x, cache)[:, -1]
                threads.after(step)
        finally:
            threads.close()


@dataclass(frozen=True)
class Ask:
    """One generation request: the prompt's ids and how to continue it."""

    ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0


class _Decoding:
    """One sequence's answer so far, in a batch decoded together."""

    def __init__(self, ask: Ask, gen):
        self.ask, self.gen = ask, gen
        self.ids: list[int] = []
        self.lps: list = []
        self.text, self.finish = "", "length"
        self.done = ask.max_tokens <= 0

    def take(self, lm: TorchLM, logits, n_prompt: int) -> None:
        """Choose the next token from `logits` (vocab,), then see whether the answer ends."""
        torch, ask = lm.torch, self.ask
        if ask.temperature > 0:
            probs = torch.softmax(logits / ask.temperature, dim=-1)
            tok = int(torch.multinomial(probs, 1, generator=self.gen))
        else:
            tok = int(torch.argmax(logits))
        if ask.logprobs:
            full = torch.log_softmax(logits, dim=-1)
            alts = ()
            if ask.top_logprobs:
                v, i = torch.topk(full, ask.top_logprobs)
                alts = tuple(zip(i.tolist(), v.tolist()))
            self.lps.append((float(full[tok]), alts))
        if tok in lm.eos:
            if ask.logprobs:
                self.lps.pop()  # the end of the turn is not part of the answer
            self.finish, self.done = "stop", True
            return
        self.ids.append(tok)
        self.text = lm.tokenizer.decode(self.ids)
        cut = min((self.text.find(s) for s in ask.stop if s and s in self.text), default=-1)
        if cut >= 0:
            self.text, self.finish, self.done = self.text[:cut], "stop", True
        elif len(self.ids) >= ask.max_tokens or n_prompt + len(self.ids) >= lm.n_ctx:
            self.done = True


DTYPES = ("float32", "bfloat16")


def compute_dtype() -> str:
    """The decoder's dtype: `$EXPLAIN_LLM_DTYPE`, else bfloat16 where the CPU has native
    bfloat16 arithmetic (emulated, it is slower than float32), else float32."""
    import os

    import torch

    chosen = os.environ.get("EXPLAIN_LLM_DTYPE", "").strip()
    if chosen:
        if chosen not in DTYPES:
            from explainer import ExplainError

            raise ExplainError(f"EXPLAIN_LLM_DTYPE={chosen}: expected one of {', '.join(DTYPES)}")
        return chosen
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return "bfloat16" if native is not None and native() else "float32"
    except RuntimeError:  # a build without oneDNN
        return "float32"


def load(checkpoint: Path) -> TorchLM:
    """The model of `checkpoint`, loaded once per process (every stage shares it)."""
    return _load(Path(checkpoint), compute_dtype())


@lru_cache(maxsize=2)
def _load(checkpoint: Path, dtype: str) -> TorchLM:
    log.info("loading %s in-process (%s)", checkpoint, dtype)
    return TorchLM(checkpoint, dtype)


def _layers(cache) -> list:
    """Per layer (keys, values) of a transformers cache (5.x `layers`, 4.x lists)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _cache(kv: list, batch: int):
    """A fresh transformers cache holding `kv` (batch 1) for `batch` sequences; the tensors
    given are never written to (the model appends by concatenating, a copy)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        if batch > 1:
            k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
        cache.update(k, v, i)
    return cache
