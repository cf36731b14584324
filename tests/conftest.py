"""Shared test helpers.

The stage scripts are named `01_xor.py` ... `06_chatbot.py`: a name that starts with a digit cannot be imported
with a plain `import` statement, so `load_script` loads one by path. Importing a script must never start its work
(every script guards `main()` with `if __name__ == "__main__":`), so unit tests can call its functions directly.

`run_script` runs a script as a learner would (`python 04_minigpt.py --flags`), in a subprocess with a timeout,
and returns the finished process (returncode, stdout, stderr) so a test can assert on what it printed. It runs the
script in a fork of a warm Python that has already imported torch and transformers (tests/warm_python.py): the same
argv, folder, stdin, stdout, stderr and exit code as `python script`, without paying the imports for every run.
LLM_TESTS_FRESH_PYTHON=1 runs every script in a fresh interpreter instead (as do runs with their own environment).

Speed (the README's `python -m pytest` runs the tests in parallel, one pytest-xdist worker per core, see pyproject.toml):
OpenMP threads that have no work wait passively (OMP_WAIT_POLICY=PASSIVE) instead of spinning, in the test processes
and in every script they start. With two workers on two cores, spinning threads of one process steal the cores the
other process needs; passive waiting changes no result and no thread count, only how idle threads wait. For the same
reason scripts start with one torch thread (OMP_NUM_THREADS=1, unless it is set already): the workers already fill
the cores, the tests' models are tiny, and a script's own --threads flag still sets what it asks for.
"""
import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Before anything imports torch (OpenMP reads them once, when it is loaded): see the module docstring.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def script_path(name):
    """'04' or '04_minigpt' or '04_minigpt.py' -> the path of that lesson; 'companions/x.py' -> that companion."""
    if "/" in name:  # a companion (or any file) given by its path from the repository root
        path = ROOT / name
        if not path.exists():
            raise FileNotFoundError(f"no script {name!r} in {ROOT}")
        return path
    stem = name[:-3] if name.endswith(".py") else name
    matches = sorted(ROOT.glob(f"{stem}*.py")) if len(stem) == 2 else [ROOT / f"{stem}.py"]
    if not matches or not matches[0].exists():
        raise FileNotFoundError(f"no stage script matches {name!r} in {ROOT}")
    return matches[0]


_loaded = {}


def load_script(name):
    """Import a stage script as a module (cached per test session), without running its main()."""
    path = script_path(name)
    if path not in _loaded:
        # e.g. stage_04_minigpt, companion_04_ddp: valid identifiers, distinct for a lesson and its companions
        module_name = ("companion_" if path.parent.name == "companions" else "stage_") + path.stem
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
        spec.loader.exec_module(module)
        _loaded[path] = module
    return _loaded[path]


def test_env(**extra):
    """The environment scripts run in under test: offline, no display, small thread count, unbuffered output."""
    env = dict(os.environ)
    env.update(
        MPLBACKEND="Agg",            # matplotlib without a screen
        HF_HUB_OFFLINE="1",          # never try the Hugging Face hub in tests: CI has no internet
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_WAIT_POLICY=os.environ["OMP_WAIT_POLICY"],  # idle OpenMP threads sleep: see the module docstring
        OMP_NUM_THREADS=os.environ["OMP_NUM_THREADS"],  # one thread unless a script's --threads says otherwise
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


_warm = {}
_warm_lock = threading.Lock()  # a run_script from a second thread, while one runs there, gets a fresh interpreter


def comparable_env():
    """test_env() without the variables the test process changes by itself: the name of the running test (pytest), and
    the inductor cache folder that importing torch._dynamo writes into os.environ (its default, which the warm Python
    and every script compute alike). Any other change since the warm Python started sends runs to a fresh one."""
    env = test_env()
    env.pop("PYTEST_CURRENT_TEST", None)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    return env


def warm_python():
    """This test process's tests/warm_python.py (started on first use, with test_env()), or None if it cannot run."""
    if "proc" not in _warm:
        _warm["proc"] = None
        if os.environ.get("LLM_TESTS_FRESH_PYTHON") != "1" and hasattr(os, "fork"):
            import atexit
            import json
            proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("warm_python.py"))],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=test_env(),
                                    cwd=str(ROOT))
            atexit.register(proc.stdin.close)  # end of the tests: the warm Python reads EOF and exits
            line = proc.stdout.readline()
            if line and not json.loads(line)["import_warnings"]:  # an import warning would be hidden from scripts
                _warm["proc"], _warm["env"] = proc, comparable_env()
            else:
                proc.stdin.close()
    proc = _warm["proc"]
    usable = proc is not None and proc.poll() is None and comparable_env() == _warm["env"]  # unchanged since
    return proc if usable else None


