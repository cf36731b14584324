"""Beyond lesson 02: word2vec with its knobs, and a longer look at what the vectors learned.

02_embeddings.py derives word2vec's loss (skip-gram with negative sampling), checks its gradient, trains it on
Shakespeare's plays with NumPy and shows nearest neighbours and related pairs against random pairs. This companion
runs that same training (the lesson's functions) with every knob as a flag, then adds analogies, the similarities
without the vectors' common direction, and a 2-D map of the related-pair words.

  python companions/02_word2vec.py                 # the whole corpus, the lesson's settings
  python companions/02_word2vec.py --tiny          # seconds: 300k characters, one short epoch
  python companions/02_word2vec.py --text FILE --w2v-epochs 4 --w2v-dim 32 --out DIR --no-plots
"""
import argparse
import importlib.util
import os
import sys
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

# a : b :: c : ?  (the answer we hope for is the 4th word; chosen before training, like the lesson's pairs)
ANALOGIES = [
    ("man", "woman", "king", "queen"), ("father", "mother", "son", "daughter"), ("he", "she", "his", "her"),
    ("brother", "sister", "husband", "wife"), ("lord", "lady", "sir", "madam"), ("thou", "thy", "you", "your"),
]


def analogy(unit, vocab, index, a, b, c, k=3, top=3000):
    """a : b :: c : ?  ->  the k words nearest to v_b - v_a + v_c (the offset a -> b applied to c), among the
    `top` most frequent words, leaving out a, b and c themselves."""
    query = unit[index[b]] - unit[index[a]] + unit[index[c]]
    scores = unit[:top] @ (query / max(np.linalg.norm(query), 1e-12))     # (top,) cosines
    best = [i for i in np.argsort(-scores)[:k + 3] if vocab[i] not in (a, b, c)]
    return [(vocab[i], float(scores[i])) for i in best[:k]]


def pca_2d(vectors):
    """Project rows onto their two main directions: centre, then SVD; the top right-singular vectors are the
    directions of largest variance. Returns (N, 2) coordinates and the fraction of variance they keep."""
    centred = vectors - vectors.mean(axis=0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    return centred @ directions[:2].T, float((singular[:2] ** 2).sum() / (singular ** 2).sum())


def plot_word_map(words, coords, pairs, path):
    """The words at their 2-D coordinates, a faint line joining each related pair; a text table without
    matplotlib. Returns the path of the picture, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib not installed: the map as text (word: x, y)")
        for w, (x, y) in zip(words, coords):
            print(f"    {w:>10s}: {x:+.2f}, {y:+.2f}")
        return None
    where = {w: xy for w, xy in zip(words, coords)}
    fig, ax = plt.subplots(figsize=(9, 7))
    for a, b in pairs:
        ax.plot([where[a][0], where[b][0]], [where[a][1], where[b][1]], color="0.8", lw=1, zorder=1)
    ax.scatter(coords[:, 0], coords[:, 1], s=12, zorder=2)
    for w, (x, y) in zip(words, coords):
        ax.annotate(w, (x, y), fontsize=9, xytext=(3, 3), textcoords="offset points")
    ax.set_title("word2vec on the corpus: PCA of the related-pair words (lines join pairs)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")   # write, then rename: never a half-written picture
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    plt.close(fig)
    return path


def parse_args(argv=None):
    """Flags -> the lesson's Config (same names, same defaults); unknown arguments are ignored with a note."""
    d = lesson.Config()
    p = argparse.ArgumentParser(description="Train word2vec (skip-gram, negative sampling) on the corpus; inspect it.")
    p.add_argument("--text", help="any UTF-8 text file instead of Shakespeare")
    p.add_argument("--max-chars", type=lesson.positive(int), help="use only the first N characters of the text")
    for name, kind in [("w2v_dim", int), ("w2v_window", int), ("w2v_negatives", int), ("w2v_epochs", int),
                       ("w2v_lr", float), ("w2v_batch", int), ("w2v_min_count", int), ("w2v_subsample", float)]:
        p.add_argument("--" + name.replace("_", "-"), type=lesson.positive(kind), default=getattr(d, name),
                       help=f"default {getattr(d, name)} (see the lesson's Config)")
    p.add_argument("--tiny", action="store_true", help="seconds-long run for tests and quick looks")
    p.add_argument("--out", default=d.out, help="folder for the word map")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--seed", type=int, default=d.seed)
    args, unknown = p.parse_known_args(argv)
    if unknown:
        print(f"note: ignoring unknown arguments {unknown}", file=sys.stderr)
    cfg = lesson.Config(**vars(args))
    return lesson.tiny_config(cfg) if cfg.tiny else cfg


def run(cfg):
    text, source = lesson.load_corpus(cfg.text, cfg.max_chars)
    print(f"{source}: {len(text):,} characters")
    # The lesson's sections 3a-3d: lookup check, gradient check, training, neighbours, related vs random pairs.
    result = lesson.run_embeddings(text, cfg)
    if result is None:
        raise lesson.InputError(f"too few words occur >= {cfg.w2v_min_count} times to train word2vec; give more "
                                "text or a smaller --w2v-min-count")
    unit, vocab, index, sims, rng = (result[k] for k in ("unit", "vocab", "index", "sims", "rng"))
    lesson.section("Beyond the lesson: analogies, the centred vectors, a map")
    # Analogies need a consistent offset (woman - man = queen - king) learned from few examples: a few plays are
    # a tiny corpus next to the billions of words behind the famous word2vec vectors, so expect near misses.
    print("analogies a : b :: c : ?  (nearest to v_b - v_a + v_c; * marks the answer we hoped for)")
    for a, b, c, hoped in [q for q in ANALOGIES if all(w in index for w in q)]:
        found = analogy(unit, vocab, index, a, b, c)
        print(f"  {a} : {b} :: {c} : " + ", ".join(f"{'*' * (w == hoped)}{w} {s:.2f}" for w, s in found))
    if sims is None:
        return
    # All SGNS vectors lean towards one shared direction (Mimno & Thompson 2017, "The strange geometry of
    # skip-gram with negative sampling"), which lifts every cosine. Without the mean vector only the part that
    # tells words apart is left.
    w_in = result["w_in"]
    centred = lesson.pair_similarity(lesson.unit_rows(w_in - w_in.mean(axis=0)), index, lesson.RELATED_PAIRS, rng)
    print(f"related pairs, mean cosine without the mean vector: related {centred['related_mean']:.3f}; re-paired "
          f"{centred['shuffled_mean']:.3f}; random {centred['random_mean']:.3f}")
    if not cfg.no_plots:
        words = sorted({w for pair in sims["pairs"] for w in pair})
        coords, kept = pca_2d(unit[[index[w] for w in words]])
        path = plot_word_map(words, coords, sims["pairs"], Path(cfg.out) / "word_map.png")
        if path:
            print(f"2-D PCA map of these words ({kept:.0%} of their variance) -> {path}")
    lesson.section("Summary")
    print(f"word2vec: trained in {lesson.fmt_seconds(result['seconds'])}; mean cosine of related pairs "
          f"{sims['related_mean']:.3f} vs re-paired {sims['shuffled_mean']:.3f} vs random {sims['random_mean']:.3f}")


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
