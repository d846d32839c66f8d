"""`explain record` against independent computations: the HF model's own MLP output, brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from explainer import run as rundir

runner = CliRunner()


def record(*args: str):
    return runner.invoke(app, ["record", *args])


def _hf_acts(model_dir, token_ids: np.ndarray, layer: int, gated: bool = False) -> np.ndarray:
    """MLP post-activations from the Hugging Face model itself (no TransformerLens), each
    excerpt read behind the tokenizer's BOS token, whose position is then dropped."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    bos = AutoTokenizer.from_pretrained(model_dir).bos_token_id
    token_ids = np.concatenate([np.full((len(token_ids), 1), bos), token_ids], axis=1)
    got = []
    if gated:  # Llama: the neuron is act(gate) * up, the input of down_proj
        mod = hf.model.layers[layer].mlp.down_proj
        handle = mod.register_forward_pre_hook(lambda m, args: got.append(args[0]))
    else:  # GPT-2: the output of the MLP's own activation module
        mod = hf.transformer.h[layer].mlp.act
        handle = mod.register_forward_hook(lambda m, i, o: got.append(o))
    with torch.no_grad():
        for start in range(0, len(token_ids), 16):
            hf(torch.tensor(token_ids[start:start + 16]))
    handle.remove()
    return torch.cat(got).float().numpy()[:, 1:]  # (n_excerpts, ctx, d_mlp), BOS dropped


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_gpt2, tiny_corpus):
    run = tmp_path_factory.mktemp("run") / "r"
    res = record("--model", str(tiny_gpt2), "--corpus", str(tiny_corpus), "--run", str(run),
                 "--n-excerpts", "120", "--ctx", "16", "--top-k", "12", "--random-k", "9",
                 "--batch-size", "7")
    assert res.exit_code == 0, res.output
    return run


def _excerpts(run, model):
    ex = rundir.read(run, "excerpts", model=model).sort_values("excerpt_id")
    return np.stack(ex.token_ids.to_numpy()), ex


def test_activations_match_hf(tiny_run, tiny_gpt2):
    ids, _ = _excerpts(tiny_run, "tiny-gpt2")
    for layer in (0, 1):
        ref = _hf_acts(tiny_gpt2, ids, layer)
        rec = rundir.read(tiny_run, "records", model="tiny-gpt2", layer=layer)
        got = np.stack(rec.activations.to_numpy())
        want = ref[rec.excerpt_id.to_numpy(), :, rec.neuron.to_numpy()]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)
        np.testing.assert_allclose(rec.max_activation, want.max(axis=1), atol=1e-4)


def test_topk_equals_brute_force(tiny_run, tiny_gpt2):
    ids, _ = _excerpts(tiny_run, "tiny-gpt2")
    assert len(ids) == 120
    ref = _hf_acts(tiny_gpt2, ids, 1).max(axis=1)  # (n_excerpts, d_mlp)
    rec = rundir.read(tiny_run, "records", model="tiny-gpt2", layer=1)
    top = rec[rec.kind == "top"].sort_values(["neuron", "rank"])
    for neuron, group in top.groupby("neuron"):
        # Rank by max activation, ties to the earlier excerpt; compare ranks, allowing
        # swaps only between excerpts whose maxima agree to float32 noise.
        order = np.lexsort((np.arange(len(ref)), -ref[:, neuron]))[:12]
        got = group.excerpt_id.to_numpy()
        np.testing.assert_allclose(ref[got, neuron], ref[order, neuron], atol=1e-5)
        assert set(got) == set(order) or np.allclose(
            np.sort(ref[got, neuron]), np.sort(ref[order, neuron]), atol=1e-5)
    assert list(top.split[:4]) == ["explain", "calibrate", "valid", "test"]


def test_exact_ties_break_to_earlier_excerpt():
    import torch

    from explainer.record.samplers import TopK

    acts = torch.zeros(50, 4, 3)
    acts[[3, 9, 20, 41], 1, :] = 2.0  # four excerpts tie on every neuron
    t = TopK(3, 3, 4)
    for s in range(0, 50, 8):
        t.update(acts[s:s + 8], torch.arange(s, min(s + 8, 50)))
    ids, vals, _ = t.ranked()
    assert ids.tolist() == [[3, 9, 20]] * 3


