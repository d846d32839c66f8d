"""The one client every LLM stage uses: any OpenAI-compatible endpoint, or the embedded model.

`LLM` owns what the stages should not repeat: concurrency (one semaphore), retries with
exponential backoff and jitter (honouring Retry-After), a persistent cache keyed by the request's
hash, and a ledger row for every request, all in `<run>/llm.sqlite`. The API key lives only in
memory: it is never hashed, logged, cached, ledgered or put in an error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from explainer import ExplainError
from explainer import config as C
from explainer.llm_cache import Ledger
from explainer.llm_wire import CHAT, COMPLETE, RETRYABLE, Completion, LLMError, classify, parse

log = logging.getLogger(__name__)

# Local servers ignore the key but the openai client insists on having one.
DUMMY_KEY = "sk-no-key-needed"


@dataclass(frozen=True)
class Endpoint:
    """Where requests go; the key is never printed (repr=False) and never written to disk."""

    model: str  # the model's name at the endpoint (stored in explainer/simulator columns)
    base_url: str | None  # None: OpenAI itself (or the embedded server, once started)
    api_key: str | None = field(default=None, repr=False)
    embedded: bool = False  # True: start llama_cpp.server with the embedded GGUF ourselves

    @property
    def host(self) -> str:
        """The endpoint's host:port (never user:password), or a stable name for the embedded one."""
        if self.embedded:
            return f"embedded:{self.model}"  # its port changes every run; the cache must not
        if not self.base_url:
            return "api.openai.com"
        parts = urlparse(self.base_url)
        return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname \
            else self.base_url


def resolve(name: str, base_url: str | None) -> Endpoint:
    """The endpoint for model `name`: the embedded one, `base_url`, $OPENAI_BASE_URL or OpenAI."""
    name = (name or "").strip()
    if not name:
        raise ExplainError("the LLM name is empty; name a model served at the endpoint, "
                           f"or {C.EMBEDDED_LLM} for the embedded one")
    if name == C.EMBEDDED_LLM and not base_url:
        return Endpoint(model=name, base_url=None, api_key=DUMMY_KEY, embedded=True)
    url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = os.environ.get("OPENAI_API_KEY") or None
    if url is None and key is None:
        raise ExplainError(f"LLM {name!r} would go to OpenAI but OPENAI_API_KEY is not set; "
                           "set it, "
                           f"or name another endpoint with --base-url, or use {C.EMBEDDED_LLM}")
    return Endpoint(model=name, base_url=url, api_key=key or DUMMY_KEY)


