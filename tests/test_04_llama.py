"""Tests of 04_minigpt's modern switches (issue 15): RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases,
each against an independent formula; Hugging Face LlamaForCausalLM parity; KV cache, exact resume and export for
the llama arch. Tiny shapes, CPU, offline."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error, load_script, run_script
from test_04_minigpt import TINY, one_thread, text_file, tiny_model  # noqa: F401 (fixtures, shared)

m = load_script("04")
LLAMA = dict(pos="rope", norm="rms", mlp="swiglu", bias=False, arch="llama")


def randomise_vectors(model, scale=0.1):
    """Norm gains start at 1 and biases at 0: move them so a wrong mapping cannot hide."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(scale * torch.randn_like(p))
    return model


def test_rope_equals_a_direct_complex_rotation():
    hs, T = 8, 11
    cos, sin = m.rope_angles(T, hs)
    x = torch.randn(2, T, 3, hs)                                                 # (B, T, heads, hs)
    ours = m.rotate(x, cos[:, None], sin[:, None])                               # cos, sin: (T, 1, hs/2)
    # the same rotation written with complex numbers: z = a + ib for the pair (i, i + hs/2), times e^(i p theta_i)
    z = torch.complex(x[..., :hs // 2], x[..., hs // 2:])
    theta = 10000.0 ** (-torch.arange(0, hs, 2).float() / hs)
    angle = torch.arange(T).float()[:, None, None] * theta                        # (T, 1, hs/2)
    turned = z * torch.polar(torch.ones_like(angle), angle)
    assert torch.allclose(ours, torch.cat([turned.real, turned.imag], dim=-1), atol=1e-6)
    # rotations keep lengths, and q.k depends only on the distance between the two positions
    assert torch.allclose(ours.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    q, k = torch.randn(hs), torch.randn(hs)
    dot = lambda pq, pk: (m.rotate(q[None], cos[pq], sin[pq]) * m.rotate(k[None], cos[pk], sin[pk])).sum()
    assert torch.allclose(dot(5, 2), dot(9, 6), atol=1e-5) and not torch.allclose(dot(5, 2), dot(5, 3), atol=1e-3)


def test_rmsnorm_equals_torch():
    norm = m.RMSNorm(16)
    with torch.no_grad():
        norm.weight.add_(torch.randn(16))
    x = torch.randn(4, 5, 16)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert torch.allclose(m.rms_norm(x, (16,), norm.weight, 1e-5), expected, atol=1e-6)  # the lesson's written formula
    if hasattr(F, "rms_norm"):
        assert torch.allclose(norm(x), F.rms_norm(x, (16,), norm.weight, eps=1e-5), atol=1e-6)


def test_swiglu_equals_its_formula_and_keeps_the_weight_count():
    cfg = m.Config(n_embd=48, mlp="swiglu", bias=False)
    mlp = m.MLP(cfg).eval()
    x = torch.randn(2, 7, 48)
    wg, wu, wd = mlp.c_gate.weight, mlp.c_fc.weight, mlp.c_proj.weight
    expected = (F.silu(x @ wg.T) * (x @ wu.T)) @ wd.T
    assert torch.allclose(mlp(x), expected, atol=1e-6)
    gelu = sum(p.numel() for p in m.MLP(m.Config(n_embd=48, mlp="gelu", bias=False)).parameters())
    assert abs(sum(p.numel() for p in mlp.parameters()) - gelu) <= 0.02 * gelu  # 8C/3 wide: about the same size


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_grouped_query_attention_equals_multi_head_with_shared_heads(n_kv_head):
    """n_kv_head == n_head is multi-head attention; fewer K/V heads equal multi-head attention whose K/V weights
    are copied across each group of query heads."""
    torch.manual_seed(0)
    gqa = m.CausalSelfAttention(m.Config(n_embd=32, n_head=4, n_kv_head=n_kv_head, **m.GPT2), 0).eval()
    mha = m.CausalSelfAttention(m.Config(n_embd=32, n_head=4, **m.GPT2), 0).eval()
    hs, group = 8, 4 // n_kv_head
    with torch.no_grad():
        q, k, v = gqa.c_attn.weight.split([32, n_kv_head * hs, n_kv_head * hs])
        qb, kb, vb = gqa.c_attn.bias.split([32, n_kv_head * hs, n_kv_head * hs])
        repeat = lambda w: w.view(n_kv_head, hs, *w.shape[1:]).repeat_interleave(group, 0).reshape(32, *w.shape[1:])
        mha.c_attn.weight.copy_(torch.cat([q, repeat(k), repeat(v)]))
        mha.c_attn.bias.copy_(torch.cat([qb, repeat(kb), repeat(vb)]))
        mha.c_proj.load_state_dict(gqa.c_proj.state_dict())
    x = torch.randn(2, 9, 32)
    assert torch.allclose(gqa(x), mha(x), atol=1e-6)
    # and multi-head attention itself against the written-out math of stage 03, head by head
    qh, kh, vh = [t.view(2, 9, 4, 8).transpose(1, 2) for t in mha.c_attn(x).split(32, dim=2)]
    att = (qh @ kh.transpose(-2, -1) / 8 ** 0.5).masked_fill(torch.ones(9, 9).triu(1).bool(), float("-inf"))
    expected = mha.c_proj((att.softmax(-1) @ vh).transpose(1, 2).reshape(2, 9, 32))
    assert torch.allclose(mha(x), expected, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_hf_llama_parity(bias, tmp_path):
    """Our llama-arch model loaded into transformers' LlamaForCausalLM: same logits (fp32) and greedy tokens."""
    model = randomise_vectors(tiny_model(vocab_size=50, block_size=32, n_head=4, n_kv_head=2, **{**LLAMA, "bias": bias}))
    hf = m.hf_model_for(model, eos=48)
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.num_key_value_heads == 2
    ids = torch.randint(50, (2, 30))
    assert m.logit_parity(model, hf, ids) <= 1e-5
    prompt = [1, 2, 3]
    ours = m.generate(model, prompt, 25, temperature=0.0)
    theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 3, dtype=torch.long), max_new_tokens=25,
                         do_sample=False, pad_token_id=48)[0, 3:].tolist()
    assert ours == theirs


def test_llama_kv_cache_equals_full_forward_and_uncached_generation():
    model = randomise_vectors(tiny_model(block_size=16, n_head=4, n_kv_head=2, **LLAMA))
    idx = torch.randint(40, (1, 12))
    for kind in ("sdpa", "manual"):
        model.set_attention(kind)
        full, _ = model(idx)
        cache = m.KVCache(model, 1)
        assert cache.keys[0].shape[1] == 2  # GQA caches only the K/V heads
        parts = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 5), (5, 11), (11, 12))]
        assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5), kind
    for kwargs in (dict(temperature=0.0), dict(temperature=1.0, top_k=10, top_p=0.9)):
        a = m.generate(model, [1, 2, 3], 40, use_cache=True, seed=3, **kwargs)  # the window jumps twice
        assert a == m.generate(model, [1, 2, 3], 40, use_cache=False, seed=3, **kwargs)


