"""What an endpoint can do, asked once as an explicit step with its own result.

`probe` checks that the endpoint answers and serves the model, and (when asked) whether it
returns prompt log-probabilities through legacy completions with `echo` (what the all-at-once
simulator reads), and in which row: OpenAI's convention puts the distribution that predicted
prompt token i at row i, llama-cpp-python (0.3.x, models without BOS) one row earlier. Guessing
that per request from where digit mass sits fails on number-heavy excerpts, so it is measured
once on a prompt whose every next token is certain (counting), where the right convention finds
the actual token as the most likely one at nearly every position and the wrong one at none.

A probe that meets a server error or a timeout has been retried like any request; then it fails
loudly instead of reporting the feature missing, so `--mode auto` never falls back to chat
because a server hiccupped.
"""

from __future__ import annotations

from dataclasses import dataclass

from explainer import ExplainError
from explainer.llm.client import LLM
from explainer.llm.wire import LLMError

# Answers that mean "this endpoint does not do echo + logprobs", not "it is unwell".
UNSUPPORTED = {"bad_request", "not_found"}
# Counting: a model of any size predicts each next token; no token repeats its predecessor.
PROBE_TEXT = ", ".join(str(k) for k in range(1, 25))
PROBE_TOP = 5  # alternatives asked per prompt token


@dataclass(frozen=True)
class Capabilities:
    """What the probe found."""

    served: tuple[str, ...]  # model names the endpoint lists (empty when it has no list)
    echo_logprobs: bool | None  # prompt log-probabilities via echo; None when not probed
    # How many rows before prompt token i the distribution that predicted it sits: 0 (OpenAI,
    # vLLM) or 1 (llama-cpp-python); None when not probed or not readable either way.
    echo_shift: int | None = None


async def probe(llm: LLM, *, echo: bool = True) -> Capabilities:
    """Check the endpoint and (with `echo`) its prompt log-probabilities; ExplainError if unusable."""
    served = await _served(llm)
    if not echo:
        return Capabilities(served, None)
    try:
        c = await llm.complete(PROBE_TEXT, max_tokens=1, echo=True, logprobs=PROBE_TOP,
                               key="probe:echo-logprobs")
    except LLMError as err:
        if err.status in UNSUPPORTED:
            return Capabilities(served, False)
        raise ExplainError(f"the endpoint at {llm.endpoint.host} failed the capability probe "
                           f"({err}); try again later, or pass --mode chat or --mode logprob "
                           "to skip it") from None
    if not c.tokens or c.top_logprobs is None:
        return Capabilities(served, False)
    shift = echo_shift(c.tokens, c.top_logprobs)
    return Capabilities(served, shift is not None, shift)


def echo_shift(tokens, top_logprobs) -> int | None:
    """The row offset (0 or 1) at which an echoed answer to PROBE_TEXT holds, as its most likely
    alternative, each actual next token; None unless one offset fits most tokens and beats the
    other. The most likely alternative, not mere presence: llama-cpp-python adds token i itself
    to row i whatever that row predicts."""
    hits = [0, 0]
    for i in range(1, len(tokens)):
        for shift in (0, 1):
            row = top_logprobs[i - shift]
            if row and max(row, key=lambda t: row[t] if row[t] is not None else -1e9) \
                    == tokens[i]:
                hits[shift] += 1
    best = 0 if hits[0] > hits[1] else 1
    if hits[0] == hits[1] or hits[best] < (len(tokens) - 1) / 2:
        return None
    return best


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
