"""The output side of `explain record` (record/logits.py) against a brute-force product computed
from the Hugging Face model's own weights (loaded with transformers, not TransformerLens)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from explainer import run as rundir

runner = CliRunner()
K = 10


@pytest.fixture(scope="module")
def skewed_gpt2(tmp_path_factory, tiny_gpt2):
    """The tiny GPT-2 with a random final LayerNorm weight and bias (the init's ones and zeros
    would let a fold that forgets the weight, or keeps the bias, pass unnoticed)."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("m") / "skewed-gpt2"
    hf = GPT2LMHeadModel.from_pretrained(tiny_gpt2)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        hf.transformer.ln_f.weight.copy_(torch.rand(hf.config.n_embd, generator=gen) * 3 - 1)
        hf.transformer.ln_f.bias.copy_(torch.randn(hf.config.n_embd, generator=gen) * 5)
    hf.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_gpt2).save_pretrained(folder)
    return folder


def _brute_force(hf_model, layer: int, kind: str) -> np.ndarray:
    """(d_mlp, d_vocab) direct logit effects, one neuron and one token at a time in float64."""
    if kind == "layernorm":  # GPT-2: Conv1D c_proj stores (d_mlp, d_model)
        w_out = hf_model.transformer.h[layer].mlp.c_proj.weight.detach().double().numpy()
        w = hf_model.transformer.ln_f.weight.detach().double().numpy()
    else:  # Llama: Linear down_proj stores (d_model, d_mlp)
        w_out = hf_model.model.layers[layer].mlp.down_proj.weight.detach().double().numpy().T
        w = hf_model.model.norm.weight.detach().double().numpy()
    emb = hf_model.get_output_embeddings().weight.detach().double().numpy()  # (vocab, d_model)
    out = np.empty((w_out.shape[0], emb.shape[0]))
    for n in range(w_out.shape[0]):
        d = w_out[n] - w_out[n].mean() if kind == "layernorm" else w_out[n]
        out[n] = emb @ (d * w)
    return out


def _check(df, effects: np.ndarray, tokenizer) -> None:
    """Every stored neuron of df (one layer's neurons/ rows) against the brute-force effects."""
    assert len(df) == effects.shape[0] and sorted(df.neuron) == list(range(len(df)))
    for row in df.itertuples():
        eff = effects[row.neuron]
        order = np.argsort(-eff, kind="stable")
        for ids, vals, toks, want in (
                (row.promoted_ids, row.promoted_values, row.promoted_tokens, order[:K]),
                (row.suppressed_ids, row.suppressed_values, row.suppressed_tokens,
                 order[::-1][:K])):
            np.testing.assert_allclose(vals, eff[want], rtol=1e-4, atol=1e-4 * np.abs(eff).max())
            # Ids agree wherever the next value is not a near-tie.
            assert list(ids) == list(want) or np.allclose(eff[list(ids)], eff[want], rtol=1e-5)
            assert list(toks) == [tokenizer.decode([int(i)]) for i in ids]
        assert all(np.diff(row.promoted_values) <= 0) and all(np.diff(row.suppressed_values) >= 0)


def test_output_side_matches_hf_weights(tmp_path, skewed_gpt2, tiny_corpus):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    run = tmp_path / "r"
    res = runner.invoke(app, ["record", "--model", str(skewed_gpt2), "--corpus", str(tiny_corpus),
                              "--run", str(run), "--n-excerpts", "20", "--ctx", "16",
                              "--top-k", "4", "--random-k", "3"])
    assert res.exit_code == 0, res.output
    hf = GPT2LMHeadModel.from_pretrained(skewed_gpt2)
    # The checkpoint ties the unembedding to the token embedding; the product uses that matrix.
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(skewed_gpt2)
    for layer in (0, 1):
        df = rundir.read(run, "neurons", model="skewed-gpt2", layer=layer)
        _check(df, _brute_force(hf, layer, "layernorm"), tok)


def test_fold_centres_for_layernorm_only():
    import torch

    from explainer.record.logits import Norm, direct_effects, top_tokens

    w_out = torch.tensor([[1.0, 2.0, 6.0], [0.0, -1.0, 4.0]])
    w = torch.tensor([2.0, 1.0, 0.5])
    w_u = torch.eye(3)
    ln = direct_effects(w_out, Norm("layernorm", w), w_u)
    rms = direct_effects(w_out, Norm("rmsnorm", w), w_u)
    torch.testing.assert_close(ln, torch.tensor([[-4.0, -1.0, 1.5], [-2.0, -2.0, 1.5]]))
    torch.testing.assert_close(rms, torch.tensor([[2.0, 2.0, 3.0], [0.0, -1.0, 2.0]]))
    top = top_tokens(w_out, Norm("rmsnorm", w), w_u, k=2, n_vocab=2)  # ids >= 2 never ranked
    assert top.promoted_ids.tolist() == [[0, 1], [0, 1]]
    assert top.suppressed_ids.tolist() == [[0, 1], [1, 0]]


@pytest.mark.slow
def test_embedded_output_side_matches_hf_weights(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from explainer.llm.embedded import embedded_checkpoint

    run = tmp_path / "r"
    res = runner.invoke(app, ["record", "--model", "smollm2-135m", "--run", str(run),
                              "--n-excerpts", "4", "--ctx", "8", "--top-k", "2",
                              "--random-k", "1", "--layers", "0,29"])
    assert res.exit_code == 0, res.output
    ckpt = embedded_checkpoint()
    hf = AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32)
    assert hf.config.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(ckpt)
    for layer in (0, 29):
        # Brute force on 64 neurons: 64 x 49,152 dot products each, in float64.
        effects = _brute_force(_first_neurons(hf, layer, 64), 0, "rmsnorm")
        df = rundir.read(run, "neurons", model="smollm2-135m", layer=layer)
        assert len(df) == 1536
        _check(df[df.neuron < 64], effects, tok)


def _first_neurons(hf, layer: int, n: int):
    """A stand-in holding only the first n neurons of a layer, shaped as _brute_force reads."""
    from types import SimpleNamespace

    down = hf.model.layers[layer].mlp.down_proj.weight[:, :n]
    mlp = SimpleNamespace(down_proj=SimpleNamespace(weight=down))
    return SimpleNamespace(model=SimpleNamespace(layers=[SimpleNamespace(mlp=mlp)],
                                                 norm=hf.model.norm),
                           get_output_embeddings=hf.get_output_embeddings)
