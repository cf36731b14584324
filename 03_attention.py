"""
03_attention.py: attention, step by step, and proven against PyTorch.

Stage 3 of llm-from-scratch. Stage 02 turned words into vectors; this stage lets those vectors look at each other.
Attention is one line of math,

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

and this script takes that line apart:

  1. By hand, in NumPy: a short sentence, small embeddings, the Q/K/V projections, the scores, the scaling, the
     softmax, the attention weights printed as a table labelled with the words, and the output vectors.
  2. Why divide by sqrt(d_k): without it, dot products grow with the width d_k and the softmax saturates
     (one weight near 1, the rest near 0, gradients near 0). Measured, not asserted.
  3. Masks: a causal mask (a token may not look at the future) and a padding mask (no one looks at filler);
     a proof that changing future tokens leaves every earlier output EXACTLY unchanged.
  4. Multi-head attention: split the width into heads, attend per head, concatenate, project; parameter count.
  5. Proof: our NumPy attention equals torch.nn.functional.scaled_dot_product_attention and our multi-head block
     equals torch.nn.MultiheadAttention (weights copied), in float32 and float64; the largest differences printed.
  6. Memory-efficient attention: the tiled "online softmax" (the idea behind FlashAttention) never builds the
     T x T matrix; equal to the naive result; peak memory measured; a timing table naive vs tiled vs torch.
  7. Attention vs an LSTM on a long-range task (recall the FIRST token of a sequence) at lengths 4..128, same
     parameter count and training budget; accuracy table + PNG, and the gradient measurement that explains it.
  8. Pictures (heatmaps, curves) under out/03_attention/; a text version is printed when matplotlib is missing.

Run it:
    python 03_attention.py                      # everything, about a minute on a laptop CPU
    python 03_attention.py --sentence "my dog chased the red ball"   # part 1 on your own words
    python 03_attention.py --steps 100 --lengths 8,16 --timing-lengths 64,128 --no-plots   # seconds (tests)

Flags that matter: --sentence, --d-model/--heads (multi-head demo), --lengths/--steps/--batch (the long-range
experiment), --lstm-forget-bias (try 1.0), --timing-lengths/--block (part 6), --out DIR, --no-plots, --seed.
"""

# ----------------------------------------------------------------------------------------------------------------
# Imports. NumPy does the by-hand math; torch is only the yardstick (part 5) and the trainer (part 7).
# ----------------------------------------------------------------------------------------------------------------
import argparse
import math
import os
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# Config: every knob with its default. Flags (see parse_args) override the ones a learner may want to change.
# ----------------------------------------------------------------------------------------------------------------
SENTENCE = "the cat sat on the mat"  # part 1: short enough that the weight table fits on a screen
BY_HAND_DIM = 4                      # part 1: embedding width d_model = d_k = d_v (tiny, so you can read every number)
D_MODEL, N_HEADS = 8, 2              # part 4/5: multi-head demo width and number of heads (head size 4)
SCALING_DIMS = (2, 8, 32, 128, 512, 2048)  # part 2: the widths d_k we try
SCALING_KEYS, SCALING_TRIALS = 16, 400     # part 2: keys per query, random trials per width
TIMING_LENGTHS = (256, 512, 1024, 2048, 4096)  # part 6: sequence lengths for the timing table
TIMING_HEAD_DIM = 64                 # part 6: head size (GPT-2 uses 64)
BLOCK = 128                          # part 6: tile size of the tiled attention (FlashAttention picks it to fit SRAM)
LENGTHS = (4, 8, 16, 32, 64, 128)    # part 7: sequence lengths of the long-range experiment
STEPS, BATCH, LR = 500, 64, 3e-3     # part 7: the SAME training budget for both models at every length
VOCAB, WIDTH = 16, 32                # part 7: token values 0..15 (chance = 1/16), model width 32 for both models
POSITIONS = 129                      # part 7: rows of the attention model's position table (T <= 128 plus "?");
                                     #   fixed, so its parameter count (9,488 vs the LSTM's 9,520) never depends on T
EVAL_SEQUENCES = 2000                # part 7: fresh test sequences per (model, length)
THREADS = 1                          # torch CPU threads: tiny tensors gain nothing from more (and lose under load)
OUT_DIR = Path("out") / "03_attention"  # pictures; relative to where you run the script


