"""companions/04_ablation.py: from GPT-2 to a Llama-style model one change at a time, measured at equal wall time.

    python companions/04_ablation.py                                  # CPU: 6 variants x 3 seeds x 4.6 minutes
    python companions/04_ablation.py --budget 60 --seeds 2 --variants gpt2,llama
    python companions/04_ablation.py --device cuda --budget 120       # on a GPU (04's GPU preset shape)
    python companions/04_ablation.py --budget 10 --seeds 1            # a smoke test
    python companions/04_ablation.py --merge out/a out/b --out out/all  # one table from runs made in parallel
Any other flag goes to 04_minigpt.py unchanged (--data, --n-layer, --lr, --eval-interval, ...).

The variants are cumulative: each adds one change to the one before.
    gpt2     learned positions, LayerNorm, GELU MLP, multi-head attention, biases (04's --arch gpt2)
    rope     + rotary positions instead of learned ones
    rmsnorm  + RMSNorm instead of LayerNorm
    swiglu   + SwiGLU MLP instead of GELU
    gqa      + grouped-query attention (half as many K/V heads)
    llama    + no biases: the Llama architecture (04's default, --arch llama)
Beside the chain, on top of llama alone: qknorm (RMS-normalised queries and keys) and muon (04's --optimizer muon;
the others use AdamW).
Every variant gets the same parameter count as gpt2 (within about 1% on a CPU, 2% on a GPU, where widths are
rounded to multiples of 64): the MLP's width (--mlp-hidden) absorbs what a change adds or removes (learned
positions, a third MLP matrix, fewer K/V heads, biases). Each (variant, seed) is
a fresh `python 04_minigpt.py` process with the same time budget (--max-minutes), so a change that makes steps
slower pays for it in fewer steps. Recorded: validation loss against seconds of training (from the first
evaluation, so start-up time is left out). Written under --out: results.json, ablation.png, and one folder per run.
"""
import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if "lesson_04_minigpt" in sys.modules:
    L = sys.modules["lesson_04_minigpt"]
else:
    spec = importlib.util.spec_from_file_location("lesson_04_minigpt", ROOT / "04_minigpt.py")
    L = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = L
    spec.loader.exec_module(L)

STEPS = {  # each variant: the switches it sets on top of the previous one
    "gpt2": {"optimizer": "adamw"},
    "rope": {"pos": "rope"},
    "rmsnorm": {"norm": "rms"},
    "swiglu": {"mlp": "swiglu"},
    "gqa": {"n_kv_head": "half"},
    "llama": {"bias": False},
}
EXTRAS = {  # not cumulative: each on top of llama alone
    "qknorm": {},                   # RMS-normalised queries and keys (QKNormAttention below; not in the lesson)
    "muon": {"optimizer": "muon"},  # Muon for the blocks' matrices (04's --optimizer muon)
}
QK_NORM_FLAG = "--with-qk-norm"  # first argument: run the lesson in this process with QKNormAttention


class QKNormAttention(L.CausalSelfAttention):
    """QK-norm (as in OLMo 2, Gemma 3, Qwen3): an RMSNorm with its own gains over each head's query and key features,
    before RoPE, so a score cannot grow just because q or k grew. A forward hook rewrites c_attn's output: the
    lesson's attention code runs unchanged."""
    def __init__(self, cfg, layer_index):
        super().__init__(cfg, layer_index)
        hs = cfg.n_embd // cfg.n_head
        self.q_norm, self.k_norm = L.RMSNorm(hs), L.RMSNorm(hs)
        self.c_attn.register_forward_hook(self.normalise)

    def normalise(self, module, inputs, out):
        B, T, _ = out.shape
        q, k, v = out.view(B, T, -1, self.q_norm.weight.numel()).split(
            [self.n_head, self.n_kv_head, self.n_kv_head], dim=2)
        return torch.cat([self.q_norm(q), self.k_norm(k), v], dim=2).view(B, T, -1)


