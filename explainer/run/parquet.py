"""Parquet I/O of the run directory: atomic writes, newest-row-per-key reads, partition listing.

Files are written under a hidden temporary name and renamed into place, so a killed process never
leaves a half file that a reader would take. A table may hold several files per partition (stages
append as they go); `read` keeps the newest row for each key, so rewriting a row is appending it.

A file is named `{sequence:020d}-{writer}-{prefix}.parquet`, never by wall clock (clocks of the
machines of a cluster disagree): `writer` names the process that wrote it (unique among
concurrent writers), and `sequence` is one more than the largest sequence in the partition when
it was written, so it rises with every write of one writer and a later writer's rows win over an
earlier writer's. Files are read in (sequence, writer) order. Concurrent writers may share a
sequence; they write disjoint keys (the engines give each worker its own neurons), and the
writer id breaks the tie deterministically. A file of an older version (`{time_ns}-{prefix}`)
reads as sequence = its time prefix, so new files still sort after it.

`compact` rewrites a partition as one file, newest row per key, so that a plain
`pd.read_parquet` or DuckDB query of a table returns one row per key; stages call it on the
partitions they wrote once they are done (see its docstring for why a kill is harmless).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from explainer.run.schema import (DEFAULTS, TABLES, UNSAFE_CHARS, key_columns, model_key,
                                  partition_dir)


_WRITER: list[str] = []  # this process's writer id, made on first use (see `writer_id`)


def writer_id() -> str:
    """This process's writer id: host and pid (unique among the processes of a cluster)."""
    if not _WRITER:
        _WRITER.append(UNSAFE_CHARS.sub("_", f"{socket.gethostname()}.{os.getpid()}"))
    return _WRITER[0]


def _sequence(path: Path) -> int:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


def file_order(path: Path) -> tuple[int, str]:
    """(sequence, writer, ...) sort key of a table file: the order in which `read` applies rows."""
    seq = _sequence(path)
    return seq, path.name.split("-", 1)[1] if "-" in path.name else path.name


def next_file_name(folder: Path, writer: str, prefix: str = "part") -> str:
    """The name of a writer's next file in a partition: sequence = largest there + 1."""
    top = -1
    if folder.is_dir():
        for entry in os.scandir(folder):
            if entry.name.endswith(".parquet") and not entry.name.startswith("."):
                top = max(top, _sequence(Path(entry.name)))
    return (f"{top + 1:020d}-{UNSAFE_CHARS.sub('_', writer)}-"
            f"{UNSAFE_CHARS.sub('_', prefix)}.parquet")


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
                  layer: int | None = None, prefix: str = "part",
                  writer: str | None = None) -> Path:
    """Write one new file into a partition from column arrays (atomic; returns its path).

    `writer` defaults to this process's `writer_id()`."""
    t = TABLES[name]
    missing = set(t.schema.names) - set(columns)
    extra = set(columns) - set(t.schema.names)
    if missing or extra:
        raise ValueError(f"{name}: missing columns {sorted(missing)}, unknown {sorted(extra)}")
    data = pa.table({c: _as_arrow(columns[c], t.schema.field(c).type)
                     for c in t.schema.names}, schema=t.schema)
    folder = partition_dir(run, name, model, layer)
    fname = next_file_name(folder, writer or writer_id(), prefix)
    return _atomic_write_table(data, folder / fname)


def write_rows(run: Path, name: str, rows: Sequence[Any], prefix: str = "part",
               writer: str | None = None) -> list[Path]:
    """Write dataclass rows (fields in column order, `model` and `layer` first) by partition."""
    t = TABLES[name]
    groups: dict[tuple, list[tuple]] = {}
    for row in rows:
        # Shallow: astuple() deep-copies every list cell (each row's predictions), ~0.3 ms a row.
        values = tuple(getattr(row, f.name) for f in fields(row))
        groups.setdefault(values[: 2 if t.by_layer else 1], []).append(values)
    names = [f.name for f in fields(rows[0])] if rows else []
    if rows and names != t.columns:
        raise ValueError(f"{type(rows[0]).__name__} fields {names} != {name} columns {t.columns}")
    paths = []
    for part, vals in groups.items():
        cols = {c: [v[i] for v in vals] for i, c in enumerate(t.columns) if c in t.schema.names}
        layer = part[1] if t.by_layer else None
        paths.append(write_columns(run, name, cols, model=part[0], layer=layer, prefix=prefix,
                                   writer=writer))
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
            for f in sorted(d.glob("*.parquet"), key=file_order) if not f.name.startswith(".")]


