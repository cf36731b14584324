"""Beyond lesson 02: the GPT-2 token ids of a file from OUR encoder, and our encoder's speed next to tiktoken's.

  python companions/02_tokenizer.py --encode-file FILE     # a JSON list of GPT-2 ids on stdout, nothing else
  python companions/02_tokenizer.py --encode-file FILE --allowed-special all    # "<|endoftext|>" -> 50256
  python companions/02_tokenizer.py --bench [--text FILE] [--max-chars N]      # MB/s, ours and tiktoken's

--encode-file encodes exactly the characters in the file ("\\r\\n" stays "\\r\\n"), as ordinary text unless
--allowed-special says otherwise: a file that spells "<|endoftext|>" gets the ids of those characters, as with
  python -c "import sys, tiktoken; print(tiktoken.get_encoding('gpt2').encode_ordinary(open(sys.argv[1],
             newline='', encoding='utf-8').read()))" FILE
"""
import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path


def load_lesson():
    """02_embeddings.py as a module (its name starts with a digit, so `import` cannot load it)."""
    path = Path(__file__).resolve().parent.parent / "02_embeddings.py"
    spec = importlib.util.spec_from_file_location("lesson_02_embeddings", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lesson = load_lesson()


def encode_file(path, allowed_special):
    """JSON ids on stdout and nothing else, so that the output can be piped and compared."""
    text = lesson.read_text_file(path, "--encode-file")
    print(json.dumps(lesson.bpe_encode(lesson.load_gpt2_bpe(), text, allowed_special=allowed_special)))


def bench(text_path, max_chars):
    """Our pure-Python encoder (GPT-2's merges) against tiktoken's Rust one on the corpus, from an empty cache."""
    text, source = lesson.load_corpus(text_path, max_chars)
    gpt2, encoding = lesson.load_gpt2_bpe(), lesson.tiktoken_gpt2()
    megabytes = len(text.encode("utf-8")) / 1e6
    # A merge loop in pure Python is slow, but text repeats itself: caching per chunk (as tiktoken and Hugging
    # Face tokenizers do) turns most of the work into a dictionary lookup. The timing includes filling the cache.
    gpt2["cache"].clear()
    start = time.perf_counter()
    ours = lesson.bpe_encode(gpt2, text)
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    theirs = encoding.encode_ordinary(text)
    theirs_seconds = time.perf_counter() - start
    chunks = len(lesson.pre_split(text))
    print(f"{source}: {megabytes:.2f} MB, {len(ours):,} tokens, ids identical to tiktoken: {ours == theirs}\n"
          f"our encoder:     {megabytes / ours_seconds:6.2f} MB/s ({ours_seconds:.2f} s; {chunks:,} chunks, "
          f"{len(gpt2['cache']):,} distinct ones merged, the rest looked up)\n"
          f"tiktoken (Rust): {megabytes / theirs_seconds:6.2f} MB/s ({theirs_seconds:.2f} s)")
    if ours != theirs:   # where the two encoders part, to debug
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        print(f"first difference at token {first}: ours {ours[first:first + 5]}, tiktoken {theirs[first:first + 5]}")


def main(argv=None):
    p = argparse.ArgumentParser(description="GPT-2 ids of a file from lesson 02's encoder; its speed vs tiktoken.")
    job = p.add_mutually_exclusive_group(required=True)
    job.add_argument("--encode-file", metavar="FILE", help="print the GPT-2 ids of FILE as a JSON list")
    job.add_argument("--bench", action="store_true", help="time our encoder and tiktoken's on the corpus")
    p.add_argument("--allowed-special", choices=["none", "all", "<|endoftext|>"], default="none",
                   help="control tokens written as text in FILE that become their single id")
    p.add_argument("--text", help="--bench: any UTF-8 text file instead of Shakespeare")
    p.add_argument("--max-chars", type=lesson.positive(int), help="--bench: only the first N characters")
    args = p.parse_args(argv)
    allowed = {"none": (), "all": "all"}.get(args.allowed_special, {args.allowed_special})
    try:
        if args.encode_file:
            encode_file(args.encode_file, allowed)
        else:
            bench(args.text, args.max_chars)
    except lesson.InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
