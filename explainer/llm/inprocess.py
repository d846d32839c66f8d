"""The embedded LLM in this process, behind the same client as any endpoint.

`LLM` (client.py) reaches an endpoint through two methods of an `AsyncOpenAI` client:
`post(path, body=..., cast_to=dict)` and `models.list()`. For the embedded model it gets a
`Client` with the same two methods that answers here, with PyTorch on the dequantised checkpoint
(`torchlm.py`), in OpenAI's JSON shapes: so the retrying transport, the answer cache, the ledger
(rows with host `in-process`) and the probe treat it as any endpoint, and no server, port or
C++ build is involved.

What it answers:

* chat completions: the model's chat template, greedy at temperature 0 (seeded sampling above),
  `max_tokens`, `stop`, and `logprobs` / `top_logprobs` of the generated tokens;
* legacy completions, with `echo` + `logprobs` (OpenAI's convention: row i holds the
  distribution that predicted prompt token i, row 0 none) and generation as above;
* an extension for the simulator, on completions with `echo`: `echo_offsets` (character offsets
  of prompt tokens) and `logprob_tokens` (single-token strings) return only the rows of the
  tokens that begin at those offsets, each with the log-probabilities of `logprob_tokens`
  renormalised among themselves (all the expected value over them needs). That is 64 rows of
  10 numbers for a 64-token excerpt instead of ~600 rows of the whole vocabulary.

Requests in flight together are answered together: evaluations in one forward pass behind the
prefix they share with the previous prompt, generations decoded side by side (one forward pass
per generated token for all of them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace

from explainer.llm.ledger import IN_PROCESS
from explainer.llm.wire import CHAT, COMPLETE, LLMError

log = logging.getLogger(__name__)

HOST = IN_PROCESS  # the ledger's host of every request answered here
# Requests let in at once (the pool's limit for this member): those waiting together become one
# forward pass, so this is the largest batch. 16 excerpts of 64 tokens ~ 5k new tokens a pass.
IN_FLIGHT = 16


class Client:
    """An `AsyncOpenAI` look-alike serving model `name` from a checkpoint, in this process."""

    def __init__(self, name: str, checkpoint: Path | None = None):
        self.name = name
        self.checkpoint = checkpoint  # None: the embedded model's (dequantised on first use)
        self.models = _Models(name)
        self.lm = None  # torchlm.TorchLM, once started
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self.requests = self.batches = self.prompt_tokens = 0
        self._evaluated0 = 0

    async def start(self) -> "Client":
        """Load the model (off the event loop); ExplainError when its files are missing."""
        from explainer.llm import torchlm

        def load():
            if self.checkpoint is None:
                from explainer.llm.embedded import embedded_checkpoint

                self.checkpoint = embedded_checkpoint()
            return torchlm.load(Path(self.checkpoint))

        self.lm = await asyncio.to_thread(load)
        self._evaluated0 = self.lm.evaluated_tokens
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._work())
        return self

    async def post(self, path: str, *, body: dict, cast_to=dict) -> dict:
        """The JSON answer to `body` sent to `path` (/chat/completions or /completions)."""
        if self._queue is None:
            raise RuntimeError("in-process client used before start()")
        kind = CHAT if path.rstrip("/").endswith("chat/completions") else COMPLETE
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((kind, body, fut))
        return await fut

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None

    def summary(self) -> str:
        """Requests, forward passes and tokens evaluated against tokens sent."""
        done = (self.lm.evaluated_tokens - self._evaluated0) if self.lm is not None else 0
        return (f"{HOST}: {self.requests:,} requests in {self.batches:,} passes, "
                f"{done:,} tokens evaluated for {self.prompt_tokens:,} prompt tokens "
                "(shared prefixes reused)")

    async def _work(self) -> None:
        while True:
            items = [await self._queue.get()]
            await asyncio.sleep(0)  # requests issued in the same turn join this batch
            while len(items) < IN_FLIGHT and not self._queue.empty():
                items.append(self._queue.get_nowait())
            items = [it for it in items if not it[2].done()]  # cancelled while waiting
            if not items:
                continue
            answers = await asyncio.to_thread(answer_all, self.lm, self.name,
                                              [(k, b) for k, b, _ in items])
            self.requests += len(items)
            self.batches += 1
            for (_, _, fut), ans in zip(items, answers):
                if fut.done():
                    continue
                if isinstance(ans, BaseException):
                    fut.set_exception(ans)
                else:
                    self.prompt_tokens += ans["usage"]["prompt_tokens"]
                    fut.set_result(ans)


class _Models:
    def __init__(self, name: str):
        self.name = name

    async def list(self):
        """The one model served, in the shape of `AsyncOpenAI().models.list()`."""
        return SimpleNamespace(data=[SimpleNamespace(id=self.name)])


# --- answering (runs in a worker thread) -----------------------------------------------------


def answer_all(lm, name: str, requests: list[tuple[str, dict]]) -> list:
    """The answer (dict) or error (LLMError) of each (kind, body); evaluations share a pass."""
    out: list = [None] * len(requests)
    prepared: list = [None] * len(requests)
    for i, (kind, body) in enumerate(requests):
        try:
            prepared[i] = _prepare(lm, name, kind, body)
        except LLMError as err:
            out[i] = err
    echo = [i for i, p in enumerate(prepared) if p is not None and p.rows is not None]
    if echo:
        hidden = lm.rows([prepared[i].enc.ids for i in echo], [prepared[i].rows for i in echo])
        for i, (h, reused) in zip(echo, hidden):
            prepared[i].hidden = h
            prepared[i].evaluated = len(prepared[i].enc.ids) - reused
    gen = [i for i, p in enumerate(prepared) if p is not None and p.max_tokens > 0]
    for i, g in zip(gen, lm.generate_many([_ask(prepared[i]) for i in gen])):
        prepared[i].gen = g
    for i, p in enumerate(prepared):
        if p is not None:
            try:
                out[i] = _answer(lm, name, p)
            except LLMError as err:
                out[i] = err
    return out


class _Prepared(SimpleNamespace):
    """One request, tokenised: enc, the rows to read (None: none), the body and its kind."""


def _prepare(lm, name: str, kind: str, body: dict) -> _Prepared:
    if body.get("model") != name:
        raise LLMError("not_found", f"model {body.get('model')!r} is not served here "
                                    f"(it serves {name!r})")
    if int(body.get("n") or 1) != 1:
        raise LLMError("bad_request", "n > 1 is not supported in-process; send N requests")
    max_tokens = body.get("max_tokens")
    max_tokens = 256 if max_tokens is None else int(max_tokens)
    if kind == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise LLMError("bad_request", "messages must be a non-empty list")
        text = lm.chat_text(messages)
    else:
        text = body.get("prompt")
        if not isinstance(text, str):
            raise LLMError("bad_request", "prompt must be one string")
    enc = lm.encode(text)
    if not enc.ids:
        raise LLMError("bad_request", "the prompt is empty")
    if len(enc.ids) + max(0, max_tokens) > lm.n_ctx:
        raise LLMError("bad_request", f"a prompt of {len(enc.ids)} tokens plus max_tokens "
                                      f"{max_tokens} exceeds the context of {lm.n_ctx} tokens")
    p = _Prepared(kind=kind, body=body, text=text, enc=enc, max_tokens=max_tokens, rows=None,
                  hidden=None, picked=None, among=None, evaluated=0, gen=None)
    if kind == COMPLETE and body.get("echo") and body.get("logprobs") is not None:
        if body.get("echo_offsets") is not None:
            p.among = _single_tokens(lm, body.get("logprob_tokens"))
            picked = [enc.at(int(o)) for o in body["echo_offsets"]]
            p.picked = [i for i in picked if i]  # a token at offset 0 has no row before it
        else:
            p.picked = list(range(1, len(enc.ids)))
        p.rows = [i - 1 for i in p.picked]  # row i - 1 predicts token i
    return p


def _single_tokens(lm, tokens) -> list[tuple[str, int]]:
    if not isinstance(tokens, list) or not tokens:
        raise LLMError("bad_request", "echo_offsets needs logprob_tokens, a list of strings")
    out = []
    for t in tokens:
        tid = lm.token_id(str(t))
        if tid is None:
            raise LLMError("bad_request", f"logprob_tokens: {t!r} is not one token here")
        out.append((str(t), tid))
    return out


def _wants_logprobs(p: _Prepared) -> tuple[bool, int]:
    """Whether the answer's log-probabilities are asked for, and how many alternatives."""
    body = p.body
    if p.kind == CHAT:
        return bool(body.get("logprobs")), int(body.get("top_logprobs") or 0)
    return body.get("logprobs") is not None, int(body.get("logprobs") or 0)


