"""Tests of companions/05_shortcut.py (the shortcut fix, measured) with a tiny random Llama; no downloads."""
import csv
import json
import re

import pytest

from conftest import assert_one_line_error, load_script, run_script
from test_05_finetune import make_model

sc = load_script("companions/05_shortcut.py")
gen = sc.gen


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("llama"), "llama")


def figures(text):
    return sorted(re.findall(r"\d+\.\d+|[^\W\d]+", text))


def test_number_swap_pairs_swap_the_figures_and_flip_the_label():
    pairs = gen.number_swap_pairs(50, seed=7)
    assert len(pairs) == 50 and pairs == gen.number_swap_pairs(50, seed=7), "deterministic for a seed"
    for (a, la), (b, lb) in pairs:
        assert {la, lb} == {"positive", "negative"} and a != b and figures(a) == figures(b), (a, b)
    again = gen.number_swap_pairs(50, seed=8, avoid={sc.norm(t) for pair in pairs for t, _ in pair})
    assert not {sc.norm(t) for pair in pairs for t, _ in pair} & {sc.norm(t) for pair in again for t, _ in pair}


def test_dev_shapes_are_used_by_no_training_or_challenge_template():
    dev = set(gen.DEV_NUMBER_SWAP_TEMPLATES)
    used = {t for ts in list(gen.TRAIN_TEMPLATES.values()) + list(gen.CHALLENGE_TEMPLATES.values()) for t in ts}
    assert dev and not dev & used
    sentences = [t for pair in gen.number_swap_pairs(30, 1, gen.DEV_NUMBER_SWAP_TEMPLATES) for t, _ in pair]
    skeleton = lambda t: re.sub(r"\d[\d.,]*", "#", sc.norm(t))  # noqa: E731
    with open(gen.PAIRS_CSV, newline="", encoding="utf-8") as f:
        training = {skeleton(r["text"]) for r in csv.DictReader(f)}
    assert len(training) > 100
    assert not {skeleton(t) for t in sentences} & training


def test_dev_and_extra_sets_are_disjoint_from_each_other_and_the_data():
    splits = {"train": [("Net sales rose.", "positive", "train")], "challenge": [("x", "neutral", "c1")]}
    sets = sc.dev_and_extra(splits, extra=40, dev_pairs=20)
    assert {k: len(v) for k, v in sets.items()} == {"dev_in": 40, "dev_new": 40, "extra": 80}
    seen = [sc.norm(t) for rows in sets.values() for t, _ in rows]
    assert len(seen) == len(set(seen)), "a sentence in two sets"
    sentences = {sc.norm(t) for t in gen.read_main_texts()}
    splits = {"train": [(t, "neutral", "train") for t in gen.read_main_texts()]}
    assert not sentences & {sc.norm(t) for rows in sc.dev_and_extra(splits, 40, 20).values() for t, _ in rows}


def test_pair_scores_need_both_sides():
    # pairs (0,1) both right, (2,3) one wrong: accuracy 3/4, pair accuracy 1/2, per kind
    r = sc.pair_scores([2, 0, 2, 2], [2, 0, 2, 0], ["a", "a", "b", "b"])
    assert r == dict(acc=0.75, pairs=0.5, a=1.0, b=0.0)


def test_tiny_run_reports_every_model(tmp_path, llama_dir):
    out = tmp_path / "rows.json"
    proc = run_script("companions/05_shortcut.py", "--model", llama_dir, "--max-train", "40", "--max-eval", "20",
                      "--epochs", "1", "--extra", "10", "--dev-pairs", "5", "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["before (originals only)", "pass (the lesson)", "joint (+10 number swaps)"]
    # joint trains on the originals, every generated pair and the extra ones; the pass on pairs + as many originals
    assert rows[2]["sentences"] == 40 + 540 + 20 and rows[1]["sentences"] == 80
    for r in rows:
        assert 0 <= r["challenge"]["pairs"] <= r["challenge"]["acc"] <= 1 and "number_swap" in r["challenge"]
        assert set(r["dev_in"]) == set(r["dev_new"]) == {"acc", "pairs"}
    assert "joint (+10 number swaps)" in proc.stdout and "chal. pairs" in proc.stdout
    proc = run_script("companions/05_shortcut.py", "--model", llama_dir, "--max-train", "40", "--max-eval", "20",
                      "--epochs", "1", "--extra", "4", "--dev-pairs", "5", "--variants", "joint", "--json", out)
    assert proc.returncode == 0 and [r["model"] for r in json.loads(out.read_text())] == ["joint (+4 number swaps)"]


@pytest.mark.parametrize("args, message", [(["--variants", "pass,foo"], "unknown foo"),
                                           (["--seeds", "one"], "--seeds"),
                                           (["--variants", ","], "none given"),
                                           (["--extra", "-1"], "--extra")])
def test_bad_flags_get_one_line_errors(args, message):
    assert_one_line_error(run_script("companions/05_shortcut.py", *args), contains=message)
