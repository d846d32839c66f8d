"""Stage `describe`: an explainer LLM reads each neuron's top excerpts and writes one phrase.

Reads `records/` and `excerpts/` of a run, writes `explanations/`. Resumable: a neuron already
explained with the same explainer, prompt and candidate number is skipped; failed rows are
retried. Rows are written in chunks as neurons finish, so a killed run keeps finished work.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError
from explainer import progress
from explainer import run as rundir
from explainer import config
from explainer.describe import baseline
from explainer.describe import prompt as describe_prompt
from explainer.run.evidence import EVIDENCE, OutputTokens, explainer_label, output_tokens
from explainer.run.specs import parse_spec

log = logging.getLogger(__name__)

FLUSH_ROWS = 64  # rows buffered before a write; a kill loses at most this much work
FLUSH_S = 10.0
MAX_TOKENS = 60  # one phrase; the paper's explanations are well under 30 tokens
NO_PROMPT = "none"  # prompt_hash of the baseline, which uses no prompt


@dataclass(frozen=True)
class _Job:
    layer: int
    neuron: int
    candidate: int
    excerpts: tuple  # the neuron's explain excerpts, as tuples of (token, activation)
    outputs: OutputTokens | None = None  # what it writes (with --evidence outputs|both)
    side: str = "pos"  # pos, or neg: what drives a gated neuron most negative


def run(cfg: config.DescribeConfig) -> Path:
    """Explain the selected neurons; returns the run's explanations/ folder."""
    run_dir = Path(cfg.run)
    model, entry = _pick_model(run_dir, cfg.model)
    layers = _layers(run_dir, model, entry, cfg.layers)
    neurons = parse_spec(cfg.neurons, int(entry["d_mlp"]), "neuron", f"{model} layer")
    if cfg.candidates < 1:
        raise ExplainError(f"--candidates {cfg.candidates}: must be 1 or more")
    if cfg.n_excerpts < 1:
        raise ExplainError(f"--n-excerpts {cfg.n_excerpts}: must be 1 or more")
    if cfg.api not in ("chat", "completion"):
        raise ExplainError(f"--api {cfg.api!r}: expected chat or completion")
    if cfg.evidence not in EVIDENCE:
        raise ExplainError(f"--evidence {cfg.evidence}: expected one of {', '.join(EVIDENCE)}")
    baseline = cfg.explainer in (config.BASELINE_EXPLAINER, config.BASELINE_LOGITS)
    # The baselines read one kind of evidence each, whatever --evidence says.
    evidence = {config.BASELINE_EXPLAINER: "inputs", config.BASELINE_LOGITS: "outputs"}.get(
        cfg.explainer, cfg.evidence)
    candidates = 1 if baseline else cfg.candidates
    phash = NO_PROMPT if baseline else describe_prompt.prompt_hash(evidence)
    label = explainer_label(cfg.explainer, evidence)  # e.g. smollm2-135m+both
    from explainer import engine

    engine.check(cfg.engine)
    if cfg.engine.engine == "ray":  # this same function on blocks of neurons, on Ray actors
        engine.run_stage(run, cfg, [(lay, neurons) for lay in layers], "describe")
        return run_dir / "explanations"
    texts = _excerpt_tokens(run_dir, model)
    jobs = []
    for layer, side in ((la, s) for la in layers for s in _sides(entry, cfg.sides)):
        done = _done(run_dir, model, layer, label, phash, side)
        todo = [(n, c) for n in neurons for c in range(candidates) if (n, c) not in done]
        if todo:
            shown = _explain_excerpts(run_dir, model, layer, {n for n, _ in todo}, texts,
                                      cfg.n_excerpts, side)
            outs = _outputs(run_dir, model, layer, evidence, side)
            jobs += [_Job(layer, n, c, shown.get(n, ()), outs.get(n), side) for n, c in todo]
    if not jobs:
        print(f"describe: nothing to do, every selected neuron is explained by {label}",
              file=sys.stderr)
        return run_dir / "explanations"
    writer = _Writer(run_dir, model, label, phash, evidence, cfg.level)
    if baseline:
        _run_baseline(jobs, writer, evidence)
    else:
        asyncio.run(_run_llm(cfg, jobs, writer))
    for layer in sorted({j.layer for j in jobs}):  # one file, one row per key, for plain readers
        rundir.compact(run_dir, "explanations", model, layer)
    return run_dir / "explanations"


# --- reading the run ----------------------------------------------------------------------


