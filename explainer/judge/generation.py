"""`explain judge --method generation`: does the neuron fire on text written from its explanation?

CoSy (Kopf et al., 2024) and Huang et al. (2023): a generator LLM, holding only the explanation,
writes N short texts in which what it names occurs (one chat call per explanation; one more
when fewer than MIN_KEPT texts survive `texts.screen`). Both asks sample at texts.TEMPERATURE
with a seed per ask (cached, so a rerun reads the same texts): greedy decoding sent the embedded
135M generator into a loop of one repeated line on most explanations. The subject model reads them
(`reading.read_texts`); per text the neuron's max activation in the side's units. Two controls:

* (a) windows: the neuron's own random excerpts, each cut to the token length of one of the
  kept texts (lengths dealt round-robin in a seeded order), starting after the excerpt's first
  token. A max over fewer tokens is lower whatever the text says, so unmatched excerpts would
  make every explanation look worse than random text.
* (b) other: the texts written for another neuron's explanation of the same layer, side and
  explainer (the shuffled control's seeded derangement), read on this neuron.

Score rows (`method = generation`, `split = generated`): control none holds AUROC(own texts vs
windows) in `score`, AUROC(own vs other) in `auroc_other`, CoSy's MAD ((mean own - mean window)
/ std window) in `mad`, and `n_written` / `n_kept`; control shuffled (the chosen candidate only)
holds AUROC(the source's texts vs windows cut to their lengths), `source_neuron` naming it, so
the report pairs own with shuffled as it does for simulation. Fewer than MIN_KEPT kept texts
after the second ask: status `too_few_texts`, never a score. Every line, the other texts and the
windows go to `generations/` with their tokens and activations.

Resumable by group (layer, side, explainer): a group whose every explanation has its rows under
these settings is skipped; otherwise it is redone, the generator's answers coming from the cache.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError
from explainer import config
from explainer import run as rundir
from explainer.judge import reading, texts
from explainer.judge.sampling import rng_for, side_of
from explainer.run.query import text_hash
from explainer.run.rows import GenerationRow
from explainer.score import classify

METHOD = "generation"
SPLIT = "generated"
MODE = "chat"
SHUFFLED = "shuffled"
MIN_KEPT = 5  # fewer kept texts: no score (an AUROC over 3 texts is mostly noise)
TOO_FEW = "too_few_texts"
DONE = {"ok", TOO_FEW, "no_control"}  # statuses a rerun does not redo


@dataclass(frozen=True)
class Expl:
    """One explanation to write texts for."""

    layer: int
    neuron: int
    side: str
    explainer: str
    candidate: int
    explanation: str
    best: bool  # the candidate simulation chose (else the lowest-numbered one)

    @property
    def key(self) -> tuple:
        return (self.layer, self.neuron, self.side, self.explainer, self.candidate)


@dataclass(frozen=True)
class Window:
    """Control (a): `length` tokens of a random excerpt from `start`, in the side's units."""

    excerpt_id: int
    start: int
    tokens: tuple[str, ...]
    acts: tuple[float, ...]


def derangement(neurons, key: str) -> dict[int, int]:
    """target -> source, no neuron its own: simulate/control.py's derangement (the same cycle
    for the same seed key and neurons; tests/test_generation.py checks they agree)."""
    order = sorted(set(int(n) for n in neurons))
    if len(order) < 2:
        return {}
    random.Random(key).shuffle(order)
    return {order[(i + 1) % len(order)]: order[i] for i in range(len(order))}


def windows(excerpts: list[tuple[int, tuple[str, ...], tuple[float, ...]]],
            lengths: list[int], rng: random.Random) -> list[Window]:
    """One window per random excerpt (excerpt_id, tokens, activations), its length dealt from
    `lengths` round-robin in a shuffled order; it starts at token 1 or later when the excerpt is
    long enough (token 0 follows the BOS, as no generated text's token does)."""
    if not lengths:
        return []
    order = list(lengths)
    rng.shuffle(order)
    out = []
    for j, (eid, toks, acts) in enumerate(excerpts):
        n = min(order[j % len(order)], len(acts))
        first = 1 if len(acts) - n >= 1 else 0
        start = rng.randint(first, len(acts) - n) if n else 0
        out.append(Window(eid, start, toks[start:start + n], acts[start:start + n]))
    return out


def mad(own: list[float], control: list[float]) -> float | None:
    """CoSy's mean activation difference: (mean own - mean control) / std control (ddof 1);
    None when the control has fewer than two values or no spread."""
    if len(own) < 1 or len(control) < 2:
        return None
    mu = sum(control) / len(control)
    sd = math.sqrt(sum((c - mu) ** 2 for c in control) / (len(control) - 1))
    return None if sd == 0 else (sum(own) / len(own) - mu) / sd