def run_warm(cmd, cwd, input, timeout):
    """run_script's work in a forked child of the warm Python: same argv, folder, stdin, stdout, stderr, exit code."""
    import json
    import select
    import signal
    import tempfile
    warm = warm_python()
    with tempfile.TemporaryDirectory(prefix="run_script_") as folder:
        stdin = None
        if input is not None:
            stdin = os.path.join(folder, "stdin")
            with open(stdin, "w") as f:
                f.write(input)
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        warm.stdin.write(json.dumps({"argv": cmd[1:], "cwd": cwd, "stdin": stdin, "stdout": out, "stderr": err})
                         + "\n")
        warm.stdin.flush()
        pid = json.loads(warm.stdout.readline())["pid"]
        ready, _, _ = select.select([warm.stdout], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        returncode = json.loads(warm.stdout.readline())["returncode"]
        with open(out) as f_out, open(err) as f_err:  # text mode as subprocess.run(text=True) decodes
            stdout, stderr = f_out.read(), f_err.read()
    if not ready:
        raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(cmd, returncode, stdout, stderr)


def run_script(name, *args, timeout=300, cwd=None, env=None, input=None):
    """Run `python <stage script> args...`; return the CompletedProcess (text mode). Never raises on exit codes.

    Runs in a fork of the warm Python (tests/warm_python.py: torch and transformers already imported) unless the
    test gives its own environment, or LLM_TESTS_FRESH_PYTHON=1 asks for a fresh interpreter every time."""
    cmd = [sys.executable, str(script_path(name)), *map(str, args)]
    if env is None and warm_python() is not None and _warm_lock.acquire(blocking=False):  # one run at a time there
        try:
            return run_warm(cmd, str(cwd or ROOT), input, timeout)
        finally:
            _warm_lock.release()
    return subprocess.run(
        cmd, cwd=str(cwd or ROOT), env=env or test_env(), input=input,
        capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(proc, code=None, contains=None):
    """A clean failure: non-zero exit (or exactly `code`), a short message on stderr, no Python traceback."""
    if code is None:
        assert proc.returncode != 0, f"expected failure, got exit 0\nstdout:\n{proc.stdout[-2000:]}"
    else:
        assert proc.returncode == code, f"exit {proc.returncode} != {code}\nstderr:\n{proc.stderr[-2000:]}"
    err = proc.stderr.strip()
    assert "Traceback" not in err, f"traceback instead of a one-line error:\n{err[-3000:]}"
    assert err, "no error message on stderr"
    if contains is not None:
        assert contains.lower() in err.lower(), f"{contains!r} not in error message: {err!r}"


def pytest_collection_modifyitems(config, items):
    """Tests marked `long` (fresh interpreters: torchrun, subprocesses of subprocesses) go first, at the heads of the
    pytest-xdist workers' shares (worksteal hands worker i the i-th of equal consecutive shares), so that they run side
    by side from the start and the run does not end waiting on one of them. The long tests of one file stay together
    on one worker, one after the other (the two DDP tests' torchrun jobs, of three processes each, do not compete for
    the cores). Without xdist: no change."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    long = [item for item in items if item.get_closest_marker("long")]
    if workers < 2 or not long:
        return
    rest = [item for item in items if not item.get_closest_marker("long")]
    files = {}
    for item in long:
        files.setdefault(item.path, []).append(item)
    heads = [[] for _ in range(workers)]
    for i, group in enumerate(files.values()):  # round robin by file: worker i gets files i, i + workers, ...
        heads[i % workers] += group
    ordered, left = [], len(items)
    for i in range(workers):  # share sizes as xdist computes them: what is left // workers still to serve
        size = left // (workers - i)
        take = max(0, size - len(heads[i]))
        ordered += heads[i] + rest[:take]
        rest, left = rest[take:], left - len(heads[i]) - take
    items[:] = ordered + rest


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_in_tests():
    """Tests that run models in the test process use tiny ones: one thread is as fast, and leaves the other core to
    the other xdist worker (scripts the tests start choose their own threads, with --threads or their default)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def out_dir(tmp_path):
    """A fresh output folder for a script run (scripts take --out DIR)."""
    d = tmp_path / "out"
    d.mkdir()
    return d
