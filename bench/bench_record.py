"""Recording throughput vs a bare forward pass, and peak memory at N vs 4N excerpts.

    python bench/bench_record.py                 # GPT-2-small-shaped random model + embedded model
    python bench/bench_record.py --models gpt2-arch --n 256
    python bench/bench_record.py --device cuda   # record ÷ bare forward on the GPU

Prints ratios measured in one run (seconds on a shared machine are noise; ratios are not):
  throughput ratio = recorded tokens/s (every layer hooked, samplers updated, excerpts staged)
                     / tokens/s of a bare forward pass of the same model on the same batches.
  ratio vs hooked forward = the same, over a forward that stops where record stops (after the
                     last hooked MLP, no logits) with hooks that only read: the samplers' cost.
  memory ratio     = peak RSS recording 4N excerpts / peak RSS recording N excerpts.
With --device cuda (GPT-2-small-shaped model, every layer hooked, the device samplers):
  device ratio     = tokens/s of the recording pass (forward, samplers on the GPU, the kept
                     excerpts copied to the host at the end; files not written) / tokens/s of a
                     bare forward pass on the GPU; floor 0.8. Without a CUDA device it says so,
                     measures nothing and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def gpt2_small_shaped(folder: Path) -> Path:
    """A random GPT-2 with GPT-2 small's shape (12 layers, d_model 768, d_mlp 3072, 50,257
    vocabulary: the unembedding a bare forward pass pays and `record` skips is GPT-2's)."""
    from conftest import make_gpt2

    if not (folder / "config.json").exists():
        make_gpt2(folder, n_layer=12, n_embd=768, vocab_size=50257)
    return folder


def throughput(model: str, n: int, batch_size: int, repeats: int = 3) -> dict:
    import shutil

    import torch

    from explainer.record import corpus, shards
    from explainer.subject import models
    from explainer.record import stage as record
    from explainer.config import RecordConfig

    spec = models.resolve(model)
    subject = models.load(spec)
    layers = list(range(spec.n_layers))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RecordConfig(run=Path(tmp) / "run", model=model, n_excerpts=n,
                           batch_size=batch_size, top_k=40, random_k=30)
        ex = [e.token_ids for e in corpus.excerpts("embedded", subject.tokenizer, cfg.ctx, n)]
        batches = [torch.tensor(ex[i:i + batch_size]) for i in range(0, len(ex), batch_size)]
        bare = reach = rec = float("inf")
        for _ in range(repeats):  # alternate, keep the best: this machine's noise is large
            # The baselines get record's heap settings too, so the ratios measure recording.
            with torch.inference_mode(), shards.steady_heap():
                subject.forward(batches[0])  # warm-up
                t0 = time.perf_counter()
                for b in batches:
                    subject.forward(b)
                bare = min(bare, time.perf_counter() - t0)
                t0 = time.perf_counter()
                for b in batches:  # the same forward as record, hooks that only read
                    subject.stream(b, layers, lambda la, a: None)
                reach = min(reach, time.perf_counter() - t0)
            shutil.rmtree(cfg.run, ignore_errors=True)  # no finished shard to resume from
            t0 = time.perf_counter()
            record._record(cfg, subject, layers, ("pos",), {"bench": True})
            rec = min(rec, time.perf_counter() - t0)
    tokens = len(ex) * cfg.ctx
    return {"model": spec.name, "excerpts": len(ex), "layers_hooked": len(layers),
            "bare_tok_s": round(tokens / bare), "record_tok_s": round(tokens / rec),
            "throughput_ratio": round(bare / rec, 3),
            "ratio_vs_hooked_forward": round(reach / rec, 3)}


DEVICE_FLOOR = 0.8


