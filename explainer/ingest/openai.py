"""Reading the JSON that OpenAI's `neuron-explainer` package writes (Bills et al., 2023).

Two kinds of object, told apart by their fields (an optional `dataclass_name` is ignored):

* a neuron record: `neuron_id {layer_index, neuron_index}`, `most_positive_activation_records`,
  `random_sample`, optionally `random_sample_by_quantile` (a list of lists), each record an
  object with `tokens` (strings) and `activations` (numbers, one per token). The published
  collated activations are one such object per file, `<layer>/<neuron>.json`.
* a neuron's simulation results: `neuron_id` and `scored_explanations`, each with an
  `explanation` and a `scored_simulation` whose `ev_correlation_score` is the published score.
  The published explanations are one per line, `<layer>/<neuron>.jsonl`.

A file may hold one object, a list of them, or one per line; a folder is read recursively
(`*.json`, `*.jsonl`, in sorted order). Anything else gets one sentence naming the file, the
object and the field, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError

SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Record:
    """One excerpt of a neuron: token strings and the neuron's activation on each."""

    tokens: tuple[str, ...]
    activations: tuple[float, ...]


@dataclass(frozen=True)
class Neuron:
    """A neuron record: its top excerpts (in the file's order), random sample, quantile samples."""

    layer: int
    neuron: int
    top: tuple[Record, ...]
    random: tuple[Record, ...]
    quantiles: tuple[tuple[Record, ...], ...]  # one tuple per quantile bin, lowest bin first


@dataclass(frozen=True)
class Explanation:
    """One published explanation of a neuron and the score the paper gave it."""

    layer: int
    neuron: int
    explanation: str
    score: float | None  # ev_correlation_score; None where the paper's was undefined
    n_tokens: int  # tokens of the sequences it was scored on (0 when the file omits them)


@dataclass(frozen=True)
class Imported:
    """Everything read from the files, checked."""

    neurons: tuple[Neuron, ...]  # sorted by (layer, neuron)
    explanations: tuple[Explanation, ...]  # in file order
    files: tuple[str, ...]
    sha256: str  # of the files' bytes, in reading order: the same files import to the same run


def read(paths) -> Imported:
    """Read and check every file under `paths`; an ExplainError names the first problem."""
    files = _files(paths)
    digest = hashlib.sha256()
    neurons: dict[tuple[int, int], Neuron] = {}
    explanations: list[Explanation] = []
    for path in files:
        raw = path.read_bytes()
        digest.update(len(raw).to_bytes(8, "little") + raw)
        for i, obj in enumerate(_objects(path, raw), start=1):
            where = f"{path.name} object {i}"
            if isinstance(obj, dict) and "scored_explanations" in obj:
                explanations += _explanations(obj, where)
            elif isinstance(obj, dict) and ("most_positive_activation_records" in obj
                                            or "random_sample" in obj):
                n = _neuron(obj, where)
                if (n.layer, n.neuron) in neurons:
                    raise ExplainError(f"{where}: layer {n.layer} neuron {n.neuron} appears twice; "
                                       "give each neuron record once")
                neurons[(n.layer, n.neuron)] = n
            else:
                raise ExplainError(
                    f"{where}: neither a neuron record (neuron_id, most_positive_activation_"
                    "records, random_sample) nor simulation results (neuron_id, "
                    "scored_explanations)")
    if not neurons:
        raise ExplainError(f"{', '.join(map(str, paths))}: no neuron record found (objects with "
                           "neuron_id and most_positive_activation_records)")
    for e in explanations:
        if (e.layer, e.neuron) not in neurons:
            raise ExplainError(f"explanations of layer {e.layer} neuron {e.neuron} have no neuron "
                               "record among the files; add its record file")
    return Imported(tuple(neurons[k] for k in sorted(neurons)), tuple(explanations),
                    tuple(str(f) for f in files), digest.hexdigest())


