"""The `explain` command line: options -> a frozen config -> one stage call -> the output path.

Thin on purpose: no pandas, torch or loops here; stages import lazily so `explain --help` is
instant. Bad input arrives as `ExplainError` and leaves as one line on stderr with exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from explainer import ExplainError
from explainer import config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Explain the MLP neurons of a language model with an LLM, and score the explanations.",
)

RunOpt = Annotated[Path, typer.Option("--run", help="Run directory (created by `record`).")]
LayersOpt = Annotated[str, typer.Option("--layer", "--layers", help="Layers: all, 3, 0-5 or 0,4,8.")]
NeuronsOpt = Annotated[str, typer.Option("--neurons", help="Neurons: all, 7, 0-9 or 1,5,9.")]
ModelSel = Annotated[Optional[str], typer.Option(
    "--model", help="Subject model in the run (needed only when the run holds several).")]


def _urls(values: Optional[list[str]]) -> Optional[tuple[str, ...]]:
    return tuple(values) if values else None


BaseUrlOpt = Annotated[Optional[list[str]], typer.Option(
    "--base-url", callback=_urls,
    help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else OpenAI); repeat it for "
         "replicas of one model: requests are spread over them (an endpoint pool).")]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="local (this process) or ray (blocks of neurons on a Ray cluster).")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local one).")]
WorkersOpt = Annotated[int, typer.Option(
    "--workers", help="Ray workers (0: one per CPU of the cluster).")]
ConcOpt = Annotated[int, typer.Option("--concurrency", help="Requests in flight at once, per endpoint.")]
ControlOpt = Annotated[str, typer.Option(
    "--control", help="shuffled: also score each neuron's chosen explanation on another neuron "
    "of its layer and side (a seeded derangement), the specificity control; or none.")]
CascadeOpt = Annotated[Optional[str], typer.Option(
    "--cascade", help="Explainers E1,E2,... cheapest first: each explains the neurons the "
    "previous one left below --accept (judged as --accept-by says).")]
AcceptOpt = Annotated[Optional[float], typer.Option(
    "--accept", help="With --cascade: a level's explanation is kept at this valid score or "
    "above (default: none is; each neuron keeps its best level).")]
AcceptByOpt = Annotated[Optional[str], typer.Option("--accept-by", help="With --cascade: who decides acceptance: detection or fuzzing (the simulator's LLM as judge; --accept is a balanced accuracy, 0-1) or simulation (--accept is a correlation). Default: detection, the cheapest (simulation with --revise or baseline-lexical). The kept explanation is simulated and scored either way.")]
CacheOpt = Annotated[Optional[Path], typer.Option(
    "--cache", help="A shared LLM answer cache (SQLite) for several runs (default: "
    "$EXPLAIN_LLM_CACHE, else only the run's own LLM ledger).")]
BatchOpt = Annotated[bool, typer.Option("--batch", help="Send the LLM requests through the endpoint's batch interface (/v1/files + /v1/batches): batch price, answers within 24 h; a killed run resumes by polling.")]
ExcerptsPerPromptOpt = Annotated[int, typer.Option(
    "--excerpts-per-prompt", help="Excerpts of a neuron simulated in one prompt, sharing one "
    "few-shot preamble (1: the paper's format; 5 bills about half the prompt tokens).")]


def _fail(err: ExplainError) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2) from None


def _call(fn, cfg):
    """Run one stage; bad input becomes one line and exit code 2 (bugs keep their traceback)."""
    try:
        return fn(cfg)
    except ExplainError as err:
        _fail(err)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished work is kept; rerun the command to resume", err=True)
        raise typer.Exit(130) from None


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@app.command()
def models():
    """List the subject models, their sizes, and whether each loads here right now."""
    from explainer.subject import models as subject_models

    typer.echo(subject_models.format_table(subject_models.list_models()))


@app.command()
def record(
    run: RunOpt,
    model: Annotated[str, typer.Option(help="gpt2[-medium|-large|-xl], smollm2-135m, or a local HF checkpoint dir.")] = "gpt2",
    corpus: Annotated[str, typer.Option(help="embedded, a .txt/.jsonl/.parquet file or folder, or hf:NAME[:SPLIT].")] = "embedded",
    layers: LayersOpt = "all",
    n_excerpts: Annotated[int, typer.Option(help="Excerpts to read from the corpus.")] = 2048,
    ctx: Annotated[int, typer.Option(help="Tokens per excerpt.")] = 64,
    top_k: Annotated[int, typer.Option(help="Top excerpts kept per neuron.")] = 40,
    random_k: Annotated[int, typer.Option(help="Random excerpts kept per neuron (its own sample).")] = 30,
    quantile_k: Annotated[int, typer.Option(help="Excerpts per activation-quantile bin (0: off; costs a second pass).")] = 0,
    quantile_bins: Annotated[int, typer.Option(help="Equal-width bins of (0, max activation] for --quantile-k.")] = 5,
    sides: Annotated[str, typer.Option(help="Signs to explain: auto (both on a gated MLP such as SwiGLU, positive only otherwise), pos or both.")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option(help="Excerpts per forward pass (default: 32 on a CPU, 512 on a CUDA GPU; a resumed run keeps the one it began with).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random sample and corpus order.")] = 0,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, mps.")] = "cpu",
    shards: Annotated[int, typer.Option(help="Excerpt-id ranges recorded (and checkpointed) apart; 0: 4,096 excerpts each.")] = 0,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, workers: WorkersOpt = 0,
):
    """Run the subject model over a corpus and keep each neuron's top and random excerpts."""
    from explainer import record as stage

    cfg = config.RecordConfig(run=run, model=model, corpus=corpus, layers=layers,
                              n_excerpts=n_excerpts, ctx=ctx, top_k=top_k, random_k=random_k,
                              quantile_k=quantile_k, quantile_bins=quantile_bins, sides=sides,
                              batch_size=batch_size, seed=seed, device=device, shards=shards,
                              engine=config.EngineConfig(engine, ray_address, workers))
    typer.echo(_call(stage.run, cfg))