def _ask(p: _Prepared):
    """The generation `p` asks for, in torchlm's terms."""
    from explainer.llm.torchlm import Ask

    stop = p.body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    want_lp, top = _wants_logprobs(p)
    return Ask(p.enc.ids, p.max_tokens, float(p.body.get("temperature") or 0.0),
               int(p.body.get("seed") or 0), tuple(str(s) for s in stop), want_lp, top)


def _answer(lm, name: str, p: _Prepared) -> dict:
    body = p.body
    want_lp, top = _wants_logprobs(p)
    gen = p.gen
    usage = {"prompt_tokens": len(p.enc.ids),
             "completion_tokens": len(gen.ids) if gen is not None else 0}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    # Not OpenAI's: what the model ran for this answer (a shared prefix is run once), ledgered.
    usage["evaluated_tokens"] = p.evaluated + (gen.evaluated if gen is not None else 0)
    text = gen.text if gen is not None else ""
    finish = gen.finish_reason if gen is not None else "length"
    if p.kind == CHAT:
        lp = {"content": _chat_logprobs(lm, gen)} if want_lp and gen is not None else None
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": finish, "logprobs": lp}
        return {"id": f"inprocess-{time.monotonic_ns()}", "object": "chat.completion",
                "model": name, "choices": [choice], "usage": usage}
    lp = _completion_logprobs(lm, p, gen, top) if want_lp else None
    choice = {"index": 0, "text": (p.text if body.get("echo") else "") + text,
              "finish_reason": finish, "logprobs": lp}
    return {"id": f"inprocess-{time.monotonic_ns()}", "object": "text_completion",
            "model": name, "choices": [choice], "usage": usage}


