"""The retrying transport: send one request until it succeeds, fails for good, or runs out of time.

It knows nothing of caching or accounting: on every failed attempt it calls the request's
`on_failure` (the client writes a ledger row) and waits with exponential backoff and jitter, or as long as the
server's Retry-After asks. A 400, 401, 403 or 404 is not retried. Each attempt goes to a member
of the endpoint pool (`pool.py`); a request that fails on one member for a reason of that
member's health (connection, timeout, 5xx) is re-sent at once to another live member it has not
tried, without counting as a retry, so a dying endpoint's work moves to the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

from explainer import config
from explainer.llm.pool import HEALTH, Member, Pool
from explainer.llm.wire import CHAT, RETRYABLE, Completion, LLMError, classify, parse

log = logging.getLogger(__name__)

# on_failure(status, message, latency_s, attempt, host): called once per failed attempt
FailureHook = Callable[[str, str, float, int, str], None]


class Transport:
    """Sends requests through the members of a `Pool` with the retry policy of `cfg`."""

    def __init__(self, pool: Pool, cfg: config.LLMConfig,
                 scrub: Callable[[str], str] = lambda s: s):
        self.pool = pool
        self.cfg = cfg
        self.scrub = scrub  # removes the API key from error text before it goes anywhere
        self.retries = self.failed = self.rerouted = 0

    async def send(self, kind: str, body: dict, on_failure: FailureHook,
                   label: str = "") -> tuple[Completion, float, str]:
        """The parsed answer, the latency of the attempt that got it, and the host that gave it
        (LLMError when it fails)."""
        t_start = time.monotonic()
        attempt = 0
        tried: set[Member] = set()
        while True:
            member = await self.pool.acquire(tried)
            t0 = time.monotonic()
            c, status, msg, wait = await self._attempt(member, kind, body)
            if c is not None:
                return c, time.monotonic() - t0, member.host
            msg = self.scrub(msg)
            on_failure(status, msg[:300], time.monotonic() - t0, attempt, member.host)
            tried.add(member)
            if status in HEALTH and any(m not in tried for m in self.pool.live()):
                self.rerouted += 1  # another endpoint takes it now; not a retry
                continue
            tried.clear()
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

    async def _attempt(self, member: Member, kind: str, body: dict
                       ) -> tuple[Completion | None, str, str, float | None]:
        """One try on one member: (answer or None, status, message, Retry-After)."""
        status, msg, wait, c = "cancelled", "", None, None
        try:
            raw = await self._request(member.client, kind, body)
            c, status = parse(kind, raw), "ok"
        except LLMError as err:
            status, msg, wait = err.status, str(err), getattr(err, "retry_after_s", None)
        except Exception as exc:  # noqa: BLE001 - mapped to a status right here
            status, msg, wait = classify(exc)
        finally:  # also when cancelled: the member's slot comes back
            self.pool.release(member, status, wait)
        return c, status, msg, wait

    @staticmethod
    async def _request(client, kind: str, body: dict) -> dict:
        # The client's generic POST sends the body as is and hands back the JSON: the typed
        # `create()` methods cost ~30 ms of CPU per request re-validating a long prompt, which
        # at high concurrency is what limits throughput. Errors map to the same exceptions.
        path = "/chat/completions" if kind == CHAT else "/completions"
        resp = await client.post(path, body=body, cast_to=dict)
        if not isinstance(resp, dict):  # the client hands back a non-JSON answer as text
            raise LLMError("malformed", f"not a JSON answer: {str(resp)[:80]!r}")
        return resp
