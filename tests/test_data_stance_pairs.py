"""Checks on the generated stance data (data/make_stance_pairs.py) and on the growth of data/financial_stance.csv.

- the labelling rule gives the right label on hand-written cases (the issue's own examples among them), and an
  independent reader of the generated sentences (keyword lists written here, not imported) agrees with every
  generated label;
- the training pairs are all in train (a pair can never sit on both sides of a split) and marked as generated;
- the challenge set shares no sentence, no skeleton (the sentence with its figures replaced by #) and no run of 5
  words with the training data, and its lexicon and templates are disjoint from the training ones;
- the first edition of financial_stance.csv (batches 01-28) is byte-for-byte what it was: new batches only add rows;
- both generated files are exactly what the generator writes (reproducible).
Fast: well under a second.
"""
import csv
import hashlib
import importlib.util
import io
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"
LABELS = {"negative", "neutral", "positive"}
# sha256 of data/financial_stance.csv as published before batch 29 (1956 rows, commit fd5f2b8): the first edition
FIRST_EDITION_SHA256 = "4781184d525711511e4525a61d2a3df037f422f7c14f2b8c3f3e669c33a15fcc"
FIRST_EDITION_ROWS = 1956


def load(name):
    spec = importlib.util.spec_from_file_location(name, DATA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing does no work: main() is guarded
    return module


@pytest.fixture(scope="module")
def gen():
    return load("make_stance_pairs")


def read(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def pairs():
    header, rows = read(DATA / "financial_stance_pairs.csv")
    assert header == ["text", "label", "split", "source", "pair_id", "kind"], header
    return rows


@pytest.fixture(scope="module")
def challenge():
    header, rows = read(DATA / "stance_challenge.csv")
    # pair_id,sentence,label: the --eval-file reader (companions/05_evaluate.py) knows the challenge set by "sentence"
    assert header == ["pair_id", "sentence", "label", "kind"], header
    return [dict(r, text=r["sentence"]) for r in rows]   # the tests below read every file's sentence as "text"


@pytest.fixture(scope="module")
def main_rows():
    return read(DATA / "financial_stance.csv")[1]


# ----------------------------------------------------------------------------------------------------------------
# the labelling rule
def test_rule_on_hand_written_cases(gen):
    good, bad = gen.GOOD, gen.BAD
    # the three errors: "Pretax profit was EUR 7.1 mn, against EUR 9.3 mn a year earlier." ...
    assert gen.change_label(good, 7.1, 9.3) == "negative"
    assert gen.swing_label("loss", "profit") == "negative"      # operating loss 2.4 against a profit of 1.8
    assert gen.change_label(good, 6.2, 11.9) == "negative"      # return on equity 6.2 % against 11.9 %
    # ... and their flips
    assert gen.change_label(good, 9.3, 7.1) == "positive"
    assert gen.swing_label("profit", "loss") == "positive"
    assert gen.change_label(good, 11.9, 6.2) == "positive"
    # a loss, costs, debt: smaller is better
    assert gen.change_label(bad, 1.9, 7.4) == "positive"        # net loss narrowed to 1.9 from 7.4
    assert gen.change_label(bad, 7.4, 1.9) == "negative"        # net loss widened
    assert gen.change_label(bad, 12.0, 10.0) == "negative"      # operating expenses rose
    assert gen.change_label(good, 12.0, 10.0) == "positive"     # net sales rose by the same amount
    # no change: no direction
    assert gen.change_label(good, 5.0, 5.0) == "neutral"
    assert gen.change_label(bad, 5.0, 5.0) == "neutral"
    with pytest.raises(ValueError):
        gen.swing_label("loss", "loss")


def test_generators_flip_labels_on_fresh_pairs(gen):
    # every kind, both lexicons, many random draws: the two sides always differ in label, and a number swap
    # changes nothing but the order of the figures
    rng = random.Random(0)
    for lex, templates in ((gen.TRAIN_LEX, gen.TRAIN_TEMPLATES), (gen.CHALLENGE_LEX, gen.CHALLENGE_TEMPLATES)):
        for kind, make in gen.GENERATORS.items():
            if kind not in templates:
                continue
            for _ in range(40):
                (a, la), (b, lb) = make(rng, lex, templates)
                assert la in LABELS and lb in LABELS and la != lb, (kind, a, b)
                if kind == "number_swap":
                    tokens = [sorted(re.findall(r"\d+\.\d+|[^\W\d]+", t)) for t in (a, b)]
                    assert tokens[0] == tokens[1] and a != b, (a, b)


# An independent reader of the generated sentences: keyword lists written here, so that a slip in the generator's
# lexicon (a cost filed as a sales metric, a verb in the wrong list) shows up as a disagreement.
BAD_METRIC = re.compile(r"\b(loss|losses|deficit|expenses|costs|debt|gearing|cost-to-income|non-performing|"
                        r"overheads|impairment|borrowings|provisions|bills|churn|combined ratio|default rate|"
                        r"scrap rate)\b", re.I)
UP = re.compile(r"\b(rose|increased|grew|improved|up|higher|jumped|advanced|climbed|widened|deepened)\b")
DOWN = re.compile(r"\b(fell|decreased|declined|weakened|down|lower|slid|dropped|slipped|narrowed|shrank|shrunk)\b")
FIGURE = re.compile(r"\d+\.\d+")   # the generated figures always have decimals (years and counts do not)


def read_label(kind, text):
    """The label a careful reader gives a generated sentence, from its words alone."""
    if kind == "loss_profit":
        # the first of profit/loss/income/positive EBIT named is the new result
        first = re.search(r"\b(loss|profit|income|positive ebit)\b", text.lower()).group(1)
        return "negative" if first == "loss" else "positive"
    if kind == "level_neutral" and len(FIGURE.findall(text)) < 2:
        return "neutral"
    bad_metric = bool(BAD_METRIC.search(text))
    if kind == "number_swap" or (kind == "level_neutral"):
        new, old = map(float, FIGURE.findall(text)[:2])
        if text.startswith(("Set against", "From ")):   # the shapes that name the old figure first
            new, old = old, new
        up = new > old
    else:
        up = bool(UP.search(text))
        assert up != bool(DOWN.search(text)), f"no single direction word in {text!r}"
    return "positive" if up != bad_metric else "negative"


@pytest.mark.parametrize("which", ["pairs", "challenge"])
def test_independent_reader_agrees_with_every_label(which, request):
    rows = request.getfixturevalue(which)
    wrong = [(r["pair_id"], r["text"], r["label"]) for r in rows
             if read_label(r["kind"], r["text"]) != r["label"]]
    assert not wrong, f"{len(wrong)} labels disagree with the reader, e.g. {wrong[:3]}"


# ----------------------------------------------------------------------------------------------------------------
# the training pairs
def test_pairs_are_train_only_generated_and_complete(pairs):
    assert 400 <= len(pairs) <= 600, f"{len(pairs)} rows: 05's CPU run may grow by 10% at most (~600 rows)"
    assert {r["split"] for r in pairs} == {"train"}, "a generated pair must never reach val or test"
    assert {r["source"] for r in pairs} == {"generated"}
    assert all(r["label"] in LABELS and r["text"] == r["text"].strip() and r["text"] for r in pairs)
    by_pair = defaultdict(list)
    for r in pairs:
        by_pair[r["pair_id"]].append(r)
    assert all(len(v) == 2 and v[0]["label"] != v[1]["label"] for v in by_pair.values()), "pairs of 2, labels differ"
    kinds = Counter(r["kind"] for r in pairs)
    for kind in ("number_swap", "verb_flip", "loss_profit", "narrow_widen", "cost_vs_sales", "level_neutral"):
        assert kinds[kind] >= 40, f"too few {kind} rows: {kinds[kind]}"
    texts = [" ".join(r["text"].lower().split()) for r in pairs]
    assert len(set(texts)) == len(texts), "a sentence appears twice"


def test_pairs_cover_the_comparison_phrasings(pairs):
    text = " ".join(r["text"] for r in pairs)
    for phrase in ("compared with", "compared to", "against", "a year earlier", "up from", "down from", "narrowed",
                   "widened", "return on equity", "margin", "%", "percent", "("):
        assert phrase in text, f"no training pair uses {phrase!r}"


# ----------------------------------------------------------------------------------------------------------------
# the challenge set
def skeleton(text):
    return re.sub(r"\d[\d.,]*", "#", " ".join(text.lower().split()))


def runs(text, n=5):
    w = re.findall(r"[^\s,;:()]+", skeleton(text))
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_challenge_pairs(challenge):
    assert 200 <= len(challenge) <= 400
    by_pair = defaultdict(list)
    for r in challenge:
        by_pair[r["pair_id"]].append(r["label"])
    # each pair: one positive and one negative side, so a model must read the direction to get both right
    assert all(sorted(v) == ["negative", "positive"] for v in by_pair.values()), "every pair: one of each"


def test_challenge_shares_no_sentence_skeleton_or_5_word_run_with_training(challenge, pairs, main_rows):
    training = [r["text"] for r in pairs] + [r["text"] for r in main_rows]
    same = {" ".join(t.lower().split()) for t in training} & {" ".join(r["text"].lower().split()) for r in challenge}
    assert not same, f"challenge sentences also in training: {sorted(same)[:3]}"
    shared = {skeleton(t) for t in training} & {skeleton(r["text"]) for r in challenge}
    assert not shared, f"challenge skeletons equal to training ones: {sorted(shared)[:3]}"
    pair_runs = set().union(*(runs(r["text"]) for r in pairs))
    overlap = Counter(x for r in challenge for x in runs(r["text"]) & pair_runs)
    assert not overlap, f"5-word runs shared with the training pairs: {overlap.most_common(3)}"


def test_challenge_lexicon_and_templates_are_disjoint_from_training(gen):
    train, chal = gen.TRAIN_LEX, gen.CHALLENGE_LEX

    def names(lex, key):
        return {item[0] if isinstance(item, tuple) else item for item in lex[key]}

    for key in ("good_money", "good_share", "bad_money", "good_pct", "bad_pct", "money", "share_money", "pct",
                "period", "when", "companies", "up", "down", "vs"):
        assert not names(train, key) & names(chal, key), f"{key} shared: {names(train, key) & names(chal, key)}"
    all_train = set().union(*(names(train, k) for k in train)) | {p for _, p in train["loss_profit"]}
    all_chal = set().union(*(names(chal, k) for k in chal)) | {p for _, p in chal["loss_profit"]}
    assert not all_train & all_chal, f"shared lexicon entries: {all_train & all_chal}"
    train_templates = {t for ts in gen.TRAIN_TEMPLATES.values() for t in ts}
    assert not train_templates & {t for ts in gen.CHALLENGE_TEMPLATES.values() for t in ts}
    assert not set(gen.TRAIN_NW.values()) & set(gen.CHALLENGE_NW.values())


# ----------------------------------------------------------------------------------------------------------------
# the main data set and reproducibility
def test_generated_sentences_are_not_in_the_main_data(pairs, main_rows):
    main = {" ".join(r["text"].lower().split()) for r in main_rows}
    clash = [r["text"] for r in pairs if " ".join(r["text"].lower().split()) in main]
    assert not clash, f"generated sentences already in financial_stance.csv: {clash[:3]}"


def test_first_edition_rows_unchanged():
    # Remove the rows that the later batches (29 onwards) add: what is left must be the first edition's CSV,
    # byte for byte (same rows, same labels, same splits, same order).
    builder = load("make_financial_stance")
    later = {builder.detach_punctuation(t) if builder.tokenised_style(t) else t
             for t, _, where in builder.read_batches(builder.SRC_DIR)
             if builder.batch_number(where) > builder.FROZEN_BATCHES}
    assert later, "no later batch found (data/financial_stance_src/29_*.txt)"
    header, rows = read(DATA / "financial_stance.csv")
    kept = [r for r in rows if r["text"] not in later]
    assert len(kept) == FIRST_EDITION_ROWS and len(rows) == FIRST_EDITION_ROWS + len(later)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    digest = hashlib.sha256(buf.getvalue().encode("utf-8")).hexdigest()
    assert digest == FIRST_EDITION_SHA256, (
        "a first-edition row of financial_stance.csv changed (text, label, split or order)")


def test_headline_batch_is_in_the_main_data(main_rows):
    headlines = [r for r in main_rows if "$" in r["text"] and re.search(r"\$[A-Z]{3,5}\b", r["text"])]
    assert len(headlines) >= 150, f"only {len(headlines)} cashtag sentences"
    splits = Counter(r["split"] for r in headlines)
    assert splits["train"] > splits["val"] > 0 and splits["test"] > 0, splits
    for phrase in ("beats", "pulls", "cut to sell", "PT raised to $40"):
        assert any(phrase in r["text"] for r in headlines), phrase


def test_files_are_what_the_generator_writes(gen):
    train_text, challenge_text = gen.build()
    assert (DATA / "financial_stance_pairs.csv").read_text(encoding="utf-8") == train_text, (
        "financial_stance_pairs.csv differs from a fresh build; run: python data/make_stance_pairs.py")
    assert (DATA / "stance_challenge.csv").read_text(encoding="utf-8") == challenge_text, (
        "stance_challenge.csv differs from a fresh build; run: python data/make_stance_pairs.py")