def _files(paths) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
            if not found:
                raise ExplainError(f"{p}: no .json or .jsonl files in this folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ExplainError(f"{p}: no such file or folder")
    if not out:
        raise ExplainError("no PATH given: name neuron record files or folders to import")
    return out


def _objects(path: Path, raw: bytes) -> list:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExplainError(f"{path.name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, list) else [obj]
    except json.JSONDecodeError:
        pass
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ExplainError(f"{path.name}: neither JSON nor JSON lines (line {n}: "
                                   f"{e.msg})") from None
    if not out:
        raise ExplainError(f"{path.name}: empty file; expected neuron records in JSON")
    return out


def _index(value, where: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ExplainError(f"{where}: neuron_id.{name} is {value!r}; expected an integer >= 0")
    return value


def _neuron_id(obj: dict, where: str) -> tuple[int, int]:
    nid = obj.get("neuron_id")
    if not isinstance(nid, dict):
        raise ExplainError(f"{where}: neuron_id is {nid!r}; expected an object with "
                           "layer_index and neuron_index")
    return (_index(nid.get("layer_index"), where, "layer_index"),
            _index(nid.get("neuron_index"), where, "neuron_index"))


def _record(obj, where: str) -> Record:
    if not isinstance(obj, dict):
        raise ExplainError(f"{where} is a {type(obj).__name__}, not an object with tokens and "
                           "activations")
    tokens, acts = obj.get("tokens"), obj.get("activations")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ExplainError(f"{where}: tokens must be a non-empty list of strings")
    if not isinstance(acts, list) or len(acts) != len(tokens):
        got = len(acts) if isinstance(acts, list) else type(acts).__name__
        raise ExplainError(f"{where}: {len(tokens)} tokens but activations {got}; give one "
                           "number per token")
    for k, a in enumerate(acts):
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise ExplainError(f"{where}: activation {k} is {a!r}; expected a finite number")
    return Record(tuple(tokens), tuple(float(a) for a in acts))


def _records(obj: dict, field: str, where: str) -> tuple[Record, ...]:
    value = obj.get(field) or []
    if not isinstance(value, list):
        raise ExplainError(f"{where}: {field} is a {type(value).__name__}; expected a list of "
                           "activation records")
    return tuple(_record(r, f"{where} {field}[{i}]") for i, r in enumerate(value))


def _neuron(obj: dict, where: str) -> Neuron:
    layer, neuron = _neuron_id(obj, where)
    top = _records(obj, "most_positive_activation_records", where)
    if not top:
        raise ExplainError(f"{where}: most_positive_activation_records is empty; the top "
                           "excerpts are what a neuron is explained from")
    bins = obj.get("random_sample_by_quantile") or []
    if not isinstance(bins, list) or not all(isinstance(b, list) for b in bins):
        raise ExplainError(f"{where}: random_sample_by_quantile must be a list of lists of "
                           "activation records (or null)")
    quantiles = tuple(tuple(_record(r, f"{where} random_sample_by_quantile[{b}][{j}]")
                            for j, r in enumerate(rs)) for b, rs in enumerate(bins))
    return Neuron(layer, neuron, top, _records(obj, "random_sample", where), quantiles)


def _explanations(obj: dict, where: str) -> list[Explanation]:
    layer, neuron = _neuron_id(obj, where)
    items = obj.get("scored_explanations")
    if not isinstance(items, list) or not items:
        raise ExplainError(f"{where}: scored_explanations must be a non-empty list")
    out = []
    for i, se in enumerate(items):
        text = se.get("explanation") if isinstance(se, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ExplainError(f"{where} scored_explanations[{i}]: no explanation text")
        sim = se.get("scored_simulation") or {}
        score = sim.get("ev_correlation_score") if isinstance(sim, dict) else None
        if isinstance(score, bool) or not isinstance(score, (int, float)) \
                or not math.isfinite(score):
            score = None  # NaN or null: the paper's correlation was undefined
        seqs = sim.get("scored_sequence_simulations") if isinstance(sim, dict) else None
        n_tokens = sum(len(s.get("true_activations") or []) for s in seqs
                       if isinstance(s, dict)) if isinstance(seqs, list) else 0
        out.append(Explanation(layer, neuron, text.strip(), score, n_tokens))
    return out