@app.command()
def report(
    run: RunOpt,
    by: Annotated[str, typer.Option(help="Rows per layer (and per model after), or per model only: layer | model.")] = "layer",
    format: Annotated[str, typer.Option("--format", help="table | csv | json.")] = "table",
    plot: Annotated[Optional[Path], typer.Option(help="Also write a PNG: mean score by layer depth per model, and the score histogram.")] = None,
    cost: Annotated[bool, typer.Option("--cost", help="Instead: LLM calls, tokens and dollars per neuron by stage and model, from the run's LLM ledger.")] = False,
    project: Annotated[Optional[int], typer.Option("--project", help="With --cost: project the bill of N neurons from this run's tokens per neuron (live and batch, with a 95% interval).")] = None,
    price: Annotated[Optional[str], typer.Option("--price", help="With --project: price every call as this model of prices.json (default: each call's own model).")] = None,
):
    """Summarise scores by layer, by model size and by explainer/simulator pair."""
    from explainer.views import report as stage

    typer.echo(_call(stage.run, config.ReportConfig(run=run, by=by, format=format, plot=plot,
                                                    cost=cost, project=project, price=price)))


@app.command()
def show(
    run: RunOpt,
    layer: Annotated[int, typer.Option("--layer", help="Layer of the neuron.")],
    neuron: Annotated[int, typer.Option("--neuron", help="Neuron index within the layer.")],
    model: ModelSel = None,
):
    """Show one neuron: explanations, scores, statistics, and its excerpts shaded by activation."""
    from explainer.views import terminal as stage

    typer.echo(_call(stage.run, config.ShowConfig(run=run, layer=layer, neuron=neuron,
                                                  model=model)))


@app.command()
def view(
    run: RunOpt,
    out: Annotated[Optional[Path], typer.Option(help="Folder of the site (default: RUN/view).")] = None,
    scored_only: Annotated[bool, typer.Option("--scored-only", help="Pages only for scored neurons (faster on big runs).")] = False,
):
    """Write a static HTML neuron browser (opens from disk, no server); prints its index.html."""
    from explainer.views import html as stage

    typer.echo(_call(stage.run, config.ViewConfig(run=run, out=out, scored_only=scored_only)))


