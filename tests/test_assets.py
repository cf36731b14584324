"""companions/assets.py: the offline assets shared by lessons 02, 04, 05 and 06."""
import hashlib
import subprocess
import sys

from conftest import ROOT, assert_one_line_error
from conftest import test_env as offline_env  # renamed so pytest does not collect it as a test

SCRIPT = ROOT / "companions" / "assets.py"


def run_assets(cache, *args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=offline_env(LLM_FROM_SCRATCH_CACHE=cache),
                          capture_output=True, text=True, timeout=300)


def test_shakespeare_and_gpt2_are_built_offline_and_checked(tmp_path):
    proc = run_assets(tmp_path, "shakespeare", "gpt2")
    assert proc.returncode == 0, proc.stderr
    tiny = (tmp_path / "shakespeare" / "tiny_shakespeare.txt").read_text(encoding="utf-8")
    # the classic file's plays, order and last line; our edition of the plays is a little longer (about 1.5%)
    assert tiny.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert tiny.endswith("Whiles thou art waking.\n")
    assert 1_115_394 <= len(tiny) <= 1_150_000
    assert "**" not in tiny and "\\" not in tiny and "_" not in tiny  # Markdown fully removed
    every = (tmp_path / "shakespeare" / "all_plays.txt").read_text(encoding="utf-8")
    assert len(every) > 4 * len(tiny) and "HAMLET:" in every
    # GPT-2's files under both naming conventions, byte-identical to what tiktoken pins
    pinned = {"vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
              "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}
    for name, twin in (("vocab.bpe", "merges.txt"), ("encoder.json", "vocab.json")):
        for file in (name, twin):
            assert hashlib.sha256((tmp_path / "gpt2" / file).read_bytes()).hexdigest() == pinned[name]
    # idempotent: a second run rebuilds nothing and leaves no temporary files
    assert run_assets(tmp_path, "shakespeare", "gpt2").returncode == 0
    assert not list(tmp_path.rglob("*.tmp"))
    check = run_assets(tmp_path, "--check")
    assert "shakespeare  ready" in check.stdout and "gpt2         ready" in check.stdout


def test_unknown_asset_is_a_usage_error(tmp_path):
    proc = run_assets(tmp_path, "tinystories")
    assert_one_line_error(proc, code=2, contains="unknown asset")
    assert not any(tmp_path.iterdir())


def test_play_parser_keeps_speeches_and_drops_directions():
    from conftest import load_script
    assets = load_script("companions/assets.py")
    markdown = "\n".join([
        "# The Play", "## ACT I", "### SCENE I. A room.", "",
        "_Enter QUEEN and KING,", "with attendants_", "",
        "**QUEEN**  ", "Good morrow, my lord. _\\[Aside]_ Fie!  ", "Away \\-- away.  ", "",
        "*Exit Queen.*", "",
        "**KING**  ", "\\[Within]_  ", "Who calls?  ", "*Sound a horn,", "and drums.*", "Enough.  ",
    ])
    assert assets.markdown_play_to_text(markdown) == (
        "QUEEN:\nGood morrow, my lord.  Fie!\nAway -- away.\n\nKING:\nWho calls?\nEnough.\n")
