"""`run.json`: the run's metadata (subject models, settings, layers done), replaced atomically.

Writers on several processes or machines (the Ray engine's workers, two stages at once) change
it only through `update_run_json`: read, modify and replace under an exclusive `fcntl` lock on
`.run.json.lock` beside it, so no update is lost to another's read-modify-write. Readers take no
lock: the file is always replaced whole (`os.replace`).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

LOCK = ".run.json.lock"

from explainer.run.schema import RUN_JSON, model_key


def read_run_json(run: Path) -> dict:
    """The run's metadata (an empty skeleton when the run is new)."""
    path = Path(run) / RUN_JSON
    if not path.exists():
        return {"format": 1, "models": {}}
    return json.loads(path.read_text())


@contextlib.contextmanager
def _locked(run: Path) -> Iterator[None]:
    import fcntl

    Path(run).mkdir(parents=True, exist_ok=True)
    with open(Path(run) / LOCK, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield


def _replace(run: Path, meta: dict) -> None:
    path = Path(run) / RUN_JSON
    tmp = path.parent / f".{RUN_JSON}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def write_run_json(run: Path, meta: dict) -> None:
    """Replace run.json atomically (under the lock; prefer `update_run_json` to change it)."""
    with _locked(run):
        _replace(run, meta)


def update_run_json(run: Path, change: Callable[[dict], dict | None]) -> dict:
    """Read, `change` (in place, or return a new dict) and replace run.json, all under the lock."""
    with _locked(run):
        meta = read_run_json(run)
        meta = change(meta) or meta
        _replace(run, meta)
        return meta


def model_meta(run: Path, model: str) -> dict | None:
    """run.json's entry for one subject model, or None."""
    return read_run_json(run).get("models", {}).get(model_key(model))


def endpoint_key(host: str, model: str) -> str:
    """run.json's key of one LLM endpoint: `host|model`."""
    return f"{host}|{model}"


def endpoint_meta(run: Path, host: str, model: str) -> dict:
    """What the run learned about one LLM endpoint (e.g. `echo_shift`); {} when nothing."""
    return read_run_json(run).get("endpoints", {}).get(endpoint_key(host, model), {})


def update_endpoint_meta(run: Path, host: str, model: str, **values) -> dict:
    """Record facts about one LLM endpoint in run.json (under `endpoints`, keyed host|model)."""
    def change(meta: dict) -> None:
        meta.setdefault("endpoints", {}).setdefault(endpoint_key(host, model), {}).update(values)

    return update_run_json(run, change)["endpoints"][endpoint_key(host, model)]


def clean_tmp(run: Path) -> int:
    """Remove temporary files a killed writer left behind; returns how many."""
    n = 0
    for tmp in Path(run).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n