@app.command()
def judge(
    run: RunOpt,
    method: Annotated[str, typer.Option(help="detection (which excerpts fit the explanation?), fuzzing (are the highlighted tokens the ones it names?), generation (does the neuron fire on texts the judge writes from the explanation?) or steering (does steering the neuron raise the tokens it names?).")],
    layers: LayersOpt = "all",
    neurons: NeuronsOpt = "all",
    model: ModelSel = None,
    explainer: Annotated[Optional[str], typer.Option(help="Judge only this explainer's explanations (default: all).")] = None,
    judge: Annotated[str, typer.Option("--judge", help=f"Judge LLM at the endpoint ({config.EMBEDDED_LLM}: the embedded one).")] = config.EMBEDDED_LLM,
    base_url: BaseUrlOpt = None,
    sampling: Annotated[str, typer.Option(help="Sampling preset: delphi (as EleutherAI's delphi: 50 positives over 10 activation bins, highlights at 0.3 x each excerpt's max, decoys from non-activating excerpts) or explain (10 strongest held-out, 0.1 x the neuron's max). See docs/reference.md §6b.")] = "delphi",
    excerpts_per_prompt: Annotated[Optional[int], typer.Option(help="Excerpts per prompt (answered one line each; default: the preset's, 5).")] = None,
    n_positive: Annotated[Optional[int], typer.Option(help="Held-out activating excerpts per neuron (default: the preset's).")] = None,
    n_negative: Annotated[Optional[int], typer.Option(help="Non-activating random excerpts per neuron (default: the preset's).")] = None,
    fraction: Annotated[Optional[float], typer.Option(help="Highlight share of the reference max (default: the preset's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the shuffle into prompts and of fuzzing's decoys.")] = 0,
    logprobs: Annotated[Optional[bool], typer.Option("--logprobs/--no-logprobs", help="Ask for top_logprobs (P(yes) and AUROC); default: yes, except on the embedded model (slow there).")] = None,
    n_texts: Annotated[int, typer.Option(help="generation: texts the judge writes per explanation (at least 5 must be kept).")] = 10,
    steer_k: Annotated[float, typer.Option(help="steering: add k x the neuron's mean top activation at every position.")] = 1.0,
    device: Annotated[str, typer.Option(help="generation, steering: torch device of the subject model.")] = "cpu",
    concurrency: ConcOpt = 8,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, workers: WorkersOpt = 0,
    batch: BatchOpt = False,
):
    """Score explanations with a cheaper judge: detection or fuzzing, beside simulation."""
    from explainer import judge as stage

    cfg = config.JudgeConfig(run=run, method=method, layers=layers, neurons=neurons, model=model,
                             explainer=explainer, judge=judge, sampling=sampling,
                             excerpts_per_prompt=excerpts_per_prompt,
                             n_positive=n_positive, n_negative=n_negative, fraction=fraction,
                             seed=seed, logprobs=logprobs, n_texts=n_texts, steer_k=steer_k,
                             device=device, engine=config.EngineConfig(engine, ray_address, workers),
                             llm=config.LLMConfig(base_url=base_url, concurrency=concurrency, batch=batch))
    typer.echo(_call(stage.run, cfg))


@app.command()
def simulate(
    run: RunOpt,
    layers: LayersOpt = "all",
    neurons: NeuronsOpt = "all",
    model: ModelSel = None,
    explainer: Annotated[Optional[str], typer.Option(help="Simulate only this explainer's explanations (default: all).")] = None,
    simulator: Annotated[str, typer.Option(help=f"Simulator LLM at the endpoint ({config.EMBEDDED_LLM}: the embedded one), or {config.BASELINE_SIMULATOR} (no LLM: the words the explanation names).")] = config.EMBEDDED_LLM,
    base_url: BaseUrlOpt = None,
    mode: Annotated[str, typer.Option(help="auto, logprob (prompt log-probabilities) or chat (values by token index).")] = "auto",
    n_top: Annotated[int, typer.Option(help="Valid-split top excerpts scored per neuron.")] = 5,
    n_random: Annotated[int, typer.Option(help="Valid-split random excerpts scored per neuron.")] = 5,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Fit a linear calibration on the calibrate split (for R² and abs. deviation).")] = False,
    excerpts_per_prompt: ExcerptsPerPromptOpt = 1,
    control: ControlOpt = "none",
    seed: Annotated[int, typer.Option(help="Seed of --control shuffled's derangement.")] = 0,
    concurrency: ConcOpt = 8,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, workers: WorkersOpt = 0,
    cache: CacheOpt = None,
    strict_values: Annotated[bool, typer.Option(
        "--strict-values", help="Fail an excerpt when a value slot has no digit among the "
        "returned alternatives (default: that slot predicts 0, counted in the report).")] = False,
    batch: BatchOpt = False,
):
    """Predict activations from each explanation with a simulator LLM, and score them."""
    from explainer import simulate as stage

    cfg = config.SimulateConfig(run=run, engine=config.EngineConfig(engine, ray_address, workers),
                                layers=layers, neurons=neurons, model=model,
                                explainer=explainer, simulator=simulator, mode=mode, n_top=n_top,
                                n_random=n_random, calibrate=calibrate,
                                excerpts_per_prompt=excerpts_per_prompt, control=control, seed=seed,
                                strict_values=strict_values,
                                llm=config.LLMConfig(base_url=base_url, concurrency=concurrency,
                                                     cache=cache, batch=batch))
    typer.echo(_call(stage.run, cfg))


