"""The OpenAI wire format: an endpoint's JSON answer -> `Completion`, a failure -> a status.

Kept apart from `llm.py` (which re-exports `Completion` and `LLMError`) so the client there reads
as policy: cache, concurrency, retries, ledger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

CHAT, COMPLETE = "chat", "complete"  # the two request kinds


@dataclass(frozen=True)
class Completion:
    """One answer, from the endpoint or from the cache."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    finish_reason: str | None
    # chat with logprobs: per generated token, (token, logprob, [(alt_token, alt_logprob), ...])
    chat_logprobs: list[tuple[str, float, list[tuple[str, float]]]] | None = None
    # legacy completion with echo+logprobs: one entry per token of prompt (+ answer)
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] | None = None
    # tokens a model on this machine actually ran for the answer (None: an endpoint's, unknown)
    evaluated_tokens: int | None = None


class LLMError(Exception):
    """A request that failed for good; `status` says how (rate_limited, timeout, bad_request...)."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


RETRYABLE = {"rate_limited", "server_error", "timeout", "connection", "malformed"}


def parse(kind: str, raw: dict) -> Completion:
    """A Completion from the endpoint's JSON (LLMError 'malformed' when it is not one)."""
    try:
        choice = raw["choices"][0]
        usage = raw.get("usage") or {}
        lp = choice.get("logprobs")
        common = {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                  "completion_tokens": int(usage.get("completion_tokens") or 0),
                  "cached": False, "finish_reason": choice.get("finish_reason"),
                  "evaluated_tokens": usage.get("evaluated_tokens")}
        if kind == CHAT:
            text = (choice.get("message") or {}).get("content") or ""
            chat_lp = None
            if lp and lp.get("content") is not None:
                chat_lp = [(t["token"], float(t["logprob"]),
                        [(a["token"], float(a["logprob"])) for a in t.get("top_logprobs") or []])
                       for t in lp["content"]]
            return Completion(text=text, chat_logprobs=chat_lp, **common)
        text = choice.get("text") or ""
        if lp and lp.get("tokens") is not None:
            return Completion(text=text, tokens=list(lp["tokens"]),
                              token_logprobs=list(lp.get("token_logprobs") or []),
                              top_logprobs=list(lp.get("top_logprobs") or []),
                              text_offset=list(lp.get("text_offset") or []), **common)
        return Completion(text=text, **common)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise LLMError("malformed", f"unexpected answer shape ({type(exc).__name__}: {exc})") \
            from None


def classify(exc: Exception) -> tuple[str, str, float | None]:
    """(status, message, Retry-After seconds or None) of a failed request."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", "the request timed out", None
    if isinstance(exc, openai.APIConnectionError):
        return "connection", "cannot connect to the endpoint", None
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        msg = f"HTTP {code}: {str(exc.message)[:200]}"
        if code == 429:
            return "rate_limited", msg, _retry_after(exc.response.headers)
        if code >= 500:
            return "server_error", msg, _retry_after(exc.response.headers)
        if code in (401, 403):
            return "auth", msg, None
        if code == 404:
            return "not_found", msg, None
        return "bad_request", msg, None
    if isinstance(exc, (ValueError, openai.APIResponseValidationError)):
        return "malformed", f"unreadable answer ({type(exc).__name__})", None
    raise exc


def _retry_after(headers) -> float | None:
    """Seconds the server asked us to wait (Retry-After or retry-after-ms), if any."""
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if value:
            try:
                return float(value)
            except ValueError:
                from email.utils import parsedate_to_datetime

                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
    return None
