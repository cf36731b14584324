"""Beyond lesson 02: train word2vec on the corpus and look at what the vectors learned.

02_embeddings.py derives word2vec's loss (skip-gram with negative sampling) and checks its gradient; this companion
trains it on Shakespeare's plays with NumPy and mini-batch SGD, then shows nearest neighbours, analogies, how
similar pairs chosen before training are next to random pairs, and a 2-D map of the vectors.

  python companions/02_word2vec.py                 # the whole corpus
  python companions/02_word2vec.py --tiny          # seconds: 60k characters, one short epoch
  python companions/02_word2vec.py --text FILE --w2v-epochs 4 --w2v-dim 32 --out DIR --no-plots
"""
import argparse
import collections
import dataclasses
import importlib.util
import re
import sys
import time
from pathlib import Path

import numpy as np


def load_lesson():
    """02_embeddings.py as a module (its name starts with a digit, so `import` cannot load it)."""
    path = Path(__file__).resolve().parent.parent / "02_embeddings.py"
    spec = importlib.util.spec_from_file_location("lesson_02_embeddings", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lesson = load_lesson()


@dataclasses.dataclass
class Config:                   # every knob with its default; the flag of the same name overrides it
    text: str | None = None     # any UTF-8 file instead of Shakespeare's plays
    max_chars: int | None = None  # use only the first N characters of the text
    w2v_dim: int = 64           # word vector size
    w2v_window: int = 5         # max context distance; each centre draws its window from 1..w2v_window
    w2v_negatives: int = 5      # noise words per (centre, context) pair
    w2v_epochs: int = 8         # passes over the corpus
    w2v_lr: float = 0.025       # start learning rate, decays linearly to ~0 (word2vec's schedule)
    w2v_batch: int = 512        # (centre, context) pairs per NumPy step
    w2v_min_count: int = 5      # words seen fewer times are dropped from the word2vec vocabulary
    w2v_subsample: float = 1e-4  # frequent-word subsampling threshold t
    tiny: bool = False          # seconds-long run: 60k characters, 16 dimensions, one epoch
    out: str = "out/02_embeddings"  # folder for the word map
    no_plots: bool = False
    seed: int = 1337


# ----------------------------------------------------------------------------------------------------------------
# Training: the loss and gradient of 02_embeddings.py (lesson.sgns_loss_and_grads), applied to a real corpus
# ----------------------------------------------------------------------------------------------------------------
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
    n = len(ids)
    reach = rng.integers(1, window + 1, size=n)                 # (n,) window of each centre position
    centres, contexts = [], []
    for d in range(1, window + 1):
        if d >= n:
            break
        left, right = np.arange(n - d), np.arange(d, n)
        looks_right = reach[left] >= d                          # centre i, context i + d
        looks_left = reach[right] >= d                          # centre i + d, context i
        centres += [left[looks_right], right[looks_left]]
        contexts += [right[looks_right], left[looks_left]]
    centres, contexts = np.concatenate(centres), np.concatenate(contexts)
    return ids[centres], ids[contexts]


def scatter_add_rows(matrix, rows, values):
    """matrix[rows[i]] += values[i] for all i, ADDING repeated rows (plain `matrix[rows] += values` keeps only
    one of the repeats, and a word often occurs several times per batch). np.add.at on the flattened matrix
    (row r, column c -> r * D + c) is NumPy's fast path for this."""
    dim = matrix.shape[1]
    flat_index = (rows[:, None] * dim + np.arange(dim)).ravel()
    np.add.at(matrix.reshape(-1), flat_index, values.reshape(-1))


def w2v_train(ids, counts, dim, window, negatives, epochs, lr, batch, subsample, rng, log=print):
    """Train SGNS with mini-batch SGD. Returns (W_in (V, D) word vectors, mean loss per epoch).

    word2vec itself updates after every single pair; NumPy pays a fixed cost per call, so we take `batch` pairs
    at once, sum their gradients into the rows they touch, and step. Each row moves by the sum of its pairs'
    gradients, close to what one-pair-at-a-time SGD would do since a batch touches a row only a few times."""
    vocab_size = len(counts)
    # word2vec's init: small random centre vectors, zero context vectors. Every score u.v starts at 0, i.e.
    # s(0) = 0.5: no opinion yet; the random part of W_in breaks the symmetry between words.
    w_in = ((rng.random((vocab_size, dim)) - 0.5) / dim).astype(np.float32)   # (V, D)
    w_out = np.zeros((vocab_size, dim), dtype=np.float32)                      # (V, D)
    # Subsampling: "the" is everywhere and says little about its neighbours. Keep each occurrence of a word with
    # frequency f with probability sqrt(t/f) + t/f (word2vec's formula): rare words are always kept.
    freq = counts / counts.sum()
    keep_prob = np.minimum(1.0, np.sqrt(subsample / freq) + subsample / freq)
    # Noise distribution: unigram counts to the power 3/4, which gives rare words more chances than raw counts
    # (Mikolov et al. found 3/4 worked best). To sample: cumulative distribution + a uniform number u; the
    # first word whose cumulative probability exceeds u is drawn with exactly its probability (searchsorted).
    noise_cdf = np.cumsum(counts ** 0.75)
    noise_cdf /= noise_cdf[-1]
    losses, start, last_log, steps_done, steps_total = [], time.time(), 0.0, 0, None
    for epoch in range(epochs):
        # A fresh subsample and fresh windows each epoch, then all pairs in random order: SGD wants
        # independent-looking steps, not 500 pairs in a row from the same scene.
        kept = ids[rng.random(len(ids)) < keep_prob[ids]]
        centres, contexts = skipgram_pairs(kept, window, rng)
        order = rng.permutation(len(centres))
        n_steps = (len(centres) + batch - 1) // batch
        steps_total = steps_total or n_steps * epochs   # later epochs have about as many pairs as the first
        loss_sum = 0.0
        for step in range(n_steps):
            pick = order[step * batch:(step + 1) * batch]
            c, o = centres[pick], contexts[pick]                                    # (B,), (B,)
            noise = np.minimum(np.searchsorted(noise_cdf, rng.random((len(c), negatives))), vocab_size - 1)  # (B, K)
            # (A noise word may now and then be the true context; word2vec skips it, we let it be: it is rare.)
            loss, grad_v, grad_pos, grad_neg = lesson.sgns_loss_and_grads(w_in[c], w_out[o], w_out[noise])
            rate = lr * max(1.0 - steps_done / steps_total, 1e-4)   # linear decay: big steps first, then settle
            # SGD step: parameter -= rate * gradient, on the rows this batch used (all other rows have zero
            # gradient: this is why embedding tables train sparsely and fast).
            scatter_add_rows(w_in, c, -rate * grad_v)
            scatter_add_rows(w_out, np.concatenate([o, noise.ravel()]),
                             -rate * np.concatenate([grad_pos, grad_neg.reshape(-1, dim)]))
            loss_sum += loss
            steps_done += 1
            elapsed = time.time() - start
            if elapsed - last_log >= 10 or step == n_steps - 1:
                last_log = elapsed
                eta = elapsed / steps_done * max(steps_total - steps_done, 0)
                log(f"  epoch {epoch + 1}/{epochs}  step {step + 1}/{n_steps}  "
                    f"loss/pair {loss_sum / ((step + 1) * batch):.3f}  lr {rate:.4f}  "
                    f"elapsed {lesson.fmt_seconds(elapsed)}  eta {lesson.fmt_seconds(eta)}")
        losses.append(loss_sum / len(centres))
    return w_in, losses


# ----------------------------------------------------------------------------------------------------------------
# Looking at the vectors: neighbours, analogies, related vs random pairs, a 2-D map
# ----------------------------------------------------------------------------------------------------------------
# Chosen BEFORE training (so we cannot pick pairs that happen to come out well): pairs that a reader would call
# related. After training they must be clearly more similar than the same words paired at random.
RELATED_PAIRS = [
    ("king", "queen"), ("day", "night"), ("lord", "lady"), ("man", "woman"), ("father", "mother"),
    ("son", "daughter"), ("brother", "sister"), ("husband", "wife"), ("sun", "moon"), ("heaven", "earth"),
    ("he", "she"), ("his", "her"), ("life", "death"), ("love", "hate"), ("sir", "madam"), ("boy", "girl"),
    ("summer", "winter"), ("east", "west"), ("gold", "silver"), ("sword", "dagger"),
]
PROBE_WORDS = ["king", "love", "night", "sword", "father", "thou", "blood", "heaven"]
# a : b :: c : ?  (the answer we hope for is the 4th word; also chosen before training)
ANALOGIES = [
    ("man", "woman", "king", "queen"), ("father", "mother", "son", "daughter"), ("he", "she", "his", "her"),
    ("brother", "sister", "husband", "wife"), ("lord", "lady", "sir", "madam"), ("thou", "thy", "you", "your"),
]


# Cosine similarity cos(a, b) = a . b / (|a| |b|): 1 = same direction, 0 = unrelated (orthogonal).
def unit_rows(matrix):
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def nearest_words(unit, vocab, index, word, k=6, exclude=(), top=3000):
    """The k words whose unit vectors have the largest cosine with `word` (a word or a (D,) query vector),
    among the `top` most frequent words: a word seen 5 times has a vector shaped by 5 contexts, mostly noise."""
    if isinstance(word, str):
        query, exclude = unit[index[word]], set(exclude) | {word}
    else:
        query = word / max(np.linalg.norm(word), 1e-12)
    scores = unit[:top] @ query                                             # (top,) vocab is sorted by count
    best = [i for i in np.argsort(-scores)[:k + 1 + len(exclude)] if vocab[i] not in exclude]
    return [(vocab[i], float(scores[i])) for i in best[:k]]


def analogy(unit, vocab, index, a, b, c, k=3):
    """a : b :: c : ?  ->  words nearest to v_b - v_a + v_c (the offset a -> b applied to c)."""
    return nearest_words(unit, vocab, index, unit[index[b]] - unit[index[a]] + unit[index[c]], k, {a, b, c})


def pair_similarity(unit, index, pairs, rng, n_random=2000):
    """Mean cosine of the related pairs against two baselines that share their word frequencies (cosines depend
    on frequency: rare words get few updates and stay close to the direction all vectors share):
      re-paired: the same words with the wrong partners (king/night, day/madam, ...);
      random:    random pairs of words at least as frequent as the rarest word in the pairs."""
    pairs = [(a, b) for a, b in pairs if a in index and b in index]
    if len(pairs) < 2:
        return None
    def cos(a, b):
        return float(unit[index[a]] @ unit[index[b]])

    related = [cos(a, b) for a, b in pairs]
    shuffled = [cos(a, pairs[j][1]) for i, (a, _) in enumerate(pairs) for j in range(len(pairs)) if j != i]
    top = 1 + max(index[w] for pair in pairs for w in pair)        # index = frequency rank
    picks = rng.integers(0, top, size=(n_random, 2))
    picks = picks[picks[:, 0] != picks[:, 1]]
    random_pairs = np.sum(unit[picks[:, 0]] * unit[picks[:, 1]], axis=1)
    return {"pairs": pairs, "related": related, "related_mean": float(np.mean(related)), "random_top": top,
            "shuffled_mean": float(np.mean(shuffled)), "random_mean": float(random_pairs.mean())}


def pca_2d(vectors):
    """Project rows onto their two main directions: centre, then SVD; the top right-singular vectors are the
    directions of largest variance. Returns (N, 2) coordinates and the fraction of variance they keep."""
    centred = vectors - vectors.mean(axis=0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    return centred @ directions[:2].T, float((singular[:2] ** 2).sum() / (singular ** 2).sum())


def plot_word_map(words, coords, pairs, path):
    plt = lesson.get_pyplot()
    if plt is None:
        print("  matplotlib not installed: the map as text (word: x, y)")
        for w, (x, y) in zip(words, coords):
            print(f"    {w:>10s}: {x:+.2f}, {y:+.2f}")
        return None
    where = {w: xy for w, xy in zip(words, coords)}
    fig, ax = plt.subplots(figsize=(9, 7))
    for a, b in pairs:  # a faint line joins each related pair
        ax.plot([where[a][0], where[b][0]], [where[a][1], where[b][1]], color="0.8", lw=1, zorder=1)
    ax.scatter(coords[:, 0], coords[:, 1], s=12, zorder=2)
    for w, (x, y) in zip(words, coords):
        ax.annotate(w, (x, y), fontsize=9, xytext=(3, 3), textcoords="offset points")
    ax.set_title("word2vec on the corpus: PCA of the related-pair words (lines join pairs)")
    return lesson.save_figure(plt, fig, path)


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    d = Config()
    p = argparse.ArgumentParser(description="Train word2vec (skip-gram, negative sampling) on the corpus; inspect it.")
    p.add_argument("--text", help="any UTF-8 text file instead of Shakespeare")
    p.add_argument("--max-chars", type=lesson.positive(int), help="use only the first N characters of the text")
    for name, kind in [("w2v_dim", int), ("w2v_window", int), ("w2v_negatives", int), ("w2v_epochs", int),
                       ("w2v_lr", float), ("w2v_batch", int), ("w2v_min_count", int), ("w2v_subsample", float)]:
        p.add_argument("--" + name.replace("_", "-"), type=lesson.positive(kind), default=getattr(d, name),
                       help=f"default {getattr(d, name)} (see Config)")
    p.add_argument("--tiny", action="store_true", help="seconds-long run for tests and quick looks")
    p.add_argument("--out", default=d.out, help="folder for the word map")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--seed", type=int, default=d.seed)
    args, unknown = p.parse_known_args(argv)
    if unknown:
        print(f"note: ignoring unknown arguments {unknown}", file=sys.stderr)
    cfg = Config(**vars(args))
    if cfg.tiny:
        cfg = dataclasses.replace(cfg, max_chars=cfg.max_chars or 60_000, w2v_epochs=1, w2v_dim=16, w2v_min_count=2)
    return cfg


def run(cfg):
    lesson.section("word2vec: skip-gram with negative sampling, in NumPy")
    text, source = lesson.load_corpus(cfg.text, cfg.max_chars)
    print(f"{source}: {len(text):,} characters\ngradient check, analytic vs central finite differences (float64): "
          f"max abs diff {lesson.sgns_gradient_check(cfg.seed):.1e}")
    ids, vocab, counts = w2v_vocab(text, cfg.w2v_min_count)
    if len(vocab) < 2 * cfg.w2v_negatives + 2:
        raise lesson.InputError(f"only {len(vocab)} words occur >= {cfg.w2v_min_count} times; give more text")
    index = {w: i for i, w in enumerate(vocab)}
    print(f"{len(ids):,} words, vocabulary {len(vocab):,} (seen >= {cfg.w2v_min_count} times); dim {cfg.w2v_dim}, "
          f"window {cfg.w2v_window}, {cfg.w2v_negatives} negatives, {cfg.w2v_epochs} epochs")
    rng = np.random.default_rng(cfg.seed)
    start, cpu_start = time.time(), time.process_time()
    w_in, losses = w2v_train(ids, counts, cfg.w2v_dim, cfg.w2v_window, cfg.w2v_negatives, cfg.w2v_epochs,
                             cfg.w2v_lr, cfg.w2v_batch, cfg.w2v_subsample, rng)
    seconds = time.time() - start
    print(f"trained in {lesson.fmt_seconds(seconds)} (CPU {lesson.fmt_seconds(time.process_time() - cpu_start)}); "
          f"loss per pair by epoch: " + ", ".join(f"{x:.3f}" for x in losses))

    # Nobody told the model what any word means: all it saw was which words occur near which. Words used in the
    # same kind of places (night / day / morning, thou / art / wilt) end up pointing the same way.
    lesson.section("What the vectors learned")
    unit = unit_rows(w_in)
    print("nearest neighbours (cosine):")
    for word in [w for w in PROBE_WORDS if w in index]:
        print(f"  {word:>7s}: " + ", ".join(f"{w} {s:.2f}" for w, s in nearest_words(unit, vocab, index, word)))
    # Analogies need a consistent offset (woman - man = queen - king) learned from few examples: a few plays are
    # a tiny corpus next to the billions of words behind the famous word2vec vectors, so expect near misses.
    print("analogies a : b :: c : ?  (nearest to v_b - v_a + v_c; * marks the answer we hoped for)")
    for a, b, c, hoped in [q for q in ANALOGIES if all(w in index for w in q)]:
        found = analogy(unit, vocab, index, a, b, c)
        print(f"  {a} : {b} :: {c} : " + ", ".join(f"{'*' * (w == hoped)}{w} {s:.2f}" for w, s in found))
    sims = pair_similarity(unit, index, RELATED_PAIRS, rng)
    if sims is None:
        print("related-pair check skipped: the chosen words are not in this text's vocabulary")
        return
    print("related pairs chosen before training: " +
          ", ".join(f"{a}/{b} {s:.2f}" for (a, b), s in zip(sims["pairs"], sims["related"])))
    print(f"  mean cosine: related {sims['related_mean']:.3f}; the same words re-paired {sims['shuffled_mean']:.3f}; "
          f"random pairs of the {sims['random_top']:,} most frequent words {sims['random_mean']:.3f}")
    # All SGNS vectors lean towards one shared direction (Mimno & Thompson 2017, "The strange geometry of
    # skip-gram with negative sampling"), which lifts every cosine. Without the mean vector only the part that
    # tells words apart is left.
    centred = pair_similarity(unit_rows(w_in - w_in.mean(axis=0)), index, RELATED_PAIRS, rng)
    print(f"  without the mean vector: related {centred['related_mean']:.3f}; re-paired "
          f"{centred['shuffled_mean']:.3f}; random {centred['random_mean']:.3f}")
    if not cfg.no_plots:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        words = sorted({w for pair in sims["pairs"] for w in pair})
        coords, kept = pca_2d(unit[[index[w] for w in words]])
        path = plot_word_map(words, coords, sims["pairs"], Path(cfg.out) / "word_map.png")
        if path:
            print(f"  2-D PCA map of these words ({kept:.0%} of their variance) -> {path}")
    lesson.section("Summary")
    print(f"word2vec: trained in {lesson.fmt_seconds(seconds)}; mean cosine of related pairs {sims['related_mean']:.3f}"
          f" vs re-paired {sims['shuffled_mean']:.3f} vs random {sims['random_mean']:.3f}")


def main(argv=None):
    cfg = parse_args(argv)
    try:
        run(cfg)
    except lesson.InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted (nothing is saved but the word map)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
