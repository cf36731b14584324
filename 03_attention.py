"""03_attention.py: attention, Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, step by step in NumPy.

You learn: queries, keys and values by hand on a short sentence (part 1); why the scores are divided by sqrt(d_k)
(2); causal and padding masks, with a proof that the future cannot leak (3); multi-head attention (4); that all of
it equals F.scaled_dot_product_attention and nn.MultiheadAttention (5); the tiled "online softmax" behind
FlashAttention (6); and why attention recalls a token far back where an LSTM cannot (7). Pictures: part 8.

Run it:
    python 03_attention.py                                           # everything, on CPU; PNGs in out/03_attention/
    python 03_attention.py --sentence "my dog chased the red ball"   # parts 1 and 4 on your own words
    python 03_attention.py --steps 100 --lengths 8,16 --no-plots     # a quick run
Beyond the lesson: python companions/03_bench.py times and measures naive vs tiled vs torch SDPA over lengths T.
"""
import argparse
import math
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Config: every flag's default (python 03_attention.py --help lists the flags; names match).
SENTENCE = "the cat sat on the mat"   # --sentence: parts 1 and 4; short, so the weight table fits on a screen
D_MODEL = 8                           # --d-model: width of the multi-head demo (parts 4 and 5)
HEADS = 2                             # --heads: number of heads; must divide D_MODEL
BLOCK = 64                            # --block: tile size of the tiled attention (part 6)
LENGTHS = (4, 8, 16, 32, 64, 128)     # --lengths: sequence lengths of the long-range experiment (part 7)
STEPS = 500                           # --steps: training steps per model and length, the same for both models
BATCH = 64                            # --batch: sequences per training step (part 7)
THREADS = 1                           # --threads: torch CPU threads; tiny tensors gain nothing from more
SEED = 0                              # --seed
OUT = Path("out") / "03_attention"    # --out: folder for the pictures, relative to where you run the script


# ---- The core: softmax and scaled dot-product attention, in NumPy ------------------------------------------------
def softmax(scores, axis=-1):
    """softmax(x)_i = exp(x_i) / sum_j exp(x_j), computed stably.

    exp(1000) overflows, so subtract the row maximum first: softmax(x) = softmax(x - c) for any constant c, because
    exp(x_i - c) / sum_j exp(x_j - c) = exp(-c) exp(x_i) / (exp(-c) sum_j exp(x_j)). After the shift the largest
    exponent is exp(0) = 1, so nothing overflows. Masked entries are -inf and become exp(-inf) = 0 exactly."""
    exps = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return exps / exps.sum(axis=axis, keepdims=True)


def attention(q, k, v, mask=None, causal=False):
    """Scaled dot-product attention: softmax(q k^T / sqrt(d_k)) v. Returns (output, weights).

    q (..., T_q, d_k)   one query per position: "what am I looking for?"
    k (..., T_k, d_k)   one key per position:   "what do I contain?"
    v (..., T_k, d_v)   one value per position: "what do I hand over if you pick me?"
    mask                boolean, broadcastable to (..., T_q, T_k); True = may attend (torch SDPA's convention)
    causal              also forbid looking ahead (key j > query i)
    output (..., T_q, d_v), weights (..., T_q, T_k): every row of weights sums to 1."""
    check_attention_shapes(q, k, v, mask)
    # scores[i, j] = q_i . k_j: large when query i and key j point the same way. Divided by sqrt(d_k) (part 2).
    # math.sqrt returns a Python float, which NumPy treats as "weak": float32 inputs stay float32.
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    allowed = None if mask is None else np.asarray(mask)
    if causal:
        tri = causal_mask(q.shape[-2], k.shape[-2])
        allowed = tri if allowed is None else (allowed & tri)
    if allowed is not None:
        # A row with no allowed key would be softmax of all -inf = 0/0 = NaN: refuse it with a clear message.
        if not np.broadcast_to(allowed, scores.shape).any(axis=-1).all():
            raise ValueError("attention: the mask leaves some query with no key at all; every row needs one True")
        scores = np.where(allowed, scores, -np.inf)  # forbidden -> -inf -> weight exp(-inf) = 0, exactly
    weights = softmax(scores, axis=-1)  # (..., T_q, T_k), rows sum to 1
    return weights @ v, weights         # (..., T_q, d_v): each output is a weighted average of the values


def causal_mask(t_q, t_k):
    """(T_q, T_k) boolean, True where query i may look at key j, i.e. j <= i (lower triangle incl. the diagonal).
    Aligned top-left like torch's is_causal=True: query 0 sees key 0 only, query 1 sees keys 0-1, and so on."""
    return np.tril(np.ones((t_q, t_k), dtype=bool))


def check_attention_shapes(q, k, v, mask=None):
    """A ValueError naming the expected shapes when q, k, v (and mask) do not fit together: clearer than NumPy's
    "matmul: mismatch in its core dimension", which says nothing about queries and keys."""
    problem = None
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        problem = "q, k and v need at least 2 dims (time, features)"
    elif q.shape[-1] != k.shape[-1]:
        problem = "q and k must have the same feature size d_k (they are dotted together)"
    elif k.shape[-2] != v.shape[-2]:
        problem = "k and v must have the same length T_k (one value per key)"
    else:
        try:  # leading (batch, head) dims must broadcast, as in NumPy's matmul; so must the mask
            lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
            np.broadcast_shapes(np.shape(True if mask is None else mask), lead + (q.shape[-2], k.shape[-2]))
        except ValueError:
            problem = "leading (batch/head) dims or the mask do not broadcast"
    if problem is None and mask is not None and np.asarray(mask).dtype != bool:
        problem = f"mask must be boolean (True = may attend), not {np.asarray(mask).dtype}"
    if problem:
        got = f"got q {q.shape}, k {k.shape}, v {v.shape}" + ("" if mask is None else f", mask {np.shape(mask)}")
        raise ValueError(f"attention: {problem}; expected q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v), "
                         f"mask broadcastable to (..., T_q, T_k); {got}")


# ---- Multi-head attention, in NumPy ------------------------------------------------------------------------------
def init_multi_head(d_model, rng, dtype=np.float64):
    """The four projections of one attention block: W_q, W_k, W_v, W_o (each d_model x d_model) and their biases.

    We multiply on the right (x @ W) so a row vector x of width d_model stays a row. The 1/sqrt(d_model) scale keeps
    outputs about as large as inputs. Biases are random (not zero) so that the proof in part 5 checks them too."""
    params = {}
    for name in "qkvo":
        params["W_" + name] = (rng.standard_normal((d_model, d_model)) / math.sqrt(d_model)).astype(dtype)
        params["b_" + name] = (0.1 * rng.standard_normal(d_model)).astype(dtype)
    return params