def test_llama_export_loads_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = m.Tokenizer(sorted(set("abcdefgh ijkl\nmnop:")))
    model = randomise_vectors(tiny_model(vocab_size=tok.vocab_size, block_size=32, n_head=4, n_kv_head=2, **LLAMA))
    folder = tmp_path / "hf"
    assert m.export_hf(model, tok, folder, log=lambda *a: None)
    ok, diff = m.check_export(folder, model, tok, "abc dl", 20, log=lambda *a: None)
    assert ok and diff <= 1e-5
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2
    assert type(AutoModelForCausalLM.from_pretrained(folder)).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(folder).eos_token == "<|endoftext|>"


def test_a_mix_of_switches_trains_but_is_not_exported(tmp_path):
    model = tiny_model(pos="rope")  # rotary positions with LayerNorm and GELU: no transformers class
    lines = []
    assert not m.export_hf(model, m.Tokenizer("ab"), tmp_path / "hf", log=lines.append)
    assert "skipped" in lines[0] and not (tmp_path / "hf").exists()


def test_arch_llama_sets_the_switches_and_flags_override():
    cfg = m.make_config({"arch": "llama"}, torch.device("cpu"))
    assert (cfg.pos, cfg.norm, cfg.mlp, cfg.bias, cfg.n_kv_head) == ("rope", "rms", "swiglu", False, 2)
    cfg = m.make_config({"arch": "llama", "n_kv_head": 4, "bias": True}, torch.device("cpu"))
    assert (cfg.n_kv_head, cfg.bias) == (4, True)
    cfg = m.make_config({}, torch.device("cpu"))  # llama is the default
    assert (cfg.arch, cfg.pos, cfg.norm, cfg.mlp, cfg.bias, cfg.n_kv_head) == ("llama", "rope", "rms", "swiglu", False, 2)
    cfg = m.make_config({"arch": "gpt2"}, torch.device("cpu"))
    assert (cfg.pos, cfg.norm, cfg.mlp, cfg.bias, cfg.n_kv_head) == ("learned", "layer", "gelu", True, 0)
    cfg = m.make_config({"n_kv_head": 3}, torch.device("cuda"))  # the GPU preset's 6 heads: 3 K/V heads are valid
    assert (cfg.n_head, cfg.n_kv_head) == (6, 3)


