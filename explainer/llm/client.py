"""The cached client every LLM stage uses: `async with LLM(endpoint, run, stage, cfg) as llm`.

Its parts live apart: `endpoint` says where requests go, `inprocess` answers for the embedded
model in this process, `transport` retries, `ledger` holds the answer cache, the call log and
prices, `probe` asks what the endpoint can do. This class composes them and owns what is left:
one semaphore for concurrency, de-duplication of identical requests in flight, the cache lookup
before a request and the ledger row after it. The API key lives only in memory: it is never
hashed, logged, cached, ledgered or put in an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Callable

from explainer import ExplainError
from explainer import config
from explainer.llm.endpoint import DUMMY_KEY, Endpoint
from explainer.llm.ledger import Ledger, cost_usd, shared_cache
from explainer.llm.pool import Member, Pool, host_of
from explainer.llm.transport import Transport
from explainer.llm.wire import CHAT, COMPLETE, Completion

Accept = Callable[[Completion], bool]


class LLM:
    """One stage's link to one endpoint, opened with `async with`."""

    def __init__(self, endpoint: Endpoint, run_dir: Path, stage: str = "describe",
                 cfg: config.LLMConfig = config.LLMConfig(), *, prompt_logprobs: bool = True,
                 writer: str | None = None):
        if cfg.concurrency < 1:
            raise ExplainError(f"--concurrency {cfg.concurrency}: must be 1 or more")
        self.endpoint = endpoint
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.cfg = cfg
        # Whether this stage reads prompt log-probabilities. Only the llama.cpp server that once
        # served the embedded model needed to know in advance; callers still say it.
        self.prompt_logprobs = prompt_logprobs
        self._local = None  # the in-process client of the embedded model, while open
        # A Ray worker writes its own ledger file (see ledger.py); the engine names it in the env.
        self.writer = writer or os.environ.get("EXPLAIN_LEDGER_WRITER") or None
        self.client = None  # the first endpoint's AsyncOpenAI client, while open
        self.pool: Pool | None = None  # every endpoint's client and concurrency limit
        self._stack: contextlib.AsyncExitStack | None = None
        self._transport: Transport | None = None
        self._ledger: Ledger | None = None
        self._pending: dict[str, list] = {}  # request hash -> [lock, waiters]
        self._batcher = None  # with cfg.batch: requests go through a batch (llm/batch.py)
        self._stats = {"calls": 0, "cached": 0, "prompt": 0, "completion": 0, "cost": 0.0,
                       "cost_unknown": 0}

    async def __aenter__(self) -> "LLM":
        from openai import AsyncOpenAI

        stack = contextlib.AsyncExitStack()
        try:
            urls = list(self.endpoint.urls)
            members = []
            if self.endpoint.embedded:
                # The embedded model answers in this process, behind the same transport, cache
                # and ledger as any endpoint (inprocess.py).
                from explainer.llm import inprocess

                self._local = await inprocess.Client(self.endpoint.model).start()
                stack.push_async_callback(self._local.close)
                members.append(Member(self._local, inprocess.HOST, inprocess.IN_FLIGHT))
                urls = []
            self._ledger = Ledger.for_run(self.run_dir, writer=self.writer,
                                          shared=shared_cache(self.cfg.cache))
            stack.callback(self._ledger.close)
            key = self.endpoint.api_key or DUMMY_KEY
            for url in urls:
                client = AsyncOpenAI(base_url=url, api_key=key, timeout=self.cfg.timeout_s,
                                     max_retries=0)
                stack.push_async_callback(client.close)
                members.append(Member(client, host_of(url), self.cfg.concurrency))
            self.client = members[0].client
            self.pool = Pool(members)
            if getattr(self.cfg, "batch", False):
                if self.endpoint.embedded:
                    raise ExplainError("--batch: the embedded model has no batch interface; "
                                       "name an endpoint with --base-url, or drop --batch")
                from explainer.llm.batch import Batcher

                self._batcher = Batcher(self.client, self.run_dir, self.stage,
                                        self.endpoint.model)
                stack.push_async_callback(self._batcher.close)
            self._transport = Transport(self.pool, self.cfg, self._scrub)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        self.client = None
        if stack is not None:
            await stack.aclose()  # clients, then the ledger: whatever happened above

    # --- requests -------------------------------------------------------------------------

    async def chat(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                   logprobs: bool = False, top_logprobs: int | None = None, sample: int = 0,
                   accept: Accept | None = None, key: str = "",
                   stop: list[str] | None = None) -> Completion:
        """A chat completion (cached by request; `sample` tells apart N samples of one request)."""
        body: dict = {"model": self.endpoint.model, "messages": messages,
                      "max_tokens": max_tokens, "temperature": temperature}
        if logprobs:
            body["logprobs"] = True
            if top_logprobs:
                body["top_logprobs"] = top_logprobs
        return await self._call(CHAT, body, sample, accept, key, stop)

    async def complete(self, prompt: str, *, max_tokens: int = 0, temperature: float = 0.0,
                       echo: bool = False, logprobs: int | None = None, sample: int = 0,
                       accept: Accept | None = None, key: str = "",
                       stop: list[str] | None = None, echo_offsets: list[int] | None = None,
                       logprob_tokens: list[str] | None = None) -> Completion:
        """A legacy completion; with echo + logprobs it returns the prompt's log-probabilities.

        `echo_offsets` and `logprob_tokens` (the in-process backend only, see inprocess.py):
        only the rows of the prompt tokens at those character offsets, over those tokens."""
        body: dict = {"model": self.endpoint.model, "prompt": prompt, "max_tokens": max_tokens,
                      "temperature": temperature}
        if echo:
            body["echo"] = True
        if logprobs is not None:
            body["logprobs"] = logprobs
        if echo_offsets is not None:
            body["echo_offsets"] = list(echo_offsets)
            body["logprob_tokens"] = list(logprob_tokens or ())
        return await self._call(COMPLETE, body, sample, accept, key, stop)

    async def _call(self, kind: str, body: dict, sample: int, accept: Accept | None, key: str,
                    stop: list[str] | None) -> Completion:
        if stop:
            body["stop"] = stop
        if sample or float(body.get("temperature") or 0.0) > 0:
            # A seed per sample makes N candidates differ, and a rerun ask for the same N.
            body["seed"] = int(sample)
        rkey = self._ledger.request_key(kind, body, sample)
        self._stats["calls"] += 1
        # Identical requests in flight at once wait for the first one, then read its answer.
        lock = self._pending.setdefault(rkey, [asyncio.Lock(), 0])
        lock[1] += 1
        try:
            async with lock[0]:
                return await self._cached_or_sent(kind, body, rkey, accept, key)
        finally:
            lock[1] -= 1
            if not lock[1]:
                del self._pending[rkey]

    async def _cached_or_sent(self, kind: str, body: dict, rkey: str, accept: Accept | None,
                              key: str) -> Completion:
        hit = self._ledger.get(rkey)
        if hit is not None:
            c = Completion(**{**hit, "cached": True})
            self._stats["cached"] += 1
            # Paid nothing now; `saved_usd` keeps what sending it would have cost.
            self._ledger.log(self._row(key, rkey, c, 0.0, "ok", cached=True), cost=0.0,
                             saved=cost_usd(self.endpoint.model, c.prompt_tokens,
                                            c.completion_tokens, free=self.endpoint.embedded))
            return c
        def failed(status: str, msg: str, latency_s: float, attempt: int, host: str) -> None:
            self._ledger.log({"stage": self.stage, "key": key, "request": rkey,
                              "model": self.endpoint.model, "host": host,
                              "latency_s": latency_s, "cached": 0, "status": status,
                              "error": msg, "attempt": attempt})

        batch = self._batcher is not None and not key.startswith("probe")
        if batch:  # answered when the stage's batch is done (probes stay live)
            from explainer.llm.batch import HOST

            c, latency_s, host = await self._batcher.send(kind, body, rkey), 0.0, HOST
        else:
            c, latency_s, host = await self._transport.send(kind, body, failed,
                                                            f"{self.stage} {key}")
        usable = accept is None or accept(c)
        if usable:  # an unusable answer is not cached, so the next run asks again
            self._ledger.put(rkey, self.endpoint.model, _to_json(c))
        self._ledger.log(self._row(key, rkey, c, latency_s, "ok" if usable else "unusable",
                                   host=host), cost=self._cost(c, batch))
        return c

    # --- accounting -----------------------------------------------------------------------

    def _row(self, key: str, rkey: str, c: Completion, latency_s: float, status: str,
             cached: bool = False, host: str | None = None) -> dict:
        if not cached:
            self._stats["prompt"] += c.prompt_tokens
            self._stats["completion"] += c.completion_tokens
        return {"stage": self.stage, "key": key, "request": rkey, "model": self.endpoint.model,
                "host": host or self.endpoint.host, "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens, "latency_s": latency_s,
                "cached": int(cached), "status": status, "error": None, "attempt": 0,
                # a local model's own count (a reused prefix is not run again); a hit runs none
                "evaluated_tokens": 0 if cached and c.evaluated_tokens is not None
                else c.evaluated_tokens}

    def _cost(self, c: Completion, batch: bool = False) -> float | None:
        cost = cost_usd(self.endpoint.model, c.prompt_tokens, c.completion_tokens,
                        free=self.endpoint.embedded)
        if batch:  # the provider's batch rate (prices.json batch column)
            from explainer.llm.prices import batch_price

            p = batch_price(self.endpoint.model)
            cost = None if p is None else (c.prompt_tokens * p[0]
                                           + c.completion_tokens * p[1]) / 1e6
        if cost is None:
            self._stats["cost_unknown"] += 1
        else:
            self._stats["cost"] += cost
        return cost

    def _scrub(self, text: str) -> str:
        key = self.endpoint.api_key
        return text.replace(key, "***") if key and key != DUMMY_KEY else text

    def summary(self) -> str:
        """One line: calls, cache hits, tokens sent, estimated cost."""
        s, t = self._stats, self._transport
        retries, failed = (t.retries, t.failed) if t is not None else (0, 0)
        line = (f"{s['calls']:,} calls ({s['cached']:,} cached"
                + (f", {retries:,} retried" if retries else "")
                + (f", {failed:,} failed" if failed else "")
                + f"), {s['prompt']:,} prompt + {s['completion']:,} completion tokens")
        if t is not None and t.rerouted:
            line += f", {t.rerouted:,} re-sent to another endpoint"
        pool = self.pool.summary() if self.pool is not None else ""
        if s["cost_unknown"]:
            line += f", cost unknown (no price for {self.endpoint.model})"
        else:
            line += f", est. ${s['cost']:.4f}"
        if self._local is not None:
            pool = self._local.summary()
        return line + (f" [{pool}]" if pool else "")

    def capacity(self) -> int:
        """Requests this client keeps in flight at once (over every endpoint of the pool); in
        batch mode every job at once, so that one batch holds the stage's requests."""
        if self._batcher is not None:
            from explainer.llm.batch import JOBS

            return JOBS
        return self.pool.capacity() if self.pool is not None else self.cfg.concurrency


def _to_json(c: Completion) -> str:
    # Shallow: asdict() deep-copies every token list and log-probability dict first, ~20 ms
    # for one echo answer, which made the client CPU-bound at concurrency 16.
    d = {f.name: getattr(c, f.name) for f in fields(c) if f.name != "cached"}
    return json.dumps(d)