def multi_head_attention(x, params, n_heads, key_padding=None, causal=False):
    """Self-attention with n_heads heads. Returns (output, weights).

    x (B, T, C) with C = d_model; key_padding (B, T) boolean, True = a real token, False = padding nobody may
    look at; output (B, T, C); weights (B, n_heads, T, T).
    Why heads: one softmax gives each query ONE weighted average. With h heads, each in its own C/h-wide subspace,
    a position can gather h different things at once ("who is the subject", "what came just before", ...), for
    the same number of parameters as one full-width head."""
    if x.ndim != 3 or params["W_q"].shape != (x.shape[-1], x.shape[-1]):
        raise ValueError(f"multi-head attention: expected x of shape (B, T, d_model) and W_q (d_model, d_model); "
                         f"got x {x.shape}, W_q {params['W_q'].shape}")
    batch, t, c = x.shape
    if n_heads < 1 or c % n_heads:  # heads split the width evenly
        raise ValueError(f"multi-head attention: d_model ({c}) must be a positive multiple of the number of heads "
                         f"({n_heads}), e.g. --d-model 8 --heads 2")
    # 1. Project: the same x is read three ways (one matmul each for all heads together).
    q, k, v = (x @ params["W_" + n] + params["b_" + n] for n in "qkv")  # (B, T, C) each
    # 2. Split the width into heads: (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs). No number changes, only the view:
    #    columns 0..hs-1 belong to head 0, the next hs to head 1, and so on.
    def split(z):
        return z.reshape(batch, t, n_heads, c // n_heads).transpose(0, 2, 1, 3)
    mask = None
    if key_padding is not None:
        if np.shape(key_padding) != (batch, t):
            raise ValueError(f"multi-head attention: key_padding must be (B, T) = {(batch, t)}; "
                             f"got {np.shape(key_padding)}")
        mask = np.asarray(key_padding, dtype=bool)[:, None, None, :]  # (B, 1, 1, T): same for every head and query
    # 3. Attend, all heads at once: the head axis is just one more batch axis for attention().
    out, weights = attention(split(q), split(k), split(v), mask=mask, causal=causal)  # (B, nh, T, hs), (B, nh, T, T)
    # 4. Concatenate the heads: (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C), the exact inverse of split().
    out = out.transpose(0, 2, 1, 3).reshape(batch, t, c)
    # 5. Output projection: the heads' findings sit in separate columns; W_o mixes them into one vector.
    return out @ params["W_o"] + params["b_o"], weights  # (B, T, C)


def multi_head_param_count(d_model):
    """4 weight matrices (d_model^2 each) + 4 biases (d_model each); the number of heads does not change it."""
    return 4 * d_model * d_model + 4 * d_model


# ---- Tiled attention with an online softmax (the idea behind FlashAttention), in NumPy ---------------------------
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
    one (block, block) tile, instead of the O(T^2) score matrix. (On a GPU the bigger win is speed: the tiles stay
    in fast on-chip memory instead of a T x T matrix going to and from slow GPU memory.)"""
    check_attention_shapes(q, k, v)
    if block < 1:
        raise ValueError(f"tiled attention: block must be >= 1; got {block}")
    t_q, t_k = q.shape[-2], k.shape[-2]
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])  # batch/head dims
    out = np.empty(lead + (t_q, v.shape[-1]), dtype=np.result_type(q, k, v))
    for i0 in range(0, t_q, block):                           # one tile of queries at a time
        i1 = min(i0 + block, t_q)
        q_tile = q[..., i0:i1, :] / math.sqrt(q.shape[-1])    # (..., bq, d)
        m = np.full(lead + (i1 - i0,), -np.inf, dtype=out.dtype)        # (..., bq)      running max
        l = np.zeros(lead + (i1 - i0,), dtype=out.dtype)                # (..., bq)      running denominator
        acc = np.zeros(lead + (i1 - i0, v.shape[-1]), dtype=out.dtype)  # (..., bq, d_v) running numerator
        for j0 in range(0, t_k, block):                       # stream the keys past it
            if causal and j0 > i1 - 1:
                break  # this key block (and every later one) is in the future of every query in the tile: skip
            j1 = min(j0 + block, t_k)
            s = q_tile @ np.swapaxes(k[..., j0:j1, :], -1, -2)  # (..., bq, bk) one tile of scores
            if causal and j1 - 1 > i0:
                # The tile crosses the diagonal: mask key j > query i, built from the tile's own index ranges
                # (bq x bk, never T x T). Key block 0 is visible to every query, so after it m is finite and
                # exp(m - m_new) never meets -inf - (-inf) = NaN.
                s = np.where(np.arange(i0, i1)[:, None] >= np.arange(j0, j1)[None, :], s, -np.inf)
            m_new = np.maximum(m, s.max(axis=-1))              # (..., bq)
            p = np.exp(s - m_new[..., None])                   # (..., bq, bk) weights, not yet normalised
            rescale = np.exp(m - m_new)                        # (..., bq) moves old sums to the new shift
            l = l * rescale + p.sum(axis=-1)
            acc = acc * rescale[..., None] + p @ v[..., j0:j1, :]  # (..., bq, d_v)
            m = m_new
        out[..., i0:i1, :] = acc / l[..., None]              # normalise once, at the end
    return out


# ---- Part 1: attention by hand -----------------------------------------------------------------------------------
def banner(title):
    print("\n" + "=" * 100 + f"\n{title}\n" + "=" * 100)


def print_matrix(title, matrix, row_labels, col_labels, fmt="{:7.2f}"):
    """A labelled table: rows and columns named (by words, dims...) so you can read it like a spreadsheet."""
    width = max(len(fmt.format(0.0)), max(len(str(c)) for c in col_labels) + 1)
    left = max(len(str(r)) for r in row_labels) + 1
    print(f"  {title}\n" + " " * (left + 1) + "".join(str(c).rjust(width) for c in col_labels))
    for label, row in zip(row_labels, matrix):
        print(str(label).rjust(left) + " " + "".join(fmt.format(x).rjust(width) for x in row))


BY_HAND_DIM = 4  # d_model = d_k = d_v = 4, so you can read (and redo) every number


def word_vector(word, dim):
    """A made-up but reproducible embedding, seeded by the word's CRC32: stage 02 learns real ones; here any fixed
    vectors do, because we only follow the arithmetic. Rounded so the printed tables show the numbers used."""
    return np.round(np.random.default_rng(zlib.crc32(word.encode("utf-8"))).standard_normal(dim), 2)


def part1_by_hand(sentence, seed):
    banner("Part 1. Attention by hand: softmax(Q K^T / sqrt(d_k)) V")
    words, dim = sentence.split(), BY_HAND_DIM
    dims = [f"d{i}" for i in range(dim)]
    x = np.stack([word_vector(w, dim) for w in words])  # (T, d_model): one row per word
    print_matrix(f"X, the embeddings of {sentence!r} (T = {len(words)}, d_model = {dim})", x, words, dims)
    # Three matrices read the same embedding three ways. Random here; training (stage 04) is what tunes them so
    # that, say, a verb's query matches its subject's key.
    rng = np.random.default_rng(seed)
    w_q, w_k, w_v = (np.round(rng.standard_normal((dim, dim)) / math.sqrt(dim), 2) for _ in range(3))
    q, k, v = x @ w_q, x @ w_k, x @ w_v  # (T, d_k) each
    print("\nQ = X W_q (what each word looks for), K = X W_k (what each word offers), V = X W_v (what it hands over):")
    for name, m in (("Q (T, d_k)", q), ("K (T, d_k)", k), ("V (T, d_v)", v)):
        print_matrix(name, m, words, dims)
    # Every query against every key: one matrix product gives all T x T dot products at once.
    scores = q @ k.T  # (T_q, T_k)
    print_matrix("\nScores = Q K^T (T_q, T_k): row i = how well word i's query matches each key", scores, words, words)
    scaled = scores / math.sqrt(dim)
    print_matrix(f"\nQ K^T / sqrt(d_k): scaled by 1/sqrt({dim}) = {1 / math.sqrt(dim):.3f} (part 2 shows why)",
                 scaled, words, words)
    # Softmax per row: exp makes every score positive, dividing by the row sum makes the row a distribution.
    weights = softmax(scaled)
    print_matrix("\nSoftmax of each row = attention weights (rows: who is looking; columns: at whom)",
                 weights, words, words, fmt="{:7.3f}")
    print(f"  row sums: {np.round(weights.sum(axis=1), 12).tolist()}  (untrained weights spread evenly; training"
          " sharpens them)")
    # Output row i = sum_j weights[i, j] * V[j]: a blend of the values, mostly of the words i attends to.
    out = weights @ v  # (T, d_v)
    print_matrix("\nOutput = weights @ V: each word's new vector is a weighted average of the values", out, words, dims)
    # Identical words get identical rows: nothing above depends on WHERE a word is. Attention is blind to order
    # until positions are added to the embeddings (part 7's model and stage 04 do that).
    repeated = [w for w in dict.fromkeys(words) if words.count(w) > 1]
    if repeated:
        i, j = [n for n, w in enumerate(words) if w == repeated[0]][:2]
        print(f"Note: {repeated[0]!r} at positions {i} and {j} gets identical outputs (max diff "
              f"{np.abs(out[i] - out[j]).max():.1e}): attention alone ignores word order; positions fix that.")
    print(f"attention(Q, K, V), the function used from here on, gives the same output: max abs diff "
          f"{np.abs(attention(q, k, v)[0] - out).max():.1e}")
    return words, weights


# ---- Part 2: why divide by sqrt(d_k) -----------------------------------------------------------------------------
SCALING_DIMS = (2, 8, 32, 128, 512, 2048)  # the widths d_k we try
SCALING_KEYS, SCALING_TRIALS = 16, 400     # keys per query, random trials per width


def scaling_experiment(dims=SCALING_DIMS, n_keys=SCALING_KEYS, trials=SCALING_TRIALS, seed=0):
    """For each d_k: random q, k with unit-variance entries; softmax with and without the 1/sqrt(d_k) scale.

    q . k is a sum of d_k products, each with mean 0 and variance 1, so its variance is d_k: its typical size
    grows like sqrt(d_k). Unscaled, wide models get huge score gaps, softmax puts nearly all weight on the top
    score, and its gradient (dw_i/ds_i = w_i (1 - w_i)) goes to 0: the model stops learning where to look.
    Dividing by sqrt(d_k) brings the spread back to about 1 at every width."""
    rng = np.random.default_rng(seed)
    rows = []
    for d_k in dims:
        q = rng.standard_normal((trials, 1, d_k))
        k = rng.standard_normal((trials, n_keys, d_k))
        scores = (q @ k.transpose(0, 2, 1))[:, 0]  # (trials, n_keys)
        raw, scaled = softmax(scores), softmax(scores / math.sqrt(d_k))
        # entropy H(w) = -sum_j w_j log2 w_j: log2(n_keys) bits for an even spread, 0 when one key takes it all
        raw_bits, scaled_bits = (-(w * np.log2(np.clip(w, 1e-300, None))).sum(-1).mean() for w in (raw, scaled))
        rows.append(dict(d_k=d_k, score_std=scores.std(), raw_max=raw.max(-1).mean(), raw_entropy=raw_bits,
                         scaled_max=scaled.max(-1).mean(), scaled_entropy=scaled_bits))
    return rows


def part2_scaling(seed):
    banner("Part 2. Why divide by sqrt(d_k)?")
    rows = scaling_experiment(seed=seed)
    print(f"{SCALING_KEYS} keys per query, {SCALING_TRIALS} random trials per width, entries ~ N(0, 1). "
          f"An even spread: max weight {1 / SCALING_KEYS:.3f}, entropy {math.log2(SCALING_KEYS):.1f} bits.")
    print(f"  {'d_k':>5} {'std(q.k)':>9} | {'unscaled: max w':>15} {'entropy':>8} | {'scaled: max w':>13} entropy")
    for r in rows:
        print(f"  {r['d_k']:>5} {r['score_std']:>9.2f} | {r['raw_max']:>15.3f} {r['raw_entropy']:>8.2f} | "
              f"{r['scaled_max']:>13.3f} {r['scaled_entropy']:>8.2f}")
    print("Unscaled, the softmax saturates as d_k grows (max weight -> 1, entropy -> 0 bits); scaled, it does not.")
    return rows


# ---- Part 3: masks, and a proof of causality ---------------------------------------------------------------------
def part3_masks(seed):
    banner("Part 3. Masks: causal (no peeking ahead) and padding (ignore filler)")
    rng = np.random.default_rng(seed)
    t, d, cut = 6, 4, 3  # 6 tokens of width 4; tokens cut.. are "the future" in the proof below
    # A language model learns to predict token t+1 from tokens 0..t. If position t could see t+1, training would
    # just copy the answer and the model would learn nothing usable for generation, where the future is unknown.
    print(f"Causal mask for T = {t} (1 = may look, 0 = forbidden): position t sees tokens 0..t only.")
    print("\n".join("    " + " ".join(map(str, row)) for row in causal_mask(t, t).astype(int)))
    x = rng.standard_normal((t, d))                                   # (T, d) one sequence
    w_q, w_k, w_v = (rng.standard_normal((d, d)) for _ in range(3))  # (d, d) each

    def outputs(seq, causal):  # (T, d) -> (T, d): self-attention of one sequence
        return attention(seq @ w_q, seq @ w_k, seq @ w_v, causal=causal)[0]

    # Proof of causality: change the future, check the past did not move AT ALL (bitwise, not "close").
    # Why it is exact: a masked score is replaced by -inf, exp(-inf) is exactly 0.0, and 0.0 * v adds exactly
    # nothing to a sum, whatever the future value v is. No rounding is involved.
    changed = x.copy()
    changed[cut:] = 10 * rng.standard_normal((t - cut, d))  # very different "future tokens"
    before, after = outputs(x, True), outputs(changed, True)
    exact = bool(np.array_equal(before[:cut], after[:cut]))  # equal bit for bit, not just close
    leak = np.abs(outputs(x, False)[:cut] - outputs(changed, False)[:cut]).max()
    print(f"\nProof: replace tokens {cut}..{t - 1} with new random ones and recompute.\n"
          f"  causal:  outputs 0..{cut - 1} bitwise identical: {exact} (max abs diff "
          f"{np.abs(before[:cut] - after[:cut]).max():.1e}); outputs {cut}..{t - 1} moved by up to "
          f"{np.abs(before[cut:] - after[cut:]).max():.2f}\n"
          f"  no mask: outputs 0..{cut - 1} move by up to {leak:.2f}: without the mask the past sees the future")
    # Padding: sentences of different lengths are padded to one T so they fit in one array (one batch); the pad
    # positions are filler and must receive no attention, or the filler would leak into real tokens' outputs.
    lengths = np.array([6, 4])  # real tokens per sentence: sentence 2 ends in 2 pads
    key_padding = np.arange(t)[None, :] < lengths[:, None]  # (B, T): True = real token
    xb = rng.standard_normal((2, t, d))  # (B, T, d)
    _, w = attention(xb @ w_q, xb @ w_k, xb @ w_v, mask=key_padding[:, None, :], causal=True)  # (B, T, T)
    print(f"\nPadding: sentence 2 has {lengths[1]} real tokens + {t - lengths[1]} pads; weight on pad keys: "
          f"{w[1][:, lengths[1]:].sum():.1f}; rows still sum to 1: {bool(np.allclose(w.sum(-1), 1))}")
    print_matrix("sentence 2, causal + padding weights", w[1], [f"q{i}" for i in range(t)],
                 [f"k{j}" if j < lengths[1] else "pad" for j in range(t)], fmt="{:6.2f}")
    return exact, w[1]


# ---- Part 4: multi-head attention --------------------------------------------------------------------------------
def part4_multi_head(words, d_model, n_heads, seed):
    banner(f"Part 4. Multi-head attention: {n_heads} heads of size {d_model // n_heads}")
    x = np.stack([word_vector(w, d_model) for w in words])[None]  # (1, T, C): a batch of one sentence
    out, weights = multi_head_attention(x, init_multi_head(d_model, np.random.default_rng(seed)), n_heads, causal=True)
    print(f"x {x.shape} -> Q, K, V {x.shape} -> split {(1, n_heads, len(words), d_model // n_heads)} -> attend "
          f"per head -> concat {x.shape} -> W_o -> output {out.shape}")
    for h in range(n_heads):  # same words, different subspaces: each head looks at the sentence differently
        print_matrix(f"head {h} causal weights", weights[0, h], words, words, fmt="{:6.2f}")
    count = multi_head_param_count(d_model)
    torch_count = sum(p.numel() for p in nn.MultiheadAttention(d_model, n_heads).parameters())
    print(f"Parameters: 4 d_model^2 + 4 d_model = 4*{d_model}^2 + 4*{d_model} = {count} "
          f"(torch.nn.MultiheadAttention({d_model}, {n_heads}): {torch_count}). More heads = the same parameters,\n"
          f"cut into narrower subspaces. GPT-2 small (d_model 768, 12 heads): {multi_head_param_count(768):,}/block.")
    return weights[0], count == torch_count


# ---- Part 5: proof against PyTorch -------------------------------------------------------------------------------
TOLERANCE = {np.float32: 1e-6, np.float64: 1e-12}  # the figures to reach: rounding noise, nothing more


def compare_with_sdpa(dtype, seed=0):
    """Our attention vs F.scaled_dot_product_attention on (B, nh, T, hs) inputs: {case: max abs diff}.

    SDPA is what real models call (nn.MultiheadAttention and Hugging Face models use it, and on a GPU it picks a
    FlashAttention kernel). If ours matches it to rounding, everything this script explains is what they compute."""
    rng = np.random.default_rng(seed)
    t = 7
    q, k, v = (rng.standard_normal((2, 3, t, 8)).astype(dtype) for _ in range(3))  # (B, nh, T, hs)
    pad = (np.arange(t)[None, :] < np.array([7, 4])[:, None])[:, None, None, :]  # (B, 1, 1, T): 2nd has 3 pads
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))  # the same numbers, shared memory, as torch tensors
    # torch refuses attn_mask together with is_causal=True, so for that case we combine the masks ourselves.
    cases = {"SDPA, no mask": (dict(), dict()),  # name: (our keyword arguments, SDPA's)
             "SDPA, is_causal=True": (dict(causal=True), dict(is_causal=True)),
             "SDPA, padding mask": (dict(mask=pad), dict(attn_mask=torch.from_numpy(pad))),
             "SDPA, causal + padding": (dict(mask=pad, causal=True),
                                        dict(attn_mask=torch.from_numpy(pad & causal_mask(t, t))))}
    return {name: np.abs(attention(q, k, v, **ours)[0] - F.scaled_dot_product_attention(tq, tk, tv, **theirs).numpy())
            .max() for name, (ours, theirs) in cases.items()}


def compare_with_torch_mha(dtype, d_model=D_MODEL, n_heads=HEADS, seed=0):
    """Our multi_head_attention vs torch.nn.MultiheadAttention with the same weights: outputs and per-head weights.
    Equal outputs with copied weights prove more than "similar": the projections, the head split (which columns
    go to which head), the masks, the concatenation and the output projection all match torch's layout exactly."""
    rng = np.random.default_rng(seed)
    t = 6
    x = rng.standard_normal((2, t, d_model)).astype(dtype)  # (B, T, C)
    params = init_multi_head(d_model, rng, dtype)      # our weights; torch gets copies below
    real = np.arange(t)[None, :] < np.array([6, 3])[:, None]  # (B, T) True = real token
    mha = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    mha = mha.to(torch.float64 if dtype == np.float64 else torch.float32).eval()  # eval: no dropout
    with torch.no_grad():
        # torch's Linear computes x W^T + b, we compute x W + b: copy the transposes. in_proj stacks [W_q; W_k; W_v].
        mha.in_proj_weight.copy_(torch.from_numpy(np.concatenate([params[f"W_{n}"].T for n in "qkv"])))
        mha.in_proj_bias.copy_(torch.from_numpy(np.concatenate([params[f"b_{n}"] for n in "qkv"])))
        mha.out_proj.weight.copy_(torch.from_numpy(params["W_o"].T.copy()))
        mha.out_proj.bias.copy_(torch.from_numpy(params["b_o"]))
    results = {}
    for causal in (False, True):
        ours, our_w = multi_head_attention(x, params, n_heads, key_padding=real, causal=causal)
        # Careful: nn.MultiheadAttention's boolean masks mean the OPPOSITE of SDPA's: True = NOT allowed.
        with torch.no_grad():
            theirs, their_w = mha(*[torch.from_numpy(x)] * 3, key_padding_mask=torch.from_numpy(~real),
                                  attn_mask=torch.from_numpy(~causal_mask(t, t)) if causal else None,
                                  need_weights=True, average_attn_weights=False)
        name = "nn.MultiheadAttention" + (", causal" if causal else "") + " + padding"
        results[name + ": output"] = np.abs(ours - theirs.numpy()).max()     # (B, T, C)
        results[name + ": weights"] = np.abs(our_w - their_w.numpy()).max()  # (B, nh, T, T), per head
    return results


def part5_proof(d_model, n_heads, seed):
    banner("Part 5. Proof: our NumPy attention == PyTorch's")
    all_ok = True
    print(f"  {'comparison':<50} {'dtype':>8} {'max abs diff':>13} {'limit':>7}  ok")
    for dtype in (np.float32, np.float64):
        results = {**compare_with_sdpa(dtype, seed), **compare_with_torch_mha(dtype, d_model, n_heads, seed)}
        for name, diff in results.items():
            all_ok &= bool(diff <= TOLERANCE[dtype])  # every comparison must pass, in both precisions
            print(f"  {name:<50} {np.dtype(dtype).name:>8} {diff:>13.2e} {TOLERANCE[dtype]:>7.0e}  "
                  f"{'yes' if diff <= TOLERANCE[dtype] else 'NO'}")
    # Not zero because floating-point addition is not associative: torch sums in a different order (and may fuse
    # steps), so the last bits differ.
    print("The differences are rounding only: ~1e-7 is float32's precision, ~1e-16 float64's.")
    return all_ok


# ---- Part 6: tiled attention (FlashAttention's idea) equals the naive one -----------------------------------------
def part6_tiled(block, seed):
    banner(f"Part 6. Tiled attention with an online softmax (block {block})")
    rng = np.random.default_rng(seed)
    worst = 0.0
    for t, causal in ((300, False), (300, True), (257, True)):  # lengths that are not multiples of the block, too
        q, k, v = (rng.standard_normal((2, t, 16)) for _ in range(3))
        diff = np.abs(tiled_attention(q, k, v, block=block, causal=causal) - attention(q, k, v, causal=causal)[0])
        worst = max(worst, diff.max())
        print(f"  T={t:<4} causal={str(causal):<5} block={block}: max |tiled - naive| = {diff.max():.2e} (float64)")
    print(f"Tiled equals naive to {worst:.1e} (figure to reach: <= 1e-10): {'yes' if worst <= 1e-10 else 'NO'}")
    # The point of tiling is memory: count the scores each version holds at once (a count, not a measurement).
    print(f"At T=300 the naive version holds all T x T = 90,000 scores per head, the tiled one at most one tile of "
          f"{min(block, 300) ** 2:,}.\nMemory and time over longer T, naive vs tiled vs SDPA: "
          "python companions/03_bench.py")
    return worst <= 1e-10, worst


# ---- Part 7: attention vs an LSTM on a long-range task (torch) ---------------------------------------------------
# The task: T random tokens (values 0..15) followed by a "?" token; the answer is the FIRST token.
#     7 3 12 0 5 ... 9 ?   ->  7
# Both models read the sequence and answer from their state at "?". Nothing in between matters, so the evidence
# is always T steps back: the distance is the whole point. Chance is 1/16 = 6.25%.
# Fairness: same width, about the same number of parameters (the run prints both), the same data (same seed), the
# same optimizer, learning rate, batch and number of steps, trained from scratch at each length.
VOCAB, WIDTH = 16, 32    # token values 0..15 (chance = 1/16); width 32 for both models
QUERY_TOKEN = VOCAB      # id 16 is the "?"
LR = 3e-3                # Adam's learning rate, the same for both models
POSITIONS = 129          # position-table rows (T <= 128 plus "?"): fixed, so the parameter count does not vary
EVAL_SEQUENCES = 2000    # fresh test sequences per (model, length)


def first_token_batch(batch, length, generator):
    """tokens (B, T+1): T random values then the query token; answers (B,): the first value of each row.
    There are 16^T possible sequences, far too many to memorise: a model can only succeed by learning the rule."""
    values = torch.randint(0, VOCAB, (batch, length), generator=generator)
    tokens = torch.cat([values, torch.full((batch, 1), QUERY_TOKEN)], dim=1)
    return tokens, values[:, 0]


class TinyAttentionNet(nn.Module):
    """embed + position -> one attention layer in which the last position ("?") asks -> 16-way classifier.

    One layer suffices: "?"'s query only has to match the key of position 0 (its position vector), and the value
    read there carries token 0. Whatever T is, the answer is one weighted sum away: no chain of steps in between.

    Positions: attention is blind to order (part 1), so each position p gets its own learned vector added to the
    token's embedding, from a table of max_len rows. Learned rather than fixed sin/cos codes, in which neighbouring
    positions look alike: position 0 gets a vector of its own, and the query finds it."""

    def __init__(self, max_len, width=WIDTH):
        super().__init__()
        self.embed = nn.Embedding(VOCAB + 1, width)
        self.position = nn.Embedding(max_len, width)
        self.query, self.key, self.value, self.proj = (nn.Linear(width, width) for _ in range(4))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, VOCAB))

    def forward(self, tokens, e=None):
        """tokens (B, T) -> logits (B, 16), weights (B, T) of the "?" position over all positions.
        e: the embeddings self.embed(tokens), when the caller made them (to read their gradient)."""
        e = self.embed(tokens) if e is None else e      # (B, T, C)
        if e.shape[1] > self.position.num_embeddings:
            raise ValueError(f"sequence of {e.shape[1]} tokens but only {self.position.num_embeddings} positions")
        x = e + self.position.weight[: e.shape[1]]      # (B, T, C) token + position
        q = self.query(x[:, -1:])                       # (B, 1, C): only "?" needs to ask
        k, v = self.key(x), self.value(x)               # (B, T, C)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(x.shape[-1]), dim=-1)  # (B, 1, T): same formula
        h = x[:, -1] + self.proj((weights @ v)[:, 0])   # (B, C) residual: "?" plus what it read
        return self.head(h), weights[:, 0]


