"""Tests of companions/04_gpt2.py: GPT-2's BPE tokens and GPT-2's weights in 04_minigpt's GPT (offline, tiny)."""
import json

import pytest
import torch

from conftest import assert_one_line_error, load_script, run_script
from conftest import test_env as offline_env
from test_04_minigpt import TINY, synthetic_text, tiny_model

g = load_script("companions/04_gpt2.py")
m = g.L  # the lesson as the companion loaded it


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(synthetic_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def random_hf_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    with torch.no_grad():  # GPT-2 starts LayerNorms at (1, 0) and biases at 0: randomise them to test the mapping
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    model.save_pretrained(folder)
    return folder


def test_gpt2_tokenizer_offline_matches_known_ids():
    tok = g.GPT2Tokens()
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert tok.vocab_size == 50257 and tok.eos_id == 50256


def test_gpt2_special_token_text_is_ordinary_unless_allowed():
    """Issue 16: "<|endoftext|>" in user text is text (tiktoken's encode_ordinary), unless explicitly allowed."""
    tok, text = g.GPT2Tokens(), "To be<|endoftext|>or not"
    ordinary = tok.encode(text)
    assert 50256 not in ordinary and tok.decode(ordinary) == text
    assert tok.encode(text, allowed_special={"<|endoftext|>"}).count(50256) == 1


def test_hf_import_parity(random_hf_gpt2):
    model, hf_model, cfg = g.load_hf_gpt2(str(random_hf_gpt2), m.Config(), {}, log=lambda *a: None)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (2, 4, 32, 64)
    ids = torch.randint(50257, (2, 40))
    assert m.logit_parity(model, hf_model, ids) <= 1e-5
    prompt = [15496, 995]
    ours = m.generate(model, prompt, 20, temperature=0.0)
    theirs = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 2, dtype=torch.long),
                               max_new_tokens=20, do_sample=False, pad_token_id=50256)[0, 2:].tolist()
    assert ours == theirs


def test_export_roundtrip_with_gpt2_tokenizer(tmp_path):
    from transformers import AutoTokenizer
    tok = g.GPT2Tokens()
    model = tiny_model(vocab_size=tok.vocab_size, block_size=32)
    folder = tmp_path / "hf"
    m.export_hf(model, tok, folder, log=lambda *a: None)
    ok, diff = m.check_export(folder, model, tok, "Hello world", 20, log=lambda *a: None)
    assert ok and diff <= 1e-5
    assert (folder / "tokenizer.json").exists() or (folder / "vocab.json").exists()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gpt2"
    assert AutoTokenizer.from_pretrained(folder)("Hello world")["input_ids"] == [15496, 995]


def test_init_from_hf_directory_cli(random_hf_gpt2, text_file, tmp_path):
    proc = run_script("companions/04_gpt2.py", "--init-from", random_hf_gpt2, "--sample-only", "--prompt", "Hello",
                      "--num-tokens", "5", "--out", tmp_path, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "copied GPT-2 weights" in proc.stdout and "Hello" in proc.stdout.split("-" * 80)[1]
    diff = float(proc.stdout.split("GPT2LMHeadModel on the same weights: max |diff| ")[1].split()[0])
    assert diff <= 1e-5
    # fine-tune it briefly on GPT-2 tokens, export, reload: our logits equal transformers'
    proc = run_script("companions/04_gpt2.py", "--init-from", random_hf_gpt2, "--data", text_file, *TINY,
                      "--max-iters", "2", "--eval-interval", "2", "--out", tmp_path / "ft", timeout=150)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tokenizer ids equal" in proc.stdout and "(GPT2LMHeadModel)" in proc.stdout
    # the lesson refuses the GPT-2 BPE checkpoint with one line pointing here
    lesson = run_script("04", "--sample-only", "--out", tmp_path / "ft", timeout=60)
    assert_one_line_error(lesson, code=2, contains="companions/04_gpt2.py")


def test_block_size_larger_than_model_positions(random_hf_gpt2, text_file, tmp_path):
    proc = run_script("companions/04_gpt2.py", "--init-from", random_hf_gpt2, "--data", text_file, "--block-size",
                      "128", "--max-iters", "1", "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="positions")


@pytest.mark.long
def test_init_from_gpt2_offline_is_one_clear_line(tmp_path):
    proc = run_script("companions/04_gpt2.py", "--init-from", "gpt2", "--sample-only", "--out", tmp_path,
                      timeout=90, env=offline_env(HF_HOME=str(tmp_path / "hf-home")))
    assert_one_line_error(proc, code=2, contains="cannot load GPT-2 weights")
