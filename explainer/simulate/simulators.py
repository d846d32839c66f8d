"""The ways to ask a simulator for predictions, behind one `predict` call.

* `_Echo` (`logprob` mode, any endpoint with legacy completions + echo + logprobs): one
  all-at-once prompt per excerpt; the expected value at every value slot.
* `_Chat` (`chat` mode, chat-only APIs): the values by token index in a structured answer,
  expected values where the answer's top log-probabilities come back.
* `_InProcess` (`logprob` mode on the embedded model): `_Echo` on the in-process backend,
  asking for the value slots' rows only (see the class for why).
* `baseline.LexicalSimulator` (`lexical` mode, `--simulator baseline-lexical`): no LLM, no
  endpoint; the words the explanation names, matched to each token (lexical.py).

`auto` picks logprob where the endpoint returns prompt log-probabilities, else chat.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

from explainer import ExplainError
from explainer import config as C
from explainer.simulate import prompt as SP

LOGPROBS = 20  # top log-probabilities asked per prompt token (vLLM's default cap is 20)
# Tried in turn by `_top_logprobs`: more alternatives leave fewer value slots without a digit.
# llama-cpp-python takes any number, vLLM up to its --max-logprobs (20 by default), OpenAI's
# legacy completions 5.
LOGPROBS_TRIED = (100, LOGPROBS, 5)


class _Remote:
    """A simulator behind the LLM layer (any endpoint): one request per K excerpts."""

    def __init__(self, llm, workers: int):
        self.llm, self.workers = llm, workers
        self.examples = SP.load_examples()
        self.failures: dict[str, int] = {}  # failed excerpts per kind (SP.TRANSPORT, SP.ANSWER)

    def _count(self, parsed: list[SP.Parsed]) -> list[SP.Parsed]:
        for p in parsed:
            if p.predicted is None:
                self.failures[p.failure] = self.failures.get(p.failure, 0) + 1
        return parsed

    def summary(self) -> str:
        return self.llm.summary()


class _Echo(_Remote):
    mode = "logprob"

    def __init__(self, llm, workers: int, shift: int, top: int = LOGPROBS,
                 strict: bool = False, *, slot: str):
        super().__init__(llm, workers)
        self.shift = shift  # the endpoint's echo convention (probe.echo_shift), never guessed
        self.top = top  # alternatives asked per prompt token (as many as the endpoint takes)
        self.strict = strict  # --strict-values: a slot with no digit fails its excerpt
        self.slot = slot  # what stands in each value slot (value_slot)

    async def predict(self, explanation: str, tokens: Sequence[str], key: str) -> SP.Parsed:
        return (await self.predict_many(explanation, [tokens], key))[0]

    async def predict_many(self, explanation: str, excerpts: Sequence[Sequence[str]],
                           key: str) -> list[SP.Parsed]:
        """One request for K excerpts of one neuron; predictions per excerpt, by position."""
        from explainer.llm import LLMError

        prompt = SP.logprob_prompt_many(explanation, excerpts, self.examples, self.slot)
        lengths = [len(t) for t in excerpts]

        try:
            # Every answer is cached, readable or not: at temperature 0 an unreadable one would
            # come back the same, so a rerun reads it again instead of paying for it again.
            c = await self.llm.complete(prompt.text, echo=True, key=key, **self._ask(prompt))
        except LLMError as err:
            return self._count(SP.split_parsed(SP.Parsed(
                None, str(err)[:300], self.mode, failure=SP.TRANSPORT), lengths))
        return self._count(SP.split_parsed(SP.parse_echo(
            prompt, c.tokens, c.top_logprobs, c.text_offset, shift=self.shift,
            strict=self.strict), lengths))

    def _ask(self, prompt: SP.LogprobPrompt) -> dict:
        """The request's arguments besides the prompt: every prompt token's top alternatives
        (max_tokens=1: llama.cpp reads 0 as "no limit"; the one answer token is ignored)."""
        return {"max_tokens": 1, "logprobs": self.top}


class _InProcess(_Echo):
    """`_Echo` on the embedded model's in-process backend (llm/inprocess.py), which follows
    OpenAI's row convention (shift 0) and can return less than an echo: only the rows of the
    value slots, each over the ten value tokens (`echo_offsets`, `logprob_tokens`).

    An echo's top alternatives at every prompt token cost a full-vocabulary softmax and sort at
    ~600 positions and an answer of that size to cache; the slots' rows over the digits give the
    same expected value, with every digit present, so no slot ever lacks one. (llama-cpp-python's
    server computed the echo in Python at ~40 ms a token: 36 s for an 818-token prompt.)
    """

    def __init__(self, llm, workers: int, strict: bool = False, *, slot: str):
        super().__init__(llm, workers, shift=0, top=len(SP.VALUES), strict=strict, slot=slot)

    def _ask(self, prompt: SP.LogprobPrompt) -> dict:
        # No answer token: nothing is generated, so the prompt is evaluated exactly once.
        return {"max_tokens": 0, "logprobs": len(SP.VALUES),
                "echo_offsets": list(prompt.offsets), "logprob_tokens": list(SP.VALUES)}


class _Chat(_Remote):
    mode = "chat"

    async def predict(self, explanation: str, tokens: Sequence[str], key: str) -> SP.Parsed:
        return (await self.predict_many(explanation, [tokens], key))[0]

    async def predict_many(self, explanation: str, excerpts: Sequence[Sequence[str]],
                           key: str) -> list[SP.Parsed]:
        """One request for K excerpts, tokens numbered straight through; split by position."""
        from explainer.llm import LLMError

        msgs = SP.chat_messages_many(explanation, excerpts, self.examples)
        lengths = [len(t) for t in excerpts]
        n = sum(lengths)

        try:
            # ~4 answer tokens a line ("12", TAB, "3", newline), plus slack for a preamble.
            # Cached readable or not (temperature 0: the same answer would come back).
            c = await self.llm.chat(msgs, max_tokens=5 * n + 32, logprobs=True,
                                    top_logprobs=len(SP.VALUES), key=key)
        except LLMError as err:
            return self._count(SP.split_parsed(SP.Parsed(
                None, str(err)[:300], self.mode, failure=SP.TRANSPORT), lengths))
        return self._count(SP.split_parsed(SP.parse_chat(c.text, n, c.chat_logprobs), lengths))


def endpoint_of(simulator: str, base_url):
    """The endpoint `simulator` is reached at (llm.resolve), None for baseline-lexical, which
    needs no LLM."""
    if simulator == C.BASELINE_SIMULATOR:
        return None
    from explainer import llm

    return llm.resolve(simulator, base_url)


def value_slot(endpoint) -> str:
    """What stands in each value slot of the logprob prompts sent to `endpoint`: nothing for
    the embedded model (whose tokenizer keeps a tab and a newline apart; `_InProcess`), the
    paper's "unknown" anywhere else."""
    return SP.EMPTY_SLOT if endpoint is not None and endpoint.embedded else SP.PLACEHOLDER