class TinyLSTMNet(nn.Module):
    """embed -> LSTM (hidden 32) -> 16-way classifier from the state after reading "?". No position table: it
    reads left to right, so order is built in.

    An LSTM keeps a memory vector c and, at every step t, updates it with gates (sigmoids, each between 0 and 1):
        f_t = sigmoid(W_f [x_t, h_{t-1}] + b_f)      forget gate: how much of the old memory to keep
        i_t = sigmoid(W_i [x_t, h_{t-1}] + b_i)      input gate:  how much of the new candidate to write
        c_t = f_t * c_{t-1} + i_t * tanh(W_g [x_t, h_{t-1}] + b_g)
        h_t = o_t * tanh(c_t)                        o_t: an output gate; h_T is what the classifier reads
    To keep token 0 until "?", it needs f_t ~ 1 and i_t ~ 0 for T steps. It can (its gated cell was invented for
    that), but it must LEARN to, and the gradient that teaches it flows back along the memory:
    d c_T / d c_0 = f_T * ... * f_1 (plus paths through h, which also shrink). With torch's initialisation the
    biases are ~0, so f_t ~ sigmoid(0) = 0.5 and the product is ~0.5^T: 1e-3 at T=10, 3e-39 at T=128 (part 7
    measures the real decay). That is the "vanishing gradient". Attention connects "?" to position 0 directly, so
    its signal does not decay with distance. (A higher initial b_f lets the signal fade more slowly: try it with
    python companions/03_long_range.py --lstm-forget-bias 2.)"""

    def __init__(self, width=WIDTH):
        super().__init__()
        self.embed = nn.Embedding(VOCAB + 1, width)
        self.lstm = nn.LSTM(width, width, batch_first=True)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, tokens, e=None):
        e = self.embed(tokens) if e is None else e   # (B, T, C)
        states, _ = self.lstm(e)                 # (B, T, C): the memory is carried step by step, left to right
        return self.head(states[:, -1]), None    # (B, 16)