def _pick_model(run_dir: Path, name: str | None) -> tuple[str, dict]:
    if not (run_dir / rundir.RUN_JSON).exists():
        raise ExplainError(f"--run {run_dir}: no run.json there; create it with `explain record`")
    models = rundir.read_run_json(run_dir).get("models", {})
    if not models:
        raise ExplainError(f"--run {run_dir}: no subject model recorded yet; run `explain record`")
    if name is None:
        if len(models) > 1:
            raise ExplainError(f"--run {run_dir} holds several models "
                               f"({', '.join(sorted(models))}); pick one with --model")
        key = next(iter(models))
    else:
        key = rundir.model_key(name)
        if key not in models:
            raise ExplainError(f"--model {name}: not in this run "
                               f"(it has {', '.join(sorted(models))})")
    return key, models[key]


def _layers(run_dir: Path, model: str, entry: dict, spec: str) -> list[int]:
    recorded = rundir.layers_in(run_dir, "records", model)
    if not recorded:
        raise ExplainError(f"--run {run_dir}: no records for {model} yet; run `explain record`")
    if str(spec).strip() == "all":
        return recorded
    layers = parse_spec(spec, int(entry["n_layers"]), "layer", model)
    missing = [lay for lay in layers if lay not in recorded]
    if missing:
        raise ExplainError(f"--layer {spec}: no records for layer {missing[0]} of {model} "
                           f"(recorded layers: {', '.join(map(str, recorded))})")
    return layers


def _excerpt_tokens(run_dir: Path, model: str) -> dict[int, list[str]]:
    df = rundir.read(run_dir, "excerpts", model=model, columns=["excerpt_id", "tokens"])
    return {int(i): list(t) for i, t in zip(df["excerpt_id"], df["tokens"])}


def _sides(entry: dict, wanted: str) -> list[str]:
    """The sides recorded for this model (run.json), narrowed to --side."""
    have = list(entry.get("sides") or ["pos"])
    if wanted == "all":
        return have
    if wanted not in have:
        raise ExplainError(f"--side {wanted}: this run recorded side(s) {', '.join(have)} "
                           "(record a gated model, or use --sides both at record time)")
    return [wanted]


def _done(run_dir: Path, model: str, layer: int, explainer: str, phash: str,
          side: str) -> set:
    df = rundir.read(run_dir, "explanations", model=model, layer=layer,
                     columns=["neuron", "side", "explainer", "prompt_hash", "candidate",
                              "status"])
    df = df[(df["explainer"] == explainer) & (df["prompt_hash"] == phash)
            & (df["status"] == "ok") & (df["side"] == side)]
    return {(int(n), int(c)) for n, c in zip(df["neuron"], df["candidate"])}


def _explain_excerpts(run_dir: Path, model: str, layer: int, neurons: set[int],
                      texts: dict[int, list[str]], n_excerpts: int,
                      side: str = "pos") -> dict[int, tuple]:
    """Per neuron, its first `n_excerpts` explain-split top excerpts by rank; for the negative
    side its bottom excerpts with the activations negated (the explainer sees one scale)."""
    kind, sign = ("top", 1.0) if side == "pos" else ("bottom", -1.0)
    df = rundir.read(run_dir, "records", model=model, layer=layer,
                     columns=["neuron", "excerpt_id", "kind", "rank", "split", "activations"])
    df = df[(df["kind"] == kind) & (df["split"] == "explain") & df["neuron"].isin(neurons)]
    out: dict[int, tuple] = {}
    for neuron, group in df.sort_values(["neuron", "rank"]).groupby("neuron", sort=False):
        shown = []
        for eid, acts in zip(group["excerpt_id"].head(n_excerpts),
                             group["activations"].head(n_excerpts)):
            toks = texts.get(int(eid))
            if toks is None:
                raise ExplainError(f"--run {run_dir}: records of layer {layer} name excerpt {eid}, "
                                   "which excerpts/ lacks; re-record the run")
            shown.append(tuple(zip(toks, (sign * float(a) for a in acts))))
        out[int(neuron)] = tuple(shown)
    return out


def _outputs(run_dir: Path, model: str, layer: int, evidence: str,
             side: str = "pos") -> dict[int, OutputTokens]:
    """Per neuron, what it writes as seen from `side` (nothing to read for input evidence)."""
    if evidence == "inputs":
        return {}
    df = rundir.read(run_dir, "neurons", model=model, layer=layer)
    out = {int(r["neuron"]): output_tokens(r, side) for r in df.to_dict("records")}
    if not df.empty and all(v is None for v in out.values()):
        raise ExplainError(f"--evidence {evidence}: layer {layer} of {model} was recorded before "
                           "record kept the output side; re-record it or use --evidence inputs")
    return {n: v for n, v in out.items() if v is not None}


# --- writing ------------------------------------------------------------------------------