def prompt_hash(simulator: str, excerpts_per_prompt: int, endpoint) -> str:
    """12 hex of what shapes a simulator's answers besides the model: its prompt files, how
    many excerpts share one prompt (K = 1 is the paper's format) and the value slot at
    `endpoint` (llm.resolve's); for baseline-lexical, the matcher's source (editing it
    re-simulates)."""
    if simulator == C.BASELINE_SIMULATOR:
        from explainer.simulate import baseline

        return baseline.source_hash()
    return SP.prompt_hash(excerpts_per_prompt, value_slot(endpoint))


@contextlib.asynccontextmanager
async def open_simulator(cfg: C.SimulateConfig, endpoint):
    """The simulator for `cfg.mode` at `endpoint`, ready to `predict` (and closed afterwards);
    baseline-lexical has no endpoint (None) and no mode."""
    from explainer import llm as L

    if cfg.simulator == C.BASELINE_SIMULATOR:
        from explainer.simulate import baseline

        yield baseline.LexicalSimulator()
        return

    async with L.LLM(endpoint, cfg.run, stage=cfg.stage, cfg=cfg.llm) as llm:
        if endpoint.embedded and cfg.mode in ("auto", "logprob"):
            # Our own backend: nothing to probe. Excerpts in flight together share a pass.
            yield _InProcess(llm, llm.capacity(), cfg.strict_values, slot=value_slot(endpoint))
            return
        caps = await L.probe(llm, echo=cfg.mode != "chat")
        mode = cfg.mode
        if mode == "auto":
            mode = "logprob" if caps.echo_logprobs else "chat"
        elif mode == "logprob" and caps.echo_logprobs is False:
            raise ExplainError(f"--mode logprob: the endpoint at {endpoint.host} does not return "
                               "prompt log-probabilities (legacy completions with echo and "
                               "logprobs) in a convention the probe could read; use --mode chat")
        # Each neuron sends ~10 excerpts at once; a few neurons in flight keep the semaphore full.
        workers = max(1, llm.capacity())  # over every endpoint of the pool
        if mode == "logprob":
            yield _Echo(llm, workers, _echo_shift(Path(cfg.run), endpoint, caps.echo_shift),
                        await _top_logprobs(llm), cfg.strict_values, slot=value_slot(endpoint))
        else:
            yield _Chat(llm, workers)


async def _top_logprobs(llm) -> int:
    """The most prompt alternatives the endpoint returns per token, of LOGPROBS_TRIED: asked on
    the probe's short prompt (a cached answer on later runs); a refusal (HTTP 400) tries fewer."""
    from explainer.llm import LLMError
    from explainer.llm.probe import PROBE_TEXT, UNSUPPORTED

    for top in LOGPROBS_TRIED[:-1]:
        try:
            await llm.complete(PROBE_TEXT, max_tokens=1, echo=True, logprobs=top,
                               key=f"probe:top-logprobs-{top}")
            return top
        except LLMError as err:
            if err.status not in UNSUPPORTED:
                raise ExplainError(f"the endpoint at {llm.endpoint.host} failed the probe of "
                                   f"its top log-probabilities ({err}); try again later, or "
                                   "pass --mode chat") from None
    return LOGPROBS_TRIED[-1]


def _echo_shift(run: Path, endpoint, probed: int) -> int:
    """The endpoint's echo convention, kept in run.json; a change since refuses to go on."""
    from explainer import run as rundir

    stored = rundir.endpoint_meta(run, endpoint.host, endpoint.model).get("echo_shift")
    if stored is None:
        rundir.update_endpoint_meta(run, endpoint.host, endpoint.model, echo_shift=probed)
    elif stored != probed:
        raise ExplainError(f"--base-url {endpoint.host}: its prompt log-probabilities are now "
                           f"shifted by {probed} row(s), but this run recorded {stored} for "
                           f"{endpoint.model} there (the server changed); simulate into a new "
                           "--run, or fix echo_shift under endpoints in its run.json")
    return probed
