"""Tests for 03_attention.py: our NumPy attention against PyTorch, causality, the tiled online softmax, the
long-range experiment on tiny settings, and clear errors for bad shapes and bad flags. The memory benchmark of
naive vs tiled attention is tested with its companion in test_03_bench.py.

Most tests import the script (load_script) and call its functions: fast, and a failure points at one function.
Two tests run it as a learner would (run_script) with tiny flags. Each comparison is checked against an
independent computation (torch, or a recomputation), never against numbers copied from a previous run.
"""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error, load_script, run_script


@pytest.fixture(scope="module")
def att():
    return load_script("03")


def random_qkv(rng, shape_q, shape_k, d_v, dtype):
    q = rng.standard_normal(shape_q).astype(dtype)
    k = rng.standard_normal(shape_k).astype(dtype)
    v = rng.standard_normal(shape_k[:-1] + (d_v,)).astype(dtype)
    return q, k, v


# ---------------------------------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------------------------------
def test_softmax_rows_sum_to_one_even_for_huge_and_masked_scores(att):
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((4, 5, 9)) * 1000.0  # exp(1000) would overflow without the max shift
    scores[..., 3] = -np.inf                           # a masked column
    w = att.softmax(scores)
    assert np.isfinite(w).all()
    assert np.abs(w.sum(-1) - 1).max() < 1e-12
    assert np.abs(w - torch.softmax(torch.from_numpy(scores), -1).numpy()).max() < 1e-12  # torch's, even here
    assert (w[..., 3] == 0).all()                      # masked: exactly zero, not just small
    # invariance to a constant shift per row, the identity the stable version relies on
    x = rng.standard_normal((3, 6))
    assert np.abs(att.softmax(x) - att.softmax(x + 123.0)).max() < 1e-12
    # and it matches torch's softmax
    assert np.abs(att.softmax(x) - torch.softmax(torch.from_numpy(x), -1).numpy()).max() < 1e-15


def test_attention_weight_rows_sum_to_one(att):
    rng = np.random.default_rng(2)
    q, k, v = random_qkv(rng, (2, 7, 5), (2, 7, 5), 3, np.float64)
    pad = np.arange(7)[None, None, :] < np.array([7, 4])[:, None, None]  # (B, 1, T)
    _, w = att.attention(q, k, v, mask=pad, causal=True)
    assert np.abs(w.sum(-1) - 1).max() < 1e-12
    assert (w[1][:, 4:] == 0).all()             # padding keys get nothing
    assert (np.triu(w[0], k=1) == 0).all()      # future keys get nothing


# ---------------------------------------------------------------------------------------------------------------
# equality with PyTorch
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_attention_equals_torch_sdpa(att, dtype, tol):
    rng = np.random.default_rng(3)
    b, h, t, d = 2, 3, 9, 8
    q, k, v = random_qkv(rng, (b, h, t, d), (b, h, t, d), 5, dtype)
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    pad = (np.arange(t)[None, :] < np.array([9, 5])[:, None])[:, None, None, :]  # (B, 1, 1, T)
    tri = np.tril(np.ones((t, t), dtype=bool))
    cases = [
        (att.attention(q, k, v)[0], F.scaled_dot_product_attention(tq, tk, tv)),
        (att.attention(q, k, v, causal=True)[0], F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)),
        (att.attention(q, k, v, mask=pad)[0],
         F.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(pad))),
        (att.attention(q, k, v, mask=pad, causal=True)[0],
         F.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(pad & tri))),
    ]
    # cross-attention: 4 queries over 9 keys
    q2 = rng.standard_normal((b, h, 4, d)).astype(dtype)
    cases.append((att.attention(q2, k, v)[0], F.scaled_dot_product_attention(torch.from_numpy(q2), tk, tv)))
    for ours, theirs in cases:
        assert ours.dtype == dtype
        assert np.abs(ours - theirs.numpy()).max() <= tol
    # the script's own printed comparison reaches the same figures
    assert max(att.compare_with_sdpa(dtype).values()) <= tol


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_multi_head_equals_torch_multihead_attention(att, dtype, tol):
    # Direction opposite to the script's: take torch's randomly initialised weights and copy them INTO ours.
    torch.manual_seed(0)
    d_model, heads, b, t = 12, 3, 2, 7
    mha = torch.nn.MultiheadAttention(d_model, heads, batch_first=True)
    mha = mha.to(torch.float64 if dtype == np.float64 else torch.float32).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    w_in, b_in = mha.in_proj_weight.detach().numpy(), mha.in_proj_bias.detach().numpy()
    params = {
        "W_q": w_in[:d_model].T, "W_k": w_in[d_model:2 * d_model].T, "W_v": w_in[2 * d_model:].T,
        "b_q": b_in[:d_model], "b_k": b_in[d_model:2 * d_model], "b_v": b_in[2 * d_model:],
        "W_o": mha.out_proj.weight.detach().numpy().T, "b_o": mha.out_proj.bias.detach().numpy(),
    }
    x = np.random.default_rng(4).standard_normal((b, t, d_model)).astype(dtype)
    real = np.arange(t)[None, :] < np.array([7, 4])[:, None]
    for causal in (False, True):
        ours, our_w = att.multi_head_attention(x, params, heads, key_padding=real, causal=causal)
        mask = torch.from_numpy(~np.tril(np.ones((t, t), dtype=bool))) if causal else None
        with torch.no_grad():
            theirs, their_w = mha(*(torch.from_numpy(x),) * 3, key_padding_mask=torch.from_numpy(~real),
                                  attn_mask=mask, need_weights=True, average_attn_weights=False)
        assert np.abs(ours - theirs.numpy()).max() <= tol
        assert np.abs(our_w - their_w.numpy()).max() <= tol
    assert att.multi_head_param_count(d_model) == sum(p.numel() for p in mha.parameters())
    assert max(att.compare_with_torch_mha(dtype).values()) <= tol


