"""Reading a few neurons of a layer, with memory that follows the neurons asked for.

`read` loads a whole partition before anything is filtered: for a layer of 10,000 neurons that
is every neuron's records (GPT-2 XL: 6,400 neurons x 70 excerpts x 64 floats a layer). A stage
that works one block of neurons at a time reads each table through `read_neurons` instead: the
files are streamed in record batches and only the rows of the wanted neurons are kept, with the
same newest-row-per-key rule and the same defaults for columns added after a file was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from explainer.run.parquet import _keep_newest, files, with_defaults
from explainer.run.schema import TABLES, model_key

BATCH_ROWS = 8192  # rows decoded at a time


def read_neurons(run: Path, name: str, model: str, layer: int, neurons: Collection[int],
                 columns: list[str] | None = None, tries: int = 5):
    """Rows of `neurons` in one layer of a table, as a pandas DataFrame (see `rundir.read`)."""
    t = TABLES[name]
    want = [c for c in (columns or t.schema.names) if c in t.schema.names]
    key_cols = [c for c in t.key if c in t.schema.names]
    read_cols = list(dict.fromkeys(["neuron"] + want + key_cols))
    wanted = pa.array(sorted({int(n) for n in neurons}), pa.int64())
    for attempt in range(tries):
        try:
            pieces = [p for f in files(run, name, model, layer)
                      for p in _filtered(f, read_cols, wanted, t)]
            break
        except FileNotFoundError:  # a concurrent `compact` replaced a file: list again
            if attempt == tries - 1:
                raise
    schema = pa.schema([t.schema.field(c) for c in read_cols])
    data = pa.concat_tables(pieces) if pieces else schema.empty_table()
    if len(pieces) > 1:
        data = _keep_newest(data, key_cols)
    n = data.num_rows
    data = data.select(want)
    data = data.add_column(0, "layer", pa.array([int(layer)] * n, pa.int64()))
    data = data.add_column(0, "model", pa.array([model_key(model)] * n, pa.string()))
    return data.to_pandas()


def _filtered(path: Path, columns: list[str], wanted: pa.Array, t) -> list[pa.Table]:
    pf = pq.ParquetFile(path)
    have = set(pf.schema_arrow.names)
    out = []
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[c for c in columns if c in have]):
        part = pa.Table.from_batches([batch])
        part = part.filter(pc.is_in(part.column("neuron").cast(pa.int64()), value_set=wanted))
        if not part.num_rows:
            continue
        part = with_defaults(part, columns, t)
        out.append(part.cast(pa.schema([t.schema.field(c) for c in columns])))
    return out


def explained_neurons(run: Path, model: str, layer: int, explainer: str | None = None,
                      among: Collection[int] | None = None) -> list[int]:
    """Neurons of a layer with an `ok` explanation (by `explainer`, among `among` if given)."""
    from explainer.run.parquet import read

    ex = read(run, "explanations", model=model, layer=layer,
              columns=["neuron", "explainer", "status"])
    ok = ex["status"] == "ok"
    if explainer is not None:
        ok &= ex["explainer"] == explainer
    found = {int(n) for n in ex.loc[ok, "neuron"]}
    return sorted(found if among is None else found & set(among))


def explained_layers(run: Path, model: str | None, layers: str) -> tuple[str, list[int]]:
    """The model key and layers of a run that have explanations, narrowed to `--model` and
    `--layer` (a spec); an ExplainError names what is missing and what would be valid."""
    from explainer import ExplainError
    from explainer.run.specs import parse_spec
    from explainer.run.meta import model_meta
    from explainer.run.parquet import layers_in, models_in

    models = models_in(run, "explanations")
    if not models:
        raise ExplainError(f"--run {run}: no explanations yet; run `explain describe` first")
    if model is None and len(models) > 1:
        raise ExplainError(f"--run {run} has explanations of several models "
                           f"({', '.join(models)}); pick one with --model")
    key = models[0] if model is None else model_key(model)
    if key not in models:
        raise ExplainError(f"--model {model}: no explanations of it in this run "
                           f"(have: {', '.join(models)})")
    have = layers_in(run, "explanations", key)
    if str(layers).strip() == "all":
        return key, have
    n_layers = int((model_meta(run, key) or {}).get("n_layers") or max(have) + 1)
    wanted = parse_spec(layers, n_layers, "layer", key)
    missing = [lay for lay in wanted if lay not in have]
    if missing:
        raise ExplainError(f"--layer {layers}: no explanations for layer {missing[0]} of {key} "
                           f"yet; run `explain describe --layer {missing[0]}` first (explained "
                           f"layers: {', '.join(map(str, have))})")
    return key, wanted


def selected_explanations(run: Path, model: str, layer: int, explainer: str | None,
                          neurons: str):
    """A layer's `ok` explanations by `explainer` (None: any) of the `neurons` spec, reading
    only those neurons' rows when the spec names some; an ExplainError names an explainer
    with no explanation there and the explainers that have one."""
    from explainer import ExplainError
    from explainer.run.specs import parse_spec
    from explainer.run.meta import model_meta
    from explainer.run.parquet import read

    d_mlp = int((model_meta(run, model) or {}).get("d_mlp") or 0)
    narrowed = str(neurons).strip() != "all" and d_mlp
    ex = read_neurons(run, "explanations", model, layer,
                      parse_spec(neurons, d_mlp, "neuron", f"{model} layer")) if narrowed \
        else read(run, "explanations", model=model, layer=layer)
    ex = ex[ex["status"] == "ok"]
    if explainer is not None:
        if not (ex["explainer"] == explainer).any():
            have = ", ".join(sorted(set(ex["explainer"]))) or "none"
            raise ExplainError(f"--explainer {explainer}: no explanations by it in layer "
                               f"{layer} (have: {have})")
        ex = ex[ex["explainer"] == explainer]
    if str(neurons).strip() != "all" and not d_mlp:  # no run.json width: filter after reading
        n = int(ex["neuron"].max()) + 1 if len(ex) else 1
        ex = ex[ex["neuron"].isin(parse_spec(neurons, n, "neuron", f"{model} layer"))]
    return ex