def test_llama_cli_exact_resume_and_export(text_file, tmp_path):
    common = ["--data", text_file, *TINY, "--n-head", "4", "--arch", "llama", "--max-iters", "16", "--eval-interval",
              "8", "--log-interval", "4", "--dropout", "0.1"]
    full = run_script("04", *common, "--out", tmp_path / "full", "--check-tokens", "30", timeout=150)
    assert full.returncode == 0, full.stderr[-2000:]
    assert "llama (rope, rms, swiglu, 2 kv heads)" in full.stdout
    assert "KV cache vs no cache, 30 new tokens: greedy identical, sampled (same seed) identical" in full.stdout
    assert "(LlamaForCausalLM): tokenizer ids equal" in full.stdout and "tokens identical" in full.stdout
    cut = run_script("04", *common, "--out", tmp_path / "cut", "--no-export", "--interrupt-at", "9", timeout=150)
    assert cut.returncode == 130
    resumed = run_script("04", *common, "--out", tmp_path / "cut", "--no-export", "--resume", timeout=150)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "history.json").read_text())
    b = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert a["losses"] == b["losses"] and len(a["losses"]) == 16  # bit for bit
    changed = run_script("04", *common, "--out", tmp_path / "cut", "--resume", "--arch", "gpt2", timeout=60)
    assert_one_line_error(changed, code=2, contains="differs from the checkpoint")


