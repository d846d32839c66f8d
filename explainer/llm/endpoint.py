"""Where LLM requests go: the embedded model, one or more `--base-url`s, $OPENAI_BASE_URL, or OpenAI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from explainer import ExplainError
from explainer import config

# Local servers ignore the key but the openai client insists on having one.
DUMMY_KEY = "sk-no-key-needed"


@dataclass(frozen=True)
class Endpoint:
    """Where requests go; the key is never printed (repr=False) and never written to disk."""

    model: str  # the model's name at the endpoint (stored in explainer/simulator columns)
    base_url: str | None  # None: OpenAI itself, or the embedded model
    api_key: str | None = field(default=None, repr=False)
    embedded: bool = False  # True: the embedded model, answered in this process (inprocess.py)
    # Further replicas serving the same model (repeated --base-url): one endpoint pool.
    replicas: tuple[str, ...] = ()

    @property
    def urls(self) -> tuple[str | None, ...]:
        """Every base URL of the pool, the first one first."""
        return (self.base_url, *self.replicas)

    @property
    def host(self) -> str:
        """The endpoint's host:port (never user:password), or `in-process` for the embedded one."""
        from explainer.llm.ledger import IN_PROCESS
        from explainer.llm.pool import host_of

        if self.embedded:
            return IN_PROCESS
        return host_of(self.base_url) + (f" +{len(self.replicas)}" if self.replicas else "")


def resolve(name: str, base_url: str | Sequence[str] | None) -> Endpoint:
    """The endpoint for model `name`: the embedded one, `base_url` (one URL, or several replicas
    of one model), $OPENAI_BASE_URL or OpenAI."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url or ())
    urls = list(dict.fromkeys(u.strip() for u in urls if u and u.strip()))
    base_url = urls[0] if urls else None
    name = (name or "").strip()
    if not name:
        raise ExplainError("the LLM name is empty; name a model served at the endpoint, "
                           f"or {config.EMBEDDED_LLM} for the embedded one")
    if name == config.EMBEDDED_LLM and not base_url:
        return Endpoint(model=name, base_url=None, api_key=DUMMY_KEY, embedded=True)
    url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = os.environ.get("OPENAI_API_KEY") or None
    if url is None and key is None:
        raise ExplainError(f"LLM {name!r} would go to OpenAI but OPENAI_API_KEY is not set; "
                           "set it, or name another endpoint with --base-url, or use "
                           f"{config.EMBEDDED_LLM}")
    return Endpoint(model=name, base_url=url, api_key=key or DUMMY_KEY, replicas=tuple(urls[1:]))
