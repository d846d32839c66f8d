"""`run.json`: the run's metadata (subject models, settings, layers done), replaced atomically."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from explainer.run.schema import RUN_JSON, model_key


def read_run_json(run: Path) -> dict:
    """The run's metadata (an empty skeleton when the run is new)."""
    path = Path(run) / RUN_JSON
    if not path.exists():
        return {"format": 1, "models": {}}
    return json.loads(path.read_text())


def write_run_json(run: Path, meta: dict) -> None:
    """Replace run.json atomically."""
    path = Path(run) / RUN_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{RUN_JSON}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def model_meta(run: Path, model: str) -> dict | None:
    """run.json's entry for one subject model, or None."""
    return read_run_json(run).get("models", {}).get(model_key(model))


def clean_tmp(run: Path) -> int:
    """Remove temporary files a killed writer left behind; returns how many."""
    n = 0
    for tmp in Path(run).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n
