"""Checks on data/financial_stance.csv, the labelled data set stage 05 fine-tunes on (see data/README.md).

Every check reads the CSV exactly as 05 does (csv.DictReader) and fails with a message that names the offending
rows, so a bad edit to the source batches is caught before it reaches a model. Fast: a few hundred ms.
"""
import csv
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"
CSV_PATH = DATA / "financial_stance.csv"

LABELS = {"negative", "neutral", "positive"}
SPLITS = {"train", "val", "test"}
MIN_ROWS = 1500
# Realistic class balance for financial news: neutral about half, positive about a third, negative the rest.
LABEL_BOUNDS = {"neutral": (0.45, 0.60), "positive": (0.25, 0.40), "negative": (0.12, 0.25)}
SPLIT_BOUNDS = {"train": (0.64, 0.76), "val": (0.12, 0.18), "test": (0.12, 0.18)}
STRATIFY_TOLERANCE = 0.03      # each split's label share within 3 points of the overall share
SHINGLE = 8                    # no two sentences in different splits may share a run of 8 words
MIN_WORDS, MAX_WORDS = 6, 50
LENGTH_EXCEPTIONS = 0.01       # at most 1% of rows may fall outside MIN_WORDS..MAX_WORDS


@pytest.fixture(scope="module")
def rows():
    assert CSV_PATH.exists(), f"{CSV_PATH} is missing; build it with: python data/make_financial_stance.py"
    with open(CSV_PATH, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["text", "label", "split"], f"header is {reader.fieldnames}"
        return list(reader)


def words(text):
    # The same tokenisation the builder uses for shingles: lower-cased runs of letters/digits.
    return re.findall(r"\w+", text.lower())


def test_schema_labels_splits_and_no_empty_text(rows):
    bad = [(i, r) for i, r in enumerate(rows, 2)
           if r["label"] not in LABELS or r["split"] not in SPLITS or not (r["text"] or "").strip()
           or None in r or len(r) != 3]  # None key = a row with more fields than the header
    assert not bad, f"bad rows (line, row): {bad[:5]}"
    assert all(r["text"] == r["text"].strip() for r in rows), "texts must not start or end with white space"


def test_minimum_count(rows):
    assert len(rows) >= MIN_ROWS, f"only {len(rows)} rows, need at least {MIN_ROWS}"


def test_no_duplicates_ignoring_case_and_white_space(rows):
    seen = {}
    dups = []
    for r in rows:
        key = " ".join(r["text"].lower().split())
        if key in seen:
            dups.append(r["text"])
        seen[key] = r
    assert not dups, f"{len(dups)} duplicate texts, e.g. {dups[:3]}"


def test_no_near_duplicates_across_splits(rows):
    owner = {}  # shingle -> (split, text) of the first sentence that has it
    leaks = []
    for r in rows:
        w = words(r["text"])
        for i in range(len(w) - SHINGLE + 1):
            sh = " ".join(w[i:i + SHINGLE])
            if sh in owner and owner[sh][0] != r["split"]:
                leaks.append((sh, owner[sh][1], r["text"]))
            owner.setdefault(sh, (r["split"], r["text"]))
    assert not leaks, f"{len(leaks)} {SHINGLE}-word runs shared across splits, e.g. {leaks[:2]}"


def test_label_balance(rows):
    counts = Counter(r["label"] for r in rows)
    for label, (lo, hi) in LABEL_BOUNDS.items():
        share = counts[label] / len(rows)
        assert lo <= share <= hi, f"{label} is {share:.1%} of rows, expected {lo:.0%}..{hi:.0%}"


def test_split_shares_and_stratification(rows):
    n = len(rows)
    overall = Counter(r["label"] for r in rows)
    by_split = defaultdict(Counter)
    for r in rows:
        by_split[r["split"]][r["label"]] += 1
    for split, (lo, hi) in SPLIT_BOUNDS.items():
        size = sum(by_split[split].values())
        assert lo <= size / n <= hi, f"split {split} is {size / n:.1%} of rows, expected {lo:.0%}..{hi:.0%}"
        for label in LABELS:
            diff = by_split[split][label] / size - overall[label] / n
            assert abs(diff) <= STRATIFY_TOLERANCE, (
                f"{label} share in {split} differs from overall by {diff:+.1%} (not stratified)")


def test_sentence_lengths(rows):
    lengths = [len(r["text"].split()) for r in rows]
    outside = [r["text"] for r, k in zip(rows, lengths) if not MIN_WORDS <= k <= MAX_WORDS]
    assert len(outside) <= LENGTH_EXCEPTIONS * len(rows), (
        f"{len(outside)} rows outside {MIN_WORDS}..{MAX_WORDS} words, e.g. {outside[:3]}")
    # Variety: not all short headlines, not all long sentences.
    assert sum(k <= 12 for k in lengths) >= 0.10 * len(rows), "too few short sentences (<= 12 words)"
    assert sum(k >= 25 for k in lengths) >= 0.10 * len(rows), "too few long sentences (>= 25 words)"


def test_variety_of_openings(rows):
    # A model must not learn the writer's habits. English news starts many sentences with "The", so the first word
    # may be common, but no opening pair of words ("the company", "net sales") may dominate.
    openings = [words(r["text"]) for r in rows]
    first = Counter(w[0] for w in openings if w)
    word, count = first.most_common(1)[0]
    assert count <= 0.40 * len(rows), f"{count} sentences ({count / len(rows):.0%}) start with {word!r}"
    pairs = Counter(" ".join(w[:2]) for w in openings if len(w) >= 2)
    pair, count = pairs.most_common(1)[0]
    assert count <= 0.10 * len(rows), f"{count} sentences ({count / len(rows):.0%}) start with {pair!r}"


def test_csv_is_what_the_source_batches_build():
    # The CSV is generated: data/make_financial_stance.py turns the hand-written batches in
    # data/financial_stance_src/ into it deterministically. An edit made to the CSV alone would be lost on the next
    # build, so the two must agree (fix: edit the batch file, then run the builder).
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_financial_stance", DATA / "make_financial_stance.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)  # importing does no work: main() is guarded
    records, _ = builder.build(builder.read_batches(builder.SRC_DIR))
    expected = builder.to_csv_text(records)
    assert CSV_PATH.read_text(encoding="utf-8") == expected, (
        "data/financial_stance.csv differs from a fresh build; run: python data/make_financial_stance.py")
