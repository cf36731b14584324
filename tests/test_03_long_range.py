"""Tests of companions/03_long_range.py: lesson 03's long-range experiment with another LSTM forget-gate bias."""
import re

import pytest
import torch

from conftest import assert_one_line_error, load_script, run_script


@pytest.fixture(scope="module")
def companion():
    return load_script("companions/03_long_range.py")


def test_forget_bias_sets_the_forget_gates_only(companion):
    lesson = companion.load_lesson()
    torch.manual_seed(0)
    model = companion.lstm_with_forget_bias(lesson, 2.0)()
    width = model.lstm.hidden_size
    for bias in (model.lstm.bias_ih_l0, model.lstm.bias_hh_l0):
        assert torch.all(bias[width:2 * width] == 1.0)            # the two halves add up to 2
        assert not torch.all(bias[:width] == 1.0)                 # the other gates keep torch's init


def test_higher_forget_bias_slows_the_decay_of_the_learning_signal(companion):
    lesson = companion.load_lesson()
    biased = companion.lstm_with_forget_bias(lesson, 3.0)
    default_64 = lesson.gradient_to_first_token(lesson.TinyLSTMNet, 64, 0)
    biased_64 = lesson.gradient_to_first_token(biased, 64, 0)
    assert biased_64 > 1e3 * default_64


def test_command_line_tiny_run_prints_the_table():
    proc = run_script("companions/03_long_range.py", "--lengths", "4,6", "--steps", "5", "--lstm-forget-bias", "1",
                      timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "forget gates start at 0.73" in proc.stdout
    rows = re.findall(r"^\s+(\d+)\s+([0-9.]+)%\s+([0-9.]+)% \|", proc.stdout, re.M)
    assert [int(r[0]) for r in rows] == [4, 6], proc.stdout
    assert "LSTM gradient shrinks by about x" in proc.stdout


def test_bad_flag_follows_argparse():
    proc = run_script("companions/03_long_range.py", "--lstm-forget-bias", "inf", timeout=60)
    assert_one_line_error(proc, code=2, contains="--lstm-forget-bias")
    assert proc.stderr.strip().splitlines()[-1].startswith("03_long_range.py: error:")