@pytest.mark.parametrize("n_neurons", [37, 300])  # one partial block; several blocks
def test_samplers_equal_brute_force_with_ties(n_neurons):
    """The compiled top-k merge and statistics against numpy over the whole corpus at once."""
    import torch

    from explainer.record.samplers import Stats, TopK

    rng = np.random.default_rng(0)
    acts = rng.integers(-3, 6, (83, 5, n_neurons)).astype(np.float32)  # many exact ties
    acts[:, :, 1] = rng.normal(size=(83, 5))  # and one neuron without any
    top, st = TopK(9, n_neurons, 5), Stats(n_neurons)
    for s in range(0, 83, 11):  # batches of 11, the last one short
        a = torch.from_numpy(acts[s:s + 11])
        top.update(a, torch.arange(s, min(s + 11, 83)), st.update(a)[0])
    ids, vals, got = top.ranked()
    maxima = acts.max(axis=1)  # (83, N)
    for n in range(n_neurons):
        want = np.lexsort((np.arange(83), -maxima[:, n]))[:9]  # value desc, then earlier
        assert ids[n].tolist() == want.tolist()
        np.testing.assert_array_equal(vals[n], maxima[want, n])
        np.testing.assert_array_equal(got[n], acts[want, :, n])
    flat = acts.reshape(-1, n_neurons).astype(np.float64)
    summary = st.summary()
    np.testing.assert_allclose(summary["mean"], flat.mean(0), atol=1e-9)
    np.testing.assert_allclose(summary["std"], flat.std(0), atol=1e-6)
    np.testing.assert_array_equal(summary["min"], flat.min(0))
    np.testing.assert_array_equal(summary["max"], flat.max(0))
    np.testing.assert_array_equal(summary["density"], (flat > 0).mean(0))


def test_neuron_stats_match_brute_force(tiny_run, tiny_gpt2):
    ids, _ = _excerpts(tiny_run, "tiny-gpt2")
    ref = _hf_acts(tiny_gpt2, ids, 0).reshape(-1, 128)
    st = rundir.read(tiny_run, "neurons", model="tiny-gpt2", layer=0).sort_values("neuron")
    np.testing.assert_allclose(st["mean"], ref.mean(0), atol=1e-5)
    np.testing.assert_allclose(st["std"], ref.std(0), atol=1e-4)
    np.testing.assert_allclose(st["max"], ref.max(0), atol=1e-5)
    np.testing.assert_allclose(st["density"], (ref > 0).mean(0))
    assert (st.n_tokens == ref.shape[0]).all()