def variant_switches(name, n_head):
    """The cumulative switches of variant `name` (a dict of Config fields)."""
    switches, last = {}, "llama" if name in EXTRAS else name  # an extra builds on the whole chain
    for step, change in STEPS.items():
        switches.update(change)
        if step == last:
            break
    switches.update(EXTRAS.get(name, {}))
    if switches.get("n_kv_head") == "half":
        switches["n_kv_head"] = n_head // 2 if n_head % 2 == 0 else n_head
    return switches


def matched_mlp_hidden(cfg, vocab_size, target, multiple=8):
    """The MLP width that brings this variant's parameter count closest to `target` (counts are linear in it),
    rounded to a multiple of `multiple`: a GPU's tensor cores need widths that are multiples of 64 for full speed
    (an odd width halved the speed of a whole run, which at equal wall time would be charged to the variant)."""
    count = lambda hidden: L.GPT(L.replace(cfg, mlp_hidden=hidden), vocab_size).num_params()
    a, b = count(8), count(16)
    return max(multiple, multiple * round((8 + (target - a) * 8 / (b - a)) / multiple))


def flags_of(switches):
    out = []
    for key, value in switches.items():
        flag = "--" + key.replace("_", "-")
        out += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return out


def run_one(name, seed, switches, args, passthrough, folder):
    """One training run in a fresh process; returns its evaluations as (seconds of training, val loss)."""
    script = [str(Path(__file__).resolve()), QK_NORM_FLAG] if name == "qknorm" else [str(ROOT / "04_minigpt.py")]
    cmd = [sys.executable, *script, *passthrough, "--arch", "gpt2", *flags_of(switches),
           "--seed", str(seed),
           "--max-minutes", str(args.budget / 60), "--device", args.device, "--out", str(folder), "--no-export",
           "--no-plots", "--check-tokens", "0", "--num-tokens", "0"]
    proc = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: run {name} seed {seed} failed: {proc.stderr.strip().splitlines()[-1:]}")
    evals = json.loads((folder / "history.json").read_text())["evals"]  # [step, train, val, seconds since start]
    t0 = evals[0][3]
    return [(e[3] - t0, e[2]) for e in evals], evals[-1][0]


