"""A real process killed (SIGKILL) in the middle of a stage, then resumed: the same tables as a
run that was never interrupted.

Each test starts the real `explain` command in a subprocess against a slow fake endpoint, waits
until the stage has written part of its work, kills it with SIGKILL (no handler, no `finally`
runs), checks what reached the disk, resumes in this process against a fast endpoint and
compares every table the stage writes with an uninterrupted run's. The stages' buffers are
larger than these runs, so the rows on disk before the kill are there only because the writer
flushed by time ($EXPLAIN_FLUSH_S, 1 s here; 30 s by default).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from explainer import ExplainError
from explainer import progress
from explainer import run as rundir
from tests import judgefake, runfactory, simfake
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
CTX, N_EXCERPTS = 16, 20  # as tests/test_simulate.py: every excerpt's token list differs
FLUSH_S = 1.0


def _explain(argv: list[str], latency_s: float, handler, until, timeout_s: float = 180.0):
    """Run `explain ARGV` in a subprocess against a slow fake endpoint and SIGKILL it once
    `until()` holds; fails if the command ends first."""
    env = {**os.environ, "EXPLAIN_FLUSH_S": str(FLUSH_S), "OPENAI_API_KEY": "sk-test",
           "PYTHONPATH": str(ROOT)}
    with FakeOpenAI(handler, latency_s=latency_s) as fake:
        argv = [a.replace("{url}", fake.base_url) for a in argv]
        proc = subprocess.Popen([sys.executable, "-c", "from explainer.cli import main; main()",
                                 *argv], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + timeout_s
            while not until():
                assert proc.poll() is None, f"finished before the kill: {proc.stderr.read()}"
                assert time.monotonic() < deadline, "nothing written in time"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _cli(argv: list[str], handler) -> None:
    with FakeOpenAI(handler) as fake:
        res = runner.invoke(app, [a.replace("{url}", fake.base_url) for a in argv],
                            env={"OPENAI_API_KEY": "sk-test"})
    assert res.exit_code == 0, res.output


def _rows(run: Path, table: str) -> pd.DataFrame:
    try:
        return rundir.read(run, table)
    except Exception:  # noqa: BLE001 (no table yet, or a partition folder being created)
        return pd.DataFrame()


def _plain(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """Rows sorted by the table's key, list cells as tuples (comparable with ==)."""
    key = [k for k in rundir.table(table).key if k in df.columns]
    df = df.sort_values(key).reset_index(drop=True)
    for col in df.columns:
        if len(df) and isinstance(df[col].iloc[0], (np.ndarray, list)):
            df[col] = [tuple(np.asarray(v).tolist()) for v in df[col]]
        elif isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype(str)
    return df


def assert_same(a: Path, b: Path, tables: tuple[str, ...]) -> None:
    for table in tables:
        x, y = _plain(rundir.read(a, table), table), _plain(rundir.read(b, table), table)
        assert len(x) > 0, table
        pd.testing.assert_frame_equal(x, y, check_dtype=False, obj=table)


# --- simulate, judge, describe ------------------------------------------------------------


def _simulate_run(root: Path) -> Path:
    run = runfactory.make_run(root, n_layers=1, d_mlp=8, n_excerpts=N_EXCERPTS, ctx=CTX,
                              n_random=12)
    rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
        runfactory.MODEL, 0, n, "fake-explainer", "p" * 12, 0, simfake.explanation(0, n), 10, 5,
        "ok", None) for n in range(8)])
    return run


def _default_handler():
    from tests.fake_openai import default_handler

    return default_handler


