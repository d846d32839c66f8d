"""Shared fixtures: tiny random GPT-2 checkpoints and a small corpus, built once per session.

Model hubs are unreachable here, so the tests make their own subject models: a byte-level BPE
tokenizer trained on Python's pydoc topics and randomly initialised GPT-2 weights, saved as an
ordinary Hugging Face checkpoint folder that `explain record --model DIR` loads like any other.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test reads or writes the real cache dirs, keys or endpoints."""
    monkeypatch.setenv("EXPLAIN_CACHE_DIR", str(Path(os.environ.get(
        "EXPLAIN_TEST_CACHE", ROOT / ".test-cache"))))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _tokenizer(folder: Path, vocab_size: int = 400):
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [topics[k] for k in sorted(topics)][:60]
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


def make_gpt2(folder: Path, n_layer: int = 2, n_embd: int = 32, seed: int = 0,
              vocab_size: int | None = None) -> Path:
    """Write a random GPT-2 checkpoint (config, safetensors, tokenizer) into folder.

    vocab_size defaults to the tokenizer's; the benchmark passes GPT-2's 50,257 so that the
    unembedding costs what it costs in GPT-2 (ids above the tokenizer's are never used).
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(folder)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size or len(tok), n_positions=128, n_embd=n_embd, n_layer=n_layer,
                     n_head=2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # larger weights than the init, so neurons have varied activations
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 (d_model 32, d_mlp 128) checkpoint folder."""
    return make_gpt2(tmp_path_factory.mktemp("m") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A small .txt corpus (a few pydoc topics)."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(topics[k] for k in sorted(topics)[:12]))
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (2 CPUs), started once per test session for the Ray engine."""
    import ray

    # Workers inherit this environment, not the per-test one: no real keys or endpoints.
    env = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "HF_HUB_OFFLINE": "1",
           "EXPLAIN_CACHE_DIR": os.environ.get("EXPLAIN_TEST_CACHE", str(ROOT / ".test-cache"))}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env},
             logging_level="WARNING")
    yield ray
    ray.shutdown()
