"""
companions/03_long_range.py: lesson 03's long-range experiment (recall the FIRST token), with an ablation knob.

Beyond lesson 03 (03_attention.py, part 7): the LSTM fails at long range because the learning signal that would
teach it to keep the first token passes through T forget gates, each near sigmoid(0) = 0.5 at initialisation.
--lstm-forget-bias B starts every forget gate at sigmoid(B) instead (B = 2: about 0.88), so the signal fades more
slowly. Compare the table this prints with the lesson's, at the same lengths, steps and seed.

    python companions/03_long_range.py --lstm-forget-bias 2                  # lengths 4 ... 128, 500 steps
    python companions/03_long_range.py --lstm-forget-bias 2 --lengths 64,128,256 --steps 1000
"""
import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import torch

LSTM_FORGET_BIAS = 2.0                  # --lstm-forget-bias: initial forget-gate bias (torch's own init: about 0)
LENGTHS = (4, 8, 16, 32, 64, 128)       # --lengths: sequence lengths T
STEPS = 500                             # --steps: training steps per model and length
BATCH = 64                              # --batch: sequences per training step
THREADS = 1                             # --threads: torch CPU threads
SEED = 0                                # --seed

LESSON = Path(__file__).resolve().parent.parent / "03_attention.py"


def load_lesson():
    """03_attention.py as a module (its name starts with a digit, so it is loaded by path; main() does not run)."""
    spec = importlib.util.spec_from_file_location("lesson_03_attention", LESSON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lstm_with_forget_bias(lesson, forget_bias):
    """A builder of the lesson's TinyLSTMNet whose forget gates start at sigmoid(forget_bias)."""
    def build():
        model = lesson.TinyLSTMNet()
        width = model.lstm.hidden_size
        with torch.no_grad():  # torch stacks the gates [input, forget, cell, output] in each bias vector
            for bias in (model.lstm.bias_ih_l0, model.lstm.bias_hh_l0):
                bias[width:2 * width].fill_(forget_bias / 2)  # the two biases add up to forget_bias
        return model
    return build


def main(argv=None):
    lesson = load_lesson()  # its argparse types too: the same rules for the same flags
    int_list, positive_int = lesson.int_list, lesson.positive_int
    parser = argparse.ArgumentParser(description="Lesson 03's attention vs LSTM experiment with another LSTM init.")
    parser.add_argument("--lstm-forget-bias", type=float, default=LSTM_FORGET_BIAS, help="initial forget-gate bias")
    parser.add_argument("--lengths", type=int_list, default=list(LENGTHS), help="sequence lengths T, e.g. 8,16,32")
    parser.add_argument("--steps", type=positive_int, default=STEPS, help="training steps per model and T")
    parser.add_argument("--batch", type=positive_int, default=BATCH, help="sequences per training step")
    parser.add_argument("--threads", type=positive_int, default=THREADS, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=SEED)
    args, unknown = parser.parse_known_args(argv)   # a notebook kernel passes its own "-f kernel.json"
    if unknown and not all(u.startswith("-f") or u.endswith(".json") for u in unknown):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not math.isfinite(args.lstm_forget_bias):
        parser.error(f"--lstm-forget-bias must be a finite number; got {args.lstm_forget_bias}")
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    print(f"Recall the first token; LSTM forget-gate bias {args.lstm_forget_bias:g} (forget gates start at "
          f"{1 / (1 + math.exp(-args.lstm_forget_bias)):.2f}); {args.steps} steps x batch {args.batch}; {device}.")
    rows = lesson.long_range_experiment(args.lengths, args.steps, args.batch, args.seed, device,
                                        lstm=lstm_with_forget_bias(lesson, args.lstm_forget_bias))
    print(f"  {'T':>5} {'attention acc':>14} {'LSTM acc':>9} | {'gradient: attention':>19} {'LSTM':>9}")
    for r in rows:
        print(f"  {r['length']:>5} {r['attention_acc']:>14.1%} {r['lstm_acc']:>9.1%} | "
              f"{r['attention_grad']:>19.1e} {r['lstm_grad']:>9.1e}")
    if len(rows) >= 2:  # fit log(grad) = a + T log(factor): how much of the signal survives one more step
        slope = np.polyfit([r["length"] for r in rows], np.log([max(r["lstm_grad"], 1e-300) for r in rows]), 1)[0]
        print(f"LSTM gradient shrinks by about x{math.exp(slope):.2f} per step of distance "
              "(compare with the lesson's run: python 03_attention.py).")
    return rows


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
