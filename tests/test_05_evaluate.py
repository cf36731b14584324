"""Tests of companions/05_evaluate.py and companions/05_prompting.py (05's saved classifier, files, baselines,
plots, zero/few-shot prompting with a KV-cached prefix), with the tiny models of tests/test_05_finetune.py."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error, load_script, run_script
from test_05_finetune import make_model, stance_csv

ft = load_script("05")
ev = load_script("companions/05_evaluate.py")
pr = load_script("companions/05_prompting.py")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("gpt2"), "gpt2")


def test_phrasebank_csv_and_challenge_parsers(tmp_path):
    fpb = tmp_path / "fpb.txt"
    fpb.write_bytes("Profit rose to EUR 5 mn from EUR 4 mn .@positive\n\nThe caf\xe9 opened @ noon .@neutral\n"
                    .encode("latin-1"))
    assert ev.read_eval_file(fpb) == [("Profit rose to EUR 5 mn from EUR 4 mn .", "positive"),
                                      ("The caf\xe9 opened @ noon .", "neutral")]
    path = tmp_path / "x.csv"
    path.write_text('text,label\n"Sales fell, sharply",Negative\nA plain one,neutral\n', encoding="utf-8")
    assert ev.read_eval_file(path) == [("Sales fell, sharply", "negative"), ("A plain one", "neutral")]
    challenge = tmp_path / "c.csv"
    challenge.write_text("pair_id,sentence,label\n1,Profit rose to 9 from 7.,positive\n1,Profit fell to 7 from 9.,"
                         "negative\n2,Costs fell.,positive\n2,Costs rose.,negative\n", encoding="utf-8")
    rows = ev.read_eval_file(challenge)
    assert rows[1] == ("Profit fell to 7 from 9.", "negative", "1")
    # pair 1 both right, pair 2 one wrong: pair accuracy 1/2
    assert ev.pair_accuracy(rows, [2, 0, 2, 2]) == (0.5, 2)


def test_eval_file_reads_the_real_challenge_set():
    rows = ev.read_eval_file(ev.ROOT / "data" / "stance_challenge.csv")
    assert len(rows) == 300 and all(len(r) == 3 and r[1] in ("positive", "negative") for r in rows)
    truth = [ft.LABELS.index(r[1]) for r in rows]
    assert ev.pair_accuracy(rows, truth) == (1.0, 150)
    flipped = [2 - y if i % 2 else y for i, y in enumerate(truth)]  # one side of every pair wrong
    assert ev.pair_accuracy(rows, flipped) == (0.0, 150)


@pytest.mark.parametrize("content,message", [
    ("Good news .@positive\nno label here\n", "line 2"),
    ("Good news .@positive\nBad news .@awful\n", "unknown label 'awful'"),
    ("", "empty"),
    ("text,label\nfine,neutral\n,positive\n", "line 3"),
    ("text,label\nfine,happy\n", "label"),
])
def test_bad_eval_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="latin-1")
    with pytest.raises(ft.UsageError, match=message):
        ev.read_eval_file(path)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.filterwarnings("error::FutureWarning")  # transformers 5.x warns when the cache goes in as past_key_values
def test_prompt_scores_with_cached_prefix_equal_full_prompts(llama_dir, gpt2_dir, arch):
    """The KV-cached prefix + batched suffixes give the same label log-likelihoods as scoring each whole prompt."""
    from transformers import AutoModelForCausalLM
    model_dir = llama_dir if arch == "llama" else gpt2_dir
    lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = ft.load_tokenizer(model_dir, True)
    examples = [("Sales rose.", "positive"), ("Costs fell sharply.", "positive"), ("It is in Oslo.", "neutral")]
    texts = ["Profit fell", "A much longer sentence about the company", "N/A"]
    scores, _ = pr.label_scores(lm, tok, examples, texts, torch.device("cpu"), batch_size=2, max_len=64)
    prefix, suffix, lead = pr.prompt_template(tok, examples)
    before, after = suffix.split(pr.MARKER)
    for i, text in enumerate(texts):
        context = [i for piece in (prefix, before, " " + text, after)
                   for i in tok(piece, add_special_tokens=False).input_ids]
        for j, label in enumerate(ft.LABELS):
            label_ids = tok(lead + label, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = F.log_softmax(lm(input_ids=torch.tensor([context + label_ids])).logits[0], -1)
            expected = sum(logp[len(context) - 1 + k, t].item() for k, t in enumerate(label_ids))
            assert abs(scores[i, j].item() - expected) < 1e-4, (text, label)


def test_cache_keyword_matches_installed_transformers(llama_dir):
    import inspect
    from transformers import AutoModelForCausalLM
    body = AutoModelForCausalLM.from_pretrained(llama_dir).base_model
    assert pr.cache_keyword(body) in inspect.signature(body.forward).parameters


@pytest.mark.slow
def test_prompting_companion_runs_warning_free(tmp_path, llama_dir):
    challenge = tmp_path / "c.csv"
    challenge.write_text("pair_id,sentence,label\n1,great news,positive\n1,awful news,negative\n", encoding="utf-8")
    proc = run_script("companions/05_prompting.py", "--model", llama_dir, "--data", stance_csv(tmp_path / "s.csv"),
                      "--shots-per-label", "1", "--eval-file", challenge, "--json", tmp_path / "rows.json", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "zero-shot prompt on test split" in proc.stdout and "few-shot prompt (k=3)" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "rows.json").read_text())  # the test split's rows, for 05's results table
    assert [r["name"] for r in rows] == ["zero-shot prompt", "few-shot prompt (k=3)"]
    printed = float(proc.stdout.split("zero-shot prompt on test split")[1].split("calibrated accuracy ")[1][:5])
    assert rows[0]["acc"] == pytest.approx(printed, abs=5e-4) and all(r["seconds"] > 0 for r in rows)


@pytest.mark.slow
def test_saved_classifier_predict_eval_check_baselines_plots(tmp_path, llama_dir, out_dir):
    data = stance_csv(tmp_path / "s.csv")
    proc = run_script("05", "--model", llama_dir, "--data", data, "--tiny", "--parts", "classify,chat",
                      "--out", out_dir, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev_script = "companions/05_evaluate.py"
    proc = run_script(ev_script, "--predict", "the firm: great", "--load", out_dir / "stance")
    assert proc.returncode == 0, proc.stderr[-2000:]
    label = proc.stdout.strip().splitlines()[-1].split()[0]
    assert label in ft.LABELS and "positive 0." in proc.stdout
    fpb = tmp_path / "e.txt"
    fpb.write_text("news: great@positive\nnews: awful@negative\nnews: the@neutral\n", encoding="latin-1")
    proc = run_script(ev_script, "--eval-file", fpb, "--load", out_dir / "stance")
    assert proc.returncode == 0 and "accuracy" in proc.stdout and "true \\ predicted" in proc.stdout
    challenge = tmp_path / "c.csv"
    challenge.write_text("pair_id,sentence,label\n1,news: great,positive\n1,news: awful,negative\n", encoding="utf-8")
    proc = run_script(ev_script, "--eval-file", challenge, "--load", out_dir / "stance")
    assert proc.returncode == 0, proc.stderr[-2000:]
    pair_acc = float(proc.stdout.split("pair accuracy ")[1].split()[0])
    assert pair_acc in (0.0, 1.0)  # one pair: both right or not
    proc = run_script(ev_script, "--check", "--out", out_dir, "--data", data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pooling = [line for line in proc.stdout.splitlines() if line.startswith("check: our last-token pooling")][0]
    assert float(pooling.split()[-1]) < 1e-4
    same = [line for line in proc.stdout.splitlines() if "test predictions identical" in line][0]
    n_same, n_total = same.split(": ")[-1].split()[0].split("/")
    assert n_same == n_total
    proc = run_script(ev_script, "--baselines", "--plots", "--out", out_dir, "--data", data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "confusion matrix, fine-tune all weights (test split):" in proc.stdout  # moved here from the lesson
    bow = [line for line in proc.stdout.splitlines() if line.startswith("bag-of-words")][0]
    assert 0.0 <= float(bow.split("test accuracy ")[1].split(",")[0]) <= 1.0
    assert (out_dir / "stance_results.png").exists() and (out_dir / "chat_sft_loss.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--eval-file", "MISSING.txt"], "not found"),
    (["--predict", "hello", "--load", "no/such/dir"], "no saved classifier"),
    ([], "say what to do"),
])
def test_evaluate_bad_input_gets_one_line_error(tmp_path, args, message):
    proc = run_script("companions/05_evaluate.py", *args, timeout=120)
    assert_one_line_error(proc, code=2, contains=message)


def test_bad_eval_file_via_command_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("Fine sentence .@neutral\nBroken line without label\n", encoding="latin-1")
    proc = run_script("companions/05_evaluate.py", "--eval-file", path, "--load", tmp_path / "nowhere", timeout=120)
    assert_one_line_error(proc, code=2, contains="line 2")
