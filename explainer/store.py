"""The run directory contract: table names, schemas, Hive partitions, atomic writes, resume keys.

A run directory holds `run.json` plus one folder per table. Every table is Parquet, partitioned
`model=…/` (and `layer=…/` where it has a layer), so pandas, pyarrow.dataset and DuckDB read a
whole run or one layer with a filter. Partition columns live in the path only (the Hive rule), so
readers get them from there.

Files are written under a hidden temporary name and renamed into place, so a killed process never
leaves a half file that a reader would take. A table may hold several files per partition (stages
append as they go); `read` keeps the newest row for each key, so rewriting a row is appending it.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

RUN_JSON = "run.json"
F32 = pa.float32()
LIST_F32 = pa.list_(pa.float32())


@dataclass(frozen=True)
class Table:
    """One table of the run directory."""

    name: str
    schema: pa.Schema  # in-file columns; `model` and `layer` come from the path
    key: tuple[str, ...]  # a row's identity, partition columns included
    by_layer: bool = True

    @property
    def columns(self) -> list[str]:
        part = ["model", "layer"] if self.by_layer else ["model"]
        return part + self.schema.names


TABLES: dict[str, Table] = {
    t.name: t
    for t in [
        Table(
            "excerpts",
            pa.schema([("excerpt_id", pa.int64()), ("token_ids", pa.list_(pa.int32())),
                       ("tokens", pa.list_(pa.string()))]),
            ("model", "excerpt_id"),
            by_layer=False,
        ),
        Table(
            "records",
            pa.schema([("neuron", pa.int32()), ("excerpt_id", pa.int64()), ("kind", pa.string()),
                       ("rank", pa.int32()), ("split", pa.string()),
                       ("activations", LIST_F32), ("max_activation", F32)]),
            ("model", "layer", "neuron", "kind", "excerpt_id"),
        ),
        Table(
            "neurons",
            pa.schema([("neuron", pa.int32()), ("mean", pa.float64()), ("std", pa.float64()),
                       ("max", F32), ("min", F32), ("density", pa.float64()),
                       ("n_tokens", pa.int64()), ("quantiles", LIST_F32)]),
            ("model", "layer", "neuron"),
        ),
        Table(
            "explanations",
            pa.schema([("neuron", pa.int32()), ("explainer", pa.string()),
                       ("prompt_hash", pa.string()), ("candidate", pa.int32()),
                       ("explanation", pa.string()), ("prompt_tokens", pa.int64()),
                       ("completion_tokens", pa.int64()), ("status", pa.string()),
                       ("error", pa.string())]),
            ("model", "layer", "neuron", "explainer", "prompt_hash", "candidate"),
        ),
        Table(
            "simulations",
            pa.schema([("neuron", pa.int32()), ("explainer", pa.string()),
                       ("candidate", pa.int32()), ("simulator", pa.string()),
                       ("mode", pa.string()), ("excerpt_id", pa.int64()), ("kind", pa.string()),
                       ("split", pa.string()), ("predicted", LIST_F32),
                       ("status", pa.string()), ("error", pa.string())]),
            ("model", "layer", "neuron", "explainer", "candidate", "simulator", "kind",
             "excerpt_id"),
        ),
        Table(
            "scores",
            pa.schema([("neuron", pa.int32()), ("explainer", pa.string()),
                       ("candidate", pa.int32()), ("simulator", pa.string()),
                       ("split", pa.string()), ("explanation", pa.string()),
                       ("score", pa.float64()), ("score_top", pa.float64()),
                       ("score_random", pa.float64()), ("rsquared", pa.float64()),
                       ("abs_dev_explained", pa.float64()), ("n_tokens", pa.int64()),
                       ("best", pa.bool_()), ("status", pa.string()), ("error", pa.string())]),
            ("model", "layer", "neuron", "explainer", "candidate", "simulator", "split"),
        ),
    ]
}


# --- typed rows: one dataclass per table, fields in column order ------------------------------


@dataclass(frozen=True)
class ExplanationRow:
    """One explanation of a neuron (status 'ok'), or a failed attempt (explanation None)."""

    model: str
    layer: int
    neuron: int
    explainer: str  # the explainer LLM's name at its endpoint, or 'baseline-tokens'
    prompt_hash: str  # 12 hex of the prompt files used, so results stay comparable
    candidate: int  # 0..N-1 with --candidates N
    explanation: str | None
    prompt_tokens: int
    completion_tokens: int
    status: str  # ok | failed
    error: str | None


@dataclass(frozen=True)
class SimulationRow:
    """A simulator's predicted activations for one (explanation, excerpt)."""

    model: str
    layer: int
    neuron: int
    explainer: str
    candidate: int
    simulator: str
    mode: str  # logprob | chat | chat-logprob (the in-process embedded path is logprob)
    excerpt_id: int
    kind: str  # top | random | quantile
    split: str  # calibrate | valid | test
    predicted: list[float] | None  # one value per subject token, None when failed
    status: str  # ok | failed
    error: str | None