def _chat_logprobs(lm, gen) -> list[dict]:
    return [{"token": lm.piece(t), "logprob": lp,
             "top_logprobs": [{"token": lm.piece(a), "logprob": alp} for a, alp in alts]}
            for t, (lp, alts) in zip(gen.ids, gen.logprobs)]


def _completion_logprobs(lm, p: _Prepared, gen, top: int) -> dict:
    """OpenAI's legacy logprobs object: the echoed prompt rows asked for, then the answer."""
    tokens, offsets, token_lp, top_lp = [], [], [], []
    if p.body.get("echo"):
        if p.among is None:  # the whole prompt; its first token has no row before it
            tokens.append(p.enc.pieces[0])
            offsets.append(0)
            token_lp.append(None)
            top_lp.append(None)
        if p.picked:
            ids = [p.enc.ids[i] for i in p.picked]
            if p.among is not None:
                lps = lm.logprobs_among(p.hidden, [tid for _, tid in p.among]).tolist()
                index = {tid: j for j, (_, tid) in enumerate(p.among)}
                for i, tid, row in zip(p.picked, ids, lps):
                    tokens.append(p.enc.pieces[i])
                    offsets.append(p.enc.starts[i])
                    token_lp.append(row[index[tid]] if tid in index else None)
                    top_lp.append({t: lp for (t, _), lp in zip(p.among, row)})
            else:
                full = lm.logprobs_full(p.hidden)  # (rows, vocab)
                actual = full.gather(1, lm.torch.tensor(ids).unsqueeze(1))[:, 0].tolist()
                best_v, best_i = lm.torch.topk(full, max(1, top), dim=-1)
                for i, a, vs, js in zip(p.picked, actual, best_v.tolist(), best_i.tolist()):
                    tokens.append(p.enc.pieces[i])
                    offsets.append(p.enc.starts[i])
                    token_lp.append(a)
                    alts: dict[str, float] = {}
                    for j, v in zip(js, vs):
                        alts.setdefault(lm.piece(j), v)
                    top_lp.append(alts)
    if gen is not None and gen.ids:
        pos = len(p.text) if p.body.get("echo") else 0
        for t, (lp, alts) in zip(gen.ids, gen.logprobs):
            piece = lm.piece(t)
            tokens.append(piece)
            offsets.append(pos)
            pos += len(piece)
            token_lp.append(lp)
            top_lp.append({lm.piece(a): alp for a, alp in alts})
    return {"tokens": tokens, "text_offset": offsets, "token_logprobs": token_lp,
            "top_logprobs": top_lp}