class LLM:
    """One stage's link to one endpoint: `async with LLM(endpoint, run, stage, cfg) as llm`."""

    def __init__(self, endpoint: Endpoint, run_dir: Path, stage: str = "describe",
                 cfg: C.LLMConfig = C.LLMConfig(), *, prompt_logprobs: bool = True):
        if cfg.concurrency < 1:
            raise ExplainError(f"--concurrency {cfg.concurrency}: must be 1 or more")
        self.endpoint = endpoint
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.cfg = cfg
        # Embedded server only: keep logits of every prompt token (echo + logprobs needs them;
        # describe does not, and saves the memory and time of copying them).
        self.prompt_logprobs = prompt_logprobs
        self.supports_echo_logprobs: bool | None = None
        self._client = None
        self._server = None
        self._sem: asyncio.Semaphore | None = None
        self._ledger: Ledger | None = None
        self._pending: dict[str, list] = {}  # request hash -> [lock, waiters]
        self._stats = {"calls": 0, "cached": 0, "failed": 0, "retries": 0, "prompt": 0,
                       "completion": 0, "cost": 0.0, "cost_unknown": 0}

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> "LLM":
        from openai import AsyncOpenAI

        try:
            base_url = self.endpoint.base_url
            if self.endpoint.embedded:
                from explainer import llm_server

                self._server = llm_server.start(self.endpoint.model,
                                                self.run_dir / "llm_server.log",
                                                logits_all=self.prompt_logprobs)
                base_url = self._server.base_url
            self._ledger = Ledger(self.run_dir / "llm.sqlite")
            key = self.endpoint.api_key or DUMMY_KEY
            self._client = AsyncOpenAI(base_url=base_url, api_key=key,
                                       timeout=self.cfg.timeout_s, max_retries=0)
            # llama_cpp.server answers one request at a time; more in flight would only queue
            # there, with their timeouts running.
            self._sem = asyncio.Semaphore(1 if self.endpoint.embedded else self.cfg.concurrency)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._close()

    async def _close(self) -> None:
        try:
            if self._client is not None:
                await self._client.close()
        finally:
            self._client = None
            if self._server is not None:
                self._server.stop()  # whatever happened above, the server goes
                self._server = None
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None

    @property
    def server_pid(self) -> int | None:
        """The embedded server's process id while it runs (None for other endpoints)."""
        return self._server.proc.pid if self._server is not None else None

    # --- checks ---------------------------------------------------------------------------

    async def check(self, *, probe_echo: bool = True) -> None:
        """Raise ExplainError if the endpoint is unreachable or does not serve the model."""
        import openai

        where = self.endpoint.host
        try:
            page = await self._client.models.list()
            served = [m.id for m in page.data]
        except (openai.APIConnectionError, openai.APITimeoutError):
            raise ExplainError(f"cannot reach the LLM endpoint at {where}; is it running? "
                               "(set --base-url or OPENAI_BASE_URL)") from None
        except openai.AuthenticationError:
            raise ExplainError(f"the LLM endpoint at {where} refused the API key (HTTP 401); "
                               "check OPENAI_API_KEY") from None
        except (openai.APIStatusError, ValueError, TypeError, AttributeError):
            served = []  # some servers have no model list; the first request will tell
        if served and self.endpoint.model not in served:
            shown = ", ".join(sorted(served)[:20]) + (", ..." if len(served) > 20 else "")
            raise ExplainError(f"model {self.endpoint.model!r} is not served at {where} "
                               f"(it serves: {shown})")
        if probe_echo and self.supports_echo_logprobs is None:
            try:
                await self.complete("Hello world", max_tokens=1, echo=True, logprobs=1,
                                    key="probe:echo-logprobs")
            except LLMError:
                self.supports_echo_logprobs = False

    # --- requests -------------------------------------------------------------------------

    async def chat(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                   logprobs: bool = False, top_logprobs: int | None = None, sample: int = 0,
                   accept: Callable[[Completion], bool] | None = None, key: str = "",
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
                       accept: Callable[[Completion], bool] | None = None, key: str = "",
                       stop: list[str] | None = None) -> Completion:
        """A legacy completion; with echo + logprobs it returns the prompt's log-probabilities."""
        body: dict = {"model": self.endpoint.model, "prompt": prompt, "max_tokens": max_tokens,
                      "temperature": temperature}
        if echo:
            body["echo"] = True
        if logprobs is not None:
            body["logprobs"] = logprobs
        try:
            c = await self._call(COMPLETE, body, sample, accept, key, stop)
        except LLMError as err:
            if echo and logprobs is not None and err.status == "bad_request":
                self.supports_echo_logprobs = False
            raise
        if echo and logprobs is not None:
            self.supports_echo_logprobs = c.token_logprobs is not None
        return c

    async def _call(self, kind: str, body: dict, sample: int, accept, key: str,
                    stop: list[str] | None) -> Completion:
        if stop:
            body["stop"] = stop
        if sample or temperature_of(body) > 0:
            # A seed per sample makes N candidates differ, and a rerun ask for the same N.
            body["seed"] = int(sample)
        rkey = self._ledger.request_key(self.endpoint.host, kind, body, sample)
        self._stats["calls"] += 1
        # Identical requests in flight at once wait for the first one, then read its answer.
        lock = self._pending.setdefault(rkey, [asyncio.Lock(), 0])
        lock[1] += 1
        try:
            async with lock[0]:
                return await self._call_once(kind, body, rkey, accept, key)
        finally:
            lock[1] -= 1
            if not lock[1]:
                del self._pending[rkey]

    async def _call_once(self, kind: str, body: dict, rkey: str, accept, key: str) -> Completion:
        hit = self._ledger.get(rkey)
        if hit is not None:
            c = Completion(**{**hit, "cached": True})
            self._stats["cached"] += 1
            self._ledger.log(self._row(key, rkey, c, 0.0, "ok", None, cached=True))
            return c
        async with self._sem:
            c, latency_s = await self._send(kind, body, rkey, key)
        usable = accept is None or accept(c)
        if usable:  # an unusable answer is not cached, so the next run asks again
            self._ledger.put(rkey, self.endpoint.model, _to_json(c))
        self._ledger.log(self._row(key, rkey, c, latency_s, "ok" if usable else "unusable",
                                   None), cost=self._cost(c))
        return c

    async def _send(self, kind: str, body: dict, rkey: str,
                    key: str) -> tuple[Completion, float]:
        t_start = time.monotonic()
        attempt = 0
        while True:
            t0 = time.monotonic()
            try:
                raw = await self._request(kind, body)
                return parse(kind, raw), time.monotonic() - t0
            except LLMError as err:
                status, msg, wait = err.status, str(err), getattr(err, "retry_after_s", None)
            except Exception as exc:  # noqa: BLE001 - mapped to a status right here
                status, msg, wait = classify(exc)
            msg = self._scrub(msg)
            self._ledger.log({"stage": self.stage, "key": key, "request": rkey,
                              "model": self.endpoint.model, "host": self.endpoint.host,
                              "latency_s": time.monotonic() - t0, "cached": 0,
                              "status": status, "error": msg[:300], "attempt": attempt})
            spent = time.monotonic() - t_start
            backoff = self.cfg.backoff_s * (2 ** attempt) * random.uniform(0.5, 1.0)
            delay = max(wait, backoff * 0.1) if wait is not None else backoff
            last = attempt == self.cfg.max_retries
            if status not in RETRYABLE or last or spent + delay > self.cfg.retry_budget_s:
                self._stats["failed"] += 1
                raise LLMError(status, msg) from None
            self._stats["retries"] += 1
            attempt += 1
            log.info("%s %s: %s; retrying in %.1f s", self.stage, key, msg, delay)
            await asyncio.sleep(delay)

    async def _request(self, kind: str, body: dict) -> dict:
        # The client's generic POST sends the body as is and hands back the JSON: the typed
        # `create()` methods cost ~30 ms of CPU per request re-validating a long prompt, which
        # at high concurrency is what limits throughput. Errors map to the same exceptions.
        path = "/chat/completions" if kind == CHAT else "/completions"
        resp = await self._client.post(path, body=body, cast_to=dict)
        if not isinstance(resp, dict):  # the client hands back a non-JSON answer as text
            raise LLMError("malformed", f"not a JSON answer: {str(resp)[:80]!r}")
        return resp

    # --- accounting -----------------------------------------------------------------------

    def _row(self, key: str, rkey: str, c: Completion, latency_s: float, status: str,
             error: str | None, cached: bool = False) -> dict:
        if not cached:
            self._stats["prompt"] += c.prompt_tokens
            self._stats["completion"] += c.completion_tokens
        return {"stage": self.stage, "key": key, "request": rkey, "model": self.endpoint.model,
                "host": self.endpoint.host, "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens, "latency_s": latency_s,
                "cached": int(cached), "status": status, "error": error, "attempt": 0}

    def _cost(self, c: Completion) -> float | None:
        from explainer.llm_cache import price

        if self.endpoint.embedded:
            return 0.0
        p = price(self.endpoint.model)
        if p is None:
            self._stats["cost_unknown"] += 1
            return None
        cost = (c.prompt_tokens * p[0] + c.completion_tokens * p[1]) / 1e6
        self._stats["cost"] += cost
        return cost

    def _scrub(self, text: str) -> str:
        key = self.endpoint.api_key
        return text.replace(key, "***") if key and key != DUMMY_KEY else text

    def summary(self) -> str:
        """One line: calls, cache hits, tokens sent, estimated cost."""
        s = self._stats
        line = (f"{s['calls']:,} calls ({s['cached']:,} cached"
                + (f", {s['retries']:,} retried" if s["retries"] else "")
                + (f", {s['failed']:,} failed" if s["failed"] else "")
                + f"), {s['prompt']:,} prompt + {s['completion']:,} completion tokens")
        if s["cost_unknown"]:
            return line + f", cost unknown (no price for {self.endpoint.model})"
        return line + f", est. ${s['cost']:.4f}"


def temperature_of(body: dict) -> float:
    return float(body.get("temperature") or 0.0)


def _to_json(c: Completion) -> str:
    # Shallow: asdict() deep-copies every token list and log-probability dict first, ~20 ms
    # for one echo answer, which made the client CPU-bound at concurrency 16.
    d = {f.name: getattr(c, f.name) for f in fields(c) if f.name != "cached"}
    return json.dumps(d)