def save_plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, runs) in enumerate(results.items()):
        color = f"C{i}"
        for j, run in enumerate(runs):
            seconds, vals = zip(*run["curve"])
            ax.plot(seconds, vals, color=color, alpha=0.8, lw=1, label=name if j == 0 else None)
    ax.set_xlabel("seconds of training")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("04 ablation: GPT-2 -> Llama, one change at a time, equal parameters and wall time")
    vals = [v for runs in results.values() for run in runs for _, v in run["curve"][1:]]
    if vals:  # the interesting part: leave the first evaluation (the untrained loss) off the scale
        ax.set_ylim(min(vals) - 0.02, sorted(vals)[int(0.9 * (len(vals) - 1))] + 0.05)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [QK_NORM_FLAG]:  # one qknorm run: the lesson's main with the attention class swapped
        L.CausalSelfAttention = QKNormAttention
        return L.main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=276.0, help="seconds of training per run (default: 04's 4.6 min)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per variant, seeds 1337, 1338, ...")
    parser.add_argument("--first-seed", type=int, default=1337, help="the first of the --seeds seeds")
    parser.add_argument("--merge", nargs="+", metavar="DIR", help="no training: merge the results.json of earlier "
                        "runs (e.g. one process per variant or seed, run side by side) into one table and plot")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (passed to 04_minigpt.py)")
    parser.add_argument("--variants", default=",".join(STEPS),
                        help=f"comma-separated, from {', '.join([*STEPS, *EXTRAS])}")
    parser.add_argument("--out", default="out/04_ablation", help="folder for results.json, ablation.png, runs/")
    args, passthrough = parser.parse_known_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out), parser)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in STEPS and v not in EXTRAS]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {', '.join(unknown) or '(none)'}; "
                     f"choose from {', '.join([*STEPS, *EXTRAS])}")
    if args.budget <= 0 or args.seeds < 1:
        parser.error("need --budget > 0 and --seeds >= 1")
    given = {**vars(L.build_parser().parse_known_args(passthrough)[0]), "arch": "gpt2"}  # variants build on gpt2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    base = L.make_config(given, device)
    try:
        vocab_size = L.Tokenizer(sorted(set(L.load_text(base)))).vocab_size
    except L.UserError as exc:
        parser.exit(2, f"error: {exc}\n")
    target = L.GPT(base, vocab_size).num_params()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"04 ablation: {len(variants)} variants x {args.seeds} seeds x {args.budget:g} s on {device}; "
          f"{base.n_layer} layers x {base.n_head} heads x {base.n_embd}, {target:,} parameters each")
    results = {}
    for name in variants:
        switches = variant_switches(name, base.n_head)
        cfg = L.replace(base, **switches)
        if name != "gpt2":
            switches["mlp_hidden"] = matched_mlp_hidden(cfg, vocab_size, target, 64 if device.type == "cuda" else 8)
        params = L.GPT(L.replace(cfg, mlp_hidden=switches.get("mlp_hidden", 0)), vocab_size).num_params() + (
            2 * (base.n_embd // base.n_head) * base.n_layer if name == "qknorm" else 0)  # + the q and k gains
        results[name] = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            curve, steps = run_one(name, seed, switches, args, passthrough, out / "runs" / f"{name}_seed{seed}")
            best = min(v for _, v in curve)
            results[name].append({"seed": seed, "params": params, "switches": switches, "steps": steps,
                                  "best_val": best, "final_val": curve[-1][1], "curve": curve})
            print(f"  {name:8s} seed {seed}: best val {best:.4f} after {steps} steps ({params:,} parameters)",
                  flush=True)
    (out / "results.json").write_text(json.dumps({"budget_s": args.budget, "device": str(device),
                                                   "passthrough": passthrough, "results": results}, indent=1))
    report(results, out)


def report(results, out):
    """The table (mean +- std of the best validation loss per variant) and the plot."""
    print(f"\n{'variant':10s} {'parameters':>11s} {'runs':>5s} {'steps':>7s} {'best val (mean +- std)':>24s}  vs gpt2")
    reference = None
    for name, runs in results.items():
        bests = [r["best_val"] for r in runs]
        mean = statistics.mean(bests)
        std = statistics.stdev(bests) if len(bests) > 1 else 0.0
        reference = mean if reference is None else reference
        steps = statistics.mean(r["steps"] for r in runs)
        print(f"{name:10s} {runs[0]['params']:>11,} {len(runs):>5d} {steps:>7.0f} {mean:>15.4f} +- {std:.4f}  "
              f"{mean - reference:+.4f}")
    plot = save_plot(results, out / "ablation.png")
    print(f"\nwritten: {out / 'results.json'}" + (f", {plot}" if plot else " (matplotlib missing: no plot)"))


def merge(folders, out, parser):
    """Combine the results.json of several runs (same budget and device) into one, in the variants' order."""
    merged, meta = {name: [] for name in [*STEPS, *EXTRAS]}, set()
    for folder in folders:
        path = Path(folder) / "results.json"
        if not path.is_file():
            parser.error(f"{path} not found: pass folders written by earlier runs of this companion")
        data = json.loads(path.read_text())
        meta.add((data["budget_s"], data["device"].split(":")[0]))
        for name, runs in data["results"].items():
            merged[name].extend(runs)
    if len(meta) > 1:
        parser.error(f"the runs differ in budget or device ({sorted(meta)}); merge only comparable runs")
    merged = {name: sorted(runs, key=lambda r: r["seed"]) for name, runs in merged.items() if runs}
    out.mkdir(parents=True, exist_ok=True)
    budget, device = meta.pop()
    (out / "results.json").write_text(json.dumps({"budget_s": budget, "device": device, "merged_from": folders,
                                                   "results": merged}, indent=1))
    print(f"04 ablation, merged from {len(folders)} folders: {budget:g} s per run on {device}")
    report(merged, out)


if __name__ == "__main__":
    main()