@app.command()
def score(
    run: RunOpt,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Fit a linear calibration on the calibrate split (needs simulations of it).")] = False,
):
    """Recompute every score of a run from its stored simulations (no LLM call)."""
    from explainer import score as stage

    typer.echo(_call(stage.run, config.ScoreConfig(run=run, calibrate=calibrate)))


@app.command()
def describe(
    run: RunOpt,
    layers: LayersOpt = "all",
    neurons: NeuronsOpt = "all",
    model: ModelSel = None,
    explainer: Annotated[str, typer.Option(
        help=f"Explainer LLM's name at the endpoint; {config.EMBEDDED_LLM} (embedded, no network) "
             f"or {config.BASELINE_EXPLAINER} (no LLM: the top tokens), or "
             f"{config.BASELINE_LOGITS} (no LLM: the tokens it promotes).")] = config.EMBEDDED_LLM,
    base_url: BaseUrlOpt = None,
    candidates: Annotated[int, typer.Option(help="Sampled explanations per neuron (all kept).")] = 1,
    temperature: Annotated[Optional[float], typer.Option(
        help="Sampling temperature (default: 0, or 1.0 with --candidates > 1).")] = None,
    n_excerpts: Annotated[int, typer.Option(help="Top excerpts shown to the explainer.")] = 10,
    api: Annotated[str, typer.Option(help="chat, or completion for base models.")] = "chat",
    side: Annotated[str, typer.Option(help="Which sides to explain: all (every side recorded), pos or neg.")] = "all",
    evidence: Annotated[str, typer.Option(help="What the explainer sees: inputs (top excerpts), "
                                          "outputs (tokens it promotes and suppresses) or both.")] = "inputs",
    concurrency: ConcOpt = 8,
    timeout: Annotated[float, typer.Option(help="Seconds before a request is retried.")] = 120.0,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, workers: WorkersOpt = 0,
    cascade: CascadeOpt = None,
    accept: AcceptOpt = None,
    accept_by: AcceptByOpt = None,
    revise: Annotated[int, typer.Option(help="Rounds in which the explainer sees where its explanation's simulation went wrong and revises it (kept only if its valid score is higher); simulates with --simulator.")] = 0,
    simulator: Annotated[str, typer.Option(help="With --cascade/--revise: the simulator that scores each level.")] = config.EMBEDDED_LLM,
    simulator_base_url: Annotated[Optional[list[str]], typer.Option("--simulator-base-url", callback=_urls, help="With --cascade/--revise: the simulator's endpoint (default: --base-url; none for the embedded one).")] = None,
    mode: Annotated[str, typer.Option(help="With --cascade/--revise: simulation mode (auto, logprob or chat).")] = "auto",
    excerpts_per_prompt: ExcerptsPerPromptOpt = 1,
    cache: CacheOpt = None,
    batch: BatchOpt = False,
):
    """Ask an explainer LLM for a one-phrase explanation of each neuron's top excerpts."""
    from explainer import describe as stage

    llm = config.LLMConfig(base_url=base_url, concurrency=concurrency, timeout_s=timeout,
                           cache=cache, batch=batch)
    cfg = config.DescribeConfig(run=run, engine=config.EngineConfig(engine, ray_address, workers),
                                layers=layers, neurons=neurons, model=model,
                                explainer=explainer, candidates=candidates, temperature=temperature,
                                n_excerpts=n_excerpts, api=api, evidence=evidence, sides=side,
                                llm=llm)
    if cascade is None and not revise:
        typer.echo(_call(stage.run, cfg))
        return
    from explainer import cascade as composer

    sim_url = simulator_base_url or (None if simulator == config.EMBEDDED_LLM else base_url)
    sim = config.SimulateConfig(run=run, simulator=simulator, mode=mode,
                                excerpts_per_prompt=excerpts_per_prompt,
                                llm=config.LLMConfig(base_url=sim_url, concurrency=concurrency,
                                                     cache=cache, batch=batch))
    names = tuple(e.strip() for e in (cascade or explainer).split(","))
    typer.echo(_call(composer.run, config.CascadeConfig(describe=cfg, simulate=sim,
                                                        explainers=names, accept=accept,
                                                        revise=revise, accept_by=accept_by)))


