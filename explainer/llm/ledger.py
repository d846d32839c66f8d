"""The LLM cache and ledger of a run: one SQLite file, `<run>/llm.sqlite`, plus the price table.

`cache` maps a request's hash to its answer, so a rerun or resumed run sends nothing already
answered. `calls` holds one row per request attempt or cache hit (the ledger). Neither ever holds
the API key: the hash covers the model, the endpoint host and the request body only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from functools import lru_cache
from pathlib import Path

PRICES = Path(__file__).resolve().parent / "prices.json"  # ships in the wheel; users may edit it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (
    request TEXT PRIMARY KEY,  -- sha256 of (model, host, kind, body, sample)
    model TEXT NOT NULL,
    answer TEXT NOT NULL,      -- the Completion as JSON
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,        -- unix seconds
    stage TEXT, key TEXT, request TEXT, model TEXT, host TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL,
    cached INTEGER, status TEXT, error TEXT, attempt INTEGER, cost_usd REAL
);
"""
_COLS = ("stage", "key", "request", "model", "host", "prompt_tokens", "completion_tokens",
         "latency_s", "cached", "status", "error", "attempt")


class Ledger:
    """Cache and call log of one run (used from one event loop, so one connection suffices)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30)
        # WAL lets a second stage (or a report) read while this one writes.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    @staticmethod
    def request_key(host: str, kind: str, body: dict, sample: int) -> str:
        """sha256 of what determines an answer (the key is not part of it)."""
        blob = json.dumps({"host": host, "kind": kind, "body": body, "sample": sample},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, request: str) -> dict | None:
        row = self.db.execute("SELECT answer FROM cache WHERE request = ?", (request,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, request: str, model: str, answer_json: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?)",
                            (request, model, answer_json, time.time()))

    def log(self, row: dict, cost: float | None = None) -> None:
        values = [row.get(c) for c in _COLS]
        with self.db:
            self.db.execute(f"INSERT INTO calls (time, {', '.join(_COLS)}, cost_usd) "
                            f"VALUES ({', '.join('?' * (len(_COLS) + 2))})",
                            [time.time(), *values, cost])

    def close(self) -> None:
        self.db.close()


@lru_cache(maxsize=1)
def _prices() -> dict[str, tuple[float, float]]:
    data = json.loads(PRICES.read_text())
    return {k: (float(v[0]), float(v[1])) for k, v in data["usd_per_million_tokens"].items()}


def price(model: str) -> tuple[float, float] | None:
    """(prompt, completion) USD per million tokens, or None for a model not in the table."""
    table = _prices()
    if model in table:
        return table[model]
    # OpenRouter-style names carry the provider: "openai/gpt-4o-mini".
    short = model.rsplit("/", 1)[-1]
    return table.get(short)


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int,
             free: bool = False) -> float | None:
    """Estimated dollars of one answer (0 for a `free` local model; None with no known price)."""
    if free:
        return 0.0
    p = price(model)
    if p is None:
        return None
    return (prompt_tokens * p[0] + completion_tokens * p[1]) / 1e6
