"""Asking the judge: one chat request per prompt of a neuron's items, answers into rows.

All traffic goes through `explainer.llm` (cache, retries, ledger stage `judge-<method>`). An
answer whose every line reads is cached; one with an unreadable line is not, so the next run asks
again, and its readable lines still count now: each excerpt stands or fails on its own line.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from explainer import config
from explainer import run as rundir
from explainer.judge import prompt as judge_prompt
from explainer.score import classify

FLUSH_JOBS = 16  # explanations buffered before a write; a kill loses at most this much work
SPLIT = "heldout"  # score rows' split: valid/test top excerpts, quantile and random samples
MODE = "chat"  # judges always speak chat
TOP_LOGPROBS = 5


async def run(cfg: config.JudgeConfig, endpoint, model: str, jobs: list, phash: str) -> None:
    """Judge every job (stage._Job; ask never imports stage, which calls it); rows are written
    as jobs finish (also on the way out of an error)."""
    from explainer.llm import LLM, probe
    from explainer import progress

    from dataclasses import replace

    if cfg.logprobs is None:
        cfg = replace(cfg, logprobs=not endpoint.embedded)
    writer = _Writer(Path(cfg.run))
    asked = [j for j in jobs if j.target.why is None]
    for job in jobs:  # nothing to ask: a row that says why, at once
        if job.target.why is not None:
            writer.add(*_rows(cfg, model, endpoint.model, phash, job, []))
    if not asked:
        writer.flush()
        writer.compact()
        return
    # The embedded llama.cpp server answers logprobs only when it keeps every position's logits.
    async with LLM(endpoint, cfg.run, stage=cfg.stage or f"judge-{cfg.method}", cfg=cfg.llm,
                     prompt_logprobs=cfg.logprobs) as llm:
        await probe(llm, echo=False)

        async def one(job) -> None:
            answers = await _judge(llm, cfg, job)
            writer.add(*_rows(cfg, model, endpoint.model, phash, job, answers))

        await progress.drain(f"judge {cfg.method}", asked, one, llm.capacity(),
                             writer.flush)
        writer.compact()
        print(f"judge: {writer.n_jobs} explanations judged by {cfg.method} "
              f"({writer.n_items} items, {writer.n_failed} unreadable; those are asked again "
              "on the next run)", file=sys.stderr)
        print(f"judge: LLM {llm.summary()}", file=sys.stderr)


async def _judge(llm, cfg: config.JudgeConfig, job) -> list[list[judge_prompt.Answer]]:
    """The answers of every prompt of one job, prompt by prompt."""
    return list(await asyncio.gather(*(_ask(llm, cfg, job, k, batch)
                                       for k, batch in enumerate(job.target.batches))))


async def _ask(llm, cfg: config.JudgeConfig, job, k: int, batch) -> list[judge_prompt.Answer]:
    from explainer.llm import LLMError

    n = len(batch)
    msgs = judge_prompt.messages(cfg.method, job.explanation,
                                 [(it.excerpt.tokens, it.highlighted) for it in batch])
    key = f"L{job.layer}/N{job.neuron}/{job.side}/{job.explainer}/c{job.candidate}/b{k}"
    try:
        c = await llm.chat(msgs, max_tokens=judge_prompt.max_tokens(n), logprobs=cfg.logprobs,
                           top_logprobs=TOP_LOGPROBS if cfg.logprobs else None, key=key,
                           accept=lambda c: all(a.prediction is not None
                                                for a in judge_prompt.parse(c.text, n)))
    except LLMError as err:
        return [judge_prompt.Answer(None, None, None, str(err)[:300])] * n
    return judge_prompt.parse(c.text, n, c.chat_logprobs)


def _rows(cfg: config.JudgeConfig, model: str, judge: str, phash: str, job,
          answers: list[list[judge_prompt.Answer]]) -> tuple[list, list]:
    """(judgment rows, [the score row]) of one job."""
    judged = []
    for batch, got in zip(job.target.batches, answers):
        for it, a in zip(batch, got):
            judged.append(rundir.JudgmentRow(
                model=model, layer=job.layer, neuron=job.neuron, side=job.side,
                explainer=job.explainer, candidate=job.candidate, method=cfg.method, judge=judge,
                excerpt_id=it.excerpt.excerpt_id, kind=it.excerpt.kind, split=it.excerpt.split,
                label=it.label, prediction=a.prediction, probability=a.probability,
                status="ok" if a.prediction is not None else "failed", error=a.error,
                quantile=it.quantile, threshold=job.target.threshold,
                highlighted=list(it.highlighted) if it.highlighted is not None else None,
                answer=a.line, prompt_hash=phash,
                explanation_hash=rundir.query.text_hash(job.explanation),
                sampling=job.target.sampling, sampling_params=job.target.params))
    ok = [(r, it) for r, it in zip(judged, (i for b in job.target.batches for i in b))
          if r.status == "ok"]
    c = classify.classify([r.label for r, _ in ok], [r.prediction for r, _ in ok],
                          [r.probability for r, _ in ok], [r.quantile for r, _ in ok],
                          job.target.n_bins)
    n_failed = len(judged) - len(ok)
    if job.target.why is not None:
        status, error = job.target.status, job.target.why
    elif not ok:
        status, error = "failed", next((r.error for r in judged if r.error), "no answer")
    elif c.status != classify.OK:
        status, error = c.status, "the readable answers hold one class only"
    else:
        status = "partial" if n_failed else "ok"
        error = None if not n_failed else \
            f"{n_failed} of {len(judged)} answers unreadable: {next(r.error for r in judged if r.error)}"
    score = rundir.ScoreRow(
        model=model, layer=job.layer, neuron=job.neuron, explainer=job.explainer,
        candidate=job.candidate, simulator=judge, split=SPLIT, explanation=job.explanation,
        score=c.balanced_accuracy, score_top=None, score_random=None, rsquared=None,
        abs_dev_explained=None, n_tokens=sum(len(it.excerpt.tokens) for _, it in ok),
        best=job.best, status=status, error=error, side=job.side, mode=MODE, method=cfg.method,
        sim_prompt_hash=phash, explanation_hash=rundir.query.text_hash(job.explanation),
        accuracy=c.accuracy, balanced_accuracy=c.balanced_accuracy, f1=c.f1,
        precision=c.precision, recall=c.recall, auroc=c.auroc,
        recall_by_quantile=c.recall_by_quantile, n_judged=len(ok), n_failed=n_failed,
        sampling=job.target.sampling, sampling_params=job.target.params)
    return judged, [score]


class _Writer:
    """Buffers rows of finished jobs; judgments are written before their scores."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.judged: list = []
        self.scores: list = []
        self.n_jobs = self.n_items = self.n_failed = 0
        self.touched: set[tuple[str, int]] = set()

    def add(self, judged: list, scores: list) -> None:
        self.judged += judged
        self.scores += scores
        self.n_jobs += 1
        self.n_items += len(judged)
        self.n_failed += sum(r.status == "failed" for r in judged)
        if self.n_jobs % FLUSH_JOBS == 0:
            self.flush()

    def flush(self) -> None:
        if self.judged:
            rundir.write_rows(self.run_dir, "judgments", self.judged, prefix="judge")
        if self.scores:
            rundir.write_rows(self.run_dir, "scores", self.scores, prefix="judge")
        self.touched |= {(r.model, r.layer) for r in self.scores}
        self.judged, self.scores = [], []

    def compact(self) -> None:
        """Merge the partitions written, so a plain read has one row per key (a re-judged
        explanation's old rows go)."""
        for model, layer in sorted(self.touched):
            for table in ("judgments", "scores"):
                rundir.compact(self.run_dir, table, model, layer)
