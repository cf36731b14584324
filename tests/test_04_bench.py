"""Tests of companions/04_bench.py: the KV-cache benchmark and the MFU report (tiny shapes, CPU)."""
from conftest import assert_one_line_error, run_script

SMALL = ["--threads", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16"]


def test_bench_kv_on_random_model():
    proc = run_script("companions/04_bench.py", "--bench-kv", "40", *SMALL, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "40 new tokens: greedy identical, sampled (same seed) identical" in proc.stdout
    assert "x faster for 40 new tokens" in proc.stdout


def test_bench_mfu_reports_throughput():
    proc = run_script("companions/04_bench.py", "--mfu", "3", *SMALL, "--batch-size", "2", timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tokens/s" in proc.stdout and "ms/step" in proc.stdout


def test_bench_needs_a_task_and_checks_flags():
    assert_one_line_error(run_script("companions/04_bench.py", *SMALL, timeout=60), code=2, contains="--bench-kv")
    proc = run_script("companions/04_bench.py", "--bench-kv", "5", "--n-embd", "30", "--n-head", "4", timeout=60)
    assert_one_line_error(proc, code=2, contains="divisible")
