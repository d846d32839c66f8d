"""`explain run`: record -> describe -> simulate (+ score, + controls) -> report, in one command.

This module only composes the stages; each keeps its own resume logic, so a killed `run`
continues where it stopped when rerun with the same options. The last line of its output says
where the time went, stage by stage.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from explainer import config
from explainer.run.specs import spread_layers


def run(cfg: config.RunConfig) -> str:
    """Run every stage on cfg.run; returns the report table with the plot and viewer paths."""
    from explainer import describe, record, simulate
    from explainer.subject import models
    from explainer.views import html as view
    from explainer.views import report

    run_dir = Path(cfg.run)
    _check_judges(cfg.judge_methods)
    if cfg.control not in config.CONTROLS:
        from explainer import ExplainError

        raise ExplainError(f"--control {cfg.control}: expected one of {', '.join(config.CONTROLS)}")
    spec = models.resolve(cfg.model)
    layers = cfg.layers or spread_layers(spec.n_layers, 2)
    clock = _Clock()
    with clock.stage("record", f"[1/5] record {spec.name} layers {layers}"):
        record.run(config.RecordConfig(run=run_dir, model=cfg.model, corpus=cfg.corpus,
                                       layers=layers, n_excerpts=cfg.n_excerpts, ctx=cfg.ctx,
                                       seed=cfg.seed, device=cfg.device))
    for name in cfg.explainers:
        with clock.stage(f"describe {name}", f"[2/5] describe with {name}"):
            describe.run(config.DescribeConfig(run=run_dir, layers=layers, neurons=cfg.neurons,
                                               model=spec.name, explainer=name,
                                               n_excerpts=cfg.explain_excerpts, llm=cfg.llm))
    # The lexical baseline first (seconds): the floor the LLM simulator's scores must beat.
    lexical = cfg.lexical and cfg.simulator != config.BASELINE_SIMULATOR
    sims = [config.BASELINE_SIMULATOR] if lexical else []
    for sim in sims + [cfg.simulator]:
        with clock.stage(f"simulate {sim}", f"[3/5] simulate and score with {sim}"
                         + (f", and the {cfg.control} control" if cfg.control != "none" else "")):
            simulate.run(config.SimulateConfig(run=run_dir, layers=layers, neurons=cfg.neurons,
                                               model=spec.name, simulator=sim, mode=cfg.mode,
                                               control=cfg.control, seed=cfg.seed, llm=cfg.llm,
                                               excerpts_per_prompt=cfg.excerpts_per_prompt))
    if cfg.cascade:
        from explainer import cascade

        with clock.stage("cascade", f"[3/5] cascade {' > '.join(cfg.cascade)}, judged by "
                         f"{cfg.simulator}"):
            _say(cascade.run(config.CascadeConfig(
                describe=config.DescribeConfig(run=run_dir, layers=layers, neurons=cfg.neurons,
                                               model=spec.name,
                                               n_excerpts=cfg.explain_excerpts, llm=cfg.llm),
                simulate=config.SimulateConfig(run=run_dir, simulator=cfg.simulator,
                                               mode=cfg.mode,
                                               excerpts_per_prompt=cfg.excerpts_per_prompt,
                                               llm=cfg.llm),
                explainers=cfg.cascade, accept=cfg.accept, accept_by=cfg.accept_by)))
    for method in cfg.judge_methods:
        from explainer import judge

        with clock.stage(f"judge {method}", f"[3/5] judge by {method} with {cfg.simulator}"):
            judge.run(config.JudgeConfig(run=run_dir, method=method, layers=layers,
                                         neurons=cfg.neurons, model=spec.name,
                                         judge=cfg.simulator, seed=cfg.seed, llm=cfg.llm,
                                         device=cfg.device))
    plot = run_dir / "report.png"
    with clock.stage("report", "[4/5] report"):
        table = report.run(config.ReportConfig(run=run_dir, plot=plot))
    with clock.stage("viewer", "[5/5] viewer"):
        # The demo scores a few neurons of thousands recorded: pages for those few, in seconds.
        index = view.run(config.ViewConfig(run=run_dir, scored_only=True))
    return f"{table}\nviewer: {index}\n{clock.line()}"  # the table ends with the plot's path


def _check_judges(methods: tuple[str, ...]) -> None:
    """Refuse an unknown --judge-methods name before anything is recorded."""
    from explainer import ExplainError
    from explainer.judge.stage import METHODS

    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ExplainError(f"--judge-methods {','.join(methods)}: {bad[0]!r} is not one of "
                           f"{', '.join(METHODS)}")


class _Clock:
    """Wall seconds of each stage of one `explain run`, in the order they ran."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.spent: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def stage(self, name: str, headline: str):
        """Announce a stage on stderr and time it (also when it fails)."""
        _say(headline)
        t = time.monotonic()
        try:
            yield
        finally:
            self.spent.append((name, time.monotonic() - t))

    def line(self) -> str:
        """`time: record 58 s, describe smollm2-135m 31 s, ...; total 2 min 41 s`."""
        parts = ", ".join(f"{name} {_seconds(s)}" for name, s in self.spent)
        return f"time: {parts}; total {_seconds(time.monotonic() - self.t0)}"


def _seconds(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    return f"{s:.0f} s" if s < 120 else f"{int(s // 60)} min {s % 60:.0f} s"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