def gradient_to_first_token(build, length, seed):
    """|d loss / d embedding of token 0| at initialisation: the training signal that could teach a model to keep
    the first token. In an LSTM it travels back through T recurrent steps; in attention it takes one hop."""
    torch.manual_seed(seed)
    model = build().double()  # a fresh, untrained model: the same initial weights as the one about to be trained
    tokens, answers = first_token_batch(256, length, torch.Generator().manual_seed(seed + 1))
    # Detach the embeddings and ask autograd for their gradient directly: e.grad[:, 0] is the part of the signal
    # that reaches the one token that matters. (float32 would round 1e-39 to 0; float64 goes down to ~1e-308.)
    e = model.embed(tokens).detach().requires_grad_(True)  # (B, T+1, C)
    F.cross_entropy(model(tokens, e)[0], answers).backward()
    return e.grad[:, 0].norm(dim=-1).mean().item()


def train_and_evaluate(model, length, steps, batch, seed, device):
    """Adam on fresh random batches, then accuracy on new sequences. Returns (accuracy, weight on token 0, loss)."""
    model.to(device).train()  # train mode (no dropout here, but the habit matters in stage 04)
    generator = torch.Generator().manual_seed(seed)  # the same data stream for both models
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(steps):  # every batch is new data: no epochs, nothing to memorise, only the rule to learn
        tokens, answers = first_token_batch(batch, length, generator)  # (B, T+1), (B,)
        # Cross-entropy = -log(probability given to the right token): 2.77 = log(16) when guessing, 0 when sure.
        loss = F.cross_entropy(model(tokens.to(device))[0], answers.to(device))
        optimizer.zero_grad(set_to_none=True)  # gradients add up in .grad: clear last step's
        loss.backward()   # autograd: d loss / d every parameter, through the attention or through all T LSTM steps
        optimizer.step()  # Adam: a step per parameter scaled by its own gradient history
    model.eval()
    # Test on sequences never seen in training (another seed): accuracy measures the rule, not memory of examples.
    tokens, answers = first_token_batch(EVAL_SEQUENCES, length, torch.Generator().manual_seed(seed + 12345))
    with torch.no_grad():
        logits, weights = model(tokens.to(device))  # (N, 16) scores of the 16 possible answers
    accuracy = (logits.argmax(-1).cpu() == answers).float().mean().item()  # the top-scored answer is the guess
    return accuracy, None if weights is None else weights[:, 0].mean().item(), loss.item()


