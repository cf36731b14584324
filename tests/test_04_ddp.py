"""Tests of companions/04_ddp.py: 04's GPT trained data-parallel by torchrun (2 CPU processes, gloo)."""
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, assert_one_line_error, run_script, script_path
from conftest import test_env as offline_env
from test_04_minigpt import TINY, synthetic_text


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(synthetic_text(), encoding="utf-8")
    return path


def torchrun(*args, timeout=180):
    """torchrun with 2 CPU processes, each one thread (a fresh interpreter: torchrun's launcher does not finish
    promptly in a fork of the warm Python)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script_path("companions/04_ddp.py")), *map(str, args)]
    with subprocess.Popen(cmd, cwd=str(ROOT), env=offline_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        share_scheduling_weight(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def share_scheduling_weight(proc):
    """torchrun starts each worker in a session of its own, and on Linux a session is scheduled as a group with its
    own weight (/proc/PID/autogroup). Where the tests run with a raised weight (say `echo -20 > /proc/self/autogroup`
    on a busy machine) the workers would get a sliver of a CPU beside other raised programs and reach the timeout:
    give them the weight this process has, in a background thread while torchrun starts them (Linux only; where the
    weight cannot be read or written, or the file is empty as in some CI containers, nothing changes)."""
    try:
        with open("/proc/self/autogroup") as f:
            fields = f.read().split()  # "/autogroup-123 nice -20"; empty or absent in some containers
    except OSError:
        return
    if len(fields) < 3 or fields[-2] != "nice" or fields[-1] in ("0", "+0"):
        return
    nice = fields[-1]

    def raise_workers():
        done = set()
        while proc.poll() is None and len(done) < 2:
            for task in Path(f"/proc/{proc.pid}/task").glob("*"):
                try:
                    children = (task / "children").read_text().split()
                except OSError:
                    continue
                for pid in set(children) - done:
                    try:
                        Path(f"/proc/{pid}/autogroup").write_text(nice)
                        done.add(pid)
                    except OSError:
                        pass
            time.sleep(0.05)

    threading.Thread(target=raise_workers, daemon=True).start()


# One DDP configuration for every run here: 2 processes x 2 accumulated micro-batches, 6 steps, evaluations at 0, 3, 6
DDP = [*TINY, "--max-iters", "6", "--eval-interval", "3", "--log-interval", "3", "--grad-accum", "2", "--no-export"]


def check_ddp_equals_one_process(arch, text_file, out):
    """A DDP run into `out` equals one process accumulating the same global batch; returns the DDP checkpoint."""
    proc = torchrun("--data", text_file, *DDP, "--arch", arch, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP over 2 processes" in proc.stdout
    assert "check: DDP parameters on 2 processes identical" in proc.stdout
    assert proc.stdout.count("eval step") == 3  # only rank 0 logs: steps 0, 3, 6
    assert (out / "ckpt.pt").exists()

    # The same global batch in one process (4 accumulated micro-batches instead of 2 processes x 2) draws the same
    # windows (batch_generator), so without dropout it must train the same weights, up to float rounding.
    single = run_script("04", "--data", text_file, *TINY, "--arch", arch, "--max-iters", "6", "--eval-interval", "3",
                        "--log-interval", "3", "--grad-accum", "4", "--dropout", "0", "--no-export",
                        "--out", out / "single", timeout=120)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp_ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    one_ckpt = torch.load(out / "single" / "ckpt.pt", weights_only=True)
    assert ddp_ckpt["config"]["dropout"] == 0.0 and ddp_ckpt["step"] == one_ckpt["step"] == 6
    worst = max((ddp_ckpt["model"][k] - one_ckpt["model"][k]).abs().max().item() for k in one_ckpt["model"])
    assert worst < 1e-5, worst
    ddp_evals = [v for e in ddp_ckpt["history"]["evals"] for v in e[1:3]]  # train and val loss at steps 0, 3, 6
    one_evals = [v for e in one_ckpt["history"]["evals"] for v in e[1:3]]
    assert len(ddp_evals) == 6 and ddp_evals == pytest.approx(one_evals, abs=1e-5)
    # the logged training loss under DDP is the mean over ranks: the whole global batch's loss, as in one process
    assert ddp_ckpt["history"]["steps"] == one_ckpt["history"]["steps"] == list(range(1, 7))
    assert ddp_ckpt["history"]["losses"] == pytest.approx(one_ckpt["history"]["losses"], abs=1e-5)
    return ddp_ckpt


@pytest.mark.long
def test_ddp_two_gloo_processes_equal_one_process_accumulating_gpt2(text_file, tmp_path):
    check_ddp_equals_one_process("gpt2", text_file, tmp_path)


@pytest.mark.long
def test_ddp_llama_equals_one_process_then_interrupt_and_resume(text_file, tmp_path):
    """The llama run above; then rank 0 saves on an interrupt, and a DDP resume continues to the same end as that
    uninterrupted DDP run (one torchrun run serves both checks)."""
    full = check_ddp_equals_one_process("llama", text_file, tmp_path / "full")
    common = ["--data", text_file, *DDP, "--arch", "llama"]
    cut = torchrun(*common, "--out", tmp_path, "--interrupt-at", "3")
    assert cut.returncode != 0 and "continue with --resume" in cut.stdout
    resumed = torchrun(*common, "--out", tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing at step 3" in resumed.stdout
    assert "check: DDP parameters on 2 processes identical" in resumed.stdout
    a = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert a["step"] == full["step"] == 6 and a["history"]["steps"] == list(range(1, 7))
    assert a["history"]["losses"] == pytest.approx(full["history"]["losses"], abs=1e-6)


def test_without_torchrun_is_one_clear_line(tmp_path):
    proc = run_script("companions/04_ddp.py", "--out", tmp_path)
    assert_one_line_error(proc, code=2, contains="torchrun")
