"""Revision (`explain describe --revise N`): the explainer sees its explanation beside where the
simulator's guesses from it went wrong, and writes a better one.

The cascade composer (cascade.py) calls `run` once per level and round. It lives in describe:
it asks the explainer, and reads the stored simulations through `run.query`, never the simulate
stage. What the
explainer is shown: each explain-split excerpt that the simulator predicted (the excerpts the
explanation was written from), its text, then the tokens where the real activation or the guess
is above 1 on the 0-10 display scale, with the verdict "missed" (real high, guess low) or "false
alarm" (guess high, neuron quiet). The revised explanation is stored as one more candidate of
the same explainer (candidate = candidates - 1 + round, prompt_hash of the revise prompt files,
same level); the simulate stage then marks the best candidate on the valid split, so a revision
is kept only if it scores higher, and only the kept one's test split is simulated.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from explainer import config
from explainer import prompts
from explainer import run as rundir

FILES = ("revise_system", "revise_user")
MAX_TOKENS = 60  # one phrase, as describe
SHOWN = 2  # a token is listed when its real value or the guess is at least this (0-10 scale)
OFF_BY = 3  # a listed token whose guess is this far from the real value gets a verdict


def prompt_hash() -> str:
    """12 hex of the revise prompt files (the prompt_hash of revised explanations)."""
    return prompts.prompt_hash(*FILES)


def messages(explanation: str, shown: list[tuple[list[str], list[float], list[float]]]
             ) -> list[dict]:
    """The chat messages of one revision: (tokens, real activations, predictions 0-10) per
    excerpt. Real activations are scaled 0-10 by their maximum over the excerpts shown."""
    from explainer.describe import prompt as describe_prompt

    real = describe_prompt.scale([list(r) for _, r, _ in shown])
    blocks = []
    for j, ((tokens, _, pred), vals) in enumerate(zip(shown, real)):
        text = "".join(tokens).replace("\n", " ").strip()
        lines = [f"Excerpt {j + 1}: {text}"]
        for tok, v, g in zip(tokens, vals, pred):
            g = int(round(g))
            if v < SHOWN and g < SHOWN:
                continue
            verdict = "ok"
            if v - g >= OFF_BY:
                verdict = "missed"
            elif g - v >= OFF_BY:
                verdict = "false alarm"
            lines.append(f"{prompts.show_token(tok)} | {v} | {g} | {verdict}")
        blocks.append("\n".join(lines))
    return [{"role": "system", "content": prompts.load("revise_system").strip()},
            {"role": "user", "content": prompts.render(
                "revise_user", explanation=explanation.strip(), excerpts="\n\n".join(blocks))}]


def run(cfg: config.CascadeConfig, lv, model: str, keys: set, rnd: int, phash: str) -> int:
    """One revision round of `keys` at level `lv`; returns how many revisions were written."""
    inputs = _inputs(cfg, lv, model, keys, phash)
    if not inputs:
        return 0
    rows = asyncio.run(_ask(cfg, lv, model, inputs, cfg.describe.candidates - 1 + rnd))
    rundir.write_rows(Path(cfg.describe.run), "explanations", rows, prefix="revise")
    for layer in sorted({r.layer for r in rows}):
        rundir.compact(Path(cfg.describe.run), "explanations", model, layer)
    return sum(r.status == "ok" for r in rows)


def _inputs(cfg: config.CascadeConfig, lv, model: str, keys: set, phash: str) -> dict:
    """Per key: (the best explanation so far, its explain-split excerpts as (tokens, real,
    predicted)); keys without an explanation or explain-split predictions are left out."""
    text_hash = rundir.query.text_hash

    run_dir, out = Path(cfg.describe.run), {}
    toks = None
    for layer in sorted({k[0] for k in keys}):
        sc = rundir.query.chosen(rundir.query.read_scores(run_dir, model, layer), "valid",
                                 simulator=cfg.simulate.simulator, prompt_hash=phash,
                                 explainer=lv.label)
        best = {(layer, sd, int(n)): (int(c), t) for sd, n, c, t in
                zip(sc["side"], sc["neuron"], sc["candidate"], sc["explanation"])
                if (layer, sd, int(n)) in keys}
        if not best:
            continue
        sims = rundir.query.simulations(
            rundir.read(run_dir, "simulations", model=model, layer=layer),
            simulator=cfg.simulate.simulator, mode=None, prompt_hash=phash, split="explain",
            explainer=lv.label)
        rec = rundir.read(run_dir, "records", model=model, layer=layer,
                          columns=["neuron", "excerpt_id", "kind", "split", "activations"])
        rec = rec[rec["split"] == "explain"]
        real = {(int(n), k, int(e)): list(a) for n, k, e, a in
                zip(rec["neuron"], rec["kind"], rec["excerpt_id"], rec["activations"])}
        if toks is None:
            ex = rundir.read(run_dir, "excerpts", model=model, columns=["excerpt_id", "tokens"])
            toks = {int(e): list(t) for e, t in zip(ex["excerpt_id"], ex["tokens"])}
        for key, (cand, text) in best.items():
            _, side, n = key
            mine = sims[(sims["neuron"] == n) & (sims["side"] == side)
                        & (sims["candidate"] == cand)
                        & (sims["explanation_hash"] == text_hash(text))]
            sign = 1.0 if side == "pos" else -1.0  # the negative side sees negated activations
            shown = [(toks[int(e)], [sign * a for a in real[(n, k, int(e))]], list(p))
                     for e, k, p in zip(mine["excerpt_id"], mine["kind"], mine["predicted"])
                     if (n, k, int(e)) in real and int(e) in toks]
            if shown:
                out[key] = (text, shown)
    return out


async def _ask(cfg: config.CascadeConfig, lv, model: str, inputs: dict, cand: int) -> list:
    from explainer import llm
    from explainer.describe import prompt as describe_prompt
    from explainer.llm import LLMError

    d = cfg.describe
    endpoint = llm.resolve(lv.explainer, d.llm.base_url)
    phash, rows = prompt_hash(), []
    async with llm.LLM(endpoint, d.run, stage=f"revise:L{lv.level}", cfg=d.llm,
                       prompt_logprobs=False) as client:
        async def one(key, text, shown):
            layer, side, n = key

            def ok(c) -> bool:
                return describe_prompt.parse_explanation(c.text) is not None

            try:
                c = await client.chat(messages(text, shown), max_tokens=MAX_TOKENS, accept=ok,
                                      key=f"L{layer}/N{n}/c{cand}/revise")
                new = describe_prompt.parse_explanation(c.text)
                pt, ct = c.prompt_tokens, c.completion_tokens
                err = None if new else f"unusable answer: {c.text[:120]!r}"
            except LLMError as e:
                new, pt, ct, err = None, 0, 0, str(e)[:300]
            rows.append(rundir.ExplanationRow(
                model=model, layer=layer, neuron=n, explainer=lv.label, prompt_hash=phash,
                candidate=cand, explanation=new, prompt_tokens=pt, completion_tokens=ct,
                status="ok" if new else "failed", error=err, side=side, evidence=d.evidence,
                level=lv.level))

        await asyncio.gather(*(one(k, t, s) for k, (t, s) in sorted(inputs.items())))
    return rows
