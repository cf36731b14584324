"""Tests for companions/02_tokenizer.py: --encode-file prints exactly tiktoken's ids of the file, --bench runs."""
import json
import re

import pytest

from conftest import assert_one_line_error, load_script, run_script

stage = load_script("02")
SCRIPT = "companions/02_tokenizer.py"


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    return stage.tiktoken_gpt2()


def test_encode_file_prints_only_tiktoken_ids(tmp_path, tiktoken_gpt2):
    path = tmp_path / "varied.txt"
    path.write_text(stage.VARIED_TEXT.replace("\r\n", "\n") + "héllo 👋🏽 日本語", encoding="utf-8")
    proc = run_script(SCRIPT, "--encode-file", path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ids = json.loads(proc.stdout)   # the whole of stdout is one JSON list
    assert ids == tiktoken_gpt2.encode_ordinary(path.read_text(encoding="utf-8"))


def test_bench_runs_on_a_small_text(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("To be, or not to be, that is the question.\n" * 200, encoding="utf-8")
    proc = run_script(SCRIPT, "--bench", "--text", path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "0.01 MB, 2,800 tokens, ids identical to tiktoken: True" in proc.stdout
    speeds = [float(x) for x in re.findall(r"(\S+) MB/s", proc.stdout)]
    assert len(speeds) == 2 and min(speeds) > 0


@pytest.mark.parametrize("args, contains", [
    (["--encode-file", "/no/such/file.txt"], "no such file"),   # a file that is not there
    (["--bench", "--max-chars", "0"], "not > 0"),                # a rule on a number
    ([], "one of the arguments"),                                # no job given
])
def test_bad_flags_give_one_line_errors(args, contains):
    assert_one_line_error(run_script(SCRIPT, *args, timeout=60), code=2, contains=contains)


def test_encode_file_keeps_crlf_exactly(tmp_path, tiktoken_gpt2):
    # A file saved by a Windows editor: "\r\n" line ends (and one lone "\r"). Text mode would turn them into "\n"
    # and drop the "\r" tokens (id 201 in GPT-2's vocabulary) that tiktoken sees in the real content.
    content = "First Citizen:\r\nBefore we proceed any further, hear me speak.\r\n\r\nAll:\r\nSpeak, speak.\r"
    path = tmp_path / "windows.txt"
    path.write_bytes(content.encode("utf-8"))
    proc = run_script(SCRIPT, "--encode-file", path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = tiktoken_gpt2.encode_ordinary(content)
    assert 201 in expected
    assert json.loads(proc.stdout) == expected
    # --text reads the same way: the corpus is exactly the file's characters
    assert stage.read_text_file(path, "--text") == content


def test_encode_file_treats_control_tokens_as_text_unless_allowed(tmp_path, tiktoken_gpt2):
    content = "a story<|endoftext|>another one"
    path = tmp_path / "eot.txt"
    path.write_bytes(content.encode("utf-8"))
    ordinary = json.loads(run_script(SCRIPT, "--encode-file", path, timeout=60).stdout)
    assert ordinary == tiktoken_gpt2.encode_ordinary(content) and 50256 not in ordinary
    for allowed in ("all", "<|endoftext|>"):
        proc = run_script(SCRIPT, "--encode-file", path, "--allowed-special", allowed, timeout=60)
        ids = json.loads(proc.stdout)
        assert ids == tiktoken_gpt2.encode(content, allowed_special="all") and 50256 in ids