def read_arrow(run: Path, name: str, model: str | None = None, layer: int | None = None,
               columns: list[str] | None = None) -> pa.Table:
    """A table (or one model/layer of it) as Arrow, newest row per key, partition columns first."""
    t = TABLES[name]
    want = [c for c in (columns or t.schema.names) if c in t.schema.names]
    key_cols = [c for c in t.key if c in t.schema.names]
    read_cols = list(dict.fromkeys(want + key_cols))
    pieces = []
    for m, lay, folder in _partitions(run, name, model, layer):
        for piece in _read_partition(folder, read_cols, t):
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


def _listing(folder: Path) -> list[Path]:
    """A partition's finished files in the order their rows apply (oldest first)."""
    return sorted((f for f in folder.glob("*.parquet") if not f.name.startswith(".")),
                  key=file_order)


def _read_partition(folder: Path, columns: list[str], t, tries: int = 5) -> list[pa.Table]:
    """Every file of one partition, in order. A file that a concurrent `compact` removed after
    the listing means its merged replacement is already in place: list again and re-read."""
    for attempt in range(tries):
        try:
            return [_read_file(f, columns, t) for f in _listing(folder)]
        except FileNotFoundError:
            if attempt == tries - 1:
                raise
    return []


def compact(run: Path, name: str, model: str, layer: int | None = None) -> Path | None:
    """Rewrite one partition as a single file holding the newest row of each key.

    Newest is decided by the files' (sequence, writer) order, as in `read`. The merged file takes
    the largest sequence of the files it replaces and is written (atomically) before any of them
    is removed, so a kill at any point leaves a partition that reads the same rows: every file
    still there holds either a key's newest row (which the merged file repeats) or an older one
    of a lower sequence, which sorts first and loses; the next compaction removes the leftovers.
    Only the files listed at the start are removed, so rows written meanwhile are kept. Returns
    the merged file, or None when there was nothing to merge (no file, or one).
    """
    t = TABLES[name]
    folder = partition_dir(run, name, model, layer)
    key_cols = [c for c in t.key if c in t.schema.names]
    for _ in range(5):
        old = _listing(folder) if folder.is_dir() else []
        if len(old) <= 1:
            return None
        try:
            data = pa.concat_tables([_read_file(f, t.schema.names, t) for f in old])
        except FileNotFoundError:
            continue  # another process compacted this partition meanwhile: list again
        data = _keep_newest(data, key_cols).select(t.schema.names).cast(t.schema)
        seq = max(_sequence(f) for f in old)
        target = folder / f"{seq:020d}-{UNSAFE_CHARS.sub('_', writer_id())}-compact.parquet"
        _atomic_write_table(data, target)
        remove_files(f for f in old if f != target)
        return target
    return None


def _read_file(path: Path, columns: list[str], t) -> pa.Table:
    """One file's columns; a column added to the contract after the file was written reads as
    its default (see schema.DEFAULTS), so runs made by an older version stay readable."""
    have = set(pq.read_schema(path).names)
    return with_defaults(pq.read_table(path, columns=[c for c in columns if c in have]),
                         columns, t)


def with_defaults(piece: pa.Table, columns: list[str], t) -> pa.Table:
    """`piece` with `columns` in order, each one it lacks (added to the contract after its file
    was written) filled with that column's default (schema.DEFAULTS), else nulls."""
    for c in columns:
        if c not in piece.column_names:
            typ = t.schema.field(c).type
            value = DEFAULTS.get(c)
            col = pa.nulls(piece.num_rows, typ) if value is None else \
                pa.array([value] * piece.num_rows, typ)
            piece = piece.append_column(c, col)
    return piece.select(columns)


def _keep_newest(data: pa.Table, key: list[str]) -> pa.Table:
    # Rows arrive in file-write order; the last occurrence of each key wins.
    import pyarrow.compute as pc

    idx = pa.array(range(data.num_rows), pa.int64())
    grouped = key_columns(data, key).append_column("_i", idx).group_by(key).aggregate(
        [("_i", "max")])
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