@dataclass(frozen=True)
class ScoreRow:
    """Scores of one explanation on one split (REFERENCE.md, Scores)."""

    model: str
    layer: int
    neuron: int
    explainer: str
    candidate: int
    simulator: str
    split: str  # valid (headline) | test (held back, reported for the chosen candidate)
    explanation: str
    score: float | None  # correlation over top + random; None when undefined (see status)
    score_top: float | None
    score_random: float | None
    rsquared: float | None
    abs_dev_explained: float | None
    n_tokens: int
    best: bool  # the candidate chosen on the valid split
    status: str  # ok | constant_prediction | constant_activation | failed
    error: str | None


def table(name: str) -> Table:
    """The table called `name` (a KeyError names a bug, not bad input)."""
    return TABLES[name]


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def model_key(name: str) -> str:
    """A model name as it appears in a partition path (`model=<key>`)."""
    return _SAFE.sub("_", name).strip("_") or "model"


def partition_dir(run: Path, name: str, model: str, layer: int | None = None) -> Path:
    """Folder of one partition of a table."""
    path = Path(run) / name / f"model={model_key(model)}"
    return path / f"layer={int(layer)}" if TABLES[name].by_layer else path


# --- writing ----------------------------------------------------------------------------------


def _atomic_write_table(data: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(data, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _as_arrow(values: Any, typ: pa.DataType) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(typ) if values.type != typ else values
    return pa.array(values, type=typ)


def list_array(rows) -> pa.Array:
    """A 2-D numpy array as a list<float32> column, one row per list, without a Python loop."""
    import numpy as np

    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n, width = rows.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(rows.ravel()))


def write_columns(run: Path, name: str, columns: dict[str, Any], *, model: str,
                  layer: int | None = None, prefix: str = "part") -> Path:
    """Write one new file into a partition from column arrays (atomic; returns its path)."""
    t = TABLES[name]
    missing = set(t.schema.names) - set(columns)
    extra = set(columns) - set(t.schema.names)
    if missing or extra:
        raise ValueError(f"{name}: missing columns {sorted(missing)}, unknown {sorted(extra)}")
    data = pa.table({c: _as_arrow(columns[c], t.schema.field(c).type)
                     for c in t.schema.names}, schema=t.schema)
    # The time prefix orders files by write time, which `read` uses to keep the newest row.
    fname = f"{time.time_ns():020d}-{_SAFE.sub('_', prefix)}.parquet"
    return _atomic_write_table(data, partition_dir(run, name, model, layer) / fname)


def write_rows(run: Path, name: str, rows: Sequence[Any], prefix: str = "part") -> list[Path]:
    """Write dataclass rows (fields in column order, `model` and `layer` first) by partition."""
    t = TABLES[name]
    groups: dict[tuple, list[tuple]] = {}
    for row in rows:
        values = astuple(row)
        groups.setdefault(values[: 2 if t.by_layer else 1], []).append(values)
    names = [f.name for f in fields(rows[0])] if rows else []
    if rows and names != t.columns:
        raise ValueError(f"{type(rows[0]).__name__} fields {names} != {name} columns {t.columns}")
    paths = []
    for part, vals in groups.items():
        cols = {c: [v[i] for v in vals] for i, c in enumerate(t.columns) if c in t.schema.names}
        layer = part[1] if t.by_layer else None
        paths.append(write_columns(run, name, cols, model=part[0], layer=layer, prefix=prefix))
    return paths


def remove_partition(run: Path, name: str, model: str, layer: int | None = None) -> None:
    """Delete every file of one partition (used before redoing it from scratch)."""
    folder = partition_dir(run, name, model, layer)
    if folder.is_dir():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def remove_files(paths: Iterable[Path]) -> None:
    """Delete superseded files once their replacement is in place."""
    for p in paths:
        Path(p).unlink(missing_ok=True)


# --- reading ----------------------------------------------------------------------------------


def _partitions(run: Path, name: str, model: str | None, layer: int | None):
    root = Path(run) / name
    if not root.is_dir():
        return
    mkey = model_key(model) if model is not None else None
    for mdir in sorted(root.glob("model=*")):
        m = mdir.name.split("=", 1)[1]
        if mkey is not None and m != mkey:
            continue
        if not TABLES[name].by_layer:
            yield m, None, mdir
            continue
        for ldir in sorted(mdir.glob("layer=*"), key=lambda p: int(p.name.split("=", 1)[1])):
            lay = int(ldir.name.split("=", 1)[1])
            if layer is None or lay == int(layer):
                yield m, lay, ldir


def files(run: Path, name: str, model: str | None = None, layer: int | None = None) -> list[Path]:
    """Finished Parquet files of a table (temporary files are never listed)."""
    return [f for _, _, d in _partitions(run, name, model, layer)
            for f in sorted(d.glob("*.parquet")) if not f.name.startswith(".")]


def read_arrow(run: Path, name: str, model: str | None = None, layer: int | None = None,
               columns: list[str] | None = None) -> pa.Table:
    """A table (or one model/layer of it) as Arrow, newest row per key, partition columns first."""
    t = TABLES[name]
    want = [c for c in (columns or t.schema.names) if c in t.schema.names]
    key_cols = [c for c in t.key if c in t.schema.names]
    read_cols = list(dict.fromkeys(want + key_cols))
    pieces = []
    for m, lay, folder in _partitions(run, name, model, layer):
        for f in sorted(folder.glob("*.parquet")):
            if f.name.startswith("."):
                continue
            piece = pq.read_table(f, columns=read_cols)
            n = piece.num_rows
            if t.by_layer:
                piece = piece.add_column(0, "layer", pa.array([lay] * n, pa.int64()))
            piece = piece.add_column(0, "model", pa.array([m] * n, pa.string()))
            pieces.append(piece)
    part = ["model", "layer"] if t.by_layer else ["model"]
    if not pieces:
        schema = pa.schema([pa.field("model", pa.string())]
                           + ([pa.field("layer", pa.int64())] if t.by_layer else [])
                           + [t.schema.field(c) for c in read_cols])
        return schema.empty_table().select(part + want)
    data = pa.concat_tables(pieces)
    if len(pieces) > 1:
        data = _keep_newest(data, list(t.key))
    return data.select(part + want)


def _keep_newest(data: pa.Table, key: list[str]) -> pa.Table:
    # Rows arrive in file-write order; the last occurrence of each key wins.
    import pyarrow.compute as pc

    idx = pa.array(range(data.num_rows), pa.int64())
    grouped = data.select(key).append_column("_i", idx).group_by(key).aggregate([("_i", "max")])
    keep = pc.sort_indices(grouped.column("_i_max"))
    return data.take(pc.take(grouped.column("_i_max"), keep))


def read(run: Path, name: str, model: str | None = None, layer: int | None = None,
         columns: list[str] | None = None):
    """A table as a pandas DataFrame (see `read_arrow`)."""
    return read_arrow(run, name, model, layer, columns).to_pandas()


def models_in(run: Path, name: str) -> list[str]:
    """Model keys that have a partition in a table."""
    root = Path(run) / name
    return sorted(p.name.split("=", 1)[1] for p in root.glob("model=*")) if root.is_dir() else []


def layers_in(run: Path, name: str, model: str) -> list[int]:
    """Layers of one model that have files in a table."""
    return sorted({lay for _, lay, d in _partitions(run, name, model, None)
                   if any(d.glob("*.parquet"))})


# --- run.json ---------------------------------------------------------------------------------


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
