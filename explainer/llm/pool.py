"""A pool of endpoints serving one model: where each request goes, and how hard each is pushed.

Every `--base-url` is a `Member` with its own `AsyncOpenAI` client and its own concurrency
limit, which starts at (and never exceeds) `--concurrency`. A request takes the member with the
most free room (`acquire`) and reports back how it went (`release`):

* adaptive concurrency (AIMD): a 429 halves that member's limit (at most once per 0.5 s, since
  a burst of 429s answers one overload) and pauses it for the Retry-After; each success adds
  1/limit, so the limit regrows by one per window of successful requests;
* draining: a member that fails `DRAIN_AFTER` requests in a row (connection refused, timeout,
  5xx) while another member is live is drained for `DRAIN_S` seconds (doubling each time it
  fails again), and the transport re-sends its requests to the others at once. After the pause
  it gets requests again; one success restores it. A pool of one member is never drained: its
  requests wait and retry as before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

log = logging.getLogger(__name__)

DRAIN_AFTER = 3  # consecutive failures that drain a member (when another is live)
DRAIN_S = 10.0  # first drain; doubles while the member keeps failing
HEALTH = {"connection", "timeout", "server_error"}  # failures that count against a member


def host_of(url: str | None) -> str:
    """host:port of a base URL (never user:password); api.openai.com for None."""
    if not url:
        return "api.openai.com"
    parts = urlparse(url)
    if not parts.hostname:
        return url
    return parts.hostname + (f":{parts.port}" if parts.port else "")


@dataclass(eq=False)
class Member:
    """One endpoint of the pool."""

    client: object  # AsyncOpenAI
    host: str
    max_limit: int
    limit: float = 0.0
    in_flight: int = 0
    failures: int = 0  # consecutive health failures
    drain_s: float = DRAIN_S
    drained_until: float = 0.0
    paused_until: float = 0.0
    last_cut: float = -1e9
    stats: dict = field(default_factory=lambda: {"ok": 0, "rate_limited": 0, "failed": 0,
                                                 "drained": 0})

    def __post_init__(self):
        self.limit = float(self.max_limit)

    def room(self, now: float) -> float:
        """Free share of the limit; <= 0 when it takes no request now."""
        if self.drained_until > now or self.paused_until > now:
            return 0.0
        return (int(self.limit) - self.in_flight) / max(self.limit, 1.0)


class Pool:
    """The members, and the queue of requests waiting for room."""

    def __init__(self, members: list[Member]):
        if not members:
            raise ValueError("an endpoint pool needs at least one member")
        self.members = members
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._turn = 0

    def live(self, now: float | None = None) -> list[Member]:
        now = time.monotonic() if now is None else now
        return [m for m in self.members if m.drained_until <= now]

    async def acquire(self, avoid: set | frozenset = frozenset()) -> Member:
        """The member with the most room (members in `avoid` only when no other has room)."""
        while True:  # one event loop: nothing runs between the check and the wait
            now = time.monotonic()
            # Ties go round-robin, so an idle pool spreads its requests over every member.
            self._turn = (self._turn + 1) % len(self.members)
            order = self.members[self._turn:] + self.members[:self._turn]
            for skip in (avoid, ()):
                best = max((m for m in order if m not in skip),
                           key=lambda m: m.room(now), default=None)
                if best is not None and best.room(now) > 0:
                    best.in_flight += 1
                    return best
            # Nobody has room: queue up (first come, first served) until a release wakes this
            # request, or until a pause or drain ends. One release wakes one waiter, not all:
            # with hundreds waiting, waking all made the client CPU-bound.
            ends = [t for m in self.members for t in (m.paused_until, m.drained_until)
                    if t > now]
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, min(ends) - now if ends else None)
            except asyncio.TimeoutError:
                pass
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake()  # this request was woken but will not take the slot
                raise
            finally:
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)

    def release(self, m: Member, status: str, wait_s: float | None = None) -> None:
        """Give the member's slot back and learn from how the request went."""
        now = time.monotonic()
        m.in_flight -= 1
        if status == "ok":
            m.stats["ok"] += 1
            m.failures, m.drain_s = 0, DRAIN_S
            m.limit = min(float(m.max_limit), m.limit + 1.0 / max(m.limit, 1.0))
        elif status == "rate_limited":
            m.stats["rate_limited"] += 1
            if now - m.last_cut > 0.5:
                m.limit, m.last_cut = max(1.0, m.limit / 2), now
                log.info("%s: rate limited, concurrency now %d", m.host, int(m.limit))
            m.paused_until = max(m.paused_until, now + (wait_s or 0.0))
        elif status in HEALTH:
            m.stats["failed"] += 1
            m.failures += 1
            others = [o for o in self.live(now) if o is not m]
            if m.failures >= DRAIN_AFTER and others and m.drained_until <= now:
                m.drained_until = now + m.drain_s
                m.stats["drained"] += 1
                log.warning("%s failed %d requests in a row: drained for %.0f s, its work "
                            "goes to the other %d endpoint(s)", m.host, m.failures,
                            m.drain_s, len(others))
                m.drain_s *= 2
        self._wake()

    def _wake(self) -> None:
        while self._waiters:  # wake the longest waiter (it takes the slot or waits again)
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    def capacity(self) -> int:
        """Requests the pool takes at once at full limits (for sizing the stages' workers)."""
        return sum(m.max_limit for m in self.members)

    def summary(self) -> str:
        """Per member when there are several: answers, 429s, failures, drains, limit now."""
        if len(self.members) == 1:
            return ""
        parts = [f"{m.host} {m.stats['ok']} ok" + (f"/{m.stats['rate_limited']} 429"
                                                   if m.stats["rate_limited"] else "")
                 + (f"/{m.stats['failed']} failed" if m.stats["failed"] else "")
                 + (f"/drained {m.stats['drained']}x" if m.stats["drained"] else "")
                 + f" (limit {int(m.limit)})" for m in self.members]
        return "; ".join(parts)
