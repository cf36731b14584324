"""A warm Python for tests/conftest.py's run_script: it imports torch, numpy and transformers once, then runs each
script it is asked to run in a forked copy of itself, so that a script run costs no interpreter start-up and no
torch/transformers import (about 2 s of CPU for torch, 5 s with transformers, on a 2-core CPU), nor the 1-2 s of
the lazy imports most scripts make later (torch._dynamo, transformers' Llama and GPT-2 classes, pyplot).

Not a test file, and not run by hand: conftest.py starts one per test process (with the test environment), writes
one JSON request a line on its stdin and reads JSON answers from its stdout:
  first, once: {"import_warnings": [...]} (warnings the imports gave; conftest uses it only if there were none)
  {"argv": [script, args...], "cwd": ..., "stdin": file or null, "stdout": file, "stderr": file}
  -> {"pid": child's pid} at once, then {"returncode": ...} when the child ends (negative: killed by that signal).
The child runs the script as `python script args...` would: as __main__, with the script's folder first on sys.path,
the given argv, working folder and standard streams; exit codes, uncaught exceptions (traceback on stderr, exit 1),
atexit handlers and non-daemon threads behave as at the end of a fresh interpreter. What differs from a fresh
interpreter: the modules imported here are already in sys.modules (conftest uses this process only if their imports
gave no warning) and the environment is the one this process started with, so conftest uses a fresh interpreter for
any run with other environment variables.
"""
import json
import os
import runpy
import signal
import sys

import warnings

with warnings.catch_warnings(record=True) as IMPORT_WARNINGS:  # "always": nothing goes into the once-registries
    warnings.simplefilter("always")
    import numpy  # noqa: F401  (preloaded: that is the point)
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (the lazy parts the scripts use)
    # What most script runs import later, about 2 s of CPU a run: torch._dynamo (torch.optim imports it with the
    # first optimizer; 03 and 04 start it early), the Llama and GPT-2 classes of transformers (exports, checks,
    # 05 and 06), and pyplot (the lessons' pictures; MPLBACKEND=Agg is in the test environment).
    import torch._dynamo  # noqa: F401
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    import matplotlib.pyplot  # noqa: F401


def run_child(request):
    """In the forked child: become `python argv...` with the requested streams, then exit with its code."""
    import atexit
    import threading
    import numpy as np
    for fd, path, flags in ((0, request["stdin"] or os.devnull, os.O_RDONLY),
                            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        new = os.open(path, flags, 0o644)
        os.dup2(new, fd)
        os.close(new)
    # fresh stream objects on the new descriptors, configured as a fresh interpreter configures them
    sys.stdin = sys.__stdin__ = open(0, "r", encoding=sys.stdin.encoding, errors=sys.stdin.errors, closefd=False)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        new = open(fd, "w", encoding=old.encoding, errors=old.errors, closefd=False,
                   buffering=1 if name == "stderr" else -1)
        if os.environ.get("PYTHONUNBUFFERED"):
            new.reconfigure(write_through=True)
        setattr(sys, name, new)
        setattr(sys, "__" + name + "__", new)
    os.chdir(request["cwd"])
    np.random.seed()  # numpy's global generator was seeded once, here: give each run its own seed, as a fresh start
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        code = -signal.SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        threading._shutdown()  # what the interpreter does at exit: wait for non-daemon threads
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if code < 0:  # died of a signal, as a fresh interpreter does on an uncaught KeyboardInterrupt
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code & 0xFF)


def main():
    answers = sys.stdout
    # first line: the warnings the imports gave (a fresh `python script` would print them: conftest then runs fresh)
    answers.write(json.dumps({"import_warnings": [str(w.message) for w in IMPORT_WARNINGS]}) + "\n")
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                run_child(request)
            finally:
                os._exit(70)
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