def fail(message, code=2):
    """One-line error on stderr and a non-zero exit: how every expected problem ends (never a traceback)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


# ================================================================================================================
# The core: softmax and scaled dot-product attention, in NumPy
# ================================================================================================================
def softmax(scores, axis=-1):
    """softmax(x)_i = exp(x_i) / sum_j exp(x_j), computed stably.

    exp(1000) overflows, so subtract the row maximum first: softmax(x) = softmax(x - c) for any constant c, because
    exp(x_i - c) / sum_j exp(x_j - c) = exp(-c) exp(x_i) / (exp(-c) sum_j exp(x_j)). After the shift the largest
    exponent is exp(0) = 1, so nothing overflows. Masked entries are -inf and become exp(-inf) = 0 exactly.
    """
    shifted = scores - scores.max(axis=axis, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=axis, keepdims=True)


def causal_mask(t_q, t_k):
    """(T_q, T_k) boolean, True where query i may look at key j, i.e. j <= i (lower triangle incl. the diagonal).

    Aligned top-left like torch's is_causal=True: query 0 sees key 0 only, query 1 sees keys 0-1, and so on.
    """
    return np.tril(np.ones((t_q, t_k), dtype=bool))


def check_attention_shapes(q, k, v, mask=None):
    """Raise a ValueError that names the expected shapes when q, k, v (and mask) do not fit together."""
    expected = "expected q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v), mask broadcastable to (..., T_q, T_k)"
    got = f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if mask is not None:
        got += f", mask {tuple(np.shape(mask))}"
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"attention: q, k and v need at least 2 dims (time, features); {expected}; {got}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q and k must have the same feature size d_k (their dot product); {expected}; {got}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: k and v must have the same length T_k (one value per key); {expected}; {got}")
    try:  # leading (batch, head) dims must broadcast, like NumPy's matmul
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        if mask is not None:
            np.broadcast_shapes(np.shape(mask), batch + (q.shape[-2], k.shape[-2]))
    except ValueError:
        raise ValueError(f"attention: leading (batch/head) dims or the mask do not broadcast; {expected}; {got}") from None
    if mask is not None and np.asarray(mask).dtype != bool:
        raise ValueError(f"attention: mask must be boolean (True = may attend); got dtype {np.asarray(mask).dtype}")


def attention(q, k, v, mask=None, causal=False):
    """Scaled dot-product attention: softmax(q k^T / sqrt(d_k)) v. Returns (output, weights).

    q (..., T_q, d_k)   one query per position: "what am I looking for?"
    k (..., T_k, d_k)   one key per position:   "what do I contain?"
    v (..., T_k, d_v)   one value per position: "what do I hand over if you pick me?"
    mask                boolean, broadcastable to (..., T_q, T_k); True = may attend (torch SDPA's convention)
    causal              also forbid looking ahead (key j > query i)
    output (..., T_q, d_v), weights (..., T_q, T_k): every row of weights sums to 1.
    """
    check_attention_shapes(q, k, v, mask)
    d_k = q.shape[-1]
    # scores[i, j] = q_i . k_j : how well query i matches key j. math.sqrt (a Python float) keeps float32 float32.
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(d_k)  # (..., T_q, T_k)
    allowed = None if mask is None else np.asarray(mask)
    if causal:
        tri = causal_mask(q.shape[-2], k.shape[-2])
        allowed = tri if allowed is None else (allowed & tri)
    if allowed is not None:
        if not np.broadcast_to(allowed, scores.shape).any(axis=-1).all():
            raise ValueError("attention: the mask leaves some query with no key at all; every row needs one True")
        # A forbidden score becomes -inf, so its weight exp(-inf) = 0: not small, exactly zero.
        scores = np.where(allowed, scores, -np.inf)
    weights = softmax(scores, axis=-1)  # (..., T_q, T_k), rows sum to 1
    return weights @ v, weights         # (..., T_q, d_v): each output is a weighted average of the values


# ================================================================================================================
# Multi-head attention, in NumPy
# ================================================================================================================
def check_heads(d_model, n_heads):
    """Heads split the width evenly: d_model must be a positive multiple of n_heads."""
    if n_heads < 1 or d_model < 1 or d_model % n_heads != 0:
        raise ValueError(f"multi-head attention: d_model ({d_model}) must be a positive multiple of the number of "
                         f"heads ({n_heads}), e.g. --d-model 8 --heads 2")


def init_multi_head(d_model, rng, dtype=np.float64):
    """The four projections of one attention block: W_q, W_k, W_v, W_o (each d_model x d_model) and their biases.

    Multiplying on the right (x @ W) maps a row vector x of width d_model to width d_model. Scale 1/sqrt(d_model)
    keeps outputs about as large as inputs. Biases are random too (not zero) so that the proof in part 5 checks them.
    """
    params = {}
    for name in ("q", "k", "v", "o"):
        params["W_" + name] = (rng.standard_normal((d_model, d_model)) / math.sqrt(d_model)).astype(dtype)
        params["b_" + name] = (0.1 * rng.standard_normal(d_model)).astype(dtype)
    return params


def multi_head_attention(x, params, n_heads, key_padding=None, causal=False):
    """Self-attention with n_heads heads. Returns (output, weights).

    x (B, T, C) with C = d_model; key_padding (B, T) boolean, True = a real token, False = padding nobody may
    look at; output (B, T, C); weights (B, n_heads, T, T). Each head attends in its own C/n_heads-wide subspace,
    so one head can track "who is the subject" while another tracks "which word came just before".
    """
    if x.ndim != 3:
        raise ValueError(f"multi-head attention: expected x of shape (B, T, d_model); got {tuple(x.shape)}")
    batch, t, c = x.shape
    check_heads(c, n_heads)
    if params["W_q"].shape != (c, c):
        raise ValueError(f"multi-head attention: x has d_model {c} but W_q is {params['W_q'].shape}; expected ({c}, {c})")
    head = c // n_heads
    # 1. Project: the same x is read three ways.
    q = x @ params["W_q"] + params["b_q"]  # (B, T, C)
    k = x @ params["W_k"] + params["b_k"]  # (B, T, C)
    v = x @ params["W_v"] + params["b_v"]  # (B, T, C)
    # 2. Split the width into heads: (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs). No numbers change, only the view.
    def split(z):
        return z.reshape(batch, t, n_heads, head).transpose(0, 2, 1, 3)
    mask = None
    if key_padding is not None:
        if np.shape(key_padding) != (batch, t):
            raise ValueError(f"multi-head attention: key_padding must be (B, T) = {(batch, t)}; got {np.shape(key_padding)}")
        mask = np.asarray(key_padding, dtype=bool)[:, None, None, :]  # (B, 1, 1, T): same for every head and query
    # 3. Attend, every head at once (the head axis is just another batch axis).
    out, weights = attention(split(q), split(k), split(v), mask=mask, causal=causal)  # (B, nh, T, hs), (B, nh, T, T)
    # 4. Concatenate the heads back: (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C).
    out = out.transpose(0, 2, 1, 3).reshape(batch, t, c)
    # 5. Output projection: lets the heads' findings mix into one vector per position.
    return out @ params["W_o"] + params["b_o"], weights  # (B, T, C)


def multi_head_param_count(d_model):
    """4 weight matrices (d_model^2 each) + 4 biases (d_model each): the number of heads does not change it."""
    return 4 * d_model * d_model + 4 * d_model


# ================================================================================================================
# Tiled attention with an online softmax (the idea behind FlashAttention), in NumPy
# ================================================================================================================
def tiled_attention(q, k, v, block=BLOCK, causal=False):
    """softmax(q k^T / sqrt(d)) v without ever holding the (T_q, T_k) matrix: only (block, block) tiles.

    q (..., T_q, d), k (..., T_k, d), v (..., T_k, d_v) -> (..., T_q, d_v), equal to attention() up to rounding.

    The trick (Milakov & Gimelshein 2018, "online softmax"; Dao et al. 2022, FlashAttention): walk over the keys
    block by block and keep, for every query row, three running numbers:
        m   = the largest score seen so far            (for the stable exp, as in softmax())
        l   = sum_j exp(s_j - m) over keys seen so far  (the softmax denominator)
        acc = sum_j exp(s_j - m) v_j                    (the numerator, a d_v-vector)
    When a new block raises the maximum from m to m_new, everything accumulated so far was computed with the old
    shift; multiplying by exp(m - m_new) converts it: exp(s - m) * exp(m - m_new) = exp(s - m_new). At the end,
    output = acc / l, which is exactly sum_j softmax(s)_j v_j. Memory: O(T * d) for m, l, acc and the output, plus
    one (block, block) tile, instead of the O(T^2) score matrix. (On a GPU this also saves the slow memory traffic;
    in NumPy we only show the memory side and pay for it in Python loop overhead.)
    """
    check_attention_shapes(q, k, v)
    if block < 1:
        raise ValueError(f"tiled attention: block must be >= 1; got {block}")
    t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    out = np.empty(lead + (t_q, v.shape[-1]), dtype=np.result_type(q, k, v))
    for i0 in range(0, t_q, block):
        i1 = min(i0 + block, t_q)
        q_tile = q[..., i0:i1, :] * scale                     # (..., bq, d)
        m = np.full(lead + (i1 - i0,), -np.inf, dtype=out.dtype)  # (..., bq) running max
        l = np.zeros(lead + (i1 - i0,), dtype=out.dtype)          # (..., bq) running denominator
        acc = np.zeros(lead + (i1 - i0, v.shape[-1]), dtype=out.dtype)  # (..., bq, d_v) running numerator
        for j0 in range(0, t_k, block):
            if causal and j0 > i1 - 1:
                break  # every key in this block and later is in the future of every query in the tile: skip them
            j1 = min(j0 + block, t_k)
            s = q_tile @ np.swapaxes(k[..., j0:j1, :], -1, -2)    # (..., bq, bk) one tile of scores
            if causal and j1 - 1 > i0:  # a tile that crosses the diagonal: mask key j > query i inside it.
                # Built from the tile's own index ranges, (bq, bk), never from a T x T mask. Block 0 always leaves
                # key 0 visible, so after the first tile m is finite and exp(m - m_new) never sees -inf - -inf.
                allowed = np.arange(i0, i1)[:, None] >= np.arange(j0, j1)[None, :]
                s = np.where(allowed, s, -np.inf)
            m_new = np.maximum(m, s.max(axis=-1))                 # (..., bq)
            p = np.exp(s - m_new[..., None])                      # (..., bq, bk) unnormalised weights
            rescale = np.exp(m - m_new)                           # (..., bq) converts old sums to the new shift
            l = l * rescale + p.sum(axis=-1)
            acc = acc * rescale[..., None] + p @ v[..., j0:j1, :]  # (..., bq, d_v)
            m = m_new
        out[..., i0:i1, :] = acc / l[..., None]               # divide once, at the end
    return out


def peak_bytes(fn, *args, **kwargs):
    """Peak memory that NumPy allocates while fn runs, measured by tracemalloc (NumPy reports its buffers to it)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def best_time(fn, repeats=3):
    """Fastest of a few runs, in milliseconds: the minimum is the least disturbed by other programs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


# ================================================================================================================
# Printing helpers
# ================================================================================================================
def print_matrix(title, matrix, row_labels, col_labels, fmt="{:7.2f}"):
    """A labelled table: rows and columns named (by words, dims...) so you can read it like a spreadsheet."""
    width = max(len(fmt.format(0.0)), max(len(str(c)) for c in col_labels) + 1)
    left = max(len(str(r)) for r in row_labels) + 2
    print(f"  {title}")
    print(" " * left + "".join(str(c).rjust(width) for c in col_labels))
    for label, row in zip(row_labels, matrix):
        print(str(label).rjust(left - 1) + " " + "".join(fmt.format(x).rjust(width) for x in row))


SHADES = " .:-=+*#%@"  # light -> dark, for text heatmaps


def print_text_heatmap(title, matrix, row_labels, col_labels):
    """The text fallback for a heatmap: one character per cell, darker = larger weight (0..1)."""
    print(f"  {title}   (shades: ' '=0 ... '@'=1)")
    left = max(len(str(r)) for r in row_labels) + 2
    print(" " * left + " ".join(str(c)[:1] for c in col_labels))
    for label, row in zip(row_labels, matrix):
        cells = [SHADES[min(len(SHADES) - 1, int(round(float(x) * (len(SHADES) - 1))))] for x in row]
        print(str(label).rjust(left - 1) + " " + " ".join(cells))


def get_pyplot():
    """matplotlib.pyplot with the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def save_figure(fig, path):
    """Write the PNG to a temporary name, then rename: an interrupted run never leaves half a picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    print(f"  saved {path}")


def heatmap(ax, matrix, row_labels, col_labels, title):
    """One labelled attention heatmap on a matplotlib axis, with the weights written in the cells if few."""
    ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel("key (looked at)")
    ax.set_ylabel("query (looking)")
    ax.set_title(title, fontsize=10)
    if matrix.size <= 100:
        for (i, j), w in np.ndenumerate(matrix):
            ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=7, color="white" if w < 0.6 else "black")


# ================================================================================================================
# Part 1: attention by hand
# ================================================================================================================
def word_vector(word, dim):
    """A made-up but reproducible embedding: the same word always gets the same vector (seeded by its CRC32).

    Stage 02 learns real embeddings; here any fixed vectors do, because we only follow the arithmetic.
    """
    rng = np.random.default_rng(zlib.crc32(word.encode("utf-8")))
    return np.round(rng.standard_normal(dim), 2)


def part1_by_hand(sentence, seed):
    print("\n" + "=" * 100 + "\nPart 1. Attention by hand: softmax(Q K^T / sqrt(d_k)) V\n" + "=" * 100)
    words = sentence.split()
    dim = BY_HAND_DIM
    x = np.stack([word_vector(w, dim) for w in words])  # (T, d_model): one row per word
    dims = [f"d{i}" for i in range(dim)]
    print(f"Sentence: {sentence!r}: T = {len(words)} tokens, each a {dim}-number vector (d_model = {dim}).")
    print_matrix("X, the embeddings (T, d_model)", x, words, dims)
    # Three learned matrices read the same embedding three ways. Random here; training (stage 04) tunes them.
    rng = np.random.default_rng(seed)
    w_q, w_k, w_v = (np.round(rng.standard_normal((dim, dim)) / math.sqrt(dim), 2) for _ in range(3))
    q, k, v = x @ w_q, x @ w_k, x @ w_v  # (T, d_k) each: Q = X W_q, K = X W_k, V = X W_v
    print("\nQ = X W_q (what each word looks for), K = X W_k (what each word offers), V = X W_v (what it hands over):")
    print_matrix("Q (T, d_k)", q, words, dims)
    print_matrix("K (T, d_k)", k, words, dims)
    print_matrix("V (T, d_v)", v, words, dims)
    scores = q @ k.T  # (T, T): scores[i, j] = q_i . k_j
    print("\nScores = Q K^T: row i = how strongly word i's query matches every word's key.")
    print_matrix("Q K^T (T_q, T_k)", scores, words, words)
    scaled = scores / math.sqrt(dim)
    print(f"\nScaled by 1/sqrt(d_k) = 1/sqrt({dim}) = {1 / math.sqrt(dim):.3f} (part 2 shows why).")
    print_matrix("Q K^T / sqrt(d_k)", scaled, words, words)
    weights = softmax(scaled)
    print("\nSoftmax along each row turns scores into weights: positive, and each row sums to 1.")
    print_matrix("attention weights (rows: who is looking; columns: at whom)", weights, words, words, fmt="{:7.3f}")
    print(f"  row sums: {np.round(weights.sum(axis=1), 12).tolist()}")
    print("  (Untrained, random W_q and W_k give a fairly even spread; training sharpens the rows that matter.)")
    out = weights @ v  # (T, d_v): each row a weighted average of V's rows
    print("\nOutput = weights @ V: each word's new vector is a weighted average of all words' values.")
    print_matrix("output (T, d_v)", out, words, dims)
    # Same words, same rows: attention alone has no idea of order. Stage 04 adds position embeddings for that.
    repeated = sorted({w for w in words if words.count(w) > 1})
    if repeated:
        i, j = [n for n, w in enumerate(words) if w == repeated[0]][:2]
        print(f"\nNote: {repeated[0]!r} at positions {i} and {j} gets identical rows (max diff "
              f"{np.abs(out[i] - out[j]).max():.1e}): attention by itself ignores word order. Stage 04 adds positions.")
    # Same result from the reusable function used everywhere below:
    same = np.abs(attention(q, k, v)[0] - out).max()
    print(f"attention(Q, K, V) from the function gives the same output: max abs diff {same:.1e}")
    return words, weights


# ================================================================================================================
# Part 2: why divide by sqrt(d_k)
# ================================================================================================================
def entropy_bits(weights):
    """H(w) = -sum_j w_j log2 w_j: log2(T) bits for a uniform spread, 0 when one key takes all the weight."""
    return -(weights * np.log2(np.clip(weights, 1e-300, None))).sum(axis=-1)


def scaling_experiment(dims=SCALING_DIMS, n_keys=SCALING_KEYS, trials=SCALING_TRIALS, seed=0):
    """For each d_k: random q, k with unit-variance entries; softmax with and without the 1/sqrt(d_k) scale.

    q . k = sum of d_k products, each with mean 0 and variance 1, so its variance is d_k and its spread sqrt(d_k).
    Unscaled, the scores spread wider and wider as d_k grows, softmax puts almost all weight on the top score and its
    gradient (w_i (1 - w_i)) vanishes: the model stops learning where to look. Dividing by sqrt(d_k) resets the
    spread to about 1 at every width.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for d_k in dims:
        q = rng.standard_normal((trials, 1, d_k))
        k = rng.standard_normal((trials, n_keys, d_k))
        scores = (q @ k.transpose(0, 2, 1))[:, 0]  # (trials, n_keys)
        raw, scaled = softmax(scores), softmax(scores / math.sqrt(d_k))
        rows.append(dict(d_k=d_k, score_std=scores.std(),
                         raw_max=raw.max(-1).mean(), raw_entropy=entropy_bits(raw).mean(),
                         scaled_max=scaled.max(-1).mean(), scaled_entropy=entropy_bits(scaled).mean()))
    return rows


def part2_scaling(seed):
    print("\n" + "=" * 100 + "\nPart 2. Why divide by sqrt(d_k)?\n" + "=" * 100)
    rows = scaling_experiment(seed=seed)
    print(f"{SCALING_KEYS} keys per query, {SCALING_TRIALS} random trials per width, entries ~ N(0, 1). "
          f"Uniform attention: max weight {1 / SCALING_KEYS:.3f}, entropy {math.log2(SCALING_KEYS):.1f} bits.")
    print(f"  {'d_k':>5} {'std(q.k)':>9} | {'unscaled: max w':>15} {'entropy':>8} | {'scaled: max w':>13} {'entropy':>8}")
    for r in rows:
        print(f"  {r['d_k']:>5} {r['score_std']:>9.2f} | {r['raw_max']:>15.3f} {r['raw_entropy']:>8.2f} | "
              f"{r['scaled_max']:>13.3f} {r['scaled_entropy']:>8.2f}")
    print("Reading: the spread of q.k grows like sqrt(d_k). Unscaled, the softmax saturates (max weight -> 1, entropy\n"
          "-> 0 bits: one key takes everything, gradients vanish). Scaled, the weights look the same at every width.")
    return rows


# ================================================================================================================
# Part 3: masks, and a proof of causality
# ================================================================================================================
def part3_masks(seed):
    print("\n" + "=" * 100 + "\nPart 3. Masks: causal (no peeking ahead) and padding (ignore filler)\n" + "=" * 100)
    rng = np.random.default_rng(seed)
    t, d = 6, 4
    print("Causal mask for T = 6 (1 = may look, 0 = forbidden): a language model predicts token t+1 from tokens 0..t,")
    print("so position t must never see t+1.. or training would be cheating.")
    for row in causal_mask(t, t).astype(int):
        print("   ", " ".join(map(str, row)))
    # Proof of causality: change the future, check the past did not move AT ALL (bitwise equal, not just close).
    x = rng.standard_normal((t, d))
    q_w, k_w, v_w = (rng.standard_normal((d, d)) for _ in range(3))
    def outputs(seq, causal):
        return attention(seq @ q_w, seq @ k_w, seq @ v_w, causal=causal)[0]
    cut = 3
    changed = x.copy()
    changed[cut:] = rng.standard_normal((t - cut, d)) * 10  # new, very different "future tokens" at positions 3..5
    before, after = outputs(x, True), outputs(changed, True)
    exact = bool(np.array_equal(before[:cut], after[:cut]))
    print(f"\nProof: replace tokens {cut}..{t - 1} with new random ones and recompute.")
    print(f"  causal:     outputs 0..{cut - 1} bitwise identical: {exact} (max abs diff "
          f"{np.abs(before[:cut] - after[:cut]).max():.1e}); outputs {cut}..{t - 1} changed by up to "
          f"{np.abs(before[cut:] - after[cut:]).max():.2f}")
    leak = np.abs(outputs(x, False)[:cut] - outputs(changed, False)[:cut]).max()
    print(f"  no mask:    outputs 0..{cut - 1} change by up to {leak:.2f}: without the mask the past sees the future")
    print("  Why exactly equal: a masked score is set to -inf, its weight is exp(-inf) = 0.0 exactly, and 0.0 * v\n"
          "  contributes exactly nothing, whatever the future value v is.")
    # Padding: a batch of two sentences of different lengths is padded to the same T; pad keys must get weight 0.
    lengths = np.array([6, 4])
    key_padding = np.arange(t)[None, :] < lengths[:, None]  # (B, T): True = real token
    xb = rng.standard_normal((2, t, d))
    _, w = attention(xb @ q_w, xb @ k_w, xb @ v_w, mask=key_padding[:, None, :], causal=True)
    print(f"\nPadding mask: sentence 2 has {lengths[1]} real tokens + {t - lengths[1]} pads; "
          f"weight given to pad keys: {w[1][:, lengths[1]:].sum():.1f}; rows still sum to 1: "
          f"{bool(np.allclose(w.sum(-1), 1))}")
    print_matrix("sentence 2, causal + padding weights", w[1], [f"q{i}" for i in range(t)],
                 [f"k{j}" if j < lengths[1] else "pad" for j in range(t)], fmt="{:6.2f}")
    return exact, w[1]


# ================================================================================================================
# Part 4: multi-head attention
# ================================================================================================================
def part4_multi_head(words, d_model, n_heads, seed):
    print("\n" + "=" * 100 + f"\nPart 4. Multi-head attention: {n_heads} heads of size {d_model // n_heads}\n" + "=" * 100)
    rng = np.random.default_rng(seed)
    x = np.stack([word_vector(w, d_model) for w in words])[None]  # (1, T, C): a batch of one sentence
    params = init_multi_head(d_model, rng)
    out, weights = multi_head_attention(x, params, n_heads, causal=True)
    print(f"x {x.shape} -> Q, K, V {x.shape} -> split {(1, n_heads, len(words), d_model // n_heads)} -> attend per "
          f"head -> concat {x.shape} -> W_o -> output {out.shape}")
    for h in range(n_heads):
        print_matrix(f"head {h} causal weights", weights[0, h], words, words, fmt="{:6.2f}")
    count = multi_head_param_count(d_model)
    torch_count = sum(p.numel() for p in nn.MultiheadAttention(d_model, n_heads).parameters())
    print(f"Parameters: 4 d_model^2 + 4 d_model = 4*{d_model}^2 + 4*{d_model} = {count} "
          f"(torch.nn.MultiheadAttention({d_model}, {n_heads}) has {torch_count}). More heads = same parameters,\n"
          f"cut into more, narrower subspaces. GPT-2 small: d_model 768, 12 heads -> {multi_head_param_count(768):,} "
          f"per attention block.")
    return weights[0], count == torch_count


# ================================================================================================================
# Part 5: proof against PyTorch
# ================================================================================================================
TOLERANCE = {np.float32: 1e-6, np.float64: 1e-12}  # the figures to reach


def compare_with_sdpa(dtype, seed=0):
    """Our attention vs F.scaled_dot_product_attention on (B, nh, T, hs) inputs: {case: max abs diff}."""
    rng = np.random.default_rng(seed)
    batch, heads, t, hs = 2, 3, 7, 8
    q, k, v = (rng.standard_normal((batch, heads, t, hs)).astype(dtype) for _ in range(3))
    lengths = np.array([7, 4])
    pad = (np.arange(t)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, T) True = real key
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    sdpa = F.scaled_dot_product_attention
    results = {}
    ours = attention(q, k, v)[0]
    results["SDPA, no mask"] = np.abs(ours - sdpa(tq, tk, tv).numpy()).max()
    ours = attention(q, k, v, causal=True)[0]
    results["SDPA, is_causal=True"] = np.abs(ours - sdpa(tq, tk, tv, is_causal=True).numpy()).max()
    ours = attention(q, k, v, mask=pad)[0]
    results["SDPA, padding mask"] = np.abs(ours - sdpa(tq, tk, tv, attn_mask=torch.from_numpy(pad)).numpy()).max()
    # torch refuses attn_mask together with is_causal=True, so combine the two masks by hand for torch.
    both = torch.from_numpy(pad & causal_mask(t, t))
    ours = attention(q, k, v, mask=pad, causal=True)[0]
    results["SDPA, causal + padding"] = np.abs(ours - sdpa(tq, tk, tv, attn_mask=both).numpy()).max()
    return results


def compare_with_torch_mha(dtype, d_model=D_MODEL, n_heads=N_HEADS, seed=0):
    """Our multi_head_attention vs torch.nn.MultiheadAttention with the same weights: outputs and per-head weights."""
    rng = np.random.default_rng(seed)
    batch, t = 2, 6
    x = rng.standard_normal((batch, t, d_model)).astype(dtype)
    params = init_multi_head(d_model, rng, dtype)
    key_padding = np.arange(t)[None, :] < np.array([6, 3])[:, None]  # (B, T) True = real token
    mha = nn.MultiheadAttention(d_model, n_heads, bias=True, batch_first=True)
    mha = mha.to(torch.float64 if dtype == np.float64 else torch.float32).eval()
    with torch.no_grad():
        # torch's Linear computes x W^T + b, we compute x W + b: copy the transposes. in_proj stacks [W_q; W_k; W_v].
        mha.in_proj_weight.copy_(torch.from_numpy(np.concatenate([params[f"W_{n}"].T for n in "qkv"])))
        mha.in_proj_bias.copy_(torch.from_numpy(np.concatenate([params[f"b_{n}"] for n in "qkv"])))
        mha.out_proj.weight.copy_(torch.from_numpy(params["W_o"].T.copy()))
        mha.out_proj.bias.copy_(torch.from_numpy(params["b_o"]))
    tx = torch.from_numpy(x)
    results = {}
    for causal in (False, True):
        ours, our_w = multi_head_attention(x, params, n_heads, key_padding=key_padding, causal=causal)
        # Careful: nn.MultiheadAttention's boolean masks mean the OPPOSITE of SDPA's: True = NOT allowed.
        attn_mask = torch.from_numpy(~causal_mask(t, t)) if causal else None
        with torch.no_grad():
            theirs, their_w = mha(tx, tx, tx, key_padding_mask=torch.from_numpy(~key_padding), attn_mask=attn_mask,
                                  need_weights=True, average_attn_weights=False)
        name = "nn.MultiheadAttention" + (", causal" if causal else "") + " + padding"
        results[name + ": output"] = np.abs(ours - theirs.numpy()).max()
        results[name + ": weights"] = np.abs(our_w - their_w.numpy()).max()
    return results


def part5_proof(d_model, n_heads, seed):
    print("\n" + "=" * 100 + "\nPart 5. Proof: our NumPy attention == PyTorch's\n" + "=" * 100)
    all_ok = True
    print(f"  {'comparison':<58} {'dtype':>8} {'max abs diff':>13} {'limit':>7}  ok")
    for dtype in (np.float32, np.float64):
        results = compare_with_sdpa(dtype, seed)
        results.update(compare_with_torch_mha(dtype, d_model, n_heads, seed))
        for name, diff in results.items():
            ok = bool(diff <= TOLERANCE[dtype])
            all_ok &= ok
            print(f"  {name:<58} {np.dtype(dtype).name:>8} {diff:>13.2e} {TOLERANCE[dtype]:>7.0e}  {'yes' if ok else 'NO'}")
    print("Differences are rounding only (different summation order): ~1e-7 is float32's precision, ~1e-16 float64's.")
    return all_ok


# ================================================================================================================
# Part 6: tiled attention (FlashAttention's idea): equality, memory, time
# ================================================================================================================
def part6_tiled(timing_lengths, block, seed):
    print("\n" + "=" * 100 + f"\nPart 6. Tiled attention with an online softmax (block {block})\n" + "=" * 100)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for t, causal in ((300, False), (300, True), (257, True)):  # lengths that are not multiples of the block, too
        q, k, v = (rng.standard_normal((2, t, 16)) for _ in range(3))
        diff = np.abs(tiled_attention(q, k, v, block=min(block, 64), causal=causal)
                      - attention(q, k, v, causal=causal)[0]).max()
        worst = max(worst, diff)
        print(f"  T={t:<4} causal={str(causal):<5} block={min(block, 64)}: max |tiled - naive| = {diff:.2e} (float64)")
    ok = worst <= 1e-10
    print(f"Tiled equals naive to {worst:.1e} (figure to reach: <= 1e-10): {'yes' if ok else 'NO'}")

    print(f"\nPeak memory NumPy allocates (tracemalloc), float32, head size {TIMING_HEAD_DIM}, causal, inputs excluded:")
    print(f"  {'T':>6} {'naive':>10} {'tiled':>10}   naive holds T x T scores; tiled holds one {block}x{block} tile")
    memory = []
    for t in timing_lengths:
        q, k, v = (rng.standard_normal((t, TIMING_HEAD_DIM)).astype(np.float32) for _ in range(3))
        naive_peak = peak_bytes(attention, q, k, v, causal=True)
        tiled_peak = peak_bytes(tiled_attention, q, k, v, block=block, causal=True)
        memory.append((t, naive_peak, tiled_peak))
        print(f"  {t:>6} {naive_peak / 2**20:>8.2f}MB {tiled_peak / 2**20:>8.2f}MB")
    if len(memory) >= 2:
        (t0, n0, s0), (t1, n1, s1) = memory[0], memory[-1]
        print(f"  T x{t1 / t0:.0f}: naive memory x{n1 / n0:.0f} (~T^2), tiled x{s1 / s0:.1f} (~T: the output itself)")

    print(f"\nTime (ms, best of 3, float32, causal, head size {TIMING_HEAD_DIM}; torch threads "
          f"{torch.get_num_threads()}):")
    print(f"  {'T':>6} {'naive NumPy':>12} {'tiled NumPy':>12} {'torch SDPA':>11}")
    timing = []
    for t in timing_lengths:
        q, k, v = (rng.standard_normal((1, t, TIMING_HEAD_DIM)).astype(np.float32) for _ in range(3))
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        row = (t, best_time(lambda: attention(q, k, v, causal=True)),
               best_time(lambda: tiled_attention(q, k, v, block=block, causal=True)),
               best_time(lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)))
        timing.append(row)
        print(f"  {row[0]:>6} {row[1]:>12.1f} {row[2]:>12.1f} {row[3]:>11.1f}")
    t, naive_ms, tiled_ms, torch_ms = timing[-1]
    print(f"Reading: at T={t} tiled takes {tiled_ms / naive_ms:.2f}x the naive time and torch SDPA {torch_ms / naive_ms:.2f}x."
          f" The tiled loop skips\n"
          "tiles that lie wholly in the future (causal: about half the work) and works on cache-sized pieces, but pays\n"
          "Python overhead per tile; which wins depends on T, the block size and the BLAS threads (on a busy machine\n"
          "multi-threaded BLAS stalls on small tiles: OPENBLAS_NUM_THREADS=1 steadies it). Its guaranteed gain is memory.\n"
          "torch's SDPA is one fused C++ call; on a GPU it dispatches to FlashAttention, this same algorithm in CUDA.")
    return ok, worst, memory, timing


