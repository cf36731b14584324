"""Tests of companions/03_bench.py: the memory of naive vs tiled attention over T, and its command line."""
import re

import numpy as np
import pytest

from conftest import assert_one_line_error, load_script, run_script


@pytest.fixture(scope="module")
def bench():
    return load_script("companions/03_bench.py")


def test_tiled_memory_grows_like_t_not_t_squared(bench):
    att = bench.load_lesson()
    rng = np.random.default_rng(7)
    peaks = {}
    for t in (512, 1024):
        q, k, v = (rng.standard_normal((t, 64)).astype(np.float32) for _ in range(3))
        peaks[t] = (bench.peak_bytes(att.attention, q, k, v, causal=True),
                    bench.peak_bytes(att.tiled_attention, q, k, v, block=128, causal=True))
    naive_ratio = peaks[1024][0] / peaks[512][0]
    tiled_ratio = peaks[1024][1] / peaks[512][1]
    assert naive_ratio > 3.5          # doubling T: ~4x (T^2)
    assert tiled_ratio < 2.5          # doubling T: <= ~2x (T)
    assert peaks[1024][1] < peaks[1024][0] / 8


def test_bench_rows_have_the_lesson_memory_law(bench):
    rows = bench.bench(bench.load_lesson(), [256, 512], block=64, repeats=1, log=lambda *a: None)
    assert [r["t"] for r in rows] == [256, 512]
    assert rows[1]["naive_mb"] / rows[0]["naive_mb"] > 3.5 and rows[1]["tiled_mb"] / rows[0]["tiled_mb"] < 2.5
    assert all(r["naive_ms"] > 0 and r["tiled_ms"] > 0 and r["torch_ms"] > 0 for r in rows)


def test_command_line_prints_the_table():
    proc = run_script("companions/03_bench.py", "--lengths", "64,128", "--repeats", "1", "-f", "kernel.json",
                      timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.findall(r"^\s+(\d+) \|\s+([0-9.]+)\s+([0-9.]+) \|\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)", proc.stdout, re.M)
    assert [int(r[0]) for r in rows] == [64, 128], proc.stdout
    assert re.search(r"T x2: naive memory x\d+ \(~T\^2\)", proc.stdout)


@pytest.mark.parametrize("flags, needle", [(["--lengths", "64,abc"], "--lengths"), (["--block", "0"], "--block")])
def test_bad_flags_follow_argparse(flags, needle):
    proc = run_script("companions/03_bench.py", *flags, timeout=60)
    assert_one_line_error(proc, code=2, contains=needle)
    assert proc.stderr.strip().splitlines()[-1].startswith("03_bench.py: error: argument " + needle)
