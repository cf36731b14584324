"""Tests of companions/04_ablation.py: variants at equal parameter count, a tiny smoke run, results and plot."""
import json

import pytest
import torch

from conftest import assert_one_line_error, load_script, run_script
from test_04_minigpt import synthetic_text

a = load_script("companions/04_ablation.py")


def test_variants_are_cumulative_and_parameter_matched():
    assert a.variant_switches("gpt2", 4) == {"optimizer": "adamw"}  # the chain compares architectures, all with AdamW
    assert a.variant_switches("llama", 4) == dict(optimizer="adamw", pos="rope", norm="rms", mlp="swiglu", n_kv_head=2,
                                                  bias=False)
    assert a.variant_switches("muon", 4) == {**a.variant_switches("llama", 4), "optimizer": "muon"}
    assert a.variant_switches("qknorm", 4) == a.variant_switches("llama", 4)  # + QKNormAttention in its process
    cfg = a.L.Config()
    target = a.L.GPT(cfg, 66).num_params()
    for name in a.STEPS:
        variant = a.L.replace(cfg, **a.variant_switches(name, cfg.n_head))
        hidden = a.matched_mlp_hidden(variant, 66, target) if name != "gpt2" else 0
        params = a.L.GPT(a.L.replace(variant, mlp_hidden=hidden), 66).num_params()
        assert abs(params - target) <= 0.01 * target, (name, params, target)
        if name != "gpt2":  # the GPU's widths: multiples of 64, within half a step of 64 (2.1%) at the GPU preset's width
            gpu = a.L.make_config({"arch": "gpt2"}, torch.device("cuda"))
            variant = a.L.replace(gpu, **a.variant_switches(name, gpu.n_head))
            hidden = a.matched_mlp_hidden(variant, 66, a.L.GPT(gpu, 66).num_params(), 64)
            gpu_params = a.L.GPT(a.L.replace(variant, mlp_hidden=hidden), 66).num_params()
            assert hidden % 64 == 0 and abs(gpu_params - 10_869_504) <= 0.021 * 10_869_504, (name, hidden, gpu_params)


@pytest.mark.long
def test_smoke_run_writes_table_json_and_plot(tmp_path):
    data = tmp_path / "tiny.txt"
    data.write_text(synthetic_text(), encoding="utf-8")
    proc = run_script("companions/04_ablation.py", "--budget", "1", "--seeds", "1", "--variants", "gpt2,llama",
                      "--out", tmp_path / "abl", "--data", data, "--threads", "1", "--n-layer", "1", "--n-head", "2",
                      "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--eval-interval", "20",
                      "--eval-iters", "2", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "best val (mean +- std)" in proc.stdout and "llama" in proc.stdout.split("best val (mean")[1]
    results = json.loads((tmp_path / "abl" / "results.json").read_text())["results"]
    assert set(results) == {"gpt2", "llama"} and all(run["curve"] for runs in results.values() for run in runs)
    assert (tmp_path / "abl" / "ablation.png").exists()


def test_unknown_variant_is_one_line(tmp_path):
    proc = run_script("companions/04_ablation.py", "--variants", "gpt2,mamba", "--out", tmp_path, timeout=60)
    assert_one_line_error(proc, code=2, contains="mamba")


def test_merge_combines_runs_made_side_by_side(tmp_path):
    def fake(folder, name, seed, best):
        folder.mkdir()
        run = {"seed": seed, "params": 1000, "switches": {}, "steps": 10, "best_val": best, "final_val": best,
               "curve": [[0.0, 4.0], [1.0, best]]}
        (folder / "results.json").write_text(json.dumps({"budget_s": 5.0, "device": "cpu",
                                                         "results": {name: [run]}}))
    fake(tmp_path / "a", "llama", 1338, 1.5)
    fake(tmp_path / "b", "gpt2", 1337, 1.7)
    fake(tmp_path / "c", "llama", 1337, 1.6)
    proc = run_script("companions/04_ablation.py", "--merge", tmp_path / "a", tmp_path / "b", tmp_path / "c",
                      "--out", tmp_path / "all", timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = json.loads((tmp_path / "all" / "results.json").read_text())["results"]
    assert list(merged) == ["gpt2", "llama"] and [r["seed"] for r in merged["llama"]] == [1337, 1338]
    llama_row = [line for line in proc.stdout.splitlines() if line.startswith("llama")][0]
    assert "1.5500" in llama_row and "-0.1500" in llama_row  # mean of 1.6 and 1.5, against gpt2's 1.7
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.json").write_text(json.dumps({"budget_s": 9.0, "device": "cpu", "results": {}}))
    bad = run_script("companions/04_ablation.py", "--merge", tmp_path / "a", tmp_path / "d", "--out", tmp_path / "x",
                     timeout=60)
    assert_one_line_error(bad, code=2, contains="differ")
