"""Plain readers of a run's tables, with no newest-row logic: what a user's pandas or DuckDB sees."""

from __future__ import annotations

import pandas as pd

from explainer import run as rundir


def keys(run, table: str) -> tuple[list[tuple], list[tuple]]:
    """Key tuples of `pd.read_parquet(run / table)` and of a DuckDB query over its files."""
    import duckdb

    key = list(rundir.table(table).key)
    df = pd.read_parquet(run / table)
    by_pandas = list(zip(*(df[c].astype(str) for c in key)))
    rows = duckdb.sql(f"SELECT {', '.join(key)} FROM read_parquet("
                      f"'{run}/{table}/**/*.parquet', hive_partitioning=true)").fetchall()
    return by_pandas, [tuple(map(str, r)) for r in rows]


def assert_one_row_per_key(run, table: str) -> None:
    """Plain pandas and DuckDB reads give exactly the rows `rundir.read` gives, once each."""
    by_pandas, by_duckdb = keys(run, table)
    assert len(by_pandas) == len(set(by_pandas)), f"{table}: stale rows in a plain pandas read"
    assert sorted(by_duckdb) == sorted(by_pandas)
    assert len(by_pandas) == len(rundir.read(run, table))