def test_tokens_decode_each_id(tiny_run, tiny_gpt2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    _, ex = _excerpts(tiny_run, "tiny-gpt2")
    row = ex.iloc[5]
    assert list(row.tokens) == [tok.decode([i]) for i in row.token_ids]
    meta = json.loads((tiny_run / "run.json").read_text())["models"]["tiny-gpt2"]
    assert meta["n_layers"] == 2 and meta["d_mlp"] == 128 and meta["layers_done"] == [0, 1]


def _random_ids(tmp_path, tiny_gpt2, tiny_corpus, seed, name):
    run = tmp_path / name
    res = record("--model", str(tiny_gpt2), "--corpus", str(tiny_corpus), "--run", str(run),
                 "--n-excerpts", "80", "--ctx", "16", "--top-k", "4", "--random-k", "10",
                 "--layers", "0", "--seed", str(seed))
    assert res.exit_code == 0, res.output
    rec = rundir.read(run, "records", model="tiny-gpt2", layer=0)
    return {n: tuple(sorted(g.excerpt_id)) for n, g in rec[rec.kind == "random"].groupby("neuron")}


def test_random_sample_reproducible_per_seed_and_own_per_neuron(tmp_path, tiny_gpt2,
                                                                  tiny_corpus):
    a = _random_ids(tmp_path, tiny_gpt2, tiny_corpus, 1, "a")
    b = _random_ids(tmp_path, tiny_gpt2, tiny_corpus, 1, "b")
    c = _random_ids(tmp_path, tiny_gpt2, tiny_corpus, 2, "c")
    assert all(len(ids) == 10 for ids in a.values()) and a == b and a != c
    assert len(set(a.values())) > 100  # 128 neurons, each with its own sample


def test_rerun_and_resume(tmp_path, tiny_gpt2, tiny_corpus):
    run = tmp_path / "r"
    common = ["--model", str(tiny_gpt2), "--corpus", str(tiny_corpus), "--run", str(run),
              "--n-excerpts", "40", "--ctx", "16", "--top-k", "4", "--random-k", "3"]
    assert record(*common, "--layers", "0").exit_code == 0
    layer0 = rundir.files(run, "records", "tiny-gpt2", 0)
    ex = rundir.files(run, "excerpts", "tiny-gpt2")
    # A pass killed mid-way leaves only its hidden staging folder; the next pass discards it.
    stale = run / ".staging-tiny-gpt2" / "excerpts" / "model=tiny-gpt2"
    stale.mkdir(parents=True)
    (stale / "00000000000000000000-killed-part.parquet").write_bytes(b"half a file")
    res = record(*common, "--layers", "0-1")  # as if a killed run had finished only layer 0
    assert res.exit_code == 0, res.output
    assert not (run / ".staging-tiny-gpt2").exists()
    assert not [p for p in run.rglob(".*") if p.name.startswith(".staging")
                or p.name.endswith(".tmp")]  # no staging folder or temporary file is left
    assert rundir.files(run, "records", "tiny-gpt2", 0) == layer0  # layer 0 not redone
    assert rundir.files(run, "excerpts", "tiny-gpt2") == ex
    assert rundir.layers_in(run, "records", "tiny-gpt2") == [0, 1]
    assert len(rundir.read(run, "excerpts")) == 40  # the killed pass's file never got in
    res = record(*common, "--layers", "all")
    assert res.exit_code == 0 and "nothing to do" in res.output


def test_models_lists_sizes_and_availability():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    line = next(ln for ln in res.output.splitlines() if ln.startswith("smollm2-135m"))
    assert "30" in line and "1536" in line and line.rstrip().endswith("yes")
    gpt2 = next(ln for ln in res.output.splitlines() if ln.startswith("gpt2 "))
    assert "12" in gpt2 and "3072" in gpt2 and "36,864" in gpt2


def _no_files(path) -> bool:
    return not path.exists() or not any(path.rglob("*"))


@pytest.mark.parametrize("args, needle", [
    (["--model", "gpt9"], "gpt9"),
    (["--model", "gpt2"], "available offline: smollm2-135m"),
    (["--corpus", "hf:no-such-org/no-such-set"], "cannot stream"),
    (["--layers", "7"], "layers 0-1"),
    (["--layers", "x-y"], "x-y"),
    (["--ctx", "4096"], "4096"),
    (["--corpus", "/nonexistent/file.txt"], "no such file"),
    (["--corpus", "EMPTY"], "fewer than"),
    (["--corpus", "BADEXT"], "unsupported"),
    (["--corpus", "SMALL", "--top-k", "100", "--n-excerpts", "200"], "only"),
    (["--top-k", "50", "--n-excerpts", "10"], "--top-k 50"),
])
def test_bad_input_one_line_exit_2_no_files(tmp_path, tiny_gpt2, tiny_corpus, args, needle):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad = tmp_path / "c.docx"
    bad.write_text("x")
    small = tmp_path / "small.txt"
    small.write_text("A short corpus of a few sentences about neurons and excerpts. " * 20)
    names = {"EMPTY": str(empty), "BADEXT": str(bad), "SMALL": str(small)}
    args = [names.get(a, a) for a in args]
    base = {"--model": str(tiny_gpt2), "--corpus": str(tiny_corpus), "--ctx": "16"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    run = tmp_path / "run"
    res = record("--run", str(run), *[x for kv in base.items() for x in kv])
    assert res.exit_code == 2, res.output
    # The progress bar may precede it; the error itself is one line, the last, no traceback.
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error:") and needle in err, res.stderr
    assert "Traceback" not in res.stderr
    assert _no_files(run)


def test_different_settings_named(tmp_path, tiny_gpt2, tiny_corpus):
    run = tmp_path / "r"
    common = ["--model", str(tiny_gpt2), "--corpus", str(tiny_corpus), "--run", str(run),
              "--n-excerpts", "30", "--ctx", "16", "--top-k", "4", "--random-k", "3"]
    assert record(*common, "--layers", "0").exit_code == 0
    before = sorted(p for p in run.rglob("*"))
    res = record(*common, "--layers", "1", "--seed", "5")
    assert res.exit_code == 2 and "seed=0" in res.stderr and "\n" not in res.stderr.strip()
    assert sorted(p for p in run.rglob("*")) == before


@pytest.mark.slow
def test_embedded_model_matches_hf(tmp_path):
    from explainer.subject import models

    run = tmp_path / "r"
    res = record("--model", "smollm2-135m", "--run", str(run), "--n-excerpts", "6",
                 "--ctx", "16", "--top-k", "2", "--random-k", "2", "--layers", "0,29")
    assert res.exit_code == 0, res.output
    ids, _ = _excerpts(run, "smollm2-135m")
    ckpt = models.embedded_checkpoint()
    for layer in (0, 29):
        ref = _hf_acts(ckpt, ids, layer, gated=True)
        rec = rundir.read(run, "records", model="smollm2-135m", layer=layer)
        got = np.stack(rec.activations.to_numpy())
        want = ref[rec.excerpt_id.to_numpy(), :, rec.neuron.to_numpy()]
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_quantile_samples_fall_in_their_bins(tmp_path, tiny_gpt2, tiny_corpus):
    run = tmp_path / "q"
    res = record("--model", str(tiny_gpt2), "--corpus", str(tiny_corpus), "--run", str(run),
                 "--n-excerpts", "60", "--ctx", "16", "--top-k", "4", "--random-k", "3",
                 "--quantile-k", "2", "--layers", "1")
    assert res.exit_code == 0, res.output
    ids, _ = _excerpts(run, "tiny-gpt2")
    ref = _hf_acts(tiny_gpt2, ids, 1).max(axis=1)  # (n_excerpts, d_mlp)
    rec = rundir.read(run, "records", model="tiny-gpt2", layer=1)
    quant = rec[rec.kind == "quantile"]
    assert len(quant) > 0
    tops = {n: set(g.excerpt_id) for n, g in rec[rec.kind == "top"].groupby("neuron")}
    assert not any(e in tops[n] for n, e in zip(quant.neuron, quant.excerpt_id))
    for row in quant.itertuples():
        top = ref[:, row.neuron].max()
        b = row.rank // 2
        assert b / 5 * top - 1e-5 <= row.max_activation <= (b + 1) / 5 * top + 1e-5
    # Every bin holds min(2, excerpts in that bin) samples.
    for neuron in (0, 7, 99):
        top = ref[:, neuron].max()
        rest = np.delete(ref[:, neuron], sorted(tops[neuron]))  # its top excerpts are left out
        counts = np.bincount(np.clip(np.ceil(rest / top * 5).astype(int) - 1, -1, 4)
                             + 1, minlength=6)[1:]
        got = np.bincount(quant[quant.neuron == neuron]["rank"].to_numpy() // 2, minlength=5)
        assert list(got) == [min(2, c) for c in counts]


@pytest.mark.parametrize("device, size", [("cpu", 32), ("cuda", 512), ("cuda:1", 512),
                                          ("mps", 32)])
def test_batch_size_comes_from_the_device(device, size):
    from explainer.record.stage import default_batch_size

    assert default_batch_size(device) == size


def test_a_bad_device_is_named():
    from explainer import ExplainError
    from explainer.record.stage import default_batch_size

    with pytest.raises(ExplainError, match="--device gpu0"):
        default_batch_size("gpu0")


def test_a_run_keeps_the_batch_size_it_began_with(tmp_path, tiny_gpt2, tiny_corpus):
    """Stored in run.json, so a resumed or extended run cuts the same shards; an explicit other
    size is refused (naming both) before anything is written; a GPU run's size is kept on a CPU."""
    from explainer.config import RecordConfig
    from explainer.record.stage import _with_batch_size

    run = tmp_path / "r"
    key = rundir.model_key("tiny-gpt2")
    common = ["--model", str(tiny_gpt2), "--corpus", str(tiny_corpus), "--run", str(run),
              "--n-excerpts", "30", "--ctx", "16", "--top-k", "4", "--random-k", "3"]
    assert record(*common, "--layers", "0").exit_code == 0  # no --batch-size: the CPU's 32
    stored = lambda: json.loads((run / "run.json").read_text())["record"][key]["batch_size"]
    assert stored() == 32
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    res = record(*common, "--layers", "1", "--batch-size", "8")
    assert res.exit_code == 2 and "--batch-size 8" in res.stderr and "--batch-size 32" in res.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert record(*common, "--layers", "1").exit_code == 0  # resumed with the stored 32
    assert stored() == 32 and rundir.layers_in(run, "records", "tiny-gpt2") == [0, 1]
    res = record(*common, "--layers", "all", "--batch-size", "32")
    assert res.exit_code == 0 and "nothing to do" in res.output
    # A run begun on a GPU (512 stored) and resumed on a CPU keeps 512, not the CPU's 32.
    other = tmp_path / "gpu-run"
    rundir.update_run_json(other, lambda m: m.setdefault("record", {}).update(
        {key: {"batch_size": 512}}))
    cfg = RecordConfig(run=other, model=str(tiny_gpt2), device="cpu")
    assert _with_batch_size(cfg, other, "tiny-gpt2").batch_size == 512
    fresh = RecordConfig(run=tmp_path / "new", model=str(tiny_gpt2), device="cuda")
    assert _with_batch_size(fresh, tmp_path / "new", "tiny-gpt2").batch_size == 512
    assert not (tmp_path / "new").exists()  # choosing writes nothing
