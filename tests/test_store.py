"""The run-directory contract: atomic files, newest row per key, readable by pandas and DuckDB."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from explainer import run as rundir


def _row(neuron, score, layer=1, model="m/1"):
    return rundir.ScoreRow(model, layer, neuron, "e", 0, "s", "valid", f"x{neuron}", score,
                          None, None, None, None, 10, True, "ok", None)


def test_rows_roundtrip_and_newest_wins(tmp_path):
    rundir.write_rows(tmp_path, "scores", [_row(0, 0.5), _row(1, 0.25), _row(0, 0.1, layer=2)])
    rundir.write_rows(tmp_path, "scores", [_row(1, 0.75)])  # rewrite neuron 1 of layer 1
    df = rundir.read(tmp_path, "scores").sort_values(["layer", "neuron"])
    assert list(zip(df.layer, df.neuron, df.score)) == [(1, 0, 0.5), (1, 1, 0.75), (2, 0, 0.1)]
    assert set(df.model) == {rundir.model_key("m/1")}
    assert list(rundir.read(tmp_path, "scores", layer=2).neuron) == [0]


def test_rows_must_match_columns(tmp_path):
    with pytest.raises(ValueError):
        rundir.write_columns(tmp_path, "neurons", {"neuron": [1]}, model="m", layer=0)


def test_no_temporary_file_survives_a_failed_write(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        rundir.write_rows(tmp_path, "scores", [_row(0, 0.5)])
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_pandas_and_duckdb_read_partitions(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    acts = np.arange(12, dtype=np.float32).reshape(3, 4)
    for layer in (0, 3):
        rundir.write_columns(tmp_path, "records", {
            "neuron": [0, 1, 2], "excerpt_id": [5, 6, 7], "kind": ["top"] * 3, "rank": [0] * 3,
            "split": ["valid"] * 3, "activations": rundir.list_array(acts + layer),
            "max_activation": acts.max(1) + layer}, model="gpt2", layer=layer)
    df = pd.read_parquet(tmp_path / "records", filters=[("layer", "=", 3)])
    assert sorted(df.neuron) == [0, 1, 2] and np.allclose(df.max_activation, [6, 10, 14])
    got = duckdb.sql(f"SELECT layer, sum(max_activation) FROM read_parquet("
                     f"'{tmp_path}/records/**/*.parquet', hive_partitioning=true) "
                     "GROUP BY layer ORDER BY layer").fetchall()
    assert got == [(0, 21.0), (3, 30.0)]
    mine = rundir.read(tmp_path, "records", model="gpt2", layer=0)
    np.testing.assert_array_equal(np.stack(mine.activations.to_numpy()), acts)
