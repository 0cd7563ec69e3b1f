"""Full training runs on a GPU backend, one per seed, each checked against a minimum test accuracy.

    python bench/gpu_train.py BACKEND [--preset branchnet] [--seeds 4,5,6] [--iterations N] [--dtype float32]
                              [--min-test-acc 0.981] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import fastmnist


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("backend")
    p.add_argument("--preset", default="branchnet")
    p.add_argument("--seeds", default="")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--min-test-acc", type=float, default=0.981)   # branchnet's plateau (docs/presets.md)
    p.add_argument("--out", default=".")
    args = p.parse_args(argv)
    seeds = [None if s == "default" else int(s) for s in args.seeds.split(",") if s] or [None]
    failed = []
    for seed in seeds:
        t0 = time.perf_counter()

        def progress(row):
            if row["iteration"] % 1000 == 0:
                print(f"  {row['iteration']:6d} {time.perf_counter() - t0:7.1f} s  test {row.get('test_acc', 0):.4f}",
                      flush=True)

        result = fastmnist.train(args.preset, backend=args.backend, dtype=args.dtype, iterations=args.iterations,
                                 seed=seed, progress=False, callback=progress)
        wall = time.perf_counter() - t0
        print(result.summary(), f"[seed {seed}, {wall:.1f} s wall]", flush=True)
        name = f"{args.preset}-{args.backend}-{args.dtype}-seed{seed}"
        with open(f"{args.out}/{name}.json", "w") as f:
            json.dump({"backend": args.backend, "dtype": args.dtype, "seed": seed, "wall_s": wall,
                       "final": result.final, "timings": result.timings, "history": result.history}, f, indent=1)
        if result.final.get("test_acc", 0) < args.min_test_acc:
            failed.append(f"seed {seed}: test accuracy {result.final.get('test_acc')} < {args.min_test_acc}")
    if failed:
        sys.exit(f"{args.preset} on {args.backend}: " + "; ".join(failed))


if __name__ == "__main__":
    main()
