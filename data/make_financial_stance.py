"""Build data/financial_stance.csv from the hand-written source batches, and report its statistics.

The sentences live in data/financial_stance_src/*.txt, one sentence a line, written by hand for this project in
topic batches. The first character of a line is its label (+ positive, - negative, 0 neutral), then a space, then
the sentence; lines starting with # are comments. This script

  1. reads every batch (sorted by file name), normalises white space and drops exact duplicates
     (case- and white-space-insensitive; a duplicate with a DIFFERENT label is an error to fix by hand);
  2. groups near-duplicates: two sentences that share a run of 8 words (an 8-word "shingle") are put in one group,
     and a whole group always goes to one split, so no test sentence has a near-twin in train;
  3. splits the groups into train/val/test (70/15/15) stratified by label, deterministically (fixed seed);
  4. writes data/financial_stance.csv (columns text,label,split; RFC-4180 quoting) atomically;
  5. prints the statistics and the test accuracy of a bag-of-words logistic regression (NumPy) trained on train,
     the figures that data/README.md reports.

Run it from anywhere:   python data/make_financial_stance.py            (rebuild + report)
                        python data/make_financial_stance.py --check    (rebuild in memory, fail if the CSV differs)
"""
import argparse
import csv
import hashlib
import io
import os
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------------------------------------------
# config
HERE = Path(globals().get("__file__", "data/make_financial_stance.py")).resolve().parent
SRC_DIR = HERE / "financial_stance_src"       # the hand-written batches
OUT_CSV = HERE / "financial_stance.csv"
SEED = 20240611                               # fixes the split; change it and every row may move
SHARES = {"train": 0.70, "val": 0.15, "test": 0.15}
SHINGLE = 8                                   # sentences sharing this many consecutive words are near-duplicates
CODES = {"+": "positive", "-": "negative", "0": "neutral"}
LABELS = ["negative", "neutral", "positive"]  # the order 05 uses for id2label
TOKENISED_SHARE = 0.08                        # this share of sentences gets detached punctuation ("mn ( EUR 4.1 mn ) .")
MIN_WORDS, MAX_WORDS = 6, 50                  # the length range every sentence should fall in (the test allows 1% out)
FROZEN_BATCHES = 28                           # batches 01-28, the first edition: their splits and order never change