def long_range_experiment(lengths, steps, batch, seed, device, log=print, lstm=TinyLSTMNet):
    """Train both models from scratch at each length (same budget, nothing carried over); one row per length.
    lstm: what builds the LSTM model (companions/03_long_range.py passes one with another forget-gate bias)."""
    rows, start, done, total = [], time.time(), 0, 2 * sum(lengths)  # rough ETA: a run costs about T
    max_len = max(POSITIONS, max(lengths) + 1)  # the position table grows only for lengths beyond 128
    builders = {"attention": lambda: TinyAttentionNet(max_len=max_len),
                "lstm": lstm}
    for length in lengths:
        row = dict(length=length)
        for name, build in builders.items():
            torch.manual_seed(seed)  # the same initial weights in every run with this seed
            model = build()
            row[name + "_params"] = sum(p.numel() for p in model.parameters())  # for the fairness line
            row[name + "_grad"] = gradient_to_first_token(build, length, seed)
            row[name + "_acc"], weight, loss = train_and_evaluate(model, length, steps, batch, seed, device)
            if name == "attention":
                row["attention_weight_on_first"], row["attention_model"] = weight, model
            done += length
            elapsed = time.time() - start
            log(f"  T={length:<4} {name:<9} {steps} steps: final loss {loss:6.3f}  test accuracy "
                f"{row[name + '_acc']:6.1%}   [{elapsed:5.1f}s elapsed, ETA {elapsed / done * (total - done):4.0f}s]")
        rows.append(row)
    return rows


