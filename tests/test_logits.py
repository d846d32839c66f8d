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


def _random_layer(n=300, d=64, v=4096, seed=0):
    import torch

    from explainer.record.logits import Norm

    gen = torch.Generator().manual_seed(seed)
    w_out = torch.randn(n, d, generator=gen)
    norm = Norm("layernorm", torch.rand(d, generator=gen) + 0.5)
    w_u = torch.randn(d, v, generator=gen)
    return w_out, norm, w_u


def _assert_same(got, want):
    import numpy as np

    for name in ("promoted_ids", "suppressed_ids"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    for name in ("promoted_values", "suppressed_values"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5)


def test_screened_top_tokens_equal_the_full_fp32_product():
    """The bf16 screen keeps exactly the full product's ids; neurons whose top tokens crowd
    within bf16's resolution cannot be certified and get their full row."""
    import torch

    from explainer.record.logits import fold, top_tokens

    w_out, norm, w_u = _random_layer()
    # Neurons 0-9 point along token 7's column; tokens 100-199 are copies of it that differ by
    # 1e-4 relative (fp32 tells them apart, bf16's 8 bits cannot): 101 near-equal top values,
    # more than the 64 candidates the screen keeps.
    a_dir = w_u[:, 7] / norm.weight
    w_out[:10] = a_dir - a_dir.mean() + w_out[:10] * 1e-3
    for j in range(100):
        w_u[:, 100 + j] = w_u[:, 7] * (1 + 1e-4 * (j + 1))
    want = top_tokens(w_out, norm, w_u, screen=False)
    got = top_tokens(w_out, norm, w_u, screen=True)
    _assert_same(got, want)
    assert want.full_rows == 300
    assert 10 <= got.full_rows < 300  # the crowded neurons, and not every neuron
    eff = fold(w_out, norm) @ w_u
    assert set(got.promoted_ids[0]) <= set(range(100, 200)) | {7}
    assert torch.equal(torch.as_tensor(got.promoted_ids[0]),
                       eff[0].topk(10).indices)  # fp32's order among the near-equal copies


def test_screen_bound_holds_for_this_machines_bf16_product():
    """screen_slack's bound against float64 on every entry (the kernel assumption it rests on)."""
    import torch

    from explainer.record.logits import Unembedding, fold, screen_slack

    w_out, norm, w_u = _random_layer(n=256, d=576, v=8192, seed=3)
    u = Unembedding.of(w_u, screen=True)
    a = fold(w_out, norm)
    eb = (a.bfloat16() @ u.bf16).double()
    exact = a.double() @ w_u.double()
    c, r, fp32_err = screen_slack(a, u)
    err = (eb - exact).abs()
    bound = c.double()[:, None] + r * eb.abs()
    assert bool((err <= bound).all())
    assert float((err / bound).max()) > 0.01  # the bound is not vacuous


def test_a_bf16_product_outside_its_bound_falls_back_to_fp32():
    """A screening product that misses its error bound (a kernel that does not accumulate as the
    bound assumes) is caught on the candidates, and the layer is ranked in full fp32."""
    import dataclasses

    import torch

    from explainer.record.logits import Unembedding, top_tokens

    w_out, norm, w_u = _random_layer(seed=5)
    u = Unembedding.of(w_u, screen=True)
    noisy = w_u + 0.05 * torch.randn(w_u.shape, generator=torch.Generator().manual_seed(9))
    bad = dataclasses.replace(u, bf16=noisy.bfloat16())
    got = top_tokens(w_out, norm, bad)
    _assert_same(got, top_tokens(w_out, norm, w_u, screen=False))
    assert got.full_rows == 300


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    "not __import__('torch').cuda.is_available()", reason="no CUDA device here"))])
def test_a_recording_on_the_device_stores_the_cpu_products_top_tokens(tmp_path, skewed_gpt2,
                                                                      tiny_corpus, dev):
    """record --device: the output side computed where the model is (fp32 on a GPU, unscreened)
    stores the same ids as the brute-force product, as on the CPU."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    run = tmp_path / "r"
    res = runner.invoke(app, ["record", "--model", str(skewed_gpt2), "--corpus", str(tiny_corpus),
                              "--run", str(run), "--n-excerpts", "20", "--ctx", "16",
                              "--top-k", "4", "--random-k", "3", "--device", dev])
    assert res.exit_code == 0, res.output
    hf = GPT2LMHeadModel.from_pretrained(skewed_gpt2)
    tok = AutoTokenizer.from_pretrained(skewed_gpt2)
    df = rundir.read(run, "neurons", model="skewed-gpt2", layer=1)
    _check(df, _brute_force(hf, 1, "layernorm"), tok)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no CUDA device here")
def test_top_tokens_on_cuda_match_float64_as_the_cpu_ones_do():
    """GPT-2-sized shapes: the GPU's screened product and its float64 rows (no TF32, whatever the
    container sets) keep the ids of a float64 product, as the CPU's screen does, up to ties
    within fp32 rounding."""
    import numpy as np
    import torch

    from explainer.record.logits import Norm, fold, top_tokens

    w_out, norm, w_u = _random_layer(n=3072, d=768, v=50257, seed=11)
    eff = (fold(w_out, norm).double() @ w_u.double()).numpy()
    gpu_norm = Norm(norm.kind, norm.weight.cuda())
    for top in (top_tokens(w_out, norm, w_u),
                top_tokens(w_out.cuda(), gpu_norm, w_u.cuda()),
                top_tokens(w_out.cuda(), gpu_norm, w_u.cuda(), screen=False)):
        for row in range(0, 3072, 7):
            want = np.argsort(-eff[row], kind="stable")[:K]
            tol = 1e-5 * np.abs(eff[row]).max()
            np.testing.assert_allclose(top.promoted_values[row], eff[row][want], rtol=0, atol=tol)
            np.testing.assert_allclose(eff[row][top.promoted_ids[row]], eff[row][want], rtol=0,
                                       atol=tol)
    assert top.full_rows == 3072 and torch.cuda.is_available()


def test_output_side_runs_in_an_idle_priority_thread_and_reports_its_failures():
    """On a CPU, record's OutputSide computes every layer in one background thread scheduled
    SCHED_IDLE (Linux), hands back exactly what the computation returned, and a failure in a
    layer reaches record when it asks for that layer."""
    import os
    import sys
    import threading
    from types import SimpleNamespace

    import torch

    from explainer.record.logits import OutputSide

    seen = {}

    def compute(subject, layer):
        seen[layer] = (threading.get_native_id(),
                       os.sched_getscheduler(0) if sys.platform == "linux" else None)
        if layer == 2:
            raise RuntimeError("layer 2 broke")
        return {"layer": layer}

    subject = SimpleNamespace(device=torch.device("cpu"))
    out = OutputSide(subject, [0, 1, 2], compute)
    assert out.columns(1) == {"layer": 1} and out.columns(0) == {"layer": 0}
    with pytest.raises(RuntimeError, match="layer 2 broke"):
        out.columns(2)
    assert len({tid for tid, _ in seen.values()}) == 1  # one thread, in order
    assert threading.get_native_id() not in {tid for tid, _ in seen.values()}
    if sys.platform == "linux":
        assert {policy for _, policy in seen.values()} == {os.SCHED_IDLE}
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller keeps its own policy
