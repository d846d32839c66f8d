"""`explain puzzles`: a simulator (and, with --explain, an explainer) measured on known answers.

Every explanation of every puzzle (the true one and the false ones) is simulated on all of the
puzzle's passages and scored exactly as the pipeline scores a neuron: the Pearson correlation of
real and simulated activations over the passages concatenated (`score.metrics.score_excerpts`,
every passage in the "top" slot, none random). The true explanation ranks first when its score
is strictly above every false one's; a tie is not a win.

Results are rows of the run's `puzzles/` table (partition `model=<puzzle set>`), written every
few puzzles, so a rerun skips what is stored for the same simulator, mode, simulator prompt and
puzzle content, and `explain report` can show the accuracy beside the run's scores. With
--explain the explainer sees every passage of a puzzle (there is no held-out split in a puzzle),
so its score is in-sample: an upper bound on what it would reach on fresh text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError
from explainer import config
from explainer import run as rundir
from explainer.puzzles import data

MODES = ("auto", "logprob", "chat")
FORMATS = ("table", "json")
SHIPPED = "puzzles"  # puzzle-set name of the file shipped with the package
OWN = "puzzle"  # `explainer` of the file's own (true and false) explanations
FLUSH_PUZZLES = 4  # puzzles buffered before a write: a kill loses at most this much work
EXPLAIN_MAX_TOKENS = 60  # as `explain describe` asks: one phrase


@dataclass(frozen=True)
class _Item:
    """One explanation of one puzzle to simulate on all its passages."""

    puzzle: data.Puzzle
    role: str  # true | false | explained
    explainer: str
    index: int
    explanation: str | None  # None: the explainer gave nothing usable (the row fails)
    error: str | None = None


def default_run(simulator: str) -> Path:
    """Where results go without --run: runs/puzzles-<simulator>, relative to the working dir."""
    return Path("runs") / f"puzzles-{rundir.model_key(simulator)}"


def puzzle_hash(p: data.Puzzle) -> str:
    """12 hex of what a puzzle's scores depend on: its explanations and passages."""
    blob = json.dumps([p.explanation, list(p.false_explanations),
                       [[list(x.tokens), list(x.activations)] for x in p.passages]])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run(cfg: config.PuzzlesConfig) -> str:
    """Simulate and score every puzzle; returns the per-puzzle table and summary (or JSON)."""
    from explainer.llm import resolve
    from explainer.simulate import simulators

    if cfg.format not in FORMATS:
        raise ExplainError(f"--format {cfg.format}: expected one of {', '.join(FORMATS)}")
    if cfg.mode not in MODES:
        raise ExplainError(f"--mode {cfg.mode!r}: expected one of {', '.join(MODES)}")
    puzzles = data.load(cfg.file)
    pset = SHIPPED if cfg.file is None else rundir.model_key(Path(cfg.file).stem)
    out = Path(cfg.run) if cfg.run is not None else default_run(cfg.simulator)
    endpoint = simulators.endpoint_of(cfg.simulator, cfg.llm.base_url)
    explainer = None
    if cfg.explain:
        explainer = cfg.explainer or (config.EMBEDDED_LLM if endpoint is None else cfg.simulator)
        if explainer != config.BASELINE_EXPLAINER:
            resolve(explainer, cfg.llm.base_url)  # a missing key fails before any write
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    mode, usage = asyncio.run(_run(cfg, out, pset, puzzles, endpoint, explainer, t0))
    name = endpoint.model if endpoint is not None else config.BASELINE_SIMULATOR
    return _render(cfg, out, pset, puzzles, name, mode, explainer, usage)


def _render(cfg, out: Path, pset: str, puzzles, simulator: str, mode: str,
            explainer: str | None, usage: dict) -> str:
    from explainer.views import puzzles as puzzle_views

    rows = rundir.read(out, "puzzles", model=pset)
    hashes = {p.name: puzzle_hash(p) for p in puzzles}
    keep = (rows["simulator"] == simulator) & (rows["mode"] == mode) & \
        (rows["puzzle"].map(hashes) == rows["puzzle_hash"]) & \
        ((rows["role"] != "explained") | (rows["explainer"] == (explainer or "")))
    res = puzzle_views.results(rows[keep])
    summary = puzzle_views.summarize(res, pset, simulator, mode)
    if cfg.format == "json":
        return json.dumps({"run": str(out), **puzzle_views.as_dict(summary, res), "tokens": usage},
                          indent=2)
    return (puzzle_views.render(summary, res, usage["text"])
            + f"\nresults: {out / 'puzzles'} (`explain report --run {out}` shows them)")