def part7_long_range(lengths, steps, batch, seed, device):
    banner("Part 7. Attention vs LSTM: recall the FIRST token of a sequence of length T")
    print(f"Task: T random tokens (0..{VOCAB - 1}) then '?'; answer: the first token. Chance {1 / VOCAB:.2%}. "
          f"Budget per model and length: {steps} steps x batch {batch}, Adam lr {LR}; device {device}.")
    rows = long_range_experiment(lengths, steps, batch, seed, device)
    print(f"\nParameters: attention {rows[0]['attention_params']:,}, LSTM {rows[0]['lstm_params']:,}. "
          f"Gradient = |d loss / d first token| at initialisation (before any training).")
    print(f"  {'T':>5} {'attention acc':>14} {'LSTM acc':>9} {'chance':>7} | {'attn weight on 1st':>18} | "
          f"{'gradient: attention':>19} {'LSTM':>9}")
    for r in rows:
        print(f"  {r['length']:>5} {r['attention_acc']:>14.1%} {r['lstm_acc']:>9.1%} {1 / VOCAB:>7.1%} | "
              f"{r['attention_weight_on_first']:>18.2f} | {r['attention_grad']:>19.1e} {r['lstm_grad']:>9.1e}")
    if len(rows) >= 2:  # fit log(grad) = a + T log(factor): how much of the signal survives one more step
        slope = np.polyfit([r["length"] for r in rows], np.log([max(r["lstm_grad"], 1e-300) for r in rows]), 1)[0]
        print(f"LSTM gradient shrinks by about x{math.exp(slope):.2f} per step of distance; attention's only ~1/T.")
    # What THIS run's table shows, computed from its numbers so it stays true when you change the flags.
    lstm_lost = [r["length"] for r in rows if r["lstm_acc"] <= 2 / VOCAB]  # within twice chance
    print("Attention is right at every length: '?' looks at position 0 (column 'attn weight on 1st')."
          if all(r["attention_acc"] >= 0.9 for r in rows) else
          "Attention stayed under 90% at some lengths: the budget is too small; try more --steps.")
    print(f"The LSTM is near chance from T = {min(lstm_lost)} on: the signal that would teach it to keep the first "
          "token\nshrinks geometrically with T (gradient column)." if lstm_lost else
          "The LSTM did not fall to chance here: longer sequences or fewer --steps show the cliff (gradient column).")
    return rows


