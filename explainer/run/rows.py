"""Typed rows: one frozen dataclass per table that stages build, fields in column order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExplanationRow:
    """One explanation of a neuron (status 'ok'), or a failed attempt (explanation None)."""

    model: str
    layer: int
    neuron: int
    explainer: str  # the explainer LLM's name at its endpoint, or 'baseline-tokens'
    prompt_hash: str  # 12 hex of the prompt files used, so results stay comparable
    candidate: int  # 0..N-1 with --candidates N
    explanation: str | None
    prompt_tokens: int
    completion_tokens: int
    status: str  # ok | failed
    error: str | None
    side: str = "pos"  # pos: what makes the neuron fire; neg: what drives it most negative
    evidence: str = "inputs"  # what the explainer saw: inputs (excerpts) | outputs | both
    level: int = 0  # cascade level that wrote it (explain describe --cascade): 1, 2, ...; 0: none


@dataclass(frozen=True)
class SimulationRow:
    """A simulator's predicted activations for one (explanation, excerpt)."""

    model: str
    layer: int
    neuron: int
    explainer: str
    candidate: int
    simulator: str
    mode: str  # logprob | chat | chat-logprob (the in-process embedded path is logprob)
    excerpt_id: int
    kind: str  # top | bottom | random | quantile
    split: str  # calibrate | valid | test
    predicted: list[float] | None  # one value per subject token, None when failed
    status: str  # ok | failed
    error: str | None
    side: str = "pos"
    control: str = "none"  # none | shuffled (another neuron's explanation, a specificity control)
    source_neuron: int | None = None  # the neuron the explanation was written for
    sim_prompt_hash: str = ""  # 12 hex of the simulator prompt files used
    explanation_hash: str = ""  # 12 hex of the explanation text simulated
    n_no_digit: int = 0  # value slots with no digit among the alternatives, predicted 0


@dataclass(frozen=True)
class ScoreRow:
    """Scores of one explanation on one split (REFERENCE.md, Scores)."""

    model: str
    layer: int
    neuron: int
    explainer: str
    candidate: int
    simulator: str
    split: str  # valid (headline) | test (held back, reported for the chosen candidate)
    explanation: str
    score: float | None  # correlation over top + random; None when undefined (see status)
    score_top: float | None
    score_random: float | None
    rsquared: float | None
    abs_dev_explained: float | None
    n_tokens: int
    best: bool  # the candidate chosen on the valid split
    status: str  # ok | constant_prediction | constant_activation | failed
    error: str | None
    side: str = "pos"
    mode: str = ""  # the simulator's mode (logprob | chat | chat-logprob | lexical ...)
    method: str = "simulation"  # simulation | detection | fuzzing
    control: str = "none"  # none | shuffled
    source_neuron: int | None = None
    sim_prompt_hash: str = ""
    explanation_hash: str = ""
    # detection / fuzzing rows (method != simulation; `score` = balanced_accuracy there)
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    auroc: float | None = None  # only when the judge returned probabilities for every item
    recall_by_quantile: list[float | None] | None = None  # per activation bin of the positives
    n_judged: int | None = None  # items with a parsed answer
    n_failed: int | None = None  # items whose answer could not be parsed (left out)
    # judge rows: the sampling preset (explain | delphi; '' on rows written before presets,
    # which were explain's) and every parameter of it as JSON (judge/sampling.py)
    sampling: str = ""
    sampling_params: str | None = None
    status_top: str | None = None  # why score_top is undefined (metrics status), or ok
    status_random: str | None = None  # likewise for score_random
    # generation and steering rows (schema.py says what each holds)
    auroc_other: float | None = None
    mad: float | None = None
    n_written: int | None = None
    n_kept: int | None = None
    gain: float | None = None
    steer_k: float | None = None
    no_digit_share: float | None = None  # share of the split's value slots without a digit


@dataclass(frozen=True)
class PuzzleRow:
    """One explanation of a known-answer puzzle, simulated on its passages and scored."""

    model: str  # the puzzle set (partition): `puzzles` for the shipped file, else the file's stem
    puzzle: str
    category: str  # lexical | contextual | positional | predictive
    simulator: str
    mode: str  # the simulator's mode (logprob | chat | lexical ...)
    role: str  # true | false | explained
    explainer: str  # `puzzle` for the file's own explanations, else the explainer's name
    index: int  # position among the false explanations (0 for true and explained)
    explanation: str | None  # None when the explainer gave nothing usable
    score: float | None  # correlation over the puzzle's passages concatenated; None if undefined
    n_tokens: int
    status: str  # ok | constant_prediction | constant_activation | failed
    error: str | None
    sim_prompt_hash: str  # 12 hex of the simulator prompt files ('none' for baseline-lexical)
    puzzle_hash: str  # 12 hex of the puzzle's explanations and passages: edits are redone


@dataclass(frozen=True)
class JudgmentRow:
    """A judge's answer on one excerpt for one explanation (detection or fuzzing)."""

    model: str
    layer: int
    neuron: int
    side: str  # pos | neg
    explainer: str
    candidate: int
    method: str  # detection | fuzzing
    judge: str  # the judge LLM's name at its endpoint
    excerpt_id: int
    kind: str  # the record kind the excerpt came from: top | bottom | quantile | random
    split: str
    label: bool  # detection: the excerpt activates; fuzzing: the highlights are the real ones
    prediction: bool | None  # the judge's yes/no; None when its answer could not be parsed
    probability: float | None  # P(yes) from top_logprobs, when the endpoint returned them
    status: str  # ok | failed
    error: str | None
    quantile: int | None  # activation bin of a positive excerpt's max (None for negatives)
    threshold: float  # the neuron's activating threshold, in the side's units
    highlighted: list[int] | None  # fuzzing: token positions marked in the prompt
    answer: str | None  # the judge's answer line for this excerpt, as written
    prompt_hash: str
    explanation_hash: str
    sampling: str = ""  # the sampling preset that drew the excerpt (see ScoreRow.sampling)
    sampling_params: str | None = None  # its every parameter, as JSON


@dataclass(frozen=True)
class GenerationRow:
    """One text of the generation judge (written, or another neuron's) or one control window."""

    model: str
    layer: int
    neuron: int
    side: str
    explainer: str
    candidate: int
    judge: str  # the generator LLM's name at its endpoint
    role: str  # own | other (the deranged source's texts) | window (a random excerpt's window)
    index: int  # the line's position among the generator's lines, or the window's number
    text: str | None  # the cleaned line (None for a window)
    status: str  # kept | empty | short | restates | duplicate | extra (own); ok (other, window)
    token_ids: list[int] | None  # what the subject read (None for a dropped line)
    tokens: list[str] | None
    activations: list[float] | None  # this neuron's, in the side's units
    max_activation: float | None
    excerpt_id: int | None  # a window's excerpt
    start: int | None  # a window's first token within its excerpt
    source_neuron: int | None  # role other: the neuron the texts were written for
    prompt_hash: str
    explanation_hash: str
