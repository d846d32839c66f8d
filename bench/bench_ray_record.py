"""Ray record on local workers ÷ the one-process record, on the same shards; identical tables.

    python bench/bench_ray_record.py --n 512 --shards 2 --workers 2

Both engines record the same shards of a GPT-2-small-shaped random model (every layer hooked);
the Ray cluster is started before the clock runs, so the ratio measures the engine's overhead
(actor start-up and model load in each worker, shard checkpoints, the driver's merge), not
Ray's own start. On one 2-core machine two workers share the cores one process had, so the
ratio is the overhead only; the speed-up needs more machines. Prints records/s per worker.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512, help="excerpts recorded")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--layers", default="all")
    args = ap.parse_args()
    import ray

    from bench_record import gpt2_small_shaped
    from explainer import config as C
    from explainer import record
    from test_shards import assert_same_tables

    model = str(gpt2_small_shaped(ROOT / ".test-cache" / "gpt2-small"))
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING")
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("local", "ray"):
            cfg = C.RecordConfig(run=Path(tmp) / engine, model=model, layers=args.layers,
                                 n_excerpts=args.n, shards=args.shards,
                                 engine=C.EngineConfig(engine, None, args.workers))
            t0 = time.perf_counter()
            record.run(cfg)
            seconds[engine] = time.perf_counter() - t0
        assert_same_tables(Path(tmp) / "local", Path(tmp) / "ray")
    ray.shutdown()
    print(json.dumps({
        "excerpts": args.n, "shards": args.shards, "workers": args.workers,
        "local_s": round(seconds["local"], 1), "ray_s": round(seconds["ray"], 1),
        "ray_over_local_throughput": round(seconds["local"] / seconds["ray"], 3),
        "excerpts_per_s_per_ray_worker": round(args.n / seconds["ray"] / args.workers, 2),
        "identical_tables": True}))


if __name__ == "__main__":
    main()