# ---- Part 8: pictures --------------------------------------------------------------------------------------------
def get_pyplot():
    """matplotlib.pyplot with the file-only Agg backend (no window needed), or None when it is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def make_pictures(out_dir, words, by_hand_weights, padded_weights, head_weights, scaling_rows, long_rows):
    """PNGs under out_dir when matplotlib is installed; otherwise a text version of each heatmap."""
    banner(f"Part 8. Pictures -> {out_dir}/")
    plt, t = get_pyplot(), padded_weights.shape[0]
    q_labels = [f"q{i}" for i in range(t)]
    k_labels = [f"k{j}" if padded_weights[:, j].any() else "pad" for j in range(t)]
    maps = [("Part 1: softmax(QK^T/sqrt(d_k)), no mask", by_hand_weights, words, words),
            ("Part 3: causal + padding mask", padded_weights, q_labels, k_labels)]
    heads = [(f"Part 4: head {h} (causal)", w, words, words) for h, w in enumerate(head_weights)]
    if plt is None:  # text fallback: one character per cell, darker = larger weight
        print("matplotlib is not installed (pip install matplotlib); text versions instead:")
        for title, matrix, rows, cols in maps + heads:
            print(f"  {title}   (shades: ' '=0 ... '@'=1)\n      " + " ".join(str(c)[:1] for c in cols))
            for label, row in zip(rows, matrix):
                print(f"{str(label)[:5]:>5} " + " ".join(" .:-=+*#%@"[min(9, round(float(x) * 9))] for x in row))
        for r in long_rows:  # one bar per model: 40 characters = 100%
            print(f"  T={r['length']:<4} attention |{'#' * round(40 * r['attention_acc']):<40}|\n"
                  f"         LSTM      |{'#' * round(40 * r['lstm_acc']):<40}|")
        return []
    saved = []

    def save(fig, name):  # write to a temporary name, then rename: an interrupted run never leaves half a PNG
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path.with_name(name + ".tmp"), format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        os.replace(path.with_name(name + ".tmp"), path)
        print(f"  saved {path}")
        saved.append(path)

    for name, panels in (("attention_weights.png", maps), ("multi_head.png", heads)):
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8), squeeze=False)
        for ax, (title, matrix, rows, cols) in zip(axes[0], panels):
            ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
            ax.set_yticks(range(len(rows)), rows)
            ax.set(xlabel="key (looked at)", ylabel="query (looking)", title=title)
            for (i, j), w in np.ndenumerate(matrix if matrix.size <= 144 else []):  # numbers while they fit
                ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=7, color="white" if w < 0.6 else "k")
        save(fig, name)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    d = [r["d_k"] for r in scaling_rows]
    for ax, key, label in ((axes[0], "max", "mean largest weight"), (axes[1], "entropy", "entropy (bits)")):
        ax.semilogx(d, [r["raw_" + key] for r in scaling_rows], "o-", label="unscaled  QK^T")
        ax.semilogx(d, [r["scaled_" + key] for r in scaling_rows], "s-", label="scaled  QK^T/sqrt(d_k)")
        ax.set(xlabel="d_k", ylabel=label, title=f"Part 2: {SCALING_KEYS} keys; unscaled, the softmax saturates")
        ax.legend()
    save(fig, "scaling.png")
    if long_rows:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        ts = [r["length"] for r in long_rows]
        for name, marker in (("attention", "o-"), ("lstm", "s-")):
            axes[0].plot(ts, [100 * r[name + "_acc"] for r in long_rows], marker, label=name)
            axes[1].semilogy(ts, [r[name + "_grad"] for r in long_rows], marker, label=name)
        axes[0].axhline(100 / VOCAB, color="gray", ls="--", label="chance")
        axes[0].set(ylabel="test accuracy (%)", ylim=(0, 105), title="Part 7: recall the first token (same budget)")
        axes[1].set(ylabel="|d loss / d first token| at init", title="why: the learning signal over T")
        for ax in axes[:2]:
            ax.set(xscale="log", xlabel="sequence length T")
            ax.legend()
        # What the trained attention model looks at, for one test sequence of the longest length.
        model, length = long_rows[-1]["attention_model"].cpu(), long_rows[-1]["length"]
        with torch.no_grad():
            w = model(first_token_batch(1, length, torch.Generator().manual_seed(7))[0])[1]
        axes[2].bar(range(length + 1), w[0].numpy())
        axes[2].set(xlabel="position looked at", ylabel="attention weight of '?'",
                    title=f"trained attention model, T={length}: it looks at position 0")
        save(fig, "long_range.png")
    return saved


# ---- Command line --------------------------------------------------------------------------------------------------
def positive_int(text):
    """argparse type: an integer >= 1 (a bad value gets argparse's usage line plus one error line, exit 2)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return int(text)


def int_list(text):
    """argparse type: '8,16,32' -> [8, 16, 32], each from 1 to 4096 (the LSTM walks long sequences slowly)."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or not all(v.isdigit() and 1 <= int(v) <= 4096 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers from 1 to 4096 like 8,16,32; got {text!r}")
    return [int(v) for v in values]


MOVED = {"--timing-lengths": "companions/03_bench.py --lengths",
         "--lstm-forget-bias": "companions/03_long_range.py --lstm-forget-bias"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Attention step by step, proven against PyTorch.")
    parser.add_argument("--sentence", default=SENTENCE, help="parts 1 and 4: the words to attend over")
    parser.add_argument("--d-model", type=positive_int, default=D_MODEL, help="parts 4-5: width of the multi-head demo")
    parser.add_argument("--heads", type=positive_int, default=HEADS, help="parts 4-5: heads (must divide --d-model)")
    parser.add_argument("--block", type=positive_int, default=BLOCK, help="part 6: tile size of the tiled attention")
    parser.add_argument("--lengths", type=int_list, default=list(LENGTHS), help="part 7: T values, e.g. 8,16,32")
    parser.add_argument("--steps", type=positive_int, default=STEPS, help="part 7: training steps per model and T")
    parser.add_argument("--batch", type=positive_int, default=BATCH, help="part 7: sequences per training step")
    parser.add_argument("--threads", type=positive_int, default=THREADS, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    for flag, companion in MOVED.items():  # old flags, kept only to say where their work went
        parser.add_argument(flag, help=f"moved: python {companion}")
    # parse_known_args: a notebook kernel passes its own "-f kernel.json"; anything else unknown is a typo.
    args, unknown = parser.parse_known_args(argv)
    if unknown and not all(u.startswith("-f") or u.endswith(".json") for u in unknown):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    for flag, companion in MOVED.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            print(f"{flag} moved: run python {companion} {getattr(args, flag[2:].replace('-', '_'))}", file=sys.stderr)
            sys.exit(2)
    # Rules argparse cannot express, reported its way (usage plus one line, exit 2).
    if len(args.sentence.split()) < 2:
        parser.error(f"--sentence needs at least 2 words to attend between; got {args.sentence!r}")
    if args.d_model % args.heads:
        parser.error(f"--d-model ({args.d_model}) must be a multiple of the number of heads (--heads {args.heads})")
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    np.set_printoptions(suppress=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)  # tiny tensors: extra threads mostly add start-up cost and wait on busy CPUs
    # Part 7 trains on the best device there is (cuda > mps > cpu); parts 1-6 are NumPy, or CPU comparisons.
    device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    words, by_hand_weights = part1_by_hand(args.sentence, args.seed)
    scaling_rows = part2_scaling(args.seed)
    causal_exact, padded_weights = part3_masks(args.seed)
    head_weights, count_ok = part4_multi_head(words, args.d_model, args.heads, args.seed)
    torch_ok = part5_proof(args.d_model, args.heads, args.seed)
    tiled_ok, tiled_diff = part6_tiled(args.block, args.seed)
    long_rows = part7_long_range(args.lengths, args.steps, args.batch, args.seed, device)
    if not args.no_plots:
        make_pictures(args.out, words, by_hand_weights, padded_weights, head_weights, scaling_rows, long_rows)
    # Proofs must hold whatever the flags; the experiment's outcome depends on the budget, so it is reported only.
    banner("Summary")
    proofs = [("causal outputs unchanged by future tokens (bitwise)", causal_exact),
              ("parameter count == torch.nn.MultiheadAttention's", count_ok),
              ("attention == torch SDPA / nn.MultiheadAttention (1e-6 f32, 1e-12 f64)", torch_ok),
              (f"tiled online-softmax == naive (max diff {tiled_diff:.1e} <= 1e-10)", tiled_ok)]
    for name, ok in proofs:
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    print("  long-range accuracy (attention / LSTM): " + ", ".join(
        f"T={r['length']}: {r['attention_acc']:.0%} / {r['lstm_acc']:.0%}" for r in long_rows))
    print(f"Done in {time.time() - start:.1f}s.")
    if not all(ok for _, ok in proofs):
        sys.exit("error: some checks failed (see [FAILED] above)")  # exit status 1


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
