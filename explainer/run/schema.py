"""Table names, schemas, keys and partition paths of the run directory.

Every table is Parquet, partitioned `model=…/` (and `layer=…/` where it has a layer), so pandas,
pyarrow.dataset and DuckDB read a whole run or one layer with a filter. Partition columns live in
the path only (the Hive rule), so readers get them from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

RUN_JSON = "run.json"
F32 = pa.float32()
LIST_F32 = pa.list_(pa.float32())
LIST_I32 = pa.list_(pa.int32())
LIST_STR = pa.list_(pa.string())


@dataclass(frozen=True)
class Table:
    """One table of the run directory."""

    name: str
    schema: pa.Schema  # in-file columns; `model` and `layer` come from the path
    key: tuple[str, ...]  # a row's identity, partition columns included
    by_layer: bool = True

    @property
    def columns(self) -> list[str]:
        part = ["model", "layer"] if self.by_layer else ["model"]
        return part + self.schema.names


TABLES: dict[str, Table] = {
    t.name: t
    for t in [
        Table(
            "excerpts",
            pa.schema([("excerpt_id", pa.int64()), ("token_ids", pa.list_(pa.int32())),
                       ("tokens", pa.list_(pa.string()))]),
            ("model", "excerpt_id"),
            by_layer=False,
        ),
        Table(
            "records",
            # kind: top (ranked by max) | bottom (ranked by min: a gated neuron's negative side)
            #       | random | quantile
            pa.schema([("neuron", pa.int32()), ("excerpt_id", pa.int64()), ("kind", pa.string()),
                       ("rank", pa.int32()), ("split", pa.string()),
                       ("activations", LIST_F32), ("max_activation", F32)]),
            ("model", "layer", "neuron", "kind", "excerpt_id"),
        ),
        Table(
            "neurons",
            pa.schema([("neuron", pa.int32()), ("mean", pa.float64()), ("std", pa.float64()),
                       ("max", F32), ("min", F32), ("density", pa.float64()),
                       ("n_tokens", pa.int64()), ("quantiles", LIST_F32),
                       # the direct effect on the logits (record/logits.py): top 10 each
                       ("promoted_ids", LIST_I32), ("promoted_values", LIST_F32),
                       ("promoted_tokens", LIST_STR), ("suppressed_ids", LIST_I32),
                       ("suppressed_values", LIST_F32), ("suppressed_tokens", LIST_STR)]),
            ("model", "layer", "neuron"),
        ),
        Table(
            "explanations",
            pa.schema([("neuron", pa.int32()), ("explainer", pa.string()),
                       ("prompt_hash", pa.string()), ("candidate", pa.int32()),
                       ("explanation", pa.string()), ("prompt_tokens", pa.int64()),
                       ("completion_tokens", pa.int64()), ("status", pa.string()),
                       ("error", pa.string()), ("side", pa.string()), ("evidence", pa.string()),
                       ("level", pa.int32())]),
            ("model", "layer", "neuron", "side", "explainer", "prompt_hash", "candidate"),
        ),
        Table(
            "simulations",
            pa.schema([("neuron", pa.int32()), ("explainer", pa.string()),
                       ("candidate", pa.int32()), ("simulator", pa.string()),
                       ("mode", pa.string()), ("excerpt_id", pa.int64()), ("kind", pa.string()),
                       ("split", pa.string()), ("predicted", LIST_F32),
                       ("status", pa.string()), ("error", pa.string()), ("side", pa.string()),
                       ("control", pa.string()), ("source_neuron", pa.int32()),
                       ("sim_prompt_hash", pa.string()), ("explanation_hash", pa.string()),
                       # value slots with no digit among the simulator's alternatives (their
                       # prediction is 0, as the paper's reference code has it)
                       ("n_no_digit", pa.int32())]),
            # `mode` compares by family: a chat excerpt that failed (`chat`) and was retried
            # with logprobs (`chat-logprob`) is one row, the retry
            ("model", "layer", "neuron", "side", "explainer", "candidate", "simulator", "mode",
             "control", "kind", "excerpt_id", "sim_prompt_hash", "explanation_hash"),
        ),
        Table(
            "scores",
            pa.schema([("neuron", pa.int32()), ("explainer", pa.string()),
                       ("candidate", pa.int32()), ("simulator", pa.string()),
                       ("split", pa.string()), ("explanation", pa.string()),
                       ("score", pa.float64()), ("score_top", pa.float64()),
                       ("score_random", pa.float64()), ("rsquared", pa.float64()),
                       ("abs_dev_explained", pa.float64()), ("n_tokens", pa.int64()),
                       ("best", pa.bool_()), ("status", pa.string()), ("error", pa.string()),
                       ("side", pa.string()), ("mode", pa.string()), ("method", pa.string()),
                       ("control", pa.string()), ("source_neuron", pa.int32()),
                       ("sim_prompt_hash", pa.string()), ("explanation_hash", pa.string()),
                       # detection / fuzzing (stage judge; `score` holds balanced_accuracy)
                       ("accuracy", pa.float64()), ("balanced_accuracy", pa.float64()),
                       ("f1", pa.float64()), ("precision", pa.float64()),
                       ("recall", pa.float64()), ("auroc", pa.float64()),
                       ("recall_by_quantile", LIST_F32), ("n_judged", pa.int64()),
                       ("n_failed", pa.int64()),
                       # judge rows: the sampling preset and its parameters (JSON)
                       ("sampling", pa.string()), ("sampling_params", pa.string()),
                       # why score_top / score_random is undefined (metrics status), so a report
                       # counts a constant prediction there as 0 and leaves a dead side out
                       ("status_top", pa.string()), ("status_random", pa.string()),
                       # generation (judge/generation.py; `score` = AUROC vs length-matched
                       # windows of the neuron's random excerpts): AUROC vs the texts written
                       # for another neuron's explanation, the mean difference in units of the
                       # windows' spread, texts written and kept; steering (judge/steering.py;
                       # `score` = own gain - shuffled gain): the named tokens' mean gain in
                       # log-probability and the multiple k of the mean top activation added
                       ("auroc_other", pa.float64()), ("mad", pa.float64()),
                       ("n_written", pa.int64()), ("n_kept", pa.int64()),
                       ("gain", pa.float64()), ("steer_k", pa.float64()),
                       # simulation rows: the share of the split's predicted value slots that
                       # had no digit among the alternatives (predicted 0); null before
                       ("no_digit_share", pa.float64())]),
            # `mode` compares by family (MODE_FAMILY_KEYS); the prompt and explanation hashes
            # keep scores made under another simulator prompt or of another text apart
            ("model", "layer", "neuron", "side", "explainer", "candidate", "simulator", "mode",
             "method", "control", "split", "sampling", "sim_prompt_hash", "explanation_hash"),
        ),
        Table(
            "judgments",
            # one judge's answer on one excerpt (stage judge); fuzzing judges each positive
            # excerpt twice: its activating tokens highlighted (label true) and a decoy (false)
            pa.schema([("neuron", pa.int32()), ("side", pa.string()), ("explainer", pa.string()),
                       ("candidate", pa.int32()), ("method", pa.string()),
                       ("judge", pa.string()), ("excerpt_id", pa.int64()),
                       ("kind", pa.string()), ("split", pa.string()), ("label", pa.bool_()),
                       ("prediction", pa.bool_()), ("probability", pa.float64()),
                       ("status", pa.string()), ("error", pa.string()),
                       ("quantile", pa.int32()), ("threshold", F32),
                       ("highlighted", pa.list_(pa.int32())), ("answer", pa.string()),
                       ("prompt_hash", pa.string()), ("explanation_hash", pa.string()),
                       ("sampling", pa.string()), ("sampling_params", pa.string())]),
            ("model", "layer", "neuron", "side", "explainer", "candidate", "method", "judge",
             "excerpt_id", "label", "sampling"),
        ),
        Table(
            "generations",
            # generation (judge/generation.py): one row per line the generator wrote (role own,
            # status kept or why it was dropped), per text written for the deranged source
            # neuron's explanation read on this neuron (role other), and per length-matched
            # window of the neuron's random excerpts (role window: excerpt_id, start); tokens
            # and activations (this neuron's, in the side's units) only where the subject read it
            pa.schema([("neuron", pa.int32()), ("side", pa.string()), ("explainer", pa.string()),
                       ("candidate", pa.int32()), ("judge", pa.string()),
                       ("role", pa.string()), ("index", pa.int32()), ("text", pa.string()),
                       ("status", pa.string()), ("token_ids", LIST_I32), ("tokens", LIST_STR),
                       ("activations", LIST_F32), ("max_activation", F32),
                       ("excerpt_id", pa.int64()), ("start", pa.int32()),
                       ("source_neuron", pa.int32()), ("prompt_hash", pa.string()),
                       ("explanation_hash", pa.string())]),
            ("model", "layer", "neuron", "side", "explainer", "candidate", "judge", "role",
             "index", "prompt_hash", "explanation_hash"),
        ),
        Table(
            "puzzles",
            # `explain puzzles`: one row per (puzzle, explanation) scored by one simulator; the
            # `model` partition names the puzzle set (`puzzles` for the shipped file).
            # role: true | false | explained (written by `explainer` from the passages)
            pa.schema([("puzzle", pa.string()), ("category", pa.string()),
                       ("simulator", pa.string()), ("mode", pa.string()), ("role", pa.string()),
                       ("explainer", pa.string()), ("index", pa.int32()),
                       ("explanation", pa.string()), ("score", pa.float64()),
                       ("n_tokens", pa.int64()), ("status", pa.string()), ("error", pa.string()),
                       ("sim_prompt_hash", pa.string()), ("puzzle_hash", pa.string())]),
            ("model", "puzzle", "simulator", "mode", "role", "explainer", "index"),
            by_layer=False,
        ),
    ]
}


# Values of columns added to the contract later, for files written before them.
DEFAULTS = {"side": "pos", "evidence": "inputs", "control": "none", "method": "simulation",
            "level": 0, "sampling": "", "sim_prompt_hash": "", "explanation_hash": ""}

# Key columns compared by `mode_family`, not by their text: in a newest-row-per-key read and in
# compaction a retried excerpt's `chat-logprob` row replaces its failed `chat` row.
MODE_FAMILY_KEYS = ("mode",)


def mode_family(mode: str) -> str:
    """A simulator mode without its variant: chat-logprob is chat (the same prompt and answer,
    read with or without the endpoint's logprobs)."""
    return str(mode).split("-")[0]


def key_columns(data: pa.Table, key: list[str]) -> pa.Table:
    """The key columns of `data` as rows are told apart: a `mode` by its family."""
    import pyarrow.compute as pc

    cols = []
    for c in key:
        col = data.column(c)
        if c in MODE_FAMILY_KEYS:
            col = pc.replace_substring_regex(col, pattern="-.*$", replacement="")
        cols.append(col)
    return pa.table(cols, names=key)


def table(name: str) -> Table:
    """The table called `name` (a KeyError names a bug, not bad input)."""
    return TABLES[name]


# Characters not kept in a partition or file name.
UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def model_key(name: str) -> str:
    """A model name as it appears in a partition path (`model=<key>`)."""
    return UNSAFE_CHARS.sub("_", name).strip("_") or "model"


def partition_dir(run: Path, name: str, model: str, layer: int | None = None) -> Path:
    """Folder of one partition of a table."""
    path = Path(run) / name / f"model={model_key(model)}"
    return path / f"layer={int(layer)}" if TABLES[name].by_layer else path