def device_throughput(model: str, n: int, batch_size: int, repeats: int, dev: str) -> dict:
    """The recording pass on a GPU against a bare forward pass there (best of `repeats`)."""
    import torch

    from explainer.config import RecordConfig
    from explainer.record import corpus, shards
    from explainer.subject import models

    spec = models.resolve(model)
    subject = models.load(spec, dev)
    layers = list(range(spec.n_layers))
    cfg = RecordConfig(run=Path("unused"), model=model, n_excerpts=n, batch_size=batch_size,
                       top_k=40, random_k=30, device=dev)
    ex = list(corpus.excerpts("embedded", subject.tokenizer, cfg.ctx, n))
    batches = [(torch.tensor([e.excerpt_id for e in ex[i:i + batch_size]]),
                torch.tensor([e.token_ids for e in ex[i:i + batch_size]]))
               for i in range(0, len(ex), batch_size)]
    task = shards.ShardTask(Path("unused"), cfg, 0, 0, len(ex), tuple(layers), ("pos",))
    sync = torch.cuda.synchronize if torch.device(dev).type == "cuda" else lambda: None

    def bare(todo):
        for _, tokens in todo:
            subject.forward(tokens)

    def hooked(todo):  # the forward record runs, stopped after the last MLP, hooks that read
        for _, tokens in todo:
            subject.stream(tokens, layers, lambda la, a: None, on_device=True)

    def record(todo):
        state = shards._State(cfg, subject, task)
        for ids, tokens in todo:
            state.add(ids, tokens)
        for la in layers:  # what a shard keeps, on the host
            shards._ranked("top", state.tops[la])
            shards._ranked("random", state.randoms[la].pool)
            shards._moments(state.stats[la])

    best = {}
    with torch.inference_mode():
        for run in (bare, hooked, record):
            run(batches[:2])  # warm-up: kernels chosen, caches filled
        for _ in range(repeats):
            for run in (bare, hooked, record):
                sync()
                t0 = time.perf_counter()
                run(batches)
                sync()
                best[run.__name__] = min(best.get(run.__name__, float("inf")),
                                         time.perf_counter() - t0)
    tokens = len(ex) * cfg.ctx
    return {"model": spec.name, "device": dev, "excerpts": len(ex), "batch_size": batch_size,
            "layers_hooked": len(layers), "bare_tok_s": round(tokens / best["bare"]),
            "record_tok_s": round(tokens / best["record"]),
            "device_ratio": round(best["bare"] / best["record"], 3),
            "ratio_vs_hooked_forward": round(best["hooked"] / best["record"], 3)}


def on_device(args, cache: Path) -> None:
    """--device: the GPU figure, or a note that it was not measured."""
    import torch

    dev = torch.device(args.device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        print(f"device {args.device}: no CUDA device here (torch.cuda.is_available() is "
              f"{torch.cuda.is_available()}); record ÷ bare forward on a GPU was not measured")
        return
    model = str(gpt2_small_shaped(cache))
    res = device_throughput(model, args.n or 2048, args.batch_size, args.repeats, args.device)
    print(json.dumps(res))
    ok = res["device_ratio"] >= DEVICE_FLOOR
    print(f"record ÷ bare forward on {torch.cuda.get_device_name(dev)}: {res['device_ratio']:.3f}"
          f" (floor {DEVICE_FLOOR}: {'met' if ok else 'NOT met'}); measured")


def peak_rss_mb(model: str, n: int) -> float:
    """Peak RSS of a fresh `explain record` process (MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        code = ("import resource, sys; sys.argv=['explain','record','--model',%r,'--run',%r,"
                "'--n-excerpts','%d','--layers','all']; import cli\n"
                "try: cli.main()\nexcept SystemExit: pass\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)") % (
                    model, str(Path(tmp) / "run"), n)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gpt2-arch,smollm2-135m")
    ap.add_argument("--n", type=int, default=None,
                    help="excerpts for the throughput run (256; 2048 with --device)")
    ap.add_argument("--mem-n", type=int, default=256,
                    help="N for the N vs 4N memory run (0 skips it)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="alternating timings; best kept")
    ap.add_argument("--device", default="cpu",
                    help="cuda: record ÷ bare forward on the GPU instead (GPT-2-small shape)")
    args = ap.parse_args()
    cache = ROOT / ".test-cache" / "gpt2-small"
    if args.device != "cpu":
        return on_device(args, cache)
    for name in args.models.split(","):
        model = str(gpt2_small_shaped(cache)) if name == "gpt2-arch" else name
        res = throughput(model, args.n or 256, args.batch_size, args.repeats)
        if args.mem_n:
            small, big = peak_rss_mb(model, args.mem_n), peak_rss_mb(model, 4 * args.mem_n)
            res.update(peak_rss_mb_n=round(small), peak_rss_mb_4n=round(big),
                       memory_ratio_4n_over_n=round(big / small, 3))
        print(json.dumps(res))


if __name__ == "__main__":
    main()