# ================================================================================================================
# Part 7: attention vs an LSTM on a long-range task (torch)
# ================================================================================================================
# The task: a sequence of T random tokens (values 0..15) followed by a "?" token; the answer is the FIRST token.
#     7 3 12 0 5 ... 9 ?   ->  7
# Both models read the sequence and predict from their state at "?". Nothing in between matters, so the answer is
# always T steps back: the distance is the whole point. Chance is 1/16 = 6.25%.
# Fairness: same width (32), about the same number of parameters (9,488 vs 9,520 for T <= 128), the same
# data (same seed), the same optimizer, learning rate, batch and number of steps, trained from scratch at each length.
# The LSTM needs no position table: it reads left to right, so order is built in.
QUERY_TOKEN = VOCAB  # id 16 is the "?"


def first_token_batch(batch, length, generator):
    """tokens (B, T+1): T random values then the query token; answers (B,): the first value of each row."""
    values = torch.randint(0, VOCAB, (batch, length), generator=generator)
    tokens = torch.cat([values, torch.full((batch, 1), QUERY_TOKEN)], dim=1)
    return tokens, values[:, 0]


class TinyAttentionNet(nn.Module):
    """embed + position -> one attention layer in which the last position ("?") asks -> 16-way classifier.

    Positions: attention is blind to order (part 1), so each position p gets its own learned vector added to the
    token's embedding, from a table of max_len rows. (We first tried the original Transformer's fixed sin/cos code:
    there neighbouring positions look alike, and with some seeds the single query got stuck blending positions 0, 1,
    2 at 76-86% accuracy. A learned table gives position 0 a vector of its own, and the query finds it.)
    """

    def __init__(self, max_len, width=WIDTH):
        super().__init__()
        self.embed = nn.Embedding(VOCAB + 1, width)
        self.position = nn.Embedding(max_len, width)
        self.query, self.key, self.value, self.proj = (nn.Linear(width, width) for _ in range(4))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, VOCAB))

    def forward(self, tokens):
        return self.from_embeddings(self.embed(tokens))

    def from_embeddings(self, e):
        """e (B, T, C) -> logits (B, 16), weights (B, T) of the "?" position over all positions."""
        if e.shape[1] > self.position.num_embeddings:
            raise ValueError(f"sequence of {e.shape[1]} tokens but only {self.position.num_embeddings} positions")
        x = e + self.position.weight[: e.shape[1]]      # (B, T, C) token + position
        q = self.query(x[:, -1:])                       # (B, 1, C): only "?" needs to ask
        k, v = self.key(x), self.value(x)               # (B, T, C)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(x.shape[-1]), dim=-1)  # (B, 1, T): the same formula
        h = x[:, -1] + self.proj((weights @ v)[:, 0])   # (B, C) residual: "?" plus what it read
        return self.head(h), weights[:, 0]


