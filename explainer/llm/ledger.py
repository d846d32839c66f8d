"""The LLM cache and ledger of a run: one SQLite file in the run directory, plus the price table.

This module is the only one that names the file (`FILE`, `path(run)`) or reads its tables:
stages, views and the engine read the ledger through `calls`, `totals` and `counts`.

`cache` maps a request's hash to its answer, so a rerun or resumed run sends nothing already
answered. `calls` holds one row per request attempt or cache hit (the ledger). Neither ever holds
the API key: the hash covers the request body (which names the model) only, not the endpoint,
so replicas of one model behind several `--base-url`s share answers (an endpoint serving other
weights under the same model name is the user's to name apart).

One writer per file. The process that runs a stage writes the run's file (`FILE`); each Ray
worker writes its own `llm.d/<writer>.sqlite` (rollback journal, which unlike WAL needs no
shared memory, so it works on a shared filesystem) and reads the answers of the others: its own
file first, then the run's file, then the other workers' files present when it opened. The
driver folds the worker files into the run's file (`merge_workers`) when the stage ends, or
when the next stage starts after a killed one. Commits are batched (every `COMMIT_EVERY` writes
or `COMMIT_S` seconds, and on close): a kill loses at most that much cache, which only means
asking again.

A shared answer cache (`--cache PATH` or $EXPLAIN_LLM_CACHE, see `shared_cache`) is one more
SQLite file with the same `cache` table, read after the run's own files and written beside them,
so several run directories asking the same requests pay for each answer once. A cache hit is a
`calls` row with `cached = 1`, cost 0 and, in `saved_usd`, what the answer would have cost.

A model run in this process (host `in-process`) logs its evaluations as calls too
(`Ledger.log_call`): `prompt_tokens` as an endpoint would bill them, `evaluated_tokens` as run.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Iterable

COMMIT_EVERY = 256  # writes per transaction
COMMIT_S = 1.0  # ... or this many seconds, whichever comes first
FILE = "llm.sqlite"  # the run's cache and ledger; the one place its name is spelled
WORKERS_DIR = "llm.d"  # per-worker ledger files beside FILE
IN_PROCESS = "in-process"  # the host of a model evaluated in this process (no server)

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
    saved_usd REAL,            -- a cache hit: what the answer would have cost, sent
    evaluated_tokens INTEGER   -- tokens a local model ran (NULL: as many as prompt_tokens)
);
"""
CACHE_ENV = "EXPLAIN_LLM_CACHE"  # a shared answer cache for every run, when no --cache is given
_COLS = ("stage", "key", "request", "model", "host", "prompt_tokens", "completion_tokens",
         "latency_s", "cached", "status", "error", "attempt", "evaluated_tokens")
ANSWERED = ("ok", "unusable")  # statuses of rows that carry an answer (failures carry none)
_NEURON = re.compile(r"^L(\d+)/N(\d+)\b")  # call keys of neuron work: L<layer>/N<neuron>/...


def path(run: Path | str) -> Path:
    """The ledger file of the run directory `run`."""
    return Path(run) / FILE


@dataclass(frozen=True)
class Call:
    """One row of the `calls` table: a request attempt, a cache hit, or an in-process evaluation."""

    time: float  # unix seconds
    stage: str  # describe, simulate, judge-detection, describe:L2 (a cascade level), ...
    key: str  # what the call was for: L<layer>/N<neuron>/..., puzzles/<name>/..., probe/...
    request: str  # sha256 of the request (the cache key)
    model: str
    host: str  # host:port of the endpoint, embedded:<model>, or IN_PROCESS
    prompt_tokens: int  # as an endpoint bills them (0 for a failed attempt)
    completion_tokens: int
    latency_s: float
    cached: bool
    status: str  # ok, unusable, or why the attempt failed
    error: str | None
    attempt: int
    cost_usd: float | None
    saved_usd: float | None  # a cache hit: what sending it would have cost
    evaluated_tokens: int  # tokens actually run through a model (prompt_tokens unless local)

    @property
    def neuron(self) -> tuple[int, int] | None:
        """(layer, neuron) named by the key, or None (a probe, a puzzle)."""
        m = _NEURON.match(self.key or "")
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def free(self) -> bool:
        """A model on this machine (embedded server or in-process): no dollars."""
        return self.host == IN_PROCESS or str(self.host or "").startswith("embedded:")


