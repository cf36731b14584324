"""Tests for companions/06_bench.py: the speed report (with its proof that our loop equals model.generate) and the
load test of the HTTP API, run as a learner runs them, on a tiny random model from test_06_chatbot.py."""
import pytest

from conftest import load_script, run_script
from test_06_chatbot import build_tiny_model

bench = load_script("companions/06_bench.py")


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny06b") / "chat", chat=True)


def test_bench_and_loadtest_commands_run(tiny_chat):
    proc = run_script("companions/06_bench.py", "--model", tiny_chat, "--threads", 1, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model.generate: yes" in proc.stdout and "start-up:" in proc.stdout and "tokens/s" in proc.stdout
    assert "memory: recall over a 200-turn conversation" in proc.stdout
    proc = run_script("companions/06_bench.py", "--model", tiny_chat, "--loadtest", "--clients", "3", "--requests", "2",
                      "--threads", 1, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "6 of 6 requests, 6 valid, 0 failed" in proc.stdout and "p99" in proc.stdout
    proc = run_script("companions/06_bench.py", "--loadtest", "--clients", "0", timeout=60)
    assert proc.returncode == 2 and "--clients" in proc.stderr.splitlines()[-1]


def test_check_completion_catches_broken_answers_and_percentiles_interpolate():
    good = b'data: {"object": "chat.completion.chunk", "choices": [{"delta": {"role": "assistant", "content": ""}}]}' \
           b'\n\ndata: {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "Hi"}, ' \
           b'"finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
    assert bench.check_completion(200, good, True) == ("Hi", None)
    assert bench.check_completion(200, good[:-16], True)[1].startswith("malformed"), "a stream cut before [DONE]"
    assert bench.check_completion(503, b"busy", False)[1].startswith("HTTP 503")
    assert bench.percentile(list(range(50)), 90) == pytest.approx(44.1) and bench.median([3, 1, 2, 10]) == 2.5
