"""Tests for companions/02_word2vec.py: skip-gram pairs, row updates that add repeats, word2vec learning two
topics apart, and a tiny run on the corpus with its word map."""
import math
import re

import numpy as np

from conftest import assert_one_line_error, load_script, run_script

w2v = load_script("companions/02_word2vec.py")
SCRIPT = "companions/02_word2vec.py"


def test_scatter_add_rows_accumulates_repeats():
    matrix = np.zeros((5, 3), dtype=np.float32)
    rows = np.array([1, 3, 1, 1])
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    w2v.scatter_add_rows(matrix, rows, values)
    expected = np.zeros((5, 3), dtype=np.float32)
    for r, v in zip(rows, values):
        expected[r] += v
    assert np.array_equal(matrix, expected)


def test_skipgram_pairs_stay_inside_the_window():
    ids = np.arange(200)
    centres, contexts = w2v.skipgram_pairs(ids, 3, np.random.default_rng(0))
    distance = np.abs(centres - contexts)
    assert distance.min() == 1 and distance.max() == 3
    assert (distance == 1).sum() > (distance == 3).sum()   # nearer words are used more often


def test_word2vec_separates_two_topics():
    # Two vocabularies that never share a sentence: words must end up closer to their own topic.
    rng = np.random.default_rng(0)
    sentences = [rng.choice(10, 8) + 10 * (i % 2) for i in range(4000)]
    ids = np.concatenate(sentences)
    counts = np.bincount(ids, minlength=20).astype(np.float64)
    w_in, losses = w2v.w2v_train(ids, counts, dim=16, window=3, negatives=5, epochs=3, lr=0.05, batch=256,
                                 subsample=1.0, rng=rng, log=lambda *_: None)
    assert losses[-1] < losses[0]
    unit = w2v.unit_rows(w_in)
    cos = unit @ unit.T
    same = np.mean([cos[i, j] for i in range(20) for j in range(20) if i != j and i // 10 == j // 10])
    other = np.mean([cos[i, j] for i in range(20) for j in range(20) if i // 10 != j // 10])
    assert same > other + 0.3


def test_tiny_run(out_dir):
    # --tiny trains one short epoch; on 300k characters that is enough for the pairs chosen before training to
    # come out clearly more similar than random pairs of words
    proc = run_script(SCRIPT, "--tiny", "--max-chars", 300_000, "--out", out_dir, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    gradient = float(re.search(r"finite differences \(float64\): max abs diff (\S+)", out).group(1))
    loss = float(re.search(r"loss per pair by epoch: (\S+)", out).group(1))
    related, repaired, random_pairs = map(float, re.search(
        r"mean cosine: related (\S+); the same words re-paired (\S+); random pairs of the \S+ most frequent words "
        r"(\S+)", out).groups())
    assert gradient < 1e-6
    assert loss < 6 * math.log(2)   # below the start: every score 0, loss (1 + 5 negatives) * log 2 per pair
    assert related > random_pairs + 0.1 and related > repaired
    assert "king:" in out and "analogies" in out
    assert (out_dir / "word_map.png").stat().st_size > 1000


def test_bad_flag_gives_one_line_error():
    assert_one_line_error(run_script(SCRIPT, "--w2v-epochs", "0", timeout=60), code=2, contains="--w2v-epochs")