# --- what is left to do -------------------------------------------------------------------


def _stored(out: Path, pset: str, simulator: str, phash: str):
    rows = rundir.read(out, "puzzles", model=pset)
    return rows[(rows["simulator"] == simulator) & (rows["sim_prompt_hash"] == phash)]


def _todo(items: list[_Item], stored, mode: str) -> list[_Item]:
    """Items whose score is not stored for this mode and content (failures are redone)."""
    done = {(r.puzzle, r.role, r.explainer, int(r.index), r.explanation, r.puzzle_hash)
            for r in stored.itertuples(index=False) if r.mode == mode and r.status != "failed"}
    return [it for it in items if (it.puzzle.name, it.role, it.explainer, it.index,
                                   it.explanation, puzzle_hash(it.puzzle)) not in done]


def _own_items(puzzles) -> list[_Item]:
    out = []
    for p in puzzles:
        out.append(_Item(p, "true", OWN, 0, p.explanation))
        out += [_Item(p, "false", OWN, i, f) for i, f in enumerate(p.false_explanations)]
    return out


# --- running ------------------------------------------------------------------------------


async def _run(cfg, out: Path, pset: str, puzzles, endpoint, explainer: str | None,
               t0: float) -> tuple[str, dict]:
    from explainer.simulate import simulators

    name = endpoint.model if endpoint is not None else config.BASELINE_SIMULATOR
    phash = "none" if endpoint is None else simulators.prompt_hash(name, 1, endpoint)
    items = _own_items(puzzles)
    if explainer is not None:
        items += await _explain(cfg, out, puzzles, explainer)
    stored = _stored(out, pset, name, phash)
    # Before the simulator starts (loading a model, probing an endpoint): is anything left?
    if endpoint is None:
        modes = ["lexical"]
    else:
        modes = [cfg.mode] if cfg.mode != "auto" else sorted(set(stored["mode"]))
    for mode in modes:
        if not _todo(items, stored, mode):
            print(f"puzzles: every result is already in {out / 'puzzles'}", file=sys.stderr)
            return mode, _usage(out, t0, None, 0)
    async with _open(cfg, out, endpoint) as sim:
        todo = _todo(items, stored, sim.mode)
        n_tokens = await _simulate(sim, todo, pset, name, phash, out)
        print(f"puzzles: simulator {sim.summary()}", file=sys.stderr)
    return sim.mode, _usage(out, t0, sim, n_tokens)  # the ledger is complete once closed


@contextlib.asynccontextmanager
async def _open(cfg, out: Path, endpoint):
    if endpoint is None:
        yield _Lexical()
        return
    from explainer.simulate import simulators

    scfg = config.SimulateConfig(run=out, simulator=cfg.simulator, mode=cfg.mode, llm=cfg.llm)
    async with simulators.open_simulator(scfg, endpoint) as sim:
        yield sim


class _Lexical:
    """The baseline-lexical simulator behind the same `predict` as the LLM simulators."""

    mode = "lexical"
    workers = 1  # pure Python, thousands of passages a second: nothing to overlap

    async def predict(self, explanation: str, tokens, key: str):
        from explainer.simulate import lexical
        from explainer.simulate.prompt import Parsed

        return Parsed(lexical.predict(explanation, tokens), None, self.mode)

    def summary(self) -> str:
        return "baseline-lexical: no LLM, 0 tokens, $0"


async def _simulate(sim, todo: list[_Item], pset: str, simulator: str, phash: str,
                    out: Path) -> int:
    """Simulate and score the items, writing rows every few puzzles; returns tokens simulated."""
    from explainer import progress

    by_puzzle: dict[str, list[_Item]] = {}
    for it in todo:
        by_puzzle.setdefault(it.puzzle.name, []).append(it)
    buffer: list[rundir.PuzzleRow] = []
    counts = {"puzzles": 0, "tokens": 0}

    def flush() -> None:
        if buffer:
            rundir.write_rows(out, "puzzles", buffer, prefix="puzzles")
            buffer.clear()

    async def one(group: list[_Item]) -> None:
        rows = await asyncio.gather(*(_score(sim, it, pset, simulator, phash) for it in group))
        buffer.extend(rows)
        counts["tokens"] += sum(r.n_tokens for r in rows if r.explanation is not None)
        counts["puzzles"] += 1
        if counts["puzzles"] % FLUSH_PUZZLES == 0:
            flush()

    await progress.drain("puzzles", list(by_puzzle.values()), one, sim.workers, flush)
    return counts["tokens"]


