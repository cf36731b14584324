"""Tests of stage 04 (04_minigpt.py): data, model, training, exact resume, generation, HF interop, bad input.

Everything runs on CPU with tiny models and a small text written by the tests. Each test checks behaviour or exact
equality, never speed. DDP lives in tests/test_04_ddp.py, the KV-cache benchmark in tests/test_04_bench.py.
"""
import json
import math
import random
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_one_line_error, load_script, run_script, script_path
from conftest import test_env as offline_env  # renamed so pytest does not collect it as a test

m = load_script("04")

# Tiny settings for every script run. One thread: tiny models gain nothing from more.
TINY = ["--threads", "1", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
        "--eval-iters", "2", "--max-minutes", "0", "--warmup-iters", "2", "--lr", "1e-2", "--no-plots", "--num-tokens", "20",
        "--check-tokens", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    """In-process tests run tiny models: one thread is as fast, and immune to waiting on a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, seed=0, **arch):
    """A small random model, GPT-2's block unless arch (pos, norm, mlp, n_kv_head, bias, mlp_hidden) says else."""
    torch.manual_seed(seed)
    cfg = m.Config(block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, **{**m.GPT2, **arch})
    return m.GPT(cfg, vocab_size).eval()


def synthetic_text(n_lines=3000, seed=0):
    """~120 kB of verse-like lines from a fixed word list: the same text on every machine and Python version."""
    words = ("to be or not that is the question whether tis nobler in the mind to suffer the slings and arrows of "
             "outrageous fortune KING: QUEEN: my lord good night").split()
    r = random.Random(seed)
    return "\n".join(" ".join(r.choice(words) for _ in range(8)) for _ in range(n_lines)) + "\n"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(synthetic_text(), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Data and tokenizers
# ---------------------------------------------------------------------------------------------------------------
def test_default_text_is_tiny_shakespeare_from_the_offline_assets():
    if m.offline_asset("shakespeare/tiny_shakespeare.txt") is None:
        pytest.skip("offline assets cannot be prepared here")
    text = m.load_text(m.Config())
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    assert text.endswith("\nWhiles thou art waking.\n")


def test_char_tokenizer_roundtrip_and_unknown():
    tok = m.Tokenizer(sorted(set("hello world\n")))
    ids = tok.encode("hello\nworld")
    assert tok.decode(ids) == "hello\nworld"
    assert tok.encode("hez") == [tok.stoi["h"], tok.stoi["e"], tok.unk_id]  # unseen char -> <unk>
    assert tok.vocab_size == len(set("hello world\n")) + 2 and tok.eos_id == tok.vocab_size - 2


def test_special_token_text_is_ordinary_unless_allowed():
    """Issue 16: the characters "<|endoftext|>" in user text are text; only allowed_special makes them the eos id.
    (GPT-2's BPE: tests/test_04_gpt2.py.)"""
    text = "To be<|endoftext|>or not"
    tok = m.Tokenizer(sorted(set(text)))
    ordinary = tok.encode(text)
    assert tok.eos_id not in ordinary and tok.decode(ordinary) == text
    allowed = tok.encode(text, allowed_special={"<|endoftext|>"})
    assert allowed.count(tok.eos_id) == 1 and len(allowed) < len(ordinary)
    assert tok.decode(allowed) in (text, text.replace("<|endoftext|>", ""))  # char prints specials as nothing


def test_data_and_prompt_with_special_token_text_stay_text(tmp_path):
    """A --data file and a --prompt holding "<|endoftext|>": no eos id in the training data, and the exported
    Hugging Face tokenizer encodes the prompt exactly as ours does (ordinary text on both sides)."""
    data = tmp_path / "eot.txt"
    data.write_text(synthetic_text(400).replace("KING:", "<|endoftext|>KING:"), encoding="utf-8")
    tok = m.Tokenizer(sorted(set(data.read_text(encoding="utf-8"))))
    train_ids, val_ids = m.prepare_data(data.read_text(encoding="utf-8"), tok, 32)
    assert tok.eos_id not in train_ids.tolist() + val_ids.tolist()
    out = tmp_path / "out"
    proc = run_script("04", "--data", data, *TINY, "--max-iters", "2", "--eval-interval", "2", "--prompt",
                      "KING<|endoftext|>:", "--out", out, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tokenizer ids equal" in proc.stdout


def test_get_batch_targets_are_inputs_shifted_by_one():
    ids = torch.arange(100)
    x, y = m.get_batch(ids, 4, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and torch.equal(y, x + 1)


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
    optimizer = m.configure_optimizer(model, m.Config(lr=3e-3, weight_decay=0.1))
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
        cache = m.KVCache(model, 1)
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
        a = m.generate(model, prompt, 40, use_cache=True, seed=3, **kwargs)
        b = m.generate(model, prompt, 40, use_cache=False, seed=3, **kwargs)
        assert a == b and len(a) == 40
    ok, _ = m.check_kv_cache(model, prompt, 20, log=lambda *a: None)
    assert ok


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face interop (small random models, offline)
# ---------------------------------------------------------------------------------------------------------------
def test_export_roundtrip(tmp_path):
    """GPT-2 switches -> GPT2LMHeadModel (the GPT-2 BPE tokenizer's export: tests/test_04_gpt2.py)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = m.Tokenizer(sorted(set("abcdefgh ijkl\nmnop:")))
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
    assert hf_tok("abz\u00e9")["input_ids"] == tok.encode("abz\u00e9")  # unseen chars -> <unk>, no error
    assert hf_tok.decode(tok.encode("ab cd\n")) == "ab cd\n"
    assert type(AutoModelForCausalLM.from_pretrained(folder)).__name__ == "GPT2LMHeadModel"


# ---------------------------------------------------------------------------------------------------------------
# The script end to end: golden trace, train, exact resume, Ctrl-C, sample-only
# ---------------------------------------------------------------------------------------------------------------
# The first 30 training losses of a tiny CPU run at seed 1337, for each architecture (computed once with this code).
# A change to the initialisation, the batches, the loss or its scaling, RoPE or the norms changes them.
GOLDEN_LOSSES = {
    "gpt2": [3.444177, 3.323587, 3.230813, 3.111331, 3.148209, 3.002480, 3.073838, 2.970175, 2.829944, 2.873259,
             2.892451, 2.892712, 2.866184, 2.725344, 2.671449, 2.707959, 2.635359, 2.691427, 2.603820, 2.655206,
             2.523358, 2.674481, 2.459622, 2.628772, 2.570009, 2.489370, 2.581240, 2.336344, 2.497499, 2.436622],
    "llama_adamw": [3.452246, 3.342109, 3.209417, 3.101028, 3.153491, 3.041941, 3.014423, 3.049351, 2.798082, 2.852245,
                    2.915387, 2.883099, 2.835253, 2.695579, 2.647060, 2.688020, 2.613804, 2.647215, 2.520028, 2.617741,
                    2.564519, 2.645181, 2.406164, 2.566247, 2.520415, 2.494782, 2.570441, 2.357757, 2.434580, 2.431828],
    # the CPU default: llama with Muon for the blocks' matrices
    "llama": [3.452246, 3.372091, 3.255266, 3.160136, 3.039787, 3.028097, 2.929810, 2.925417, 2.772185, 2.781792,
              2.759083, 2.705920, 2.731339, 2.644132, 2.610424, 2.665462, 2.576233, 2.632869, 2.540462, 2.601125,
              2.611520, 2.718513, 2.510031, 2.579235, 2.574638, 2.537532, 2.681840, 2.441099, 2.534071, 2.434698],
}


GOLDEN_FLAGS = {"llama": [], "llama_adamw": ["--optimizer", "adamw"], "gpt2": ["--arch", "gpt2", "--optimizer", "adamw"]}


@pytest.mark.parametrize("run", ["llama", "llama_adamw", "gpt2"])
def test_golden_trace_first_30_losses(text_file, tmp_path, run):
    flags, arch = GOLDEN_FLAGS[run], run.split("_")[0]  # llama with Muon is the CPU default
    proc = run_script("04", "--data", text_file, *TINY, *flags, "--max-iters", "30", "--eval-interval", "1000",
                      "--log-interval", "1", "--no-export", "--out", tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"model: {arch} (" in proc.stdout
    losses = json.loads((tmp_path / "history.json").read_text())["losses"]
    assert len(losses) == 30
    assert losses == pytest.approx(GOLDEN_LOSSES[run], abs=1e-4), losses


def test_train_then_exact_resume(text_file, tmp_path):
    common = ["--data", text_file, *TINY, "--max-iters", "24", "--eval-interval", "8", "--log-interval", "4",
              "--dropout", "0.1", "--no-export"]
    full = run_script("04", *common, "--out", tmp_path / "full", timeout=120)
    assert full.returncode == 0, full.stderr[-2000:]
    assert "check: manual attention vs F.scaled_dot_product_attention" in full.stdout
    assert "step     24/24  loss" in full.stdout and "ETA" in full.stdout
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
    assert ckpt["step"] == 24 and set(ckpt["rng"]) == {"torch", "cuda"}  # dropout's RNG (batches have their own)
    assert not list((tmp_path / "cut").glob("*.tmp"))  # atomic writes leave no temporary files behind

    best = torch.load(tmp_path / "cut" / "best.pt", weights_only=True)  # weights for sampling, no optimizer state
    assert "optimizer" not in best and set(best["model"]) == set(ckpt["model"])
    from_best = run_script("04", *common, "--out", tmp_path / "cut", "--resume", tmp_path / "cut" / "best.pt",
                           timeout=60)
    assert_one_line_error(from_best, contains="resume from")
    changed = run_script("04", *common, "--out", tmp_path / "cut", "--resume", "--n-layer", "3", timeout=60)
    assert_one_line_error(changed, code=2, contains="differs from the checkpoint")

    # a finished run can be extended: --resume with a larger --max-iters continues from step 24
    longer = run_script("04", *common, "--out", tmp_path / "cut", "--resume", "--max-iters", "32", timeout=120)
    assert longer.returncode == 0, longer.stderr[-2000:]
    extended = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert extended["steps"] == list(range(1, 33))
    assert [e[0] for e in extended["evals"]] == [0, 8, 16, 24, 32]  # each evaluation once


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX-only")
@pytest.mark.long
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
    adam_steps = {int(state["step"]) for state in ckpt["optimizer"]["state"]}  # one state per parameter, in order
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
    assert "check: loss at initialisation" in proc.stdout
    assert (out / "hf" / "tokenizer.json").exists() and (out / "sample.txt").exists()
    sample = run_script("04", "--sample-only", "--out", out, "--prompt", "KING:", "--num-tokens", "30", timeout=60)
    assert sample.returncode == 0, sample.stderr[-2000:]
    generated = sample.stdout.split("-" * 80)[1]
    assert generated.strip().startswith("KING:") and len(generated.strip()) > len("KING:") + 10  # prompt + 30 tokens
    assert (out / "sample.txt").read_text(encoding="utf-8").startswith("KING:")


# ---------------------------------------------------------------------------------------------------------------
# Flags and bad input: one line on stderr, non-zero exit, no traceback
# ---------------------------------------------------------------------------------------------------------------
def test_threads_flag_sets_torch_threads(text_file, tmp_path):
    # 2, not TINY's 1: scripts under test start with one thread (conftest), so only another number can show the flag
    proc = run_script("04", "--data", text_file, *TINY, "--threads", "2", "--max-iters", "0", "--no-export",
                      "--out", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(2 threads)" in proc.stdout


def test_missing_data_file(tmp_path):
    proc = run_script("04", "--data", tmp_path / "nope.txt", *TINY, "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="not found")


def test_text_shorter_than_block(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.", encoding="utf-8")
    proc = run_script("04", "--data", short, *TINY, "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="too short")


def test_corrupt_checkpoint(text_file, tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"this is not a checkpoint" * 10)
    proc = run_script("04", "--data", text_file, *TINY, "--out", tmp_path, "--resume")
    assert_one_line_error(proc, code=2, contains="corrupt")
    proc = run_script("04", "--sample-only", "--checkpoint", tmp_path / "ckpt.pt", "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="corrupt")


def test_bad_flag_values(tmp_path):
    proc = run_script("04", "--n-embd", "30", "--n-head", "4", "--out", tmp_path)  # a rule between two flags
    assert_one_line_error(proc, code=2, contains="divisible")
    proc = run_script("04", "--top-p", "1.5", "--sample-only", "--out", tmp_path)  # a range
    assert_one_line_error(proc, code=2, contains="top-p")
    proc = run_script("04", "--n-layer", "two", "--out", tmp_path)  # a type (argparse's own message)
    assert_one_line_error(proc, code=2, contains="invalid int value")
    proc = run_script("04", "--arch", "bert", "--out", tmp_path)  # a choice
    assert_one_line_error(proc, code=2, contains="invalid choice")


def test_old_commands_point_to_the_companions(tmp_path):
    proc = run_script("04", "--out", tmp_path, env=offline_env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0"))
    assert_one_line_error(proc, code=2, contains="companions/04_ddp.py")
    proc = run_script("04", "--bench-kv", "40", "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="companions/04_bench.py")
    proc = run_script("04", "--init-from", "gpt2", "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="companions/04_gpt2.py")


# ---------------------------------------------------------------------------------------------------------------
# --ema: a moving average of the weights, evaluated and kept
# ---------------------------------------------------------------------------------------------------------------
def test_ema_is_the_running_average_and_averaged_swaps_it_in_and_back():
    model = tiny_model().train()
    decay = 0.9
    optimizer = m.Muon([{"params": list(model.parameters()), "weight_decay": 0.0, "muon": False}], lr=1e-2,
                       betas=(0.9, 0.99), ema=decay)
    data = torch.arange(400) % 13
    g = torch.Generator().manual_seed(0)
    expected = None
    for t in range(1, 21):
        x, y = m.get_batch(data, 4, 16, g)
        model(x, y)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
        live = [p.detach().clone() for p in model.parameters()]
        w = 1 - min(decay, t / (t + 1))  # the first step copies the weights, then the average's horizon grows
        expected = live if expected is None else [e + w * (p - e) for e, p in zip(expected, live)]
    with optimizer.averaged():
        inside = [p.detach().clone() for p in model.parameters()]
    after = [p.detach().clone() for p in model.parameters()]
    for e, i in zip(expected, inside):
        assert torch.allclose(e, i, atol=1e-6)
    for a, l in zip(after, live):
        assert torch.equal(a, l)  # the live weights are back
    assert not all(torch.equal(i, l) for i, l in zip(inside, live))
    with pytest.raises(RuntimeError), optimizer.averaged():  # back even when the block fails
        raise RuntimeError("boom")
    assert all(torch.equal(p, l) for p, l in zip(model.parameters(), live))


def test_ema_run_keeps_the_average_and_resumes_exactly(text_file, tmp_path):
    common = ["--data", text_file, *TINY, "--max-iters", "24", "--eval-interval", "8", "--log-interval", "4",
              "--dropout", "0.1", "--no-export", "--ema", "0.9"]
    full = run_script("04", *common, "--out", tmp_path / "full", timeout=120)
    assert full.returncode == 0, full.stderr[-2000:]
    ckpt = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    assert all("ema" in s for s in ckpt["optimizer"]["state"])  # the average travels with the optimizer state
    name = "transformer.wte.weight"  # its average is what best.pt holds when the last evaluation was the best
    averages = [s["ema"] for s in ckpt["optimizer"]["state"] if s["ema"].shape == ckpt["model"][name].shape]
    history = json.loads((tmp_path / "full" / "history.json").read_text())
    if min(e[2] for e in history["evals"]) == history["evals"][-1][2]:
        assert any(torch.equal(best["model"][name], a) for a in averages)
    assert not any(torch.equal(ckpt["model"][name], a) for a in averages)  # ckpt.pt: the live weights
    cut = run_script("04", *common, "--out", tmp_path / "cut", "--interrupt-at", "13", timeout=120)
    assert cut.returncode == 130
    resumed = run_script("04", *common, "--out", tmp_path / "cut", "--resume", timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert again["losses"] == history["losses"]
    assert [e[:3] for e in again["evals"]] == [e[:3] for e in history["evals"]]  # the averaged weights' val too


def test_bad_ema_is_one_line(tmp_path):
    proc = run_script("04", "--ema", "1.0", "--out", tmp_path)
    assert proc.returncode == 2 and "--ema" in proc.stderr