# ---------------------------------------------------------------------------------------------------------------
# causality
# ---------------------------------------------------------------------------------------------------------------
def test_causal_outputs_ignore_future_tokens_exactly(att):
    rng = np.random.default_rng(5)
    t, d, cut = 10, 8, 6
    x = rng.standard_normal((2, t, d))
    params = att.init_multi_head(d, rng)
    changed = x.copy()
    changed[:, cut:] = rng.standard_normal((2, t - cut, d)) * 100
    before, _ = att.multi_head_attention(x, params, 2, causal=True)
    after, _ = att.multi_head_attention(changed, params, 2, causal=True)
    assert np.array_equal(before[:, :cut], after[:, :cut])          # bitwise: the past did not move at all
    assert np.abs(before[:, cut:] - after[:, cut:]).max() > 1e-3    # the present and future did
    # without the mask the past does change: the check above is not vacuous
    before, _ = att.multi_head_attention(x, params, 2, causal=False)
    after, _ = att.multi_head_attention(changed, params, 2, causal=False)
    assert np.abs(before[:, :cut] - after[:, :cut]).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# tiled online softmax
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t,block,causal", [(100, 32, False), (100, 32, True), (37, 7, True), (50, 1, True),
                                            (20, 64, False), (129, 64, True)])
def test_tiled_equals_naive(att, t, block, causal):
    rng = np.random.default_rng(6)
    q, k, v = random_qkv(rng, (2, 3, t, 16), (2, 3, t, 16), 5, np.float64)
    q *= 4.0  # sharper rows: the running max actually changes from block to block
    naive, _ = att.attention(q, k, v, causal=causal)
    tiled = att.tiled_attention(q, k, v, block=block, causal=causal)
    assert np.abs(tiled - naive).max() <= 1e-10


# ---------------------------------------------------------------------------------------------------------------
# the long-range experiment, tiny
# ---------------------------------------------------------------------------------------------------------------
def test_long_range_tiny_runs_and_attention_beats_chance(att):
    torch.set_num_threads(1)
    rows = att.long_range_experiment([8], steps=80, batch=64, seed=0, device="cpu", log=lambda *a: None)
    (row,) = rows
    chance = 1 / att.VOCAB
    assert row["attention_acc"] > 3 * chance
    # same budget, same data: at this budget the LSTM has not learned the rule, attention has
    assert row["lstm_acc"] < 0.5 < row["attention_acc"]
    assert row["lstm_grad"] < row["attention_grad"]   # its learning signal to token 0 is already weaker at T=8
    assert row["attention_weight_on_first"] > 0.3      # it learned to look at position 0
    # parameter counts similar (within 10%)
    assert abs(row["attention_params"] - row["lstm_params"]) < 0.1 * row["lstm_params"]


def test_lstm_gradient_to_first_token_decays_with_distance(att):
    lstm = lambda: att.TinyLSTMNet()  # noqa: E731
    attention = lambda: att.TinyAttentionNet(max_len=65)  # noqa: E731
    lstm_8, lstm_64 = att.gradient_to_first_token(lstm, 8, 0), att.gradient_to_first_token(lstm, 64, 0)
    att_8, att_64 = att.gradient_to_first_token(attention, 8, 0), att.gradient_to_first_token(attention, 64, 0)
    assert lstm_64 < 1e-6 * lstm_8     # geometric decay through the recurrence
    assert att_64 > 1e-2 * att_8       # attention: about 1/T, not geometric