def fail(message, code=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


# ----------------------------------------------------------------------------------------------------------------
# reading the batches
def words(text):
    """Lower-case word tokens (letters/digits runs); the unit for shingles and for the baseline's features."""
    return re.findall(r"\w+", text.lower())


def norm_key(text):
    """Key for exact-duplicate detection: case and white space do not matter."""
    return " ".join(text.lower().split())


def read_batches(src_dir):
    """-> list of (text, label, source 'file:line'), exact duplicates removed (first occurrence kept)."""
    files = sorted(src_dir.glob("*.txt"))
    if not files:
        fail(f"no source batches in {src_dir}; they ship with the repository (data/financial_stance_src/)")
    rows, seen = [], {}
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            code, _, text = line.partition(" ")
            if code not in CODES or not text.strip():
                fail(f"{path.name}:{number}: a line must be '+ text', '- text' or '0 text', got {line[:40]!r}")
            text = " ".join(text.split())
            label, where = CODES[code], f"{path.name}:{number}"
            key = norm_key(text)
            if key in seen:
                if seen[key][1] != label:
                    fail(f"{where}: duplicate of {seen[key][2]} with a different label; fix one of them")
                continue
            seen[key] = (text, label, where)
            rows.append((text, label, where))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# near-duplicate groups (union-find over shared 8-word shingles)
def shingles(text, n=SHINGLE):
    w = words(text)
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def near_duplicate_groups(texts):
    parent = list(range(len(texts)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    first_owner = {}
    for i, text in enumerate(texts):
        for sh in shingles(text):
            if sh in first_owner:
                parent[find(i)] = find(first_owner[sh])
            else:
                first_owner[sh] = i
    groups = defaultdict(list)
    for i in range(len(texts)):
        groups[find(i)].append(i)
    return list(groups.values())


# ----------------------------------------------------------------------------------------------------------------
# stratified, group-aware split
def assign_splits(rows, seed=SEED):
    """Greedy: visit groups (big ones first, ties in seeded random order) and put each into the split that is least
    full, relative to its target count, for the labels the group carries. Deterministic for a given seed."""
    texts = [t for t, _, _ in rows]
    groups = near_duplicate_groups(texts)
    rng = random.Random(seed)
    groups.sort(key=lambda g: texts[g[0]])          # a canonical order first, so the shuffle is reproducible
    rng.shuffle(groups)
    groups.sort(key=len, reverse=True)              # stable: keeps the shuffled order among equal sizes
    label_totals = Counter(label for _, label, _ in rows)
    target = {s: {l: SHARES[s] * label_totals[l] for l in LABELS} for s in SHARES}
    filled = {s: Counter() for s in SHARES}
    split_of = [None] * len(rows)
    for group in groups:
        need = Counter(rows[i][1] for i in group)

        def fullness(s):  # how full split s would be, for the fullest of the group's labels
            return max((filled[s][l] + k) / max(target[s][l], 1e-9) for l, k in need.items())

        best = min(SHARES, key=fullness)  # dict order train, val, test breaks ties
        filled[best].update(need)
        for i in group:
            split_of[i] = best
    return split_of, groups


def assign_later_splits(rows, n_frozen, frozen_split, seed=SEED):
    """Splits for the rows of the later batches (rows[n_frozen:]), leaving the frozen rows (rows[:n_frozen],
    split frozen_split) where they are. A later sentence that shares an 8-word run with a frozen one joins that
    one's split; the other later groups are placed among themselves by the same greedy, stratified rule as
    assign_splits, with targets counted on the later rows alone. -> (splits of rows[n_frozen:], groups)."""
    texts = [t for t, _, _ in rows]
    groups = [g for g in near_duplicate_groups(texts) if max(g) >= n_frozen]   # groups holding a later row
    split_of = {}
    free = []
    for group in groups:
        frozen = {frozen_split[i] for i in group if i < n_frozen}
        if len(frozen) > 1:
            fail(f"{rows[max(group)][2]} shares 8-word runs with first-edition sentences in different splits")
        if frozen:
            split_of.update({i: frozen.pop() for i in group if i >= n_frozen})
        else:
            free.append(group)
    rng = random.Random(seed + 2)
    free.sort(key=lambda g: texts[g[0]])
    rng.shuffle(free)
    free.sort(key=len, reverse=True)
    later = range(n_frozen, len(rows))
    label_totals = Counter(rows[i][1] for i in later)
    target = {s: {l: SHARES[s] * label_totals[l] for l in LABELS} for s in SHARES}
    filled = {s: Counter(rows[i][1] for i in split_of if split_of[i] == s) for s in SHARES}
    for group in free:
        need = Counter(rows[i][1] for i in group)
        best = min(SHARES, key=lambda s: max((filled[s][l] + k) / max(target[s][l], 1e-9) for l, k in need.items()))
        filled[best].update(need)
        split_of.update({i: best for i in group})
    return [split_of[i] for i in later], groups


def detach_punctuation(text):
    """'EUR 5.2 mn (EUR 4.1 mn), the company's CEO said.' -> 'EUR 5.2 mn ( EUR 4.1 mn ) , the company 's CEO said .'
    The spacing of tokenised news corpora: punctuation split off, decimal points and thousands commas kept."""
    text = re.sub(r"[()\"]", lambda m: f" {m.group(0)} ", text)             # brackets and quotes first, then
    text = re.sub(r"[.,;:!?](?=\s|$)", lambda m: f" {m.group(0)} ", text)   # sentence/clause punctuation
    text = re.sub(r"(\w)'s\b", r"\1 's", text)                              # possessive 's
    return " ".join(text.split())


def tokenised_style(text):
    """Deterministically pick about TOKENISED_SHARE of the sentences (by a hash of the text, not by position)."""
    digest = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16)
    return digest % 1000 < TOKENISED_SHARE * 1000 and len(text.split()) <= 40


def batch_number(where):
    """'07_ratings_analysts.txt:12' -> 7."""
    return int(where.split("_", 1)[0])


def build(rows, seed=SEED):
    """-> list of dicts text/label/split: train, val, test, each block shuffled (seeded); and the groups.

    The first edition (batches 01-28, FROZEN_BATCHES) is split and ordered exactly as when it was published, so a
    new batch never moves an existing sentence to another split: the rows of later batches get their own
    stratified split (assign_later_splits) and are written after the first-edition rows of their split, each such
    block shuffled with its own seed."""
    frozen = [r for r in rows if batch_number(r[2]) <= FROZEN_BATCHES]
    later = [r for r in rows if batch_number(r[2]) > FROZEN_BATCHES]
    split_of, groups = assign_splits(frozen, seed)
    later_split, later_groups = assign_later_splits(frozen + later, len(frozen), split_of, seed) if later else ([], [])
    out = []
    rng = random.Random(seed + 1)
    rng_later = random.Random(seed + 3)
    for s in SHARES:
        part = [{"text": detach_punctuation(t) if tokenised_style(t) else t, "label": l, "split": s}
                for (t, l, _), sp in zip(frozen, split_of) if sp == s]
        rng.shuffle(part)
        out.extend(part)
        part = [{"text": detach_punctuation(t) if tokenised_style(t) else t, "label": l, "split": s}
                for (t, l, _), sp in zip(later, later_split) if sp == s]
        rng_later.shuffle(part)
        out.extend(part)
    groups = groups + [[i for i in g] for g in later_groups if min(g) >= len(frozen)]
    return out, groups


def to_csv_text(records):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["text", "label", "split"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# the baseline: bag-of-words multinomial logistic regression in NumPy
def bow_matrix(texts, vocab):
    x = np.zeros((len(texts), len(vocab)), dtype=np.float64)
    for r, text in enumerate(texts):
        for w in set(words(text)):      # binary features: is the word present?
            j = vocab.get(w)
            if j is not None:
                x[r, j] = 1.0
    return x


def train_logreg(x, y, n_classes, l2, steps=400, lr=0.5):
    """Full-batch gradient descent on mean cross-entropy + l2/2 * |W|^2.
    p = softmax(x W + b);  dLoss/dlogits = (p - onehot(y)) / N;  dW = x^T dlogits + l2 W;  db = sum of dlogits."""
    n, d = x.shape
    w = np.zeros((d, n_classes))
    b = np.zeros(n_classes)
    onehot = np.eye(n_classes)[y]                        # (N, K)
    for _ in range(steps):
        logits = x @ w + b                               # (N, K)
        logits -= logits.max(axis=1, keepdims=True)      # stable softmax
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / n                             # (N, K)
        w -= lr * (x.T @ g + l2 * w)
        b -= lr * g.sum(axis=0)
    return w, b


def macro_f1(y_true, y_pred, n_classes):
    f1s = []
    for c in range(n_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def baseline(records):
    by = {s: [r for r in records if r["split"] == s] for s in SHARES}
    vocab = {}
    for r in by["train"]:
        for w in words(r["text"]):
            vocab.setdefault(w, len(vocab))
    xs = {s: bow_matrix([r["text"] for r in by[s]], vocab) for s in SHARES}
    ys = {s: np.array([LABELS.index(r["label"]) for r in by[s]]) for s in SHARES}
    best = None
    for l2 in (1e-4, 1e-3, 3e-3, 1e-2, 3e-2):          # pick the regularisation on val, report on test
        w, b = train_logreg(xs["train"], ys["train"], len(LABELS), l2)
        val_acc = float(np.mean((xs["val"] @ w + b).argmax(1) == ys["val"]))
        if best is None or val_acc > best[0]:
            best = (val_acc, l2, w, b)
    val_acc, l2, w, b = best
    pred = (xs["test"] @ w + b).argmax(1)
    majority = Counter(r["label"] for r in by["train"]).most_common(1)[0][0]
    return {
        "l2": l2, "vocab": len(vocab), "val_acc": val_acc,
        "test_acc": float(np.mean(pred == ys["test"])),
        "test_macro_f1": macro_f1(ys["test"], pred, len(LABELS)),
        "majority_label": majority,
        "majority_test_acc": float(np.mean(ys["test"] == LABELS.index(majority))),
    }


# ----------------------------------------------------------------------------------------------------------------
# report
# Rough markers of the hard cases written on purpose (a sentence may match several; only for the statistics).
HARD_CASE_PATTERNS = {
    "negation (not, no, no longer, never, without ...)": r"\b(not|no|never|neither|nor|without|no longer)\b|n't",
    "contrast (but, although, despite, offset, yet ...)": r"\b(but|although|though|despite|yet|while|offset|whereas)\b",
    "hedge (expects, may, could, likely, forecast ...)": r"\b(expects?|expected|may|might|could|likely|forecasts?|estimates?)\b",
    "figures with no sentiment word (rose/fell or a (x) comparison only)": None,
}
SENTIMENT_WORDS = r"\b(good|bad|strong|weak|record|best|worst|boost\w*|hurt|hit|beat|miss\w*|success\w*|fail\w*|" \
                  r"improv\w*|deteriorat\w*|disappoint\w*|warn\w*|surg\w*|plung\w*|soar\w*|slump\w*)\b"


def hard_case_counts(records):
    counts = {}
    for name, pattern in HARD_CASE_PATTERNS.items():
        if pattern is None:  # a number and a direction verb or a bracketed comparison, no evaluative word
            hit = [r for r in records if r["label"] != "neutral" and re.search(r"\d", r["text"])
                   and not re.search(SENTIMENT_WORDS, r["text"].lower())]
        else:
            hit = [r for r in records if re.search(pattern, r["text"].lower())]
        counts[name] = len(hit)
    return counts


def report(records, groups, n_source):
    n = len(records)
    lengths = [len(r["text"].split()) for r in records]
    vocab = Counter(w for r in records for w in words(r["text"]))
    print(f"sentences: {n} (from {n_source} source lines after exact de-duplication)")
    print(f"distinct words (lower-cased \\w+ tokens): {len(vocab)}")
    print(f"mean length: {np.mean(lengths):.1f} words (min {min(lengths)}, max {max(lengths)}); "
          f"<= 12 words: {np.mean(np.array(lengths) <= 12):.1%}, >= 25 words: {np.mean(np.array(lengths) >= 25):.1%}")
    odd = [r["text"] for r, k in zip(records, lengths) if not MIN_WORDS <= k <= MAX_WORDS]
    if odd:
        print(f"warning: {len(odd)} sentences outside {MIN_WORDS}..{MAX_WORDS} words, e.g. {odd[:3]}")
    print(f"near-duplicate groups with 2+ sentences: {sum(len(g) > 1 for g in groups)} "
          f"(largest {max(len(g) for g in groups)})")
    print("hard-case markers (a sentence can count in several):")
    for name, k in hard_case_counts(records).items():
        print(f"  {name}: {k} ({100 * k / n:.1f}%)")
    print("\n| split | sentences | share | negative | neutral | positive |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in list(SHARES) + ["all"]:
        part = [r for r in records if s == "all" or r["split"] == s]
        c = Counter(r["label"] for r in part)
        cells = " | ".join(f"{c[l]} ({100 * c[l] / len(part):.1f}%)" for l in LABELS)
        print(f"| {s} | {len(part)} | {100 * len(part) / n:.1f}% | {cells} |")
    b = baseline(records)
    print(f"\nbaseline (binary bag of words, {b['vocab']} train words, logistic regression, l2={b['l2']} chosen on "
          f"val, val acc {b['val_acc']:.3f}):")
    print(f"  test accuracy {b['test_acc']:.3f}, test macro-F1 {b['test_macro_f1']:.3f}; "
          f"majority class ({b['majority_label']}) test accuracy {b['majority_test_acc']:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the CSV on disk differs from a fresh build")
    parser.add_argument("--no-report", action="store_true", help="skip the statistics and the baseline")
    args, _ = parser.parse_known_args()
    rows = read_batches(SRC_DIR)
    records, groups = build(rows)
    text = to_csv_text(records)
    if args.check:
        if not OUT_CSV.exists() or OUT_CSV.read_text(encoding="utf-8") != text:
            fail(f"{OUT_CSV} is not what the source batches build; run: python data/make_financial_stance.py", 1)
        print(f"ok: {OUT_CSV.name} matches a fresh build ({len(records)} rows)")
    else:
        tmp = OUT_CSV.with_suffix(".csv.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, OUT_CSV)                      # never a half-written CSV
        print(f"wrote {OUT_CSV} ({len(records)} rows)")
    if not args.no_report:
        report(records, groups, len(rows))


if __name__ == "__main__":
    main()
