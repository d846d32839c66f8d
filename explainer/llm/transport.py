"""The retrying transport: send one request until it succeeds, fails for good, or runs out of time.

It knows nothing of caching or accounting: on every failed attempt it calls the request's
`on_failure` (the client writes a ledger row) and waits with exponential backoff and jitter, or as long as the
server's Retry-After asks. A 400, 401, 403 or 404 is not retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

from explainer import config as C
from explainer.llm.wire import CHAT, RETRYABLE, Completion, LLMError, classify, parse

log = logging.getLogger(__name__)

# on_failure(status, message, latency_s, attempt): called once per failed attempt
FailureHook = Callable[[str, str, float, int], None]


class Transport:
    """Sends requests through one AsyncOpenAI client with the retry policy of `cfg`."""

    def __init__(self, client, cfg: C.LLMConfig, scrub: Callable[[str], str] = lambda s: s):
        self.client = client
        self.cfg = cfg
        self.scrub = scrub  # removes the API key from error text before it goes anywhere
        self.retries = self.failed = 0

    async def send(self, kind: str, body: dict, on_failure: FailureHook,
                   label: str = "") -> tuple[Completion, float]:
        """The parsed answer and the latency of the attempt that got it (LLMError when it fails)."""
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
            msg = self.scrub(msg)
            on_failure(status, msg[:300], time.monotonic() - t0, attempt)
            spent = time.monotonic() - t_start
            backoff = self.cfg.backoff_s * (2 ** attempt) * random.uniform(0.5, 1.0)
            delay = max(wait, backoff * 0.1) if wait is not None else backoff
            last = attempt == self.cfg.max_retries
            if status not in RETRYABLE or last or spent + delay > self.cfg.retry_budget_s:
                self.failed += 1
                raise LLMError(status, msg) from None
            self.retries += 1
            attempt += 1
            log.info("%s: %s; retrying in %.1f s", label, msg, delay)
            await asyncio.sleep(delay)

    async def _request(self, kind: str, body: dict) -> dict:
        # The client's generic POST sends the body as is and hands back the JSON: the typed
        # `create()` methods cost ~30 ms of CPU per request re-validating a long prompt, which
        # at high concurrency is what limits throughput. Errors map to the same exceptions.
        path = "/chat/completions" if kind == CHAT else "/completions"
        resp = await self.client.post(path, body=body, cast_to=dict)
        if not isinstance(resp, dict):  # the client hands back a non-JSON answer as text
            raise LLMError("malformed", f"not a JSON answer: {str(resp)[:80]!r}")
        return resp