@app.command()
def puzzles(
    simulator: Annotated[str, typer.Option(help=f"Simulator LLM at the endpoint ({config.EMBEDDED_LLM}: embedded), or baseline-lexical (no LLM).")] = config.EMBEDDED_LLM,
    base_url: BaseUrlOpt = None,
    mode: Annotated[str, typer.Option(help="auto, logprob or chat (see `explain simulate`).")] = "auto",
    file: Annotated[Optional[Path], typer.Option("--file", help="Another puzzles file in the shipped format (default: the shipped puzzles).")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="Run directory to keep the results in (default: runs/puzzles-SIMULATOR).")] = None,
    format: Annotated[str, typer.Option("--format", help="table | json.")] = "table",
    explain: Annotated[bool, typer.Option("--explain", help="Also have the explainer explain each puzzle, and score that.")] = False,
    explainer: Annotated[Optional[str], typer.Option(help=f"Explainer for --explain (default: the simulator's LLM; {config.BASELINE_EXPLAINER} needs none).")] = None,
    concurrency: ConcOpt = 8,
):
    """Measure a simulator on known-answer neuron puzzles: does the true explanation score first?"""
    from explainer import puzzles as stage

    cfg = config.PuzzlesConfig(run=run, simulator=simulator, mode=mode, file=file, format=format,
                               explain=explain, explainer=explainer,
                               llm=config.LLMConfig(base_url=base_url, concurrency=concurrency))
    typer.echo(_call(stage.run, cfg))


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Neuron record / explanation files or folders (.json, .jsonl).")],
    run: RunOpt,
    format: Annotated[str, typer.Option("--format", help="openai: neuron-explainer's NeuronRecord and NeuronSimulationResults JSON.")] = "openai",
    model: Annotated[str, typer.Option(help="Subject model the records come from.")] = "gpt2-xl",
):
    """Import published neuron records and explanations (Bills et al., 2023) as a run directory."""
    from explainer import ingest as stage

    cfg = config.ImportConfig(paths=tuple(paths), run=run, format=format, model=model)
    typer.echo(_call(stage.run, cfg))


@app.command("run")
def run_all(
    run: RunOpt = Path("runs/demo"),
    model: Annotated[str, typer.Option(help="Subject model (see `explain models`).")] = "smollm2-135m",
    corpus: Annotated[str, typer.Option(help="Corpus spec (see `explain record`).")] = "embedded",
    layers: Annotated[Optional[str], typer.Option("--layers", "--layer", help="Layers (default: the first and the last).")] = None,
    neurons: NeuronsOpt = "0-1",
    n_excerpts: Annotated[int, typer.Option(help="Excerpts to read from the corpus.")] = 256,
    explainer: Annotated[Optional[list[str]], typer.Option(help=f"Explainer(s); repeat the option for several (default: {config.BASELINE_EXPLAINER} and {config.EMBEDDED_LLM}).")] = None,
    explain_excerpts: Annotated[int, typer.Option(help="Top excerpts shown to the explainer.")] = 5,
    simulator: Annotated[str, typer.Option(help="Simulator LLM at the endpoint.")] = config.EMBEDDED_LLM,
    base_url: BaseUrlOpt = None,
    mode: Annotated[str, typer.Option(help="Simulation mode: auto, logprob or chat.")] = "auto",
    lexical: Annotated[bool, typer.Option("--lexical/--no-lexical", help=f"Also score every explanation with {config.BASELINE_SIMULATOR} (no LLM, seconds).")] = True,
    control: ControlOpt = "shuffled",
    judge_methods: Annotated[str, typer.Option(help="Also judge with these methods (detection,fuzzing,generation,steering), by the simulator's LLM.")] = "",
    concurrency: ConcOpt = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random sample.")] = 0,
    device: Annotated[str, typer.Option(help="torch device of the subject model.")] = "cpu",
    cascade: CascadeOpt = None,
    accept: AcceptOpt = None,
    accept_by: AcceptByOpt = None,
    excerpts_per_prompt: ExcerptsPerPromptOpt = 1,
    cache: CacheOpt = None,
    batch: BatchOpt = False,
):
    """The whole pipeline: record, describe, simulate, score, report and viewer (resumable)."""
    from explainer import pipeline

    explainers = tuple(explainer) if explainer else (config.BASELINE_EXPLAINER, config.EMBEDDED_LLM)
    cfg = config.RunConfig(run=run, model=model, corpus=corpus, layers=layers, neurons=neurons,
                           n_excerpts=n_excerpts, seed=seed, device=device, explainers=explainers,
                           explain_excerpts=explain_excerpts,
                           simulator=simulator, mode=mode, lexical=lexical, control=control,
                           cascade=tuple(e.strip() for e in cascade.split(",")) if cascade else (),
                           accept=accept, accept_by=accept_by,
                           excerpts_per_prompt=excerpts_per_prompt,
                           llm=config.LLMConfig(base_url=base_url, concurrency=concurrency,
                                                cache=cache, batch=batch),
                           judge_methods=tuple(m.strip() for m in judge_methods.split(",") if m.strip()))
    typer.echo(_call(pipeline.run, cfg))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