def auroc(pos: list[float], neg: list[float]) -> float | None:
    return classify.auroc([True] * len(pos) + [False] * len(neg), list(pos) + list(neg))


# --- the stage -------------------------------------------------------------------------------


def run(cfg: config.JudgeConfig) -> Path:
    """Write texts for the selected explanations and score them; returns generations/."""
    from explainer import llm as L

    _check(cfg)
    run_dir = Path(cfg.run)
    endpoint = L.resolve(cfg.judge, cfg.llm.base_url)
    model, layers = rundir.explained_layers(run_dir, cfg.model, cfg.layers)
    phash = texts.prompt_hash(settings(cfg))
    groups: dict[tuple, list[Expl]] = {}
    for layer in layers:
        for e in explanations(run_dir, model, layer, cfg.explainer, cfg.neurons):
            groups.setdefault((e.layer, e.side, e.explainer), []).append(e)
    if not groups:
        raise ExplainError(f"--neurons {cfg.neurons}: no explained neuron among them in layer(s) "
                           f"{', '.join(map(str, layers))}; run `explain describe` for them first")
    todo = {g: ex for g, ex in groups.items()
            if not _done(run_dir, model, g[0], ex, endpoint.model, phash)}
    if len(todo) < len(groups):
        print(f"judge: {len(groups) - len(todo)} groups (layer, side, explainer) already scored "
              f"by generation ({endpoint.model}), skipped", file=sys.stderr)
    if not todo:
        return run_dir / "generations"
    wanted = [e for ex in todo.values() for e in ex]
    answers = asyncio.run(_ask(cfg, endpoint, run_dir, wanted))
    subject = reading.load_subject(run_dir, model, cfg.device)
    from explainer import progress

    label = "judge generation: subject reads"
    with progress.bar(label) as bar:
        task = bar.add_task(label, total=len(todo))
        for (layer, side, explainer), ex in sorted(todo.items()):
            gen, scores = group_rows(run_dir, model, subject, ex, answers, cfg, endpoint.model,
                                     phash)
            rundir.write_rows(run_dir, "generations", gen, prefix="judge")
            rundir.write_rows(run_dir, "scores", scores, prefix="judge")
            bar.advance(task)
    for layer in sorted({g[0] for g in todo}):
        for table in ("generations", "scores"):
            rundir.compact(run_dir, table, model, layer)
    return run_dir / "generations"


def _check(cfg: config.JudgeConfig) -> None:
    if cfg.n_texts < MIN_KEPT:
        raise ExplainError(f"--n-texts {cfg.n_texts}: must be {MIN_KEPT} or more (fewer kept "
                           "texts than that give no score)")
    engine = getattr(cfg, "engine", None)
    if engine is not None and getattr(engine, "engine", "local") != "local":
        raise ExplainError(f"--engine {engine.engine}: --method {cfg.method} runs in this "
                           "process only (the subject model is loaded once, here)")


def settings(cfg: config.JudgeConfig) -> str:
    """What shapes the texts and scores besides the prompt files (a change redoes them)."""
    return (f"n={cfg.n_texts};min={MIN_KEPT};lead={reading.LEAD_IN!r};"
            f"max_tokens={reading.MAX_TEXT_TOKENS};seed={cfg.seed};windows=1;"
            f"copied={texts.COPIED};t={texts.TEMPERATURE};label=1")


def explanations(run_dir: Path, model: str, layer: int, explainer: str | None,
                 neurons: str, judge: str | None = None) -> list[Expl]:
    """The selected `ok` explanations of a layer, each with whether simulation chose it."""
    ex = rundir.selected_explanations(run_dir, model, layer, explainer, neurons)
    found: dict[tuple, str] = {}
    for r in ex.itertuples(index=False):  # newest row last: a re-described candidate wins
        found[(int(r.neuron), r.side, r.explainer, int(r.candidate))] = r.explanation
    sc = rundir.query.read_scores(run_dir, model, layer)
    simulator = rundir.query.following(sc, judge)  # the LLM simulator's choice, not lexical
    chosen = {} if simulator is None else {
        (n, sd, e): c for (_, n, sd, e), c in rundir.query.judge_targets(sc, simulator).items()}
    lowest: dict[tuple, int] = {}
    for n, s, e, c in found:
        lowest[(n, s, e)] = min(c, lowest.get((n, s, e), c))
    return [Expl(layer, n, s, e, c, t, c == chosen.get((n, s, e), lowest[(n, s, e)]))
            for (n, s, e, c), t in sorted(found.items())]


