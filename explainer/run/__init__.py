"""The run directory: the contract every stage reads and writes, and nothing else.

`schema` names the tables, their columns, keys and `model=/layer=` partitions; `rows` holds the
typed rows stages build; `parquet` does the atomic writes and newest-row-per-key reads; `meta`
keeps `run.json`; `query` answers the questions readers ask of the scores (the chosen score of
an explanation, own/control pairs, judge targets, cascade levels), so none filters them by hand.
No other module writes Parquet. Imports only pyarrow (never a stage).

The names below are the package's interface: `from explainer import run as rundir`, then
`rundir.read(run_dir, "scores")`, `rundir.ScoreRow(...)`.
"""

from explainer.run.meta import (clean_tmp, endpoint_meta, model_meta, read_run_json,
                                update_endpoint_meta, update_run_json, write_run_json)
from explainer.run.parquet import (compact, file_order, files, layers_in, list_array, models_in,
                                   next_file_name, read, read_arrow, remove_files,
                                   remove_partition, write_columns, write_rows, writer_id)
from explainer.run import query
from explainer.run.rows import (ExplanationRow, JudgmentRow, PuzzleRow, ScoreRow,
                                SimulationRow)
from explainer.run.schema import (LIST_F32, RUN_JSON, TABLES, Table, mode_family, model_key,
                                  partition_dir, table)
from explainer.run.select import (explained_layers, explained_neurons, read_neurons,
                                  selected_explanations)

__all__ = ["ExplanationRow", "JudgmentRow", "LIST_F32", "PuzzleRow", "RUN_JSON", "ScoreRow", "SimulationRow", "TABLES",
           "Table", "clean_tmp", "files", "layers_in", "list_array", "model_key", "model_meta",
           "models_in", "partition_dir", "read", "read_arrow", "read_run_json", "remove_files",
           "remove_partition", "table", "write_columns", "write_rows", "write_run_json",
           "update_run_json", "file_order", "next_file_name", "writer_id", "compact",
           "endpoint_meta", "update_endpoint_meta", "read_neurons",
           "explained_layers", "explained_neurons", "selected_explanations", "query",
           "mode_family"]
