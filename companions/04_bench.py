"""companions/04_bench.py: speed figures for 04_minigpt's GPT that a first reading can skip.

    python companions/04_bench.py --bench-kv 500 --n-layer 6 --n-head 6 --n-embd 384 --block-size 512
    python companions/04_bench.py --bench-kv 500 --checkpoint out/04_minigpt/best.pt    # a trained model
    python companions/04_bench.py --mfu 50                     # training throughput and MFU of the default shape
Every model flag of 04_minigpt.py works (--arch, --n-layer, --block-size, --device, --dtype, --compile, ...).

--bench-kv N  times N new tokens with and without the KV cache (greedy and sampled; the tokens must be identical)
              on a random model shaped by the flags, or on --checkpoint. Random weights generate nonsense, but the
              cost per token and the equality do not care.
--mfu STEPS   times STEPS optimizer steps on random tokens and reports tokens/s and the model FLOPs utilisation:
              MFU = training FLOPs per token x tokens per second / the chip's peak FLOP/s.
"""
import argparse
import importlib.util
import string
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if "lesson_04_minigpt" in sys.modules:  # already loaded by another companion
    L = sys.modules["lesson_04_minigpt"]
else:
    spec = importlib.util.spec_from_file_location("lesson_04_minigpt", ROOT / "04_minigpt.py")
    L = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = L
    spec.loader.exec_module(L)

# datasheet peaks for dense bf16 tensor-core math (no sparsity), by a part of the GPU's name
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
             ("A10", 125e12), ("T4", 65e12)]


def flops_per_token(model, block_size):
    """Training FLOPs per token (PaLM, appendix B): 6 N for the matmuls + 12 L T C for attention's scores/values.

    Every weight takes part in one multiply-add (2 FLOPs) per token forward, and backward costs twice the forward:
    6 per weight. q k^T and att @ v add 2 * 2 * T * C per layer forward, times 3 with backward: 12 L T C.
    """
    return 6 * model.num_params() + 12 * model.cfg.n_layer * block_size * model.cfg.n_embd


def bench_kv(model, n_tokens, log):
    prompt = [0]
    ok, speedup = L.check_kv_cache(model, prompt, n_tokens, log)
    log(f"bench: the KV cache is {speedup:.1f}x faster for {n_tokens} new tokens (context {model.cfg.block_size})")
    return 0 if ok else 1


def bench_mfu(model, cfg, device, steps, peak_tflops, log):
    autocast = L.autocast_for(cfg, device)
    model.to(device).train()
    optimizer = L.configure_optimizer(model, cfg)
    fast_model = torch.compile(model) if cfg.compile else model
    ids = torch.randint(model.vocab_size, (100_000,), generator=torch.Generator().manual_seed(0)).to(device)
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum

    def step(i):
        for micro in range(cfg.grad_accum):
            x, y = L.get_batch(ids, cfg.batch_size, cfg.block_size, L.batch_generator(cfg.seed, i, micro))
            with autocast:
                loss = fast_model(x, y)[1] / cfg.grad_accum
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(3):  # warm-up: allocations, kernel selection, compilation
        step(i)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    dt = (time.perf_counter() - t0) / steps
    tokens_s = tokens_per_step / dt
    peak = peak_tflops * 1e12 if peak_tflops else None
    if peak is None and device.type == "cuda":
        peak = next((f for key, f in PEAK_BF16 if key in torch.cuda.get_device_name(device)), None)
    mfu = f", MFU {flops_per_token(model, cfg.block_size) * tokens_s / peak:.1%}" if peak else \
        " (MFU: pass --peak-tflops for this chip)"
    log(f"bench: {model.num_params():,} parameters, {tokens_per_step:,} tokens/step: {dt * 1000:.1f} ms/step, "
        f"{tokens_s:,.0f} tokens/s{mfu}")
    return 0


def main(argv=None):
    own = argparse.ArgumentParser(description="04_minigpt benchmarks", add_help=False)
    own.add_argument("--bench-kv", type=int, default=0, metavar="N", help="time N new tokens with/without the cache")
    own.add_argument("--mfu", type=int, default=0, metavar="STEPS", help="time STEPS training steps, report MFU")
    own.add_argument("--peak-tflops", type=float, default=0.0, help="the chip's peak bf16 TFLOP/s (for MFU)")
    args, rest = own.parse_known_args(argv)
    parser = L.build_parser()
    for action in own._actions:  # --help lists both sets of flags
        parser._add_action(action)
    given = vars(parser.parse_args(rest))
    for key in ("bench_kv", "mfu", "peak_tflops"):
        given.pop(key, None)
    if args.bench_kv <= 0 and args.mfu <= 0:
        parser.error("pass --bench-kv N or --mfu STEPS (positive)")
    try:
        device = L.pick_device(given.get("device", "auto"))
        cfg = L.make_config(given, device)
        L.check_config(cfg, parser.error)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        if cfg.checkpoint:
            ckpt = L.load_checkpoint(Path(cfg.checkpoint))
            cfg = L.make_config(given, device, ckpt["config"])
            model = L.GPT(cfg, ckpt["vocab_size"])
            model.load_state_dict(ckpt["model"])
            print(f"bench: {cfg.checkpoint}, {model.num_params():,} parameters")
        else:
            model = L.GPT(cfg, len(string.printable) + 2)
            print(f"bench: random weights, {cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd} wide, context "
                  f"{cfg.block_size}: {model.num_params():,} parameters, device {device}")
        code = 0
        if args.bench_kv:
            code |= bench_kv(model.to(device).eval(), args.bench_kv, print)
        if args.mfu:
            code |= bench_mfu(model, cfg, device, args.mfu, args.peak_tflops, print)
    except L.UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