def _done(run_dir: Path, model: str, layer: int, ex: list[Expl], judge: str,
          phash: str) -> bool:
    sc = rundir.query.judged_by(rundir.query.read_scores(run_dir, model, layer), METHOD,
                                judge, phash)
    have = {(int(n), sd, e, int(c), h) for n, sd, e, c, h, st in zip(
        sc["neuron"], sc["side"], sc["explainer"], sc["candidate"], sc["explanation_hash"],
        sc["status"]) if st in DONE}
    return all((e.neuron, e.side, e.explainer, e.candidate, text_hash(e.explanation)) in have
               for e in ex)


async def _ask(cfg: config.JudgeConfig, endpoint, run_dir: Path, todo: list[Expl]) -> dict:
    """Expl.key -> the generator's answers (one, or two when the first kept too few)."""
    from explainer import llm as L
    from explainer import progress

    out: dict[tuple, list[str]] = {}
    examples = texts.example_texts()
    async with L.LLM(endpoint, run_dir, stage=f"judge-{METHOD}", cfg=cfg.llm,
                     prompt_logprobs=False) as llm:

        async def one(e: Expl) -> None:
            got: list[str] = []
            for sample in (0, 1):
                if sum(t.status == texts.KEPT for t in
                       texts.screen(got, e.explanation, cfg.n_texts, examples)) >= MIN_KEPT:
                    break
                key = f"L{e.layer}/N{e.neuron}/{e.side}/{e.explainer}/c{e.candidate}/s{sample}"
                try:  # sampled, not greedy (module doc); the second ask has its own seed
                    c = await llm.chat(texts.messages(e.explanation, cfg.n_texts),
                                       max_tokens=texts.max_tokens(cfg.n_texts),
                                       temperature=texts.TEMPERATURE, sample=sample,
                                       key=key, accept=lambda c: bool(c.text.strip()))
                    got.append(c.text)
                except L.LLMError as err:
                    print(f"judge: generation for {key}: {err}", file=sys.stderr)
            out[e.key] = got

        await progress.drain("judge generation: texts", todo, one, cfg.llm.concurrency)
        print(f"judge: LLM {llm.summary()}", file=sys.stderr)
    return out


def _randoms(run_dir: Path, model: str, layer: int, neurons: set[int], side: str) -> dict:
    """neuron -> its random excerpts (excerpt_id, tokens, activations in the side's units), by
    rank."""
    _, _, sign = side_of(side)
    rec = rundir.read_neurons(run_dir, "records", model, layer, neurons,
                              columns=["neuron", "excerpt_id", "kind", "rank", "activations"])
    rec = rec[rec["kind"] == "random"].sort_values(["neuron", "rank"])
    ids = set(int(e) for e in rec["excerpt_id"])
    ex = rundir.read(run_dir, "excerpts", model=model, columns=["excerpt_id", "tokens"])
    toks = {int(e): tuple(t) for e, t in zip(ex["excerpt_id"], ex["tokens"]) if int(e) in ids}
    out: dict[int, list] = {}
    for n, e, a in zip(rec["neuron"], rec["excerpt_id"], rec["activations"]):
        out.setdefault(int(n), []).append(
            (int(e), toks.get(int(e), ()), tuple(sign * float(v) for v in a)))
    return out