class TinyLSTMNet(nn.Module):
    """embed -> LSTM (hidden 32) -> 16-way classifier from the state after reading "?"."""

    def __init__(self, width=WIDTH, forget_bias=None):
        super().__init__()
        self.embed = nn.Embedding(VOCAB + 1, width)
        self.lstm = nn.LSTM(width, width, batch_first=True)
        self.head = nn.Linear(width, VOCAB)
        if forget_bias is not None:  # the gates are stacked [input, forget, cell, output] in torch's bias vectors
            with torch.no_grad():
                for bias in (self.lstm.bias_ih_l0, self.lstm.bias_hh_l0):
                    bias[width:2 * width].fill_(forget_bias / 2)  # the two biases add up to forget_bias

    def forward(self, tokens):
        return self.from_embeddings(self.embed(tokens))

    def from_embeddings(self, e):
        states, _ = self.lstm(e)                 # (B, T, C): the memory is carried step by step, left to right
        return self.head(states[:, -1]), None    # (B, 16)


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def gradient_to_first_token(build, length, seed):
    """|d loss / d embedding of token 0| at initialisation (float64, so tiny values do not round to 0).

    This is the training signal that could teach a model to keep the first token. In an LSTM it must travel back
    through T recurrent steps, each multiplying it by gates < 1; in attention it takes one hop at any T.
    """
    torch.manual_seed(seed)
    model = build().double()  # a fresh, untrained model: the same initial weights as the one about to be trained
    tokens, answers = first_token_batch(256, length, torch.Generator().manual_seed(seed + 1))
    e = model.embed(tokens).detach().requires_grad_(True)  # (B, T+1, C)
    logits, _ = model.from_embeddings(e)
    F.cross_entropy(logits, answers).backward()
    return e.grad[:, 0].norm(dim=-1).mean().item()


