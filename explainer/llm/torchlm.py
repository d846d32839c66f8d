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
* generation with a key/value cache, greedy at temperature 0, seeded sampling otherwise.

Not thread-safe by itself: `inprocess.Backend` calls it from one thread at a time.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

MIN_REUSE = 16  # a shared prefix shorter than this is recomputed (not worth the copies)
MAX_PADDED = 8192  # tokens (batch x longest new part) of one forward pass; more are split


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

    def __init__(self, checkpoint: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.head = self.model.get_output_embeddings().weight.detach()  # (vocab, d_model)
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
        for group in _groups([len(s) for s in batch]):
            first = min(min(want[i], default=len(batch[i]) - 1) for i in group)
            with torch.inference_mode():
                hidden, n = self._forward([batch[i] for i in group], first)
            for j, i in enumerate(group):
                out[i] = (hidden[j, torch.tensor(list(want[i]), dtype=torch.long) - n], n)
        return out

    def _forward(self, seqs: list[Sequence[int]], first_row: int):
        """Evaluate `seqs` behind the longest prefix they share with the kept one; returns
        ((batch, new positions, d_model) hidden states, index of the first new position).
        Rows before `first_row` are not needed, so the reused prefix may cover them."""
        torch = self.torch
        limit = min(first_row, min(len(s) for s in seqs) - 1)  # at least one new token each
        shared = min(_common(*seqs), limit)
        if len(seqs) > 1 and shared - _common(self._prefix, seqs[0][:shared]) >= MIN_REUSE:
            self._forward([seqs[0][:shared]], shared)  # what they share: once, then kept
        n = min(_common(self._prefix, *seqs), limit)
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
        keep = _common(*seqs) if len(seqs) > 1 else len(seqs[0])
        self._prefix = tuple(seqs[0][:keep])
        self._kv = [(k[:1, :, :keep], v[:1, :, :keep]) for k, v in _layers(cache)]
        return hidden, n

    def _run(self, x, cache):
        """The decoder (final norm included) on ids `x` (batch, new) after what `cache` holds,
        which it extends in place; returns (batch, new, d_model)."""
        if self._cache_arg is None:  # transformers 5.x renamed past_key_values to cache
            import inspect

            params = inspect.signature(self.model.model.forward).parameters
            self._cache_arg = "cache" if "cache" in params else "past_key_values"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            out = self.model.model(input_ids=x, use_cache=True, **{self._cache_arg: cache})
        return out.last_hidden_state

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
        torch = self.torch
        gen = torch.Generator().manual_seed(int(seed))
        out_ids: list[int] = []
        lps: list = []
        finish = "length"
        with torch.inference_mode():
            hidden, reused = self._forward([ids], len(ids) - 1)
            cache = _cache(self._kv, 1)  # the whole prompt, now kept
            last = hidden[0, -1]
            text = ""
            for _ in range(max(0, max_tokens)):
                logits = (last @ self.head.T).float()
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    tok = int(torch.multinomial(probs, 1, generator=gen))
                else:
                    tok = int(torch.argmax(logits))
                if logprobs:
                    full = torch.log_softmax(logits, dim=-1)
                    alts = ()
                    if top_logprobs:
                        v, i = torch.topk(full, top_logprobs)
                        alts = tuple(zip(i.tolist(), v.tolist()))
                    lps.append((float(full[tok]), alts))
                if tok in self.eos:
                    if logprobs:
                        lps.pop()  # the end of the turn is not part of the answer
                    finish = "stop"
                    break
                out_ids.append(tok)
                text = self.tokenizer.decode(out_ids)
                cut = min((text.find(s) for s in stop if s and s in text), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                    break
                if len(ids) + len(out_ids) >= self.n_ctx:
                    break
                last = self._run(torch.tensor([[tok]]), cache)[0, -1]
            self.evaluated_tokens += len(out_ids)
        return Generated(tuple(out_ids), text, finish, len(ids) - reused + len(out_ids),
                         tuple(lps))


@lru_cache(maxsize=2)
def load(checkpoint: Path) -> TorchLM:
    """The model of `checkpoint`, loaded once per process (every stage shares it)."""
    log.info("loading %s in-process", checkpoint)
    return TorchLM(Path(checkpoint))


def _common(*seqs: Sequence[int]) -> int:
    """Length of the prefix every sequence shares."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


def _groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices cut into forward passes of similar lengths, each at most MAX_PADDED tokens
    padded (a sequence longer than that goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:  # ascending: the newest member is the group's longest
        if groups and lengths[i] * (len(groups[-1]) + 1) <= MAX_PADDED:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


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
