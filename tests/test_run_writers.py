"""Several writers on one run directory: Parquet files ordered by (sequence, writer), never by
wall clock, and run.json updates that no concurrent writer loses."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from explainer import run as rundir
from tests import runfactory as RF


def _expl(neuron: int, text: str) -> rundir.ExplanationRow:
    return rundir.ExplanationRow(RF.MODEL, 0, neuron, "e", "p" * 12, 0, text, 1, 1, "ok", None)


def test_files_are_named_by_writer_and_sequence(tmp_path, monkeypatch):
    # A clock that runs backwards must not change which row is newest.
    monkeypatch.setattr(time, "time_ns", lambda: 5)
    a = rundir.write_rows(tmp_path, "explanations", [_expl(0, "first"), _expl(1, "one")],
                          writer="wB")[0]
    b = rundir.write_rows(tmp_path, "explanations", [_expl(0, "second")], writer="wA")[0]
    c = rundir.write_rows(tmp_path, "explanations", [_expl(1, "third")], writer="wB")[0]
    assert [p.name for p in (a, b, c)] == [
        "00000000000000000000-wB-part.parquet", "00000000000000000001-wA-part.parquet",
        "00000000000000000002-wB-part.parquet"]
    df = rundir.read(tmp_path, "explanations").sort_values("neuron")
    assert list(df["explanation"]) == ["second", "third"]
    # The default writer id is this process's host and pid, the same for every write.
    d = rundir.write_rows(tmp_path, "explanations", [_expl(0, "fourth")])[0]
    assert d.name.startswith("00000000000000000003-") and rundir.writer_id() in d.name


def test_equal_sequences_order_by_writer_and_legacy_names_sort_first(tmp_path):
    folder = rundir.partition_dir(tmp_path, "explanations", RF.MODEL, 0)
    rows = rundir.write_rows(tmp_path, "explanations", [_expl(0, "by w2")], writer="w2")
    # Another writer that listed the folder at the same moment took the same sequence.
    same = folder / rows[0].name.replace("-w2-", "-w1-")
    table = pq.read_table(rows[0])
    pq.write_table(table.set_column(table.schema.get_field_index("explanation"), "explanation",
                                    pa.array(["by w1"])), same)
    assert list(rundir.read(tmp_path, "explanations")["explanation"]) == ["by w2"]
    # A file of an older version, named by its write time in ns: its time is its sequence,
    # so a file written now comes after it.
    legacy = folder / f"{1_700_000_000_000_000_000:020d}-describe.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("explanation"), "explanation",
                                    pa.array(["legacy"])), legacy)
    assert list(rundir.read(tmp_path, "explanations")["explanation"]) == ["legacy"]
    new = rundir.write_rows(tmp_path, "explanations", [_expl(0, "after")], writer="w0")[0]
    assert rundir.file_order(new) > rundir.file_order(legacy)
    assert list(rundir.read(tmp_path, "explanations")["explanation"]) == ["after"]


def _bump(run: str, who: int, n: int) -> None:
    for i in range(n):
        def change(meta):
            meta.setdefault("log", []).append(f"{who}:{i}")
            time.sleep(0.001)  # widen the read-modify-write window
        rundir.update_run_json(Path(run), change)


def test_run_json_updates_from_concurrent_processes_are_all_kept(tmp_path):
    rundir.write_run_json(tmp_path, {"format": 1, "models": {}})
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_bump, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log = rundir.read_run_json(tmp_path)["log"]
    assert sorted(log) == sorted(f"{w}:{i}" for w in range(4) for i in range(40))
    for w in range(4):  # each writer's updates in its own order
        mine = [e for e in log if e.startswith(f"{w}:")]
        assert mine == [f"{w}:{i}" for i in range(40)]


def test_read_neurons_equals_a_filtered_read(tmp_path, monkeypatch):
    from explainer.run import select

    monkeypatch.setattr(select, "BATCH_ROWS", 7)  # many batches per file
    run = RF.make_run(tmp_path / "run", d_mlp=8, n_excerpts=12)
    rundir.write_rows(run, "explanations", [_expl(n, f"old {n}") for n in range(8)])
    rundir.write_rows(run, "explanations", [_expl(n, f"new {n}") for n in (2, 5)])
    for name in ("records", "explanations"):
        full = rundir.read(run, name, model=RF.MODEL, layer=0)
        want = full[full["neuron"].isin([2, 5, 6])].reset_index(drop=True)
        got = rundir.read_neurons(run, name, RF.MODEL, 0, [6, 5, 2])
        key = [c for c in rundir.TABLES[name].key if c in want.columns]
        want, got = (d.sort_values(key).reset_index(drop=True) for d in (want, got))
        assert list(got.columns) == list(want.columns) and len(got) == len(want) > 0
        for c in want.columns:
            assert [repr(list(v)) if hasattr(v, "tolist") else repr(v) for v in got[c]] == \
                [repr(list(v)) if hasattr(v, "tolist") else repr(v) for v in want[c]], (name, c)
    got = rundir.read_neurons(run, "explanations", RF.MODEL, 0, [2, 5, 6])
    assert sorted(got["explanation"]) == ["new 2", "new 5", "old 6"]
    assert rundir.read_neurons(run, "explanations", RF.MODEL, 0, [99]).empty