def test_data_has_answer_first_and_query_last(att):
    tokens, answers = att.first_token_batch(5, 12, torch.Generator().manual_seed(0))
    assert tokens.shape == (5, 13)
    assert (tokens[:, -1] == att.QUERY_TOKEN).all()
    assert (tokens[:, 0] == answers).all()
    assert int(tokens[:, :-1].max()) < att.VOCAB


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
def test_bad_shapes_raise_clear_errors(att):
    rng = np.random.default_rng(8)
    q, k, v = random_qkv(rng, (2, 5, 4), (2, 6, 4), 3, np.float64)
    expected = "expected q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v)"
    with pytest.raises(ValueError, match="same feature size d_k") as err:
        att.attention(q, k[..., :3], v)
    assert expected in str(err.value) and "(2, 6, 3)" in str(err.value)
    with pytest.raises(ValueError, match="same length T_k"):
        att.attention(q, k, v[:, :4])
    with pytest.raises(ValueError, match="at least 2 dims"):
        att.attention(q[0, 0], k, v)
    with pytest.raises(ValueError, match="do not broadcast"):
        att.attention(q, k, v, mask=np.ones((3, 5, 6), dtype=bool))
    with pytest.raises(ValueError, match="boolean"):
        att.attention(q, k, v, mask=np.ones((5, 6)))
    with pytest.raises(ValueError, match="no key at all"):
        att.attention(q, k, v, mask=np.zeros((5, 6), dtype=bool))
    with pytest.raises(ValueError, match="same feature size"):
        att.tiled_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="multiple of the number of heads"):
        att.multi_head_attention(rng.standard_normal((1, 4, 6)), att.init_multi_head(6, rng), 4)
    with pytest.raises(ValueError, match=r"\(B, T, d_model\)"):
        att.multi_head_attention(rng.standard_normal((4, 6)), att.init_multi_head(6, rng), 2)


def assert_argparse_error(proc, contains):
    """argparse's convention: exit 2, a usage block, then one line '03_attention.py: error: ...'; nothing on stdout."""
    assert_one_line_error(proc, code=2, contains=contains)
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("usage: 03_attention.py"), proc.stderr
    assert lines[-1].startswith("03_attention.py: error: ") and contains in lines[-1], proc.stderr
    assert proc.stdout == ""  # rejected before any work


# one bad-flag test per kind of rule: a malformed value (type=), a value out of range (type=), a rule between
# flags (parser.error), an unknown flag
@pytest.mark.parametrize("args,contains", [
    (["--lengths", "8,x"], "--lengths"),
    (["--steps", "0"], "--steps"),
    (["--heads", "3"], "multiple of the number of heads"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_give_argparse_error(args, contains):
    assert_argparse_error(run_script("03", *args, timeout=120), contains)


def test_notebook_kernel_arguments_are_ignored(att):
    args = att.parse_args(["-f", "/tmp/kernel-1.json", "--steps", "7"])
    assert args.steps == 7 and args.lengths == list(att.LENGTHS)


@pytest.mark.parametrize("flag,value,pointer", [
    ("--timing-lengths", "64,128", "run python companions/03_bench.py --lengths 64,128"),
    ("--lstm-forget-bias", "2", "run python companions/03_long_range.py --lstm-forget-bias 2"),
])
def test_moved_flags_point_to_their_companion(flag, value, pointer):
    proc = run_script("03", flag, value, timeout=120)
    assert_one_line_error(proc, code=2)
    assert proc.stderr.strip() == f"{flag} moved: {pointer}"
    assert proc.stdout == ""


# ---------------------------------------------------------------------------------------------------------------
# the whole script, tiny
# ---------------------------------------------------------------------------------------------------------------
def test_script_runs_tiny_and_writes_pictures(out_dir):
    proc = run_script("03", "--steps", "60", "--lengths", "6", "--out", out_dir, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # part 5's table: 8 comparisons x 2 dtypes, each difference printed and within its limit
    row = r"^  ((?:SDPA|nn\.MultiheadAttention).+?)\s+(float32|float64)\s+([0-9.e+-]+)\s+([0-9.e+-]+)  (yes|NO)$"
    rows = re.findall(row, out, flags=re.M)
    assert len(rows) == 16, out
    assert all(float(diff) <= float(limit) and ok == "yes" for _, _, diff, limit, ok in rows)
    assert max(float(diff) for _, dtype, diff, _, _ in rows if dtype == "float64") < 1e-12
    assert "FAILED" not in out
    assert out.count("[ok]") == 4 and "long-range accuracy (attention / LSTM): T=6:" in out
    assert "bitwise identical: True" in out
    tiled = float(re.search(r"Tiled equals naive to ([0-9.e+-]+)", out).group(1))
    assert tiled <= 1e-10
    for name in ("attention_weights.png", "multi_head.png", "scaling.png", "long_range.png"):
        assert (out_dir / name).stat().st_size > 5000, name
    assert not list(out_dir.glob("*.tmp"))


def test_text_fallback_without_matplotlib(att, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(att, "get_pyplot", lambda: None)
    words = ["a", "b", "c"]
    w = np.eye(3)                                      # each word looks only at itself
    rows = [dict(length=4, attention_acc=1.0, lstm_acc=0.5)]
    saved = att.make_pictures(tmp_path, words, w, w, w[None], [], rows)
    text = capsys.readouterr().out
    assert saved == [] and not any(tmp_path.iterdir())
    assert "matplotlib is not installed" in text and text.count("shades") == 3  # parts 1, 3, one head
    lines = text.splitlines()
    # darkest shade on the diagonal, blank elsewhere: the weights are drawn, not just a header
    assert lines.count("    a @    ") == 2 and lines.count("    c     @") == 2 and "   q1   @  " in lines
    assert f"|{'#' * 40}|" in text and f"|{'#' * 20}{' ' * 20}|" in text and "T=4" in text