STAGES = {
    # name: (build the run, endpoint, argv, table that shows progress, tables compared,
    #        neurons worked on, seconds per request while the process is to be killed)
    "simulate": (_simulate_run, lambda: simfake.Handler("truth", CTX, N_EXCERPTS),
                 ["simulate", "--simulator", "fake-model", "--mode", "logprob",
                  "--control", "none", "--concurrency", "1"],
                 "simulations", ("simulations", "scores"), 8, 0.03),
    "judge": (lambda root: judgefake.make_run(root, d_mlp=8), lambda: judgefake.Judge("perfect"),
              ["judge", "--method", "detection", "--judge", "fake-model", "--sampling", "explain",
               "--concurrency", "1"],
              "judgments", ("judgments", "scores"), 8, 0.25),
    "describe": (lambda root: runfactory.make_run(root, n_layers=2, d_mlp=8), _default_handler,
                 ["describe", "--explainer", "fake-model", "--concurrency", "1"],
                 "explanations", ("explanations",), 16, 0.3),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_killed_stage_kept_what_it_flushed_by_time_and_resumes_to_the_same_tables(
        tmp_path, stage):
    build, handler, argv, progress_table, tables, total, latency_s = STAGES[stage]
    killed, whole = build(tmp_path / "killed"), build(tmp_path / "whole")
    argv = [*argv, "--base-url", "{url}", "--run"]

    def some_written() -> bool:
        # A flush writes the progress table, then (but for describe) the scores: a kill
        # timed by the first alone could land between the two writes, which the stage
        # allows (a neuron without scores is done again) but the check below does not.
        return len(_rows(killed, progress_table)) > 0 and \
            (stage == "describe" or len(_rows(killed, "scores")) > 0)

    _explain([*argv, str(killed)], latency_s, handler(), some_written)
    # What the writer flushed by time is on disk; the kill came before the end.
    on_disk = _rows(killed, progress_table)
    done = on_disk[["layer", "neuron"]].drop_duplicates()
    assert 0 < len(done) < total, (len(done), total)
    if stage != "describe":  # a neuron's scores are written with its rows, never apart
        scores = _rows(killed, "scores")
        assert set(map(tuple, scores[["layer", "neuron"]].values)) == \
            set(map(tuple, done.values))
    _cli([*argv, str(killed)], handler())  # resume
    _cli([*argv, str(whole)], handler())  # never interrupted
    assert_same(killed, whole, tables)


# --- record shards ------------------------------------------------------------------------


def test_a_killed_record_resumes_from_its_shard_files_to_the_same_tables(
        tmp_path, tiny_gpt2, tiny_corpus):
    from tests.test_shards import assert_same_tables

    argv = ["record", "--model", str(tiny_gpt2), "--corpus", str(tiny_corpus), "--n-excerpts",
            "120", "--ctx", "16", "--top-k", "6", "--random-k", "6", "--batch-size", "4",
            "--layers", "0,1", "--sides", "both", "--shards", "8", "--run"]
    killed = tmp_path / "killed"

    def shards_done() -> list[Path]:
        return list(killed.glob(".staging-*/shard-*/done.json"))

    _explain([*argv, str(killed)], 0.0, _default_handler(), lambda: len(shards_done()) >= 1)
    n_done = len(shards_done())
    assert 1 <= n_done < 8 and not (killed / "records").exists()
    res = runner.invoke(app, [*argv, str(killed)])
    assert res.exit_code == 0, res.output
    assert f"{n_done} of 8 shards already recorded" in res.stderr
    res = runner.invoke(app, [*argv, str(tmp_path / "whole")])
    assert res.exit_code == 0, res.output
    assert_same_tables(tmp_path / "whole", killed)


# --- the flush interval -------------------------------------------------------------------


def test_drain_flushes_by_time_while_an_item_is_in_flight_and_after_items_that_never_yield(
        monkeypatch):
    import asyncio

    monkeypatch.setenv(progress.FLUSH_ENV, "0.2")
    flushed: list[float] = []
    t0 = time.monotonic()

    async def slow(item) -> None:  # an in-process model computing in a thread
        await asyncio.to_thread(time.sleep, 1.2)

    asyncio.run(progress.drain("t", [1], slow, 1, lambda: flushed.append(time.monotonic() - t0)))
    # The timer flushed during the 1.2 s item (about every 0.2 s), then once at the end.
    assert len(flushed) >= 4 and flushed[0] < 0.5

    flushed.clear()

    async def busy(item) -> None:  # a handler that never gives the event loop back
        time.sleep(0.15)

    t0 = time.monotonic()
    asyncio.run(progress.drain("t", list(range(6)), busy, 1,
                               lambda: flushed.append(time.monotonic() - t0)))
    assert 3 <= len(flushed) <= 6  # after items 2, 4, 6 (0.3 s apart) and at the end


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_flush_interval_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(progress.FLUSH_ENV, value)
    with pytest.raises(ExplainError, match=r"EXPLAIN_FLUSH_S"):
        progress.flush_interval_s()
    monkeypatch.delenv(progress.FLUSH_ENV)
    assert progress.flush_interval_s() == progress.FLUSH_S == 30.0
