"""Tests for companions/02_word2vec.py: a tiny run on the corpus with the lesson's training, analogies, the centred
vectors and the word map; flag errors. (The training functions live in the lesson: tests/test_02_embeddings.py.)"""
import math
import re

import numpy as np

from conftest import assert_one_line_error, load_script, run_script

w2v = load_script("companions/02_word2vec.py")
SCRIPT = "companions/02_word2vec.py"


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
    assert re.search(r"^\s+king: \w+ [\d.]+, ", out, re.M)                  # the lesson's neighbours
    assert re.search(r"^  man : woman :: king : \*?[\w']+ -?[\d.]+, ", out, re.M)   # an analogy answered
    centred_related, centred_random = map(float, re.search(
        r"without the mean vector: related (\S+); re-paired \S+; random (\S+)", out).groups())
    assert centred_related > centred_random
    assert (out_dir / "word_map.png").stat().st_size > 1000


def test_analogy_applies_the_offset():
    # king - man + woman lands exactly on queen; a, b and c themselves are never answers
    vocab = ["man", "woman", "king", "queen", "apple", "stone"]
    vectors = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1], [0, 0, 1, 1]], float)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = w2v.analogy(unit, vocab, {w: i for i, w in enumerate(vocab)}, "man", "woman", "king", k=2)
    assert found[0][0] == "queen" and len(found) == 2
    assert not {w for w, _ in found} & {"man", "woman", "king"}


def test_bad_flag_gives_one_line_error():
    assert_one_line_error(run_script(SCRIPT, "--w2v-epochs", "0", timeout=60), code=2, contains="--w2v-epochs")
