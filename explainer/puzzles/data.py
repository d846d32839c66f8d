"""Neuron puzzles: made-up neurons whose activations follow a rule written down in advance.

A puzzle pairs short token passages with activations that obey its true explanation exactly, and
carries close-but-wrong explanations beside it, so a simulator can be measured on explanations
whose truth is known: a good simulator scores the true explanation above every false one.
The file format is documented by `puzzles.json` itself; `load` checks it and names the first
problem in one sentence. Puzzles and passages in error messages are counted from 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError

FORMAT = 1
CATEGORIES = ("lexical", "contextual", "positional", "predictive")
MAX_ACTIVATION = 10  # the simulator's scale is 0..10 (REFERENCE.md, Activation display)
MAX_FALSE = 4  # more wrong answers than this dilutes the comparison without adding to it


@dataclass(frozen=True)
class Passage:
    """One short excerpt of a puzzle with the activation its rule gives each token."""

    tokens: tuple[str, ...]
    """Tokens as GPT-2's BPE would roughly split them (words carry their leading space)."""
    activations: tuple[float, ...]
    """One activation per token, 0..10."""


@dataclass(frozen=True)
class Puzzle:
    """A made-up neuron: its true explanation, wrong ones, and passages that follow the truth."""

    name: str
    """Unique kebab-case name."""
    category: str
    """One of CATEGORIES: what the rule reads (the token, its context, position, next token)."""
    explanation: str
    """The true rule, completing 'This neuron fires on ...'."""
    false_explanations: tuple[str, ...]
    """Close but wrong rules that the passages tell apart from the true one."""
    passages: tuple[Passage, ...]


def load(path: Path | None = None) -> list[Puzzle]:
    """Read and check a puzzles file; None reads the one shipped with the package."""
    path = Path(__file__).with_name("puzzles.json") if path is None else Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ExplainError(f"{path}: cannot read the puzzles file ({e.strerror}).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExplainError(f"{path.name}: not valid JSON ({e}).") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ExplainError(f"{path.name}: format is {got!r}, expected an object with "
                           f"\"format\": {FORMAT}.")
    items = raw.get("puzzles")
    if not isinstance(items, list) or not items:
        raise ExplainError(f"{path.name}: \"puzzles\" must be a non-empty list of puzzles.")
    puzzles = [_puzzle(item, i, path.name) for i, item in enumerate(items, start=1)]
    seen: set[str] = set()
    for p in puzzles:
        if p.name in seen:
            raise ExplainError(f"{path.name}: puzzle name {p.name!r} is used twice; "
                               f"names must be unique.")
        seen.add(p.name)
    return puzzles


def _puzzle(item: object, index: int, file: str) -> Puzzle:
    """One puzzle from its JSON object, or ExplainError naming the puzzle and the problem."""
    if not isinstance(item, dict):
        raise ExplainError(f"{file}: puzzle {index} is a {type(item).__name__}, not an object.")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ExplainError(f"{file}: puzzle {index} has no name; give it a non-empty string.")
    where = f"{file}: puzzle {name!r}"
    category = item.get("category")
    if category not in CATEGORIES:
        raise ExplainError(f"{where} has category {category!r}; valid: {', '.join(CATEGORIES)}.")
    explanation = item.get("explanation")
    if not isinstance(explanation, str) or not explanation.strip():
        raise ExplainError(f"{where} has no explanation; give a non-empty string.")
    false = item.get("false_explanations")
    if (not isinstance(false, list) or not 1 <= len(false) <= MAX_FALSE
            or not all(isinstance(f, str) and f.strip() for f in false)):
        n = len(false) if isinstance(false, list) else type(false).__name__
        raise ExplainError(f"{where} has false_explanations {n}; give a list of 1 to "
                           f"{MAX_FALSE} non-empty strings.")
    raw_passages = item.get("passages")
    if not isinstance(raw_passages, list) or not raw_passages:
        raise ExplainError(f"{where} has no passages; give at least one.")
    passages = tuple(_passage(p, j, where) for j, p in enumerate(raw_passages, start=1))
    values = {a for p in passages for a in p.activations}
    # A constant neuron has no correlation with anything (REFERENCE.md, Scores): unscorable.
    if len(values) < 2:
        raise ExplainError(f"{where} has the same activation {values.pop():g} on every token; "
                           f"a puzzle needs some tokens that fire and some that do not.")
    return Puzzle(name, category, explanation, tuple(false), passages)


def _passage(item: object, index: int, where: str) -> Passage:
    """One passage from its JSON object, or ExplainError naming the passage and the problem."""
    where = f"{where} passage {index}"
    if not isinstance(item, dict):
        raise ExplainError(f"{where} is a {type(item).__name__}, not an object with "
                           f"\"tokens\" and \"activations\".")
    tokens, acts = item.get("tokens"), item.get("activations")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ExplainError(f"{where} has no tokens; give a non-empty list of strings.")
    if not isinstance(acts, list):
        raise ExplainError(f"{where} has no activations; give a list of numbers 0..10.")
    if len(tokens) != len(acts):
        raise ExplainError(f"{where} has {len(tokens)} tokens but {len(acts)} activations.")
    for k, a in enumerate(acts, start=1):
        # bool is an int subclass, and JSON true is a typo rather than an activation of 1.
        ok = (isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
              and 0 <= a <= MAX_ACTIVATION)
        if not ok:
            raise ExplainError(f"{where} token {k} ({tokens[k - 1]!r}) has activation {a!r}; "
                               f"activations are numbers from 0 to {MAX_ACTIVATION}.")
    return Passage(tuple(tokens), tuple(float(a) for a in acts))