async def _score(sim, it: _Item, pset: str, simulator: str, phash: str) -> rundir.PuzzleRow:
    """One explanation simulated on every passage of its puzzle, scored as the pipeline does."""
    from explainer.score import metrics

    p = it.puzzle
    n_tokens = sum(len(x.tokens) for x in p.passages)

    def row(score, status, error) -> rundir.PuzzleRow:
        return rundir.PuzzleRow(
            model=pset, puzzle=p.name, category=p.category, simulator=simulator, mode=sim.mode,
            role=it.role, explainer=it.explainer, index=it.index, explanation=it.explanation,
            score=score, n_tokens=n_tokens, status=status, error=error, sim_prompt_hash=phash,
            puzzle_hash=puzzle_hash(p))

    if it.explanation is None:
        return row(None, "failed", it.error)
    key = f"puzzles/{pset}/{p.name}/{it.role}{it.index}"
    parsed = await asyncio.gather(*(sim.predict(it.explanation, x.tokens, f"{key}/p{j}")
                                    for j, x in enumerate(p.passages)))
    for j, (x, got) in enumerate(zip(p.passages, parsed)):
        if got.predicted is None or len(got.predicted) != len(x.tokens):
            why = got.error or f"{len(got.predicted)} predictions for {len(x.tokens)} tokens"
            return row(None, "failed", f"passage {j + 1}: {why}"[:300])
    # Every passage in the "top" slot: the headline correlation over all of them concatenated.
    scores = metrics.score_excerpts([(x.activations, got.predicted)
                                     for x, got in zip(p.passages, parsed)], [])
    return row(scores.score, scores.status, None)


# --- the explainer (--explain) ------------------------------------------------------------


async def _explain(cfg, out: Path, puzzles, explainer: str) -> list[_Item]:
    """The explainer's explanation of each puzzle, from all its passages (LLM answers cached)."""
    from explainer.describe import baseline
    from explainer.describe import prompt as describe_prompt

    shown = {p.name: [list(zip(x.tokens, x.activations)) for x in p.passages] for p in puzzles}
    if explainer == config.BASELINE_EXPLAINER:
        texts = {p.name: baseline.explanation(shown[p.name]) for p in puzzles}
        return [_Item(p, "explained", explainer, 0, texts[p.name],
                      None if texts[p.name] else "no token fires") for p in puzzles]
    from explainer.llm import LLM, LLMError, probe, resolve

    endpoint = resolve(explainer, cfg.llm.base_url)
    async with LLM(endpoint, out, stage="describe", cfg=cfg.llm, prompt_logprobs=False) as llm:
        await probe(llm, echo=False)

        async def one(p) -> _Item:
            try:
                c = await llm.chat(describe_prompt.chat_messages(shown[p.name]),
                                   max_tokens=EXPLAIN_MAX_TOKENS,
                                   accept=lambda c: describe_prompt.parse_explanation(c.text)
                                   is not None, key=f"puzzles/{p.name}/explain")
            except LLMError as err:
                return _Item(p, "explained", explainer, 0, None, f"explainer: {err}"[:300])
            text = describe_prompt.parse_explanation(c.text)
            why = None if text else f"explainer: unusable answer {c.text[:100]!r}"
            return _Item(p, "explained", explainer, 0, text, why)

        items = list(await asyncio.gather(*(one(p) for p in puzzles)))
        print(f"puzzles: explainer {llm.summary()}", file=sys.stderr)
    return items


def _usage(out: Path, t0: float, sim, n_tokens: int) -> dict:
    """Tokens this run used: simulated subject tokens, and what LLMs were sent (from the ledger)."""
    from explainer.llm import ledger

    sent = ledger.calls(out, key_prefix="puzzles/", since=t0, sent=True)
    got = ledger.totals(sent, by=()).get((), None)
    calls, prompt, completion = ((got.calls, got.prompt_tokens, got.completion_tokens)
                                 if got else (0, 0, 0))
    embedded = getattr(sim, "embedded", None)
    if embedded is not None and not any(c.host == ledger.IN_PROCESS for c in sent):
        # An in-process simulator that does not ledger its evaluations: count them here.
        calls, prompt = calls + embedded.calls, prompt + embedded.prompt_tokens
    if sim is None:
        text = "none this run (every result was already stored)"
    else:
        text = (f"{n_tokens:,} passage tokens simulated; LLM {calls:,} calls, {prompt:,} prompt "
                f"+ {completion:,} completion tokens")
    return {"simulated_tokens": n_tokens, "llm_calls": calls, "prompt_tokens": prompt,
            "completion_tokens": completion, "text": text}