def train_and_evaluate(model, length, steps, batch, seed, device):
    """Adam on fresh random batches; then accuracy on EVAL_SEQUENCES new sequences. Returns (accuracy, weight@0, loss)."""
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)  # the same data stream for both models
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(steps):
        tokens, answers = first_token_batch(batch, length, generator)
        logits, _ = model(tokens.to(device))
        loss = F.cross_entropy(logits, answers.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    tokens, answers = first_token_batch(EVAL_SEQUENCES, length, torch.Generator().manual_seed(seed + 12345))
    with torch.no_grad():
        logits, weights = model(tokens.to(device))
    accuracy = (logits.argmax(-1).cpu() == answers).float().mean().item()
    weight_on_first = None if weights is None else weights[:, 0].mean().item()
    return accuracy, weight_on_first, loss.item()


def long_range_experiment(lengths, steps, batch, seed, device, forget_bias=None, log=print):
    """Train both models at each length; return one row (dict) per length."""
    rows, start = [], time.time()
    total_cost = 2 * sum(lengths)  # a rough ETA: a run costs about T (the LSTM walks the sequence step by step)
    done_cost = 0
    for length in lengths:
        row = dict(length=length)
        max_len = max(POSITIONS, max(lengths) + 1)  # grows only for lengths beyond 128
        for name, build in (("attention", lambda: TinyAttentionNet(max_len=max_len)),
                            ("lstm", lambda: TinyLSTMNet(forget_bias=forget_bias))):
            torch.manual_seed(seed)
            model = build()
            row[name + "_params"] = param_count(model)
            row[name + "_grad"] = gradient_to_first_token(build, length, seed)
            t0 = time.time()
            row[name + "_acc"], weight, loss = train_and_evaluate(model, length, steps, batch, seed, device)
            row[name + "_seconds"] = time.time() - t0
            if weight is not None:
                row["attention_weight_on_first"] = weight
                row["attention_model"] = model
            done_cost += length
            elapsed = time.time() - start
            eta = elapsed / done_cost * (total_cost - done_cost)
            log(f"  T={length:<4} {name:<9} {steps} steps: final loss {loss:6.3f}  test accuracy {row[name + '_acc']:6.1%}"
                f"   [{elapsed:5.1f}s elapsed, ETA {eta:4.0f}s]")
        rows.append(row)
    return rows


def part7_long_range(lengths, steps, batch, seed, device, forget_bias):
    print("\n" + "=" * 100 + "\nPart 7. Attention vs LSTM: recall the FIRST token of a sequence of length T\n" + "=" * 100)
    print(f"Task: T random tokens (0..{VOCAB - 1}) then '?'; answer: the first token. Chance {1 / VOCAB:.2%}. "
          f"Budget per model and length: {steps} steps x batch {batch}, Adam lr {LR}; device {device}.")
    rows = long_range_experiment(lengths, steps, batch, seed, device, forget_bias)
    print(f"\nParameters: attention {rows[0]['attention_params']:,}, LSTM {rows[0]['lstm_params']:,}."
          f" Gradient = |d loss / d first token| at initialisation (before any training).")
    print(f"  {'T':>5} {'attention acc':>14} {'LSTM acc':>9} {'chance':>7} | {'attn weight on 1st':>18} | "
          f"{'gradient: attention':>19} {'LSTM':>9}")
    for r in rows:
        print(f"  {r['length']:>5} {r['attention_acc']:>14.1%} {r['lstm_acc']:>9.1%} {1 / VOCAB:>7.1%} | "
              f"{r['attention_weight_on_first']:>18.2f} | {r['attention_grad']:>19.1e} {r['lstm_grad']:>9.1e}")
    # How fast does the LSTM's signal fade per step? Fit log(grad) = a + T log(factor) over the measured lengths.
    if len(rows) >= 2:
        ts = np.array([r["length"] for r in rows], dtype=float)
        factor = math.exp(np.polyfit(ts, np.log([max(r["lstm_grad"], 1e-300) for r in rows]), 1)[0])
        print(f"LSTM gradient shrinks by about x{factor:.2f} per step of distance (fit over T); attention's only ~1/T.")
    explain_long_range(rows)
    return rows


def explain_long_range(rows):
    """Say what THIS run's table shows (computed from the numbers, so it stays true when you change the flags)."""
    good, near_chance = 0.9, 2 / VOCAB
    attention_good = [r["length"] for r in rows if r["attention_acc"] >= good]
    lstm_good = [r["length"] for r in rows if r["lstm_acc"] >= good]
    lstm_lost = [r["length"] for r in rows if r["lstm_acc"] <= near_chance]
    print("What it shows:")
    if len(attention_good) == len(rows):
        print("  - Attention is right at every length: the '?' position puts most of its weight on position 0\n"
              "    (column 'attn weight on 1st') and reads the token there. Answer and evidence are one step apart,\n"
              "    whatever T is.")
    else:
        print(f"  - Attention reached {good:.0%} only at T = {attention_good or 'none'}: this budget is too small for it;"
              " try more --steps.")
    if lstm_lost and lstm_good and max(lstm_good) < min(lstm_lost):
        print(f"  - The LSTM solves T <= {max(lstm_good)} and is at chance from T = {min(lstm_lost)} on. It must carry\n"
              "    the token through T updates of its state. It can (its gated cell was invented for exactly this), but\n"
              "    it has to LEARN to, and the learning signal for that travels back through the same T steps,\n"
              "    shrinking geometrically (gradient column): usable at short T, effectively zero at long T, so the same\n"
              "    budget teaches it the short lengths only. A high initial forget-gate bias (--lstm-forget-bias 2)\n"
              "    slows the decay and moves the cliff out; it does not remove it.")
    elif not lstm_lost and len(lstm_good) == len(rows):
        print("  - The LSTM did NOT fall here: at these lengths and this budget the signal through its forget gates\n"
              "    was still strong enough (gradient column). Longer sequences or fewer --steps show the cliff.")
    elif not lstm_good:
        print("  - The LSTM reached 90% at none of these lengths. The gradient column shows why: the signal that\n"
              "    would teach it to keep the first token shrinks geometrically with distance. Try shorter --lengths.")
    else:
        print("  - The LSTM's accuracy falls as T grows, though not as a clean cliff here. The gradient column shows\n"
              "    why: the signal that would teach it to keep the first token shrinks geometrically with distance.")


# ================================================================================================================
# Part 8: pictures
# ================================================================================================================
def make_pictures(out_dir, words, by_hand_weights, padded_weights, head_weights, scaling_rows, long_rows):
    """PNGs under out_dir when matplotlib is installed; otherwise the text version of each heatmap."""
    print("\n" + "=" * 100 + f"\nPart 8. Pictures -> {out_dir}/\n" + "=" * 100)
    plt = get_pyplot()
    causal_labels = [f"q{i}" for i in range(padded_weights.shape[0])]
    if plt is None:
        print("matplotlib is not installed (pip install matplotlib); text versions instead:")
        print_text_heatmap("part 1 weights", by_hand_weights, words, words)
        print_text_heatmap("part 3 causal + padding weights", padded_weights, causal_labels, causal_labels)
        for h, w in enumerate(head_weights):
            print_text_heatmap(f"part 4 head {h}", w, words, words)
        if long_rows:
            print("  long-range accuracy (a = attention, L = LSTM), one row per length:")
            for r in long_rows:
                print(f"  T={r['length']:<4} a |{'#' * round(40 * r['attention_acc']):<40}|\n"
                      f"         L |{'#' * round(40 * r['lstm_acc']):<40}|")
        return []
    saved = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    heatmap(axes[0], by_hand_weights, words, words, "Part 1: softmax(QK^T/sqrt(d_k)), no mask")
    pad_labels = [f"k{j}" if padded_weights[:, j].any() else "pad" for j in range(padded_weights.shape[1])]
    heatmap(axes[1], padded_weights, causal_labels, pad_labels, "Part 3: causal + padding mask")
    save_figure(fig, out_dir / "attention_weights.png")
    saved.append(out_dir / "attention_weights.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(head_weights), figsize=(5 * len(head_weights), 4.5), squeeze=False)
    for h, w in enumerate(head_weights):
        heatmap(axes[0, h], w, words, words, f"Part 4: head {h} (causal)")
    save_figure(fig, out_dir / "multi_head.png")
    saved.append(out_dir / "multi_head.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    d = [r["d_k"] for r in scaling_rows]
    axes[0].semilogx(d, [r["raw_max"] for r in scaling_rows], "o-", label="unscaled  QK^T")
    axes[0].semilogx(d, [r["scaled_max"] for r in scaling_rows], "s-", label="scaled  QK^T/sqrt(d_k)")
    axes[0].set(xlabel="d_k", ylabel="mean largest weight", title="Part 2: the softmax saturates without scaling")
    axes[1].semilogx(d, [r["raw_entropy"] for r in scaling_rows], "o-", label="unscaled")
    axes[1].semilogx(d, [r["scaled_entropy"] for r in scaling_rows], "s-", label="scaled")
    axes[1].set(xlabel="d_k", ylabel="entropy of the weights (bits)", title=f"{SCALING_KEYS} keys: uniform = "
                f"{math.log2(SCALING_KEYS):.0f} bits")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    save_figure(fig, out_dir / "scaling.png")
    saved.append(out_dir / "scaling.png")
    plt.close(fig)

    if long_rows:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        ts = [r["length"] for r in long_rows]
        axes[0].semilogx(ts, [100 * r["attention_acc"] for r in long_rows], "o-", base=2, label="attention")
        axes[0].semilogx(ts, [100 * r["lstm_acc"] for r in long_rows], "s-", base=2, label="LSTM")
        axes[0].axhline(100 / VOCAB, color="gray", ls="--", label="chance")
        axes[0].set(xlabel="sequence length T", ylabel="test accuracy (%)", ylim=(0, 105),
                    title="Part 7: recall the first token (same budget)")
        axes[1].plot(ts, [r["attention_grad"] for r in long_rows], "o-", label="attention")
        axes[1].plot(ts, [r["lstm_grad"] for r in long_rows], "s-", label="LSTM")
        axes[1].set_xscale("log", base=2)
        axes[1].set_yscale("log")
        axes[1].set(xlabel="sequence length T", ylabel="|d loss / d first token| at init",
                    title="why: the learning signal over distance T")
        for ax in axes[:2]:
            ax.legend()
            ax.grid(alpha=0.3)
        # What the trained attention model looks at, for one test sequence of the longest length.
        model, length = long_rows[-1]["attention_model"], long_rows[-1]["length"]
        tokens, _ = first_token_batch(1, length, torch.Generator().manual_seed(7))
        with torch.no_grad():
            _, w = model.cpu()(tokens)
        axes[2].bar(range(length + 1), w[0].numpy())
        axes[2].set(xlabel="position looked at", ylabel="attention weight of '?'",
                    title=f"trained attention model, T={length}: it looks at position 0")
        save_figure(fig, out_dir / "long_range.png")
        saved.append(out_dir / "long_range.png")
        plt.close(fig)
    return saved


# ================================================================================================================
# Command line
# ================================================================================================================
def parse_int_list(text, flag):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{flag} expects comma-separated integers like 8,16,32; got {text!r}")
    if not values:
        fail(f"{flag} is empty; give comma-separated integers like 8,16,32")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Attention step by step, proven against PyTorch.")
    parser.add_argument("--sentence", default=SENTENCE, help="part 1-4: the words to attend over")
    parser.add_argument("--d-model", type=int, default=D_MODEL, help="part 4-5: width of the multi-head demo")
    parser.add_argument("--heads", type=int, default=N_HEADS, help="part 4-5: number of heads (must divide --d-model)")
    parser.add_argument("--timing-lengths", default=",".join(map(str, TIMING_LENGTHS)), help="part 6: T values")
    parser.add_argument("--block", type=int, default=BLOCK, help="part 6: tile size of the tiled attention")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="part 7: T values (comma list)")
    parser.add_argument("--steps", type=int, default=STEPS, help="part 7: training steps per model and length")
    parser.add_argument("--batch", type=int, default=BATCH, help="part 7: sequences per training step")
    parser.add_argument("--lstm-forget-bias", type=float, default=None,
                        help="part 7: initial forget-gate bias of the LSTM (default: torch's random init)")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads (parts 5-7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT_DIR), help="folder for the PNGs")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    args, unknown = parser.parse_known_args(argv)  # tolerate notebook kernels' extra arguments (-f kernel.json)
    if unknown and not all(u.startswith("-f") or u.endswith(".json") for u in unknown):
        fail(f"unknown argument(s) {' '.join(unknown)}; see --help")
    # Validate right away: one clear line per problem, exit code 2.
    if len(args.sentence.split()) < 2:
        fail(f"--sentence needs at least 2 words to attend between; got {args.sentence!r}")
    try:
        check_heads(args.d_model, args.heads)
    except ValueError as err:
        fail(str(err))
    args.timing_lengths = parse_int_list(args.timing_lengths, "--timing-lengths")
    args.lengths = parse_int_list(args.lengths, "--lengths")
    if min(args.timing_lengths) < 1 or min(args.lengths) < 1:
        fail("sequence lengths must be >= 1")
    if max(args.lengths) > 4096:
        fail(f"--lengths up to 4096 please (the LSTM is slow on long sequences); got {max(args.lengths)}")
    for flag, value in (("--block", args.block), ("--steps", args.steps), ("--batch", args.batch),
                        ("--threads", args.threads)):
        if value < 1:
            fail(f"{flag} must be >= 1; got {value}")
    return args


def pick_device():
    """cuda > mps > cpu. Part 7 trains on it; parts 1-6 are NumPy or CPU comparisons by design."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    np.set_printoptions(suppress=True)
    torch.manual_seed(args.seed)
    # One torch thread by default: our tensors are tiny, so extra threads mostly add start-up cost, and on a busy
    # machine (CI, shared cores) they wait for each other; --threads 4 on a quiet laptop speeds up the timing table.
    torch.set_num_threads(args.threads)
    words, by_hand_weights = part1_by_hand(args.sentence, args.seed)
    scaling_rows = part2_scaling(args.seed)
    causal_exact, padded_weights = part3_masks(args.seed)
    head_weights, count_ok = part4_multi_head(words, args.d_model, args.heads, args.seed)
    torch_ok = part5_proof(args.d_model, args.heads, args.seed)
    tiled_ok, tiled_diff, _, _ = part6_tiled(args.timing_lengths, args.block, args.seed)
    device = pick_device()
    long_rows = part7_long_range(args.lengths, args.steps, args.batch, args.seed, device, args.lstm_forget_bias)
    if not args.no_plots:
        make_pictures(Path(args.out), words, by_hand_weights, padded_weights, head_weights, scaling_rows, long_rows)

    beats_chance = all(r["attention_acc"] > 2 / VOCAB for r in long_rows)
    checks = [("causal outputs unchanged by future tokens (bitwise)", causal_exact),
              ("parameter count == torch.nn.MultiheadAttention's", count_ok),
              ("attention == torch SDPA / nn.MultiheadAttention (1e-6 f32, 1e-12 f64)", torch_ok),
              (f"tiled online-softmax == naive (max diff {tiled_diff:.1e} <= 1e-10)", tiled_ok),
              ("attention model beats chance at every length", beats_chance)]
    print("\n" + "=" * 100 + "\nSummary\n" + "=" * 100)
    for name, ok in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    print(f"Done in {time.time() - start:.1f}s.")
    if not all(ok for _, ok in checks):
        fail("some checks failed (see [FAILED] above)", code=1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        fail("interrupted", code=130)
