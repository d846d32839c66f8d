"""The cascade's scripted endpoints (tests/cascadefake.py) plus a scripted judge: the simulator
model, asked a detection or fuzzing question, answers from the prompt alone, yes exactly when
an excerpt holds a word the description names (detection) or when every marked span is one
(fuzzing). Prompt tokens are characters / 4, as there, so costs follow the prompts' lengths."""

from __future__ import annotations

import json
import re

from tests import cascadefake as CF
from tests.fake_openai import Reply, Request

MODELS = CF.MODELS
PRICES = CF.PRICES
prices_file = CF.prices_file


def _judge(messages: list[dict]) -> str:
    user = messages[-1]["content"]
    named = {w.strip() for w in CF._named(user.split("\n", 1)[0].removeprefix("Description: "))}
    named -= {"the", "word"}
    lines = []
    for k, text in re.findall(r"^(\d+)\) (.*)$", user, re.M):
        spans = re.findall(r"<<(.*?)>>", text)
        if spans:  # fuzzing: every marked span is a named word
            yes = all(w.lower() in named for s in spans for w in s.split())
        else:
            yes = bool(named & {w.lower() for w in re.findall(r"[A-Za-z]+", text)})
        lines.append(f"{k}: {'yes' if yes else 'no'}")
    return "\n".join(lines)


def handler(req: Request) -> Reply:
    """cascadefake's endpoint, with the simulator model also answering judge prompts."""
    body = req.body or {}
    msgs = body.get("messages") or []
    if req.path.endswith("/chat/completions") and body.get("model") == "sim-model" and \
            msgs and msgs[-1]["content"].startswith("Description: "):
        text = _judge(msgs)
        return Reply.chat(text, prompt_tokens=CF._tokens(json.dumps(msgs)),
                          completion_tokens=CF._tokens(text))
    return CF.handler(req)
