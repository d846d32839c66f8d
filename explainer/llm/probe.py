"""What an endpoint can do, asked once as an explicit step with its own result.

`probe` checks that the endpoint answers and serves the model, and (when asked) whether it
returns prompt log-probabilities through legacy completions with `echo` (what the all-at-once
simulator reads). A probe that meets a server error or a timeout has been retried like any
request; then it fails loudly instead of reporting the feature missing, so `--mode auto` never
falls back to chat because a server hiccupped.
"""

from __future__ import annotations

from dataclasses import dataclass

from explainer import ExplainError
from explainer.llm.client import LLM
from explainer.llm.wire import LLMError

# Answers that mean "this endpoint does not do echo + logprobs", not "it is unwell".
UNSUPPORTED = {"bad_request", "not_found"}


@dataclass(frozen=True)
class Capabilities:
    """What the probe found."""

    served: tuple[str, ...]  # model names the endpoint lists (empty when it has no list)
    echo_logprobs: bool | None  # prompt log-probabilities via echo; None when not probed


async def probe(llm: LLM, *, echo: bool = True) -> Capabilities:
    """Check the endpoint and (with `echo`) its prompt log-probabilities; ExplainError if unusable."""
    served = await _served(llm)
    if not echo:
        return Capabilities(served, None)
    try:
        c = await llm.complete("Hello world", max_tokens=1, echo=True, logprobs=1,
                               key="probe:echo-logprobs")
    except LLMError as err:
        if err.status in UNSUPPORTED:
            return Capabilities(served, False)
        raise ExplainError(f"the endpoint at {llm.endpoint.host} failed the capability probe "
                           f"({err}); try again later, or pass --mode chat or --mode logprob "
                           "to skip it") from None
    return Capabilities(served, bool(c.tokens) and c.token_logprobs is not None)


async def _served(llm: LLM) -> tuple[str, ...]:
    import openai

    where = llm.endpoint.host
    clients = [m.client for m in llm.pool.members] if llm.pool is not None else [llm.client]
    for i, client in enumerate(clients):  # of a pool, the first member that answers
        try:
            page = await client.models.list()
            served = tuple(m.id for m in page.data)
            break
        except (openai.APIConnectionError, openai.APITimeoutError):
            if i + 1 < len(clients):
                continue
            raise ExplainError(f"cannot reach the LLM endpoint at {where}; is it running? "
                               "(set --base-url or OPENAI_BASE_URL)") from None
        except openai.AuthenticationError:
            raise ExplainError(f"the LLM endpoint at {where} refused the API key (HTTP 401); "
                               "check OPENAI_API_KEY") from None
        except (openai.APIStatusError, ValueError, TypeError, AttributeError):
            served = ()  # some servers have no model list; the first request will tell
            break
    if served and llm.endpoint.model not in served:
        shown = ", ".join(sorted(served)[:20]) + (", ..." if len(served) > 20 else "")
        raise ExplainError(f"model {llm.endpoint.model!r} is not served at {where} "
                           f"(it serves: {shown})")
    return served