def test_bad_kv_heads(tmp_path):
    proc = run_script("04", "--n-head", "4", "--n-kv-head", "3", "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="--n-kv-head")


# ---- Muon (the CPU default optimizer) and QK-norm (measured in the ablation companion only) -------------------------
def test_orthogonalize_approximates_the_nearest_orthogonal_matrix():
    torch.manual_seed(0)
    for shape in [(16, 40), (40, 16), (24, 24)]:
        g = torch.randn(*shape) @ torch.diag(torch.logspace(-1, 0.5, shape[1]))  # spread-out singular values
        x = m.orthogonalize(g)
        assert x.shape == g.shape
        s = torch.linalg.svdvals(x)
        assert s.quantile(0.2) > 0.5 and s.max() < 1.3, s  # most directions now move by about the same amount
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        cosine = (x * (u @ vh)).sum() / (x.norm() * (u @ vh).norm())
        assert cosine > 0.9, cosine  # and it points where U V^T points


def test_muon_updates_matrices_at_adamw_scale_and_its_adamw_part_equals_torch():
    cfg = m.replace(m.Config(), n_layer=1, n_head=2, n_embd=16, block_size=8, optimizer="muon", weight_decay=0.1)
    torch.manual_seed(0)
    model = m.GPT(cfg, 11)
    twin = m.GPT(cfg, 11)
    twin.load_state_dict(model.state_dict())
    opt = m.configure_optimizer(model, cfg)
    assert isinstance(opt, m.Muon)
    matrices = {id(p) for b in model.transformer.h for p in b.parameters() if p.dim() == 2}
    others = [p for p in model.parameters() if id(p) not in matrices]
    twin_others = [p for (n, p) in twin.named_parameters() if id(dict(model.named_parameters())[n]) not in matrices]
    reference = torch.optim.AdamW([{"params": [p for p in twin_others if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in twin_others if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, cfg.beta2))
    x = torch.randint(0, 11, (3, 8))
    for _ in range(3):
        before = {id(p): p.detach().clone() for p in model.parameters()}
        for net, o in ((model, opt), (twin, reference)):
            o.zero_grad()
            net(x, x)[1].backward()
            o.step()
        with torch.no_grad():  # the twin's matrices follow Muon's, so both see the same gradients next step
            for (name, p), q in zip(model.named_parameters(), twin.parameters()):
                q.copy_(p) if id(p) in matrices else None
        for p in model.parameters():
            if id(p) in matrices:  # an orthogonalised step has AdamW's typical RMS (0.2 lr), whatever the gradient
                step_rms = ((p.detach() - before[id(p)] * (1 - cfg.lr * 0.1)).pow(2).mean().sqrt() / cfg.lr).item()
                assert 0.1 < step_rms < 0.3, step_rms
    for p, q in zip(others, twin_others):  # the written-out AdamW equals torch's
        assert torch.allclose(p, q, atol=1e-6)


def test_muon_run_resumes_exactly_and_refuses_another_optimizer(text_file, tmp_path):
    common = ["--data", text_file, *TINY, "--max-iters", "12", "--eval-interval", "4", "--no-export", "--dropout", "0.1"]
    full = run_script("04", *common, "--out", tmp_path / "full", timeout=120)
    cut = run_script("04", *common, "--out", tmp_path / "cut", "--interrupt-at", "5", timeout=120)
    resumed = run_script("04", *common, "--out", tmp_path / "cut", "--resume", timeout=120)
    assert full.returncode == 0 and cut.returncode == 130 and resumed.returncode == 0, resumed.stderr[-1000:]
    losses = [json.loads((tmp_path / d / "history.json").read_text())["losses"] for d in ("full", "cut")]
    assert losses[0] == losses[1] and len(losses[0]) == 12  # Muon's momentum and AdamW's moments were saved
    other = run_script("04", *common, "--out", tmp_path / "cut", "--resume", "--optimizer", "adamw", timeout=60)
    assert_one_line_error(other, 2, "--optimizer adamw differs from the checkpoint's muon")


def test_qk_norm_attention_of_the_ablation_normalises_queries_and_keys():
    abl = load_script("companions/04_ablation.py")
    cfg = m.replace(m.Config(), n_layer=1, n_head=4, n_kv_head=2, n_embd=32, block_size=8)
    attn = abl.QKNormAttention(cfg, 0)
    out = attn.c_attn(torch.randn(2, 8, 32) * 5)  # (B, T, (nh + 2 nkv) hs), through the hook
    q, k, v = out.view(2, 8, -1, 8).split([4, 2, 2], dim=2)
    assert torch.allclose(q.pow(2).mean(-1), torch.ones(2, 8, 4), atol=1e-3)   # unit RMS per head
    assert torch.allclose(k.pow(2).mean(-1), torch.ones(2, 8, 2), atol=1e-3)
    assert v.pow(2).mean() > 2  # values untouched
    assert attn(torch.randn(2, 8, 32), rope=tuple(t[:, None] for t in m.rope_angles(8, 8))).shape == (2, 8, 32)