class _Writer:
    """Buffers explanation rows and writes them in chunks (also on the way out of an error)."""

    def __init__(self, run_dir: Path, model: str, explainer: str, phash: str,
                 evidence: str = "inputs", level: int = 0):
        self.run_dir, self.model, self.explainer, self.phash = run_dir, model, explainer, phash
        self.evidence, self.level = evidence, level
        self.rows: list[rundir.ExplanationRow] = []
        self.last = time.monotonic()
        self.n_ok = self.n_failed = 0

    def add(self, job: _Job, explanation: str | None, error: str | None,
            prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        ok = explanation is not None
        self.n_ok += ok
        self.n_failed += not ok
        self.rows.append(rundir.ExplanationRow(
            model=self.model, layer=job.layer, neuron=job.neuron, explainer=self.explainer,
            prompt_hash=self.phash, candidate=job.candidate, explanation=explanation,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            status="ok" if ok else "failed", error=None if ok else error,
            side=job.side, evidence=self.evidence, level=self.level))
        if len(self.rows) >= FLUSH_ROWS or time.monotonic() - self.last > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            rundir.write_rows(self.run_dir, "explanations", self.rows, prefix="describe")
            self.rows = []
        self.last = time.monotonic()


def _no_signal(job: _Job, evidence: str = "inputs") -> str | None:
    """Why a neuron cannot be explained from the evidence shown, or None when it can."""
    if evidence != "inputs" and job.outputs is None:
        return "no output-side tokens recorded for this neuron"
    if evidence == "outputs":
        return None
    if not job.excerpts:
        return "no explain-split top excerpts recorded for this neuron"
    if not any(a > 0 for ex in job.excerpts for _, a in ex):
        return "the neuron is never positive in its explain excerpts"
    return None


def _run_baseline(jobs: list[_Job], writer: _Writer, evidence: str = "inputs") -> None:
    with progress.bar("describe") as bar:
        task = bar.add_task("describe", total=len(jobs))
        try:
            for job in jobs:
                if evidence == "outputs":  # baseline-logits
                    text = baseline.logits_explanation(list(job.outputs.promoted)) \
                        if job.outputs else None
                    why = _no_signal(job, evidence) or "no token with a positive effect"
                else:
                    text = baseline.explanation([list(ex) for ex in job.excerpts])
                    why = _no_signal(job) or "no token with a positive mean"
                writer.add(job, text, why)
                bar.advance(task)
        finally:
            writer.flush()
    print(f"describe: {writer.n_ok} explained, {writer.n_failed} failed (baseline, no LLM)",
          file=sys.stderr)


async def _run_llm(cfg: config.DescribeConfig, jobs: list[_Job], writer: _Writer) -> None:
    from explainer.llm import LLM, probe, resolve

    endpoint = resolve(cfg.explainer, cfg.llm.base_url)
    temperature = cfg.temperature if cfg.temperature is not None else (
        1.0 if cfg.candidates > 1 else 0.0)
    # A cascade level's calls are its own in the ledger (describe:L2), so its cost is known.
    stage = f"describe:L{cfg.level}" if cfg.level else "describe"
    async with LLM(endpoint, cfg.run, stage=stage, cfg=cfg.llm,
                   prompt_logprobs=False) as llm:
        await probe(llm, echo=False)

        async def one(job: _Job) -> None:
            await _explain_one(llm, job, cfg.api, temperature, writer, cfg.evidence)

        # The LLM's semaphore bounds requests in flight; workers only bound memory.
        await progress.drain("describe", jobs, one, llm.capacity(), writer.flush)
        print(f"describe: {writer.n_ok} explained, {writer.n_failed} failed "
              "(failures are retried on the next run)", file=sys.stderr)
        print(f"describe: LLM {llm.summary()}", file=sys.stderr)


async def _explain_one(llm, job: _Job, api: str, temperature: float, writer: _Writer,
                       evidence: str = "inputs") -> None:
    from explainer.llm import LLMError

    why = _no_signal(job, evidence)
    if why:
        writer.add(job, None, why)
        return
    excerpts = [list(ex) for ex in job.excerpts]
    usable = lambda c: describe_prompt.parse_explanation(c.text) is not None  # noqa: E731
    key = f"L{job.layer}/N{job.neuron}/c{job.candidate}"
    try:
        if api == "chat":
            c = await llm.chat(describe_prompt.chat_messages(excerpts, job.outputs, evidence),
                               max_tokens=MAX_TOKENS,
                               temperature=temperature, sample=job.candidate, accept=usable,
                               key=key)
        else:
            prompt = describe_prompt.completion_prompt(excerpts, job.outputs, evidence)
            c = await llm.complete(prompt, max_tokens=MAX_TOKENS,
                                   temperature=temperature, sample=job.candidate, accept=usable,
                                   key=key, stop=["\n"])
    except LLMError as err:
        writer.add(job, None, str(err)[:300])
        return
    text = describe_prompt.parse_explanation(c.text)
    error = None if text else f"unusable answer: {c.text[:120]!r}"
    writer.add(job, text, error, c.prompt_tokens, c.completion_tokens)