_READ = ", ".join(f.name for f in fields(Call))


@dataclass(frozen=True)
class Totals:
    """The answered calls of one group, each distinct request counted once (what the method
    costs, not what a resumed run happened to pay)."""

    neurons: int  # distinct (layer, neuron) named by the calls' keys
    calls: int  # distinct requests answered
    sent: int  # of those, answered by the model at least once (the rest came from a cache)
    prompt_tokens: int  # billed-equivalent
    completion_tokens: int
    evaluated_tokens: int  # what local models actually ran
    usd: float | None  # estimated from prices.json; 0 for local models; None with no price


class Ledger:
    """Cache and call log of one run (used from one event loop, so one connection suffices).

    `path` is the run's ledger file (`path(run)`); with a `writer` id this process writes
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

    @classmethod
    def for_run(cls, run: Path | str, writer: str | None = None,
                shared: Path | None = None) -> "Ledger":
        """The ledger of run directory `run` (a worker's own file with `writer`)."""
        return cls(path(run), writer=writer, shared=shared)

    def log(self, row: dict, cost: float | None = None, saved: float | None = None) -> None:
        """One `calls` row from a dict of `_COLS` names (missing ones are NULL)."""
        values = [row.get(c) for c in _COLS]
        self.db.execute(f"INSERT INTO calls (time, {', '.join(_COLS)}, cost_usd, saved_usd) "
                        f"VALUES ({', '.join('?' * (len(_COLS) + 3))})",
                        [time.time(), *values, cost, saved])
        self._wrote()

    def log_call(self, *, stage: str, key: str, request: str, model: str, host: str,
                 prompt_tokens: int, completion_tokens: int = 0, latency_s: float = 0.0,
                 evaluated_tokens: int | None = None, cached: bool = False,
                 status: str = "ok", error: str | None = None, attempt: int = 0,
                 cost: float | None = None, saved: float | None = None) -> None:
        """One call, by name: e.g. an in-process evaluation with `host=IN_PROCESS`,
        `prompt_tokens` as an endpoint would bill them and `evaluated_tokens` as run."""
        self.log({"stage": stage, "key": key, "request": request, "model": model, "host": host,
                  "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "latency_s": latency_s, "cached": int(cached), "status": status,
                  "error": error, "attempt": attempt, "evaluated_tokens": evaluated_tokens},
                 cost=cost, saved=saved)

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


def merge_workers(run: Path) -> int:
    """Fold every `llm.d/*.sqlite` of run directory `run` into its ledger and delete them;
    returns how many. Only the driver calls this, when no worker of the run is alive."""
    folder = Path(run) / WORKERS_DIR
    parts = sorted(folder.glob("*.sqlite")) if folder.is_dir() else []
    if not parts:
        return 0
    led = Ledger.for_run(run)
    cols = ", ".join(("time", *_COLS, "cost_usd", "saved_usd"))
    try:
        for p in parts:
            led.db.execute("ATTACH DATABASE ? AS w", (str(p),))
            try:
                tables = {r[0] for r in led.db.execute(
                    "SELECT name FROM w.sqlite_master WHERE type = 'table'")}
                if {"cache", "calls"} <= tables:
                    _migrate(led.db, "w.")  # a worker file of an older version
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


def _migrate(db: sqlite3.Connection, schema: str = "") -> None:
    """Ledgers written before a column existed gain it (SQLite adds it as NULL)."""
    have = {r[1] for r in db.execute(f"PRAGMA {schema}table_info(calls)")}
    for col, kind in (("saved_usd", "REAL"), ("evaluated_tokens", "INTEGER")):
        if col not in have:
            db.execute(f"ALTER TABLE {schema}calls ADD COLUMN {col} {kind}")


# --- reading ------------------------------------------------------------------------------


def exists(run: Path | str) -> bool:
    """Whether the run has a ledger (some LLM call was made in it)."""
    return path(run).exists()


def calls(run: Path | str, *, stage: str | None = None, key_prefix: str | None = None,
          since: float | None = None, sent: bool | None = None,
          writer: str | None = None) -> list[Call]:
    """The run's call rows in the order written, read-only, filtered by `stage`, call key
    prefix, time (`since`, unix seconds) and `sent` (False: cache hits only); `writer` reads a
    Ray worker's own file instead. No file, or one a worker has not yet written tables to: []."""
    where, args = ["1"], []
    for sql, value in (("stage = ?", stage), ("time >= ?", since),
                       ("cached = ?", None if sent is None else int(not sent))):
        if value is not None:
            where.append(sql)
            args.append(value)
    if key_prefix is not None:
        where.append("substr(key, 1, ?) = ?")  # not LIKE: keys may hold % and _
        args += [len(key_prefix), key_prefix]

    def query(db: sqlite3.Connection) -> list[tuple]:
        cols = {r[1] for r in db.execute("PRAGMA table_info(calls)")}
        # A ledger written before a column existed reads it as NULL.
        sel = ", ".join(c if c in cols else f"NULL AS {c}" for c in _READ.split(", "))
        return db.execute(f"SELECT {sel} FROM calls WHERE {' AND '.join(where)} ORDER BY id",
                          args).fetchall()

    return [_call(r) for r in _read(run, writer, query, [])]


def counts(run: Path | str, writer: str | None = None) -> tuple[int, int]:
    """(call rows, rows sent rather than read from a cache) so far (a worker's own file with
    `writer`): the engines' cheap progress figure."""
    sql = "SELECT count(*), coalesce(sum(cached = 0), 0) FROM calls"
    n, sent = _read(run, writer, lambda db: db.execute(sql).fetchone(), (0, 0))
    return int(n), int(sent)


def _read(run: Path | str, writer: str | None, query, empty):
    """query(a read-only connection) on the run's file (a worker's with `writer`), or `empty`
    when there is no file yet, or no table in it (a worker file caught mid-creation)."""
    file = Path(run) / WORKERS_DIR / f"{writer}.sqlite" if writer else path(run)
    if not file.exists():
        return empty
    db = sqlite3.connect(f"file:{file}?mode=ro", uri=True, timeout=60)
    try:
        return query(db)
    except sqlite3.OperationalError:
        return empty
    finally:
        db.close()


def _call(r: tuple) -> Call:
    (t, stage, key, request, model, host, pt, ct, lat, cached, status, error, attempt, cost,
     saved, evaluated) = r
    pt = int(pt or 0)
    return Call(float(t), stage or "", key or "", request or "", model or "", host or "", pt,
                int(ct or 0), float(lat or 0.0), bool(cached), status or "", error,
                int(attempt or 0), cost, saved, pt if evaluated is None else int(evaluated))


def totals(rows: Iterable[Call], by: tuple[str, ...] = ("stage", "model")) -> dict[tuple, Totals]:
    """The answered calls of `rows` grouped by `by` (names of Call fields or properties,
    e.g. ("stage", "model"), ("neuron",) or ()), sorted by group."""
    groups: dict[tuple, dict] = {}
    for c in rows:
        if c.status not in ANSWERED:
            continue
        g = groups.setdefault(tuple(getattr(c, b) for b in by),
                              {"neurons": set(), "req": {}, "sent": set()})
        if c.neuron is not None:
            g["neurons"].add(c.neuron)
        g["req"].setdefault(c.request, (c.prompt_tokens, c.completion_tokens,
                                        c.evaluated_tokens, c.model, c.free))
        if not c.cached:
            g["sent"].add(c.request)
    out = {}
    for k in sorted(groups, key=lambda k: tuple((v is None, v or 0) for v in k)):
        g = groups[k]
        req = g["req"].values()
        usd: float | None = 0.0
        for pt, ct, _, model, free in req:
            one = cost_usd(model, pt, ct, free=free)
            usd = None if usd is None or one is None else usd + one
        out[k] = Totals(len(g["neurons"]), len(g["req"]), len(g["sent"]),
                        sum(r[0] for r in req), sum(r[1] for r in req), sum(r[2] for r in req),
                        usd)
    return out


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
