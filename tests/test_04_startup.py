"""04's start-up: a training run never imports torch._dynamo (torch.optim's optimizers import it on first use, seconds
of start-up; 04's optimizer is a plain class), and --optimizer adamw is AdamW exactly as torch.optim.AdamW computes it."""
import subprocess
import sys

import torch

import conftest
from conftest import ROOT, load_script

m = load_script("04")

PROBE = """
import runpy, sys
sys.argv = ["04_minigpt.py", "--data", sys.argv[1], "--threads", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--block-size", "16", "--batch-size", "2", "--max-iters", "3", "--max-minutes", "0", "--eval-interval", "2",
            "--eval-iters", "1", "--num-tokens", "2", "--check-tokens", "0", "--no-export", "--no-plots", "--out", sys.argv[2]]
try:
    runpy.run_path("04_minigpt.py", run_name="__main__")
except SystemExit as exc:
    print("exit", exc.code)
print("torch._dynamo imported:", "torch._dynamo" in sys.modules)
"""


def test_a_training_run_does_not_import_torch_dynamo(tmp_path):
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "t.txt"), str(tmp_path / "out")], cwd=ROOT,
                          env=conftest.test_env(), capture_output=True, text=True, timeout=120)  # a fresh interpreter
    assert "exit 0" in proc.stdout, proc.stderr[-2000:]
    assert "eval step      2:" in proc.stdout  # it trained
    assert "torch._dynamo imported: False" in proc.stdout


def test_adamw_option_equals_torch_adamw_on_every_parameter():
    cfg = m.replace(m.Config(), n_layer=2, n_head=2, n_embd=16, block_size=8, optimizer="adamw", weight_decay=0.1)
    torch.manual_seed(0)
    model, twin = m.GPT(cfg, 11), m.GPT(cfg, 11)
    twin.load_state_dict(model.state_dict())
    ours = m.configure_optimizer(model, cfg)
    assert not any(group["muon"] for group in ours.param_groups)
    params = list(twin.parameters())
    reference = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, cfg.beta2))
    x = torch.randint(0, 11, (3, 8))
    for _ in range(5):
        for net, opt in ((model, ours), (twin, reference)):
            opt.zero_grad()
            net(x, x)[1].backward()
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()
    state = ours.state_dict()  # positions, as torch.optim saves them; a fresh optimizer takes them back
    again = m.configure_optimizer(model, cfg)
    again.load_state_dict(state)
    assert all(torch.equal(again.state[p]["v"], ours.state[p]["v"]) for p in model.parameters())
