"""The LLM cache and ledger of a run: one SQLite file, `<run>/llm.sqlite`, plus the price table.

`cache` maps a request's hash to its answer, so a rerun or resumed run sends nothing already
answered. `calls` holds one row per request attempt or cache hit (the ledger). Neither ever holds
the API key: the hash covers the request body (which names the model) only, not the endpoint,
so replicas of one model behind several `--base-url`s share answers (an endpoint serving other
weights under the same model name is the user's to name apart).

One writer per file. The process that runs a stage writes `llm.sqlite`; each Ray worker writes
its own `llm.d/<writer>.sqlite` (rollback journal, which unlike WAL needs no shared memory, so
it works on a shared filesystem) and reads the answers of the others: its own file first, then
`llm.sqlite`, then the other workers' files present when it opened. The driver folds the worker
files into `llm.sqlite` (`merge_workers`) when the stage ends, or when the next stage starts
after a killed one. Commits are batched (every `COMMIT_EVERY` writes or `COMMIT_S` seconds, and
on close): a kill loses at most that much cache, which only means asking again.

A shared answer cache (`--cache PATH` or $EXPLAIN_LLM_CACHE, see `shared_cache`) is one more
SQLite file with the same `cache` table, read after the run's own files and written beside them,
so several run directories asking the same requests pay for each answer once. A cache hit is a
`calls` row with `cached = 1`, cost 0 and, in `saved_usd`, what the answer would have cost.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from functools import lru_cache
from pathlib import Path

COMMIT_EVERY = 256  # writes per transaction
COMMIT_S = 1.0  # ... or this many seconds, whichever comes first
WORKERS_DIR = "llm.d"  # per-worker ledger files beside llm.sqlite

PRICES = Path(__file__).resolve().parent / "prices.json"  # ships in the wheel; users may edit it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (
    request TEXT PRIMARY KEY,  -- sha256 of (kind, body incl. model, sample)
    model TEXT NOT NULL,
    answer TEXT NOT NULL,      -- the Completion as JSON
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,        -- unix seconds
    stage TEXT, key TEXT, request TEXT, model TEXT, host TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL,
    cached INTEGER, status TEXT, error TEXT, attempt INTEGER, cost_usd REAL,
    saved_usd REAL             -- a cache hit: what the answer would have cost, sent
);
"""
CACHE_ENV = "EXPLAIN_LLM_CACHE"  # a shared answer cache for every run, when no --cache is given
_COLS = ("stage", "key", "request", "model", "host", "prompt_tokens", "completion_tokens",
         "latency_s", "cached", "status", "error", "attempt")


class Ledger:
    """Cache and call log of one run (used from one event loop, so one connection suffices).

    `path` is the run's `llm.sqlite`; with a `writer` id this process writes
    `llm.d/<writer>.sqlite` instead and reads the others (see the module's docstring).
    """

    def __init__(self, path: Path, writer: str | None = None, shared: Path | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.readers: list[sqlite3.Connection] = []
        if writer is None:
            self.db = sqlite3.connect(path, timeout=30)
            # WAL lets a second stage (or a report) read while this one writes.
            self.db.execute("PRAGMA journal_mode=WAL")
        else:
            own = path.parent / WORKERS_DIR / f"{writer}.sqlite"
            own.parent.mkdir(exist_ok=True)
            self.db = sqlite3.connect(own, timeout=60)
            self.db.execute("PRAGMA journal_mode=DELETE")
            others = [path] if path.exists() else []
            others += [p for p in sorted(own.parent.glob("*.sqlite")) if p != own]
            for p in others:
                self.readers.append(sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=60))
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        _migrate(self.db)
        self.shared = None  # the shared answer cache, when one is named
        if shared is not None and Path(shared).resolve() != path.resolve():
            Path(shared).parent.mkdir(parents=True, exist_ok=True)
            self.shared = sqlite3.connect(shared, timeout=60)
            self.shared.execute("PRAGMA journal_mode=WAL")  # several runs read and write it
            self.shared.executescript(_SCHEMA)
            _migrate(self.shared)
            self.readers.append(self.shared)
        self._writes, self._since = 0, time.monotonic()

    @staticmethod
    def request_key(kind: str, body: dict, sample: int) -> str:
        """sha256 of what determines an answer: the body (model included), not where it went."""
        blob = json.dumps({"kind": kind, "body": body, "sample": sample},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, request: str) -> dict | None:
        for db in (self.db, *self.readers):
            try:
                row = db.execute("SELECT answer FROM cache WHERE request = ?",
                                 (request,)).fetchone()
            except sqlite3.OperationalError:  # a worker file still empty of tables
                continue
            if row:
                return json.loads(row[0])
        return None

    def put(self, request: str, model: str, answer_json: str) -> None:
        for db in (self.db, self.shared) if self.shared is not None else (self.db,):
            db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?)",
                       (request, model, answer_json, time.time()))
        self._wrote()

    def log(self, row: dict, cost: float | None = None, saved: float | None = None) -> None:
        values = [row.get(c) for c in _COLS]
        self.db.execute(f"INSERT INTO calls (time, {', '.join(_COLS)}, cost_usd, saved_usd) "
                        f"VALUES ({', '.join('?' * (len(_COLS) + 3))})",
                        [time.time(), *values, cost, saved])
        self._wrote()

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes >= COMMIT_EVERY or time.monotonic() - self._since > COMMIT_S:
            self.commit()

    def commit(self) -> None:
        self.db.commit()
        if self.shared is not None:
            self.shared.commit()
        self._writes, self._since = 0, time.monotonic()

    def close(self) -> None:
        self.commit()
        for db in (self.db, *self.readers):
            db.close()


def merge_workers(path: Path) -> int:
    """Fold every `llm.d/*.sqlite` beside `path` into it and delete them; returns how many.

    Only the driver calls this, when no worker of the run is alive."""
    folder = path.parent / WORKERS_DIR
    parts = sorted(folder.glob("*.sqlite")) if folder.is_dir() else []
    if not parts:
        return 0
    led = Ledger(path)
    cols = ", ".join(("time", *_COLS, "cost_usd", "saved_usd"))
    try:
        for p in parts:
            led.db.execute("ATTACH DATABASE ? AS w", (str(p),))
            try:
                tables = {r[0] for r in led.db.execute(
                    "SELECT name FROM w.sqlite_master WHERE type = 'table'")}
                if {"cache", "calls"} <= tables:
                    led.db.execute("INSERT OR IGNORE INTO cache SELECT * FROM w.cache")
                    led.db.execute(f"INSERT INTO calls ({cols}) SELECT {cols} FROM w.calls")
                led.db.commit()
            finally:
                led.db.execute("DETACH DATABASE w")
            p.unlink()
            for extra in p.parent.glob(p.name + "-*"):  # a journal left by a killed worker
                extra.unlink(missing_ok=True)
    finally:
        led.close()
    return len(parts)


def _migrate(db: sqlite3.Connection) -> None:
    """Ledgers written before a column existed gain it (SQLite adds it as NULL)."""
    have = {r[1] for r in db.execute("PRAGMA table_info(calls)")}
    if "saved_usd" not in have:
        db.execute("ALTER TABLE calls ADD COLUMN saved_usd REAL")


def shared_cache(path: Path | str | None) -> Path | None:
    """The shared answer cache: `path` (--cache), else $EXPLAIN_LLM_CACHE, else none."""
    import os

    chosen = path or os.environ.get(CACHE_ENV) or None
    return Path(chosen).expanduser() if chosen else None


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
