"""
companions/03_bench.py: memory and time of attention over sequence length T: naive vs tiled vs torch SDPA.

Beyond lesson 03 (03_attention.py, part 6): the naive attention builds the T x T score matrix, so its memory grows
like T^2; the tiled online softmax holds one block x block tile, so its memory grows like T (the output). This
measures both (tracemalloc: every NumPy buffer allocated during the call, inputs excluded) and times them next to
torch's fused F.scaled_dot_product_attention (best of 3 runs), in float32, causal, one head of size 64: the setting
of a GPT layer. Timings depend on the machine and its load: README's results table says where its figures ran.

    python companions/03_bench.py                                   # T = 256 ... 4096
    OPENBLAS_NUM_THREADS=1 python companions/03_bench.py --lengths 256,512,1024 --threads 1   # steadier timings
"""
import argparse
import importlib.util
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

LENGTHS = (256, 512, 1024, 2048, 4096)  # --lengths: sequence lengths T of the table
BLOCK = 128                             # --block: tile size (FlashAttention picks it so a tile fits in on-chip SRAM)
HEAD_DIM = 64                           # --head-dim: head size (GPT-2's)
REPEATS = 3                             # --repeats: timing runs per cell; the fastest counts
THREADS = 1                             # --threads: torch CPU threads
SEED = 0                                # --seed

LESSON = Path(__file__).resolve().parent.parent / "03_attention.py"


def load_lesson():
    """03_attention.py as a module (its name starts with a digit, so it is loaded by path; main() does not run)."""
    spec = importlib.util.spec_from_file_location("lesson_03_attention", LESSON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_bytes(fn, *args, **kwargs):
    """Peak memory that NumPy allocates while fn runs, measured by tracemalloc (NumPy reports its buffers to it)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def best_time(fn, repeats=REPEATS):
    """Fastest of a few runs, in milliseconds: the minimum is the run least disturbed by other programs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def bench(lesson, lengths, block=BLOCK, head_dim=HEAD_DIM, repeats=REPEATS, seed=SEED, log=print):
    """One row per T: peak MB and best ms of the lesson's attention() and tiled_attention(), and ms of torch SDPA."""
    rng = np.random.default_rng(seed)
    rows, start = [], time.perf_counter()
    for n, t in enumerate(lengths, 1):
        q, k, v = (rng.standard_normal((t, head_dim)).astype(np.float32) for _ in range(3))  # (T, d) each
        tq, tk, tv = (torch.from_numpy(a)[None] for a in (q, k, v))                            # (1, T, d)
        naive = lambda: lesson.attention(q, k, v, causal=True)                                  # noqa: E731
        tiled = lambda: lesson.tiled_attention(q, k, v, block=block, causal=True)               # noqa: E731
        row = dict(t=t, naive_mb=peak_bytes(naive) / 2**20, tiled_mb=peak_bytes(tiled) / 2**20,
                   naive_ms=best_time(naive, repeats), tiled_ms=best_time(tiled, repeats),
                   torch_ms=best_time(lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True), repeats))
        rows.append(row)
        elapsed = time.perf_counter() - start
        log(f"  {t:>6} | {row['naive_mb']:>13.2f} {row['tiled_mb']:>7.2f} | {row['naive_ms']:>9.1f} "
            f"{row['tiled_ms']:>8.1f} {row['torch_ms']:>11.1f}   [{n}/{len(lengths)}, {elapsed:.1f}s]")
    return rows


def int_list(text):
    """argparse type: '256,512' -> [256, 512], each from 1 to 65536."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or not all(v.isdigit() and 1 <= int(v) <= 65536 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,512,1024; got {text!r}")
    return [int(v) for v in values]


def main(argv=None):
    lesson = load_lesson()
    positive_int = lesson.positive_int  # the lesson's argparse type (int_list above differs: longer T allowed)
    parser = argparse.ArgumentParser(description="Memory and time of naive vs tiled attention vs torch SDPA.")
    parser.add_argument("--lengths", type=int_list, default=list(LENGTHS), help="sequence lengths T, e.g. 256,512")
    parser.add_argument("--block", type=positive_int, default=BLOCK, help="tile size of the tiled attention")
    parser.add_argument("--head-dim", type=positive_int, default=HEAD_DIM, help="head size d")
    parser.add_argument("--repeats", type=positive_int, default=REPEATS, help="timing runs per cell (fastest counts)")
    parser.add_argument("--threads", type=positive_int, default=THREADS, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=SEED)
    args, unknown = parser.parse_known_args(argv)   # a notebook kernel passes its own "-f kernel.json"
    if unknown and not all(u.startswith("-f") or u.endswith(".json") for u in unknown):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    torch.set_num_threads(args.threads)
    print(f"float32, causal, head size {args.head_dim}, torch threads {torch.get_num_threads()}. "
          f"Naive holds T x T scores; tiled one {args.block} x {args.block} tile.")
    print(f"  {'T':>6} | {'peak MB naive':>13} {'tiled':>7} | {'ms naive':>9} {'tiled':>8} {'torch SDPA':>11}")
    rows = bench(lesson, args.lengths, args.block, args.head_dim, args.repeats, args.seed)
    first, last = rows[0], rows[-1]
    if len(rows) > 1:
        print(f"T x{last['t'] / first['t']:.0f}: naive memory x{last['naive_mb'] / first['naive_mb']:.0f} (~T^2), "
              f"tiled x{last['tiled_mb'] / first['tiled_mb']:.1f} (~T: the output, plus one fixed-size tile).")
    # Which is faster is an empirical question here, so the sentence is computed, not written in advance. The
    # tiled loop skips tiles wholly in the future (causal: about half the work) and works on cache-sized pieces,
    # but pays Python overhead per tile; multi-threaded BLAS also stalls on small tiles when the machine is busy
    # (OPENBLAS_NUM_THREADS=1 steadies it). torch's SDPA is one fused C++ call; on a GPU it dispatches to
    # FlashAttention, this same algorithm written in CUDA.
    print(f"At T={last['t']}: tiled takes {last['tiled_ms'] / last['naive_ms']:.2f}x the naive time, torch SDPA "
          f"{last['torch_ms'] / last['naive_ms']:.2f}x. The tiled version's guaranteed gain is memory; its speed\n"
          "depends on T, the block size and BLAS threads. On a GPU, SDPA runs FlashAttention: this algorithm in CUDA.")
    return rows


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
