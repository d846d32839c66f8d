"""The run-directory contract: atomic files, newest row per key, readable by pandas and DuckDB."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from explainer import run as rundir
from tests import plainread


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


def test_compact_leaves_one_row_per_key_for_plain_readers(tmp_path):
    import os

    rundir.write_rows(tmp_path, "scores", [_row(0, 0.5), _row(1, 0.25)], writer="zz-first")
    rundir.write_rows(tmp_path, "scores", [_row(1, 0.75), _row(2, 0.1)], writer="aa-second")
    rundir.write_rows(tmp_path, "scores", [_row(0, 0.9)], writer="mm-third")
    first = rundir.files(tmp_path, "scores")
    # Newest by writer sequence, not by name or wall clock: make the mtimes say the opposite.
    for age, f in enumerate(first):
        os.utime(f, (1e9 - age * 1e6, 1e9 - age * 1e6))
    by_pandas, by_duckdb = plainread.keys(tmp_path, "scores")
    assert len(by_pandas) == 5 and len(set(by_pandas)) == 3  # before: stale rows visible
    merged = rundir.compact(tmp_path, "scores", "m/1", 1)
    assert rundir.files(tmp_path, "scores") == [merged]
    plainread.assert_one_row_per_key(tmp_path, "scores")
    df = pd.read_parquet(tmp_path / "scores").sort_values("neuron")
    assert list(df.score) == [0.9, 0.75, 0.1]
    assert rundir.compact(tmp_path, "scores", "m/1", 1) is None  # one file: nothing to do
    rundir.write_rows(tmp_path, "scores", [_row(2, 0.3)])  # later writes still win
    assert list(rundir.read(tmp_path, "scores").sort_values("neuron").score) == [0.9, 0.75, 0.3]


@pytest.mark.parametrize("killed_after", [0, 1, 2])
def test_compact_killed_at_any_point_reads_the_same(tmp_path, monkeypatch, killed_after):
    """A kill after writing the merged file and `killed_after` removals changes no read."""
    from explainer.run import parquet

    rundir.write_rows(tmp_path, "scores", [_row(0, 0.5), _row(1, 0.25)])
    rundir.write_rows(tmp_path, "scores", [_row(1, 0.75)])
    rundir.write_rows(tmp_path, "scores", [_row(0, 0.9), _row(2, 0.1)])
    want = rundir.read(tmp_path, "scores").sort_values("neuron").reset_index(drop=True)
    real_unlink = parquet.Path.unlink
    removed = []

    def unlink(self, missing_ok=False):
        if self.name.startswith("."):  # the temporary file's clean-up, not a removal
            return real_unlink(self, missing_ok=missing_ok)
        if len(removed) == killed_after:
            raise KeyboardInterrupt  # the process dies here
        removed.append(self)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(parquet.Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        rundir.compact(tmp_path, "scores", "m/1", 1)
    monkeypatch.undo()
    got = rundir.read(tmp_path, "scores").sort_values("neuron").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    assert len(rundir.files(tmp_path, "scores")) == 4 - killed_after  # 3 old + merged - removed
    rundir.compact(tmp_path, "scores", "m/1", 1)  # the next compaction cleans up
    plainread.assert_one_row_per_key(tmp_path, "scores")
    pd.testing.assert_frame_equal(
        rundir.read(tmp_path, "scores").sort_values("neuron").reset_index(drop=True), want)


def test_read_survives_a_concurrent_compaction(tmp_path, monkeypatch):
    from explainer.run import parquet

    rundir.write_rows(tmp_path, "scores", [_row(0, 0.5)])
    rundir.write_rows(tmp_path, "scores", [_row(0, 0.7), _row(1, 0.2)])
    real_read = parquet._read_file
    calls = []

    def read_file(path, columns, t):
        if not calls:  # between the reader's listing and its first read, a compaction runs
            calls.append(path)
            rundir.compact(tmp_path, "scores", "m/1", 1)
        return real_read(path, columns, t)

    monkeypatch.setattr(parquet, "_read_file", read_file)
    df = rundir.read(tmp_path, "scores").sort_values("neuron")
    assert list(df.score) == [0.7, 0.2] and calls