def group_rows(run_dir: Path, model: str, subject, ex: list[Expl], answers: dict,
               cfg: config.JudgeConfig, judge: str, phash: str) -> tuple[list, list]:
    """(generations rows, score rows) of one (layer, side, explainer) group."""
    layer, side, explainer = ex[0].layer, ex[0].side, ex[0].explainer
    _, _, sign = side_of(side)
    examples = texts.example_texts()
    screened = {e.key: texts.screen(answers.get(e.key, []), e.explanation, cfg.n_texts,
                                    examples) for e in ex}
    kept = {k: [t.text for t in v if t.status == texts.KEPT] for k, v in screened.items()}
    flat = [(k, t) for k, ts in kept.items() for t in ts]
    read = reading.read_texts(subject, layer, [t for _, t in flat])
    readings: dict[tuple, list] = {}
    for (k, _), r in zip(flat, read):
        readings.setdefault(k, []).append(r)
    chosen = {e.neuron: e for e in ex if e.best}
    source = derangement(chosen, f"{cfg.seed}/{model}/{layer}/{side}/{explainer}")
    randoms = _randoms(run_dir, model, layer, {e.neuron for e in ex}, side)
    gen: list = []
    scores: list = []

    def maxes(rs, n):
        return [float((sign * r.acts[:, n]).max()) for r in rs]  # the max in the side's units

    for e in ex:
        h = text_hash(e.explanation)
        base = dict(model=model, layer=layer, neuron=e.neuron, side=side, explainer=explainer,
                    candidate=e.candidate, judge=judge, prompt_hash=phash, explanation_hash=h)
        mine = readings.get(e.key, [])
        own = maxes(mine, e.neuron)
        it = iter(mine)
        for i, t in enumerate(screened[e.key]):
            r = next(it) if t.status == texts.KEPT else None
            gen.append(_text_row(base, "own", i, t.text, t.status, r, e.neuron, sign, None))
        rng = rng_for(cfg.seed, model, layer, e.neuron, side, explainer, e.candidate, METHOD)
        wins = windows(randoms.get(e.neuron, []), [len(r.tokens) for r in mine], rng)
        for i, w in enumerate(wins):
            gen.append(GenerationRow(**base, role="window", index=i, text=None, status="ok",
                                     token_ids=None, tokens=list(w.tokens),
                                     activations=list(w.acts),
                                     max_activation=max(w.acts, default=None),
                                     excerpt_id=w.excerpt_id, start=w.start, source_neuron=None))
        win = [max(w.acts) for w in wins if w.acts]
        src = chosen.get(source.get(e.neuron, -1))
        other_r = readings.get(src.key, []) if src is not None else []
        other = maxes(other_r, e.neuron)
        if src is not None:
            for i, r in enumerate(other_r):
                gen.append(_text_row(base, "other", i, kept[src.key][i], "ok", r, e.neuron, sign,
                                     src.neuron))
        n_written = len(screened[e.key])
        common = dict(model=model, layer=layer, neuron=e.neuron, explainer=explainer,
                      candidate=e.candidate, simulator=judge, split=SPLIT,
                      explanation=e.explanation, score_top=None, score_random=None,
                      rsquared=None, abs_dev_explained=None, best=e.best, side=side, mode=MODE,
                      method=METHOD, sim_prompt_hash=phash, explanation_hash=h)
        if len(own) < MIN_KEPT:
            status, err = TOO_FEW, (f"{len(own)} of {n_written} texts kept after "
                                    f"{len(answers.get(e.key, []))} asks; {MIN_KEPT} needed")
        elif not win:
            status, err = "no_control", "the neuron has no random excerpt to cut windows from"
        else:
            status, err = "ok", None
        ok = status == "ok"
        mine_other = auroc(own, other) if ok and len(other) >= MIN_KEPT else None
        scores.append(rundir.ScoreRow(
            **common, score=auroc(own, win) if ok else None,
            n_tokens=sum(len(r.tokens) for r in mine), status=status, error=err,
            auroc_other=mine_other, mad=mad(own, win) if ok else None,
            n_written=n_written, n_kept=len(own)))
        if e.best and src is not None:
            swins = windows(randoms.get(e.neuron, []), [len(r.tokens) for r in other_r],
                            rng_for(cfg.seed, model, layer, e.neuron, side, explainer,
                                    SHUFFLED, METHOD))
            sw = [max(w.acts) for w in swins if w.acts]
            s_ok = len(other) >= MIN_KEPT and bool(sw)
            scores.append(rundir.ScoreRow(
                **{**common, "best": False, "explanation": src.explanation,
                   "explanation_hash": text_hash(src.explanation)},
                score=auroc(other, sw) if s_ok else None,
                n_tokens=sum(len(r.tokens) for r in other_r),
                status="ok" if s_ok else TOO_FEW,
                error=None if s_ok else f"neuron {src.neuron}'s explanation kept "
                                        f"{len(other)} texts",
                control=SHUFFLED, source_neuron=src.neuron,
                mad=mad(other, sw) if s_ok else None, n_kept=len(other)))
    return gen, scores


def _text_row(base: dict, role: str, index: int, text: str, status: str, r, neuron: int,
              sign: float, source: int | None) -> GenerationRow:
    acts = [sign * float(v) for v in r.acts[:, neuron]] if r is not None else None
    return GenerationRow(**base, role=role, index=index, text=text, status=status,
                         token_ids=list(r.token_ids) if r is not None else None,
                         tokens=list(r.tokens) if r is not None else None, activations=acts,
                         max_activation=max(acts) if acts else None, excerpt_id=None,
                         start=None, source_neuron=source)
