"""Companion of 05_finetune.py: how far a pretrained LM gets on financial stance with NO training.

Zero-shot and few-shot prompting: an instruction, k labelled examples, then the sentence; the label is the word among
"negative", "neutral", "positive" that the model finds likeliest next (no generation, no parsing of free text). The
instruction and examples are the same for every sentence, so their keys and values are computed ONCE and reused
(stage 04's KV cache); batch calibration removes the model's favourite label.

    python companions/05_prompting.py                           # test split, default model (gpt2, else SmolLM2)
    python companions/05_prompting.py --model out/04_minigpt/hf --shots-per-label 1
    python companions/05_prompting.py --eval-file data/stance_challenge.csv    # also on the challenge set
"""
import argparse, copy, importlib.util, inspect, json, random, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
ft = sys.modules.get("stage_05_finetune")  # the lesson, loaded by path (its name starts with a digit), once
if ft is None:
    spec = importlib.util.spec_from_file_location("stage_05_finetune", ROOT / "05_finetune.py")
    ft = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ft)
LABELS, say = ft.LABELS, ft.say

# Prompting in detail: an instruction, k labelled examples, then the sentence; the label is the word among "negative",
# "neutral", "positive" the model finds likeliest next: no generation, no parsing of free text. A model with a chat
# template (SmolLM2) gets a chat, each example a user turn answered by the assistant; a plain LM gets plain text
# ending in "Answer:". Instruction and examples are the same for every sentence, so they run through the model ONCE
# and their keys/values are kept (stage 04's KV cache): each sentence then costs only its own tokens.
# Small models have favourite labels whatever the sentence. Batch calibration (Zhou et al., 2023) measures that bias
# as the mean label score over real unlabelled sentences and subtracts it. (Contextual calibration scores "N/A"
# instead, but to SmolLM2 "N/A" itself looks negative, so subtracting it pushes sentences to "positive".)
INSTRUCTION = ("Decide whether each financial news sentence is positive, negative or neutral news for the "
               "company's shareholders. Answer with one word: positive, negative or neutral.")
MARKER = "<<SENTENCE>>"

def prompt_template(tok, examples):
    """[(text, label)] -> (shared prefix, suffix with MARKER where " " + sentence goes, text before a label)."""
    if tok.chat_template:  # render the WHOLE prompt once with a placeholder, then cut there
        messages = [{"role": "system", "content": INSTRUCTION}]
        for text, label in examples:
            messages += [{"role": "user", "content": f"Sentence: {text}"}, {"role": "assistant", "content": label}]
        messages.append({"role": "user", "content": f"Sentence:{MARKER}"})
        full, label_lead = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), ""
    else:  # "Answer: positive": in BPE the word's token includes its leading space
        full = INSTRUCTION + "\n\n" + "".join(f"Sentence: {t}\nAnswer: {lab}\n\n" for t, lab in examples)
        full, label_lead = full + f"Sentence:{MARKER}\nAnswer:", " "
    cut = full.index(MARKER)
    return full[:cut], full[cut:], label_lead

def cache_keyword(model):
    """The name under which forward() takes a KV cache: `cache` in transformers 5.x, `past_key_values` before (5.x
    still accepts the old name but warns that it goes away in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

@torch.no_grad()
def label_scores(lm, tok, examples, texts, device, batch_size, max_len):
    """-> (N, 3) log p(label | prompt around each text), and the prefix length in tokens. The label's tokens are
    scored teacher-forced, log p(y | x) = sum_j log p(y_j | x, y_1..y_{j-1}): one forward pass, no generation."""
    from transformers import DynamicCache
    prefix, suffix, label_lead = prompt_template(tok, examples)
    prefix_ids = tok(prefix, add_special_tokens=False).input_ids
    # The shared prefix runs ONCE; the cache we hand in is filled in place with its keys and values, (1, heads, P,
    # head_dim) per layer. fp32 throughout: calibration subtracts log-probabilities that differ by hundredths.
    body, cache_name, prefix_cache = lm.base_model, cache_keyword(lm.base_model), DynamicCache()
    body(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True, **{cache_name: prefix_cache})
    before, after = [tok(piece, add_special_tokens=False).input_ids if piece else [] for piece in suffix.split(MARKER)]
    label_ids = [tok(label_lead + lab, add_special_tokens=False).input_ids for lab in LABELS]
    # One token per label (SmolLM2): the three scores are entries of ONE next-token distribution, a row per
    # sentence. Otherwise a row per (sentence, label), since a label's second token depends on its first.
    single = all(len(ids) == 1 for ids in label_ids)
    room = ft.max_positions(lm.config) - len(prefix_ids) - len(before) - len(after) - max(map(len, label_ids))
    text_ids = [tok(" " + t, add_special_tokens=False).input_ids[:min(max_len, room)] for t in texts]
    output_layer = lm.get_output_embeddings()  # C -> V, run only where we read, not over the full (R, T, V)
    scores = torch.zeros(len(texts), len(LABELS))
    order = sorted(range(len(texts)), key=lambda i: len(text_ids[i]))  # similar lengths together: little padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        suffixes = [before + text_ids[i] + after for i in chunk]
        rows = suffixes if single else [s + lab for s in suffixes for lab in label_ids]
        ids, mask = ft.pad_batch(rows, tok.pad_token_id)                                    # (R, T) right-padded
        cache = copy.deepcopy(prefix_cache)  # a fresh copy: running the model APPENDS this batch's keys/values
        cache.batch_repeat_interleave(len(rows))                                         # the prefix, once per row
        mask = torch.cat([torch.ones(len(rows), len(prefix_ids), dtype=mask.dtype), mask], 1)  # (R, P + T)
        hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                      **{cache_name: cache}).last_hidden_state                          # (R, T, C)
        if single:  # row r's last real token (right padding: len - 1) predicts the label token
            last = torch.tensor([len(r) - 1 for r in rows], device=device)
            logp = F.log_softmax(output_layer(hidden[torch.arange(len(rows)), last]).float(), -1)  # (R, V)
            scores[chunk] = logp[:, [ids_[0] for ids_ in label_ids]].cpu()  # (R, 3): the three label columns
            continue
        for r, row in enumerate(rows):  # rows go text0/neg, text0/neu, text0/pos, text1/neg, ...
            n = len(label_ids[r % len(LABELS)])  # position t predicts token t + 1: positions -n-1 .. -2 of the row
            logp = F.log_softmax(output_layer(hidden[r, len(row) - n - 1:len(row) - 1]).float(), -1)  # (n, V)
            scores[chunk[r // len(LABELS)], r % len(LABELS)] = logp[torch.arange(n), row[-n:]].sum().cpu()
    return scores, len(prefix_ids)

def prompt_classify(lm, tok, examples, texts, unlabelled, device, batch_size, max_len):
    """-> (predictions, calibrated predictions, prefix length). `unlabelled`: non-test sentences that measure bias."""
    n = len(texts)
    scores, n_prefix = label_scores(lm, tok, examples, list(texts) + list(unlabelled), device, batch_size, max_len)
    # s(x, y) = log p(y | prompt(x)); bias b(y) = mean over unlabelled x' of s(x', y); predict argmax_y s(x, y) - b(y):
    # the label this sentence makes MORE likely than usual, not the label the model likes anyway
    bias = scores[n:].mean(0)  # (3,)
    return scores[:n].argmax(1).tolist(), (scores[:n] - bias).argmax(1).tolist(), n_prefix

def few_shot_examples(train_rows, shots_per_label, seed):
    """k short examples of each class (a long prompt costs time on every sentence), interleaved neg, neu, pos, ...:
    small models lean towards the label they saw last, so the order should favour none."""
    rng, chosen = random.Random(seed), []
    for label in LABELS:
        pool = sorted([t for t, lab in train_rows if lab == label], key=len)[:40]
        chosen.append([(t, label) for t in rng.sample(pool, min(shots_per_label, len(pool)))])
    return [example for group in zip(*chosen) for example in group]


def run_prompting(lm, tok, train_rows, eval_sets, device, args):
    """For k = 0 and k = shots_per_label: calibrated and uncalibrated predictions on each (name, rows) eval set."""
    results = []
    for shots in sorted({0, args.shots_per_label}):
        examples = few_shot_examples(train_rows, shots, args.seed)
        name = f"few-shot prompt (k={len(examples)})" if examples else "zero-shot prompt"
        prefix, suffix, _ = prompt_template(tok, examples)
        if len(tok(prefix + suffix, add_special_tokens=False).input_ids) + 24 > ft.max_positions(lm.config):
            say(f"{name} skipped: the prompt leaves no room for a sentence in {ft.max_positions(lm.config)} positions")
            continue
        # batch calibration uses training sentences WITHOUT their labels: no test data, no labels
        unlabelled = random.Random(args.seed).sample([t for t, _ in train_rows], min(64, len(train_rows)))
        for set_name, rows in eval_sets:
            started = time.time()
            raw, calibrated, n_prefix = prompt_classify(lm, tok, examples, [r[0] for r in rows], unlabelled, device,
                                                        args.batch_size, args.max_len)
            true = [LABELS.index(r[1]) for r in rows]
            plain, cal, seconds = ft.evaluate(true, raw), ft.evaluate(true, calibrated), time.time() - started
            say(f"{name} on {set_name} ({len(rows)} sentences, {n_prefix}-token prefix run once, "
                f"{seconds:.1f}s): calibrated accuracy {cal['acc']:.3f}, macro-F1 {cal['f1']:.3f}; "
                f"uncalibrated {plain['acc']:.3f} / {plain['f1']:.3f}")
            results.append(dict(name=name, set=set_name, calibrated=calibrated, seconds=seconds,
                                **{k: float(cal[k]) for k in ("acc", "f1")}))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description="Zero/few-shot prompting for financial stance (companion of 05)")
    p.add_argument("--model", default="", help="as 05_finetune.py --model (default gpt2 online, SmolLM2 offline)")
    p.add_argument("--data", default=str(ROOT / "data" / "financial_stance.csv"), help="stance CSV text,label,split")
    p.add_argument("--eval-file", help="also score this labelled file (CSV, PhraseBank, the challenge set)")
    p.add_argument("--shots-per-label", type=int, default=2, help="few-shot: examples of each class (default 2)")
    p.add_argument("--max-eval", type=int, default=0, help="at most N test sentences (0 = all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=64, help="tokens per sentence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the test split's rows (name, acc, f1, seconds) to this file")
    args, _ = p.parse_known_args(argv)
    if min(args.shots_per_label, args.max_eval) < 0 or min(args.batch_size, args.max_len) < 1:
        p.error("--shots-per-label and --max-eval cannot be negative; --batch-size and --max-len must be >= 1")
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    rows = ft.read_stance_csv(args.data)
    eval_sets = []
    if args.eval_file:
        eval_module = importlib.util.spec_from_file_location("companion_05_evaluate",
                                                             ROOT / "companions" / "05_evaluate.py")
        ev = importlib.util.module_from_spec(eval_module)
        eval_module.loader.exec_module(ev)
        eval_sets.append((args.eval_file, ev.read_eval_file(args.eval_file)))
    test = [(t, lab) for t, lab, sp in rows if sp == "test"]
    if args.max_eval and len(test) > args.max_eval:
        test = random.Random(args.seed).sample(test, args.max_eval)
    device = ft.pick_device(args.device)
    source, local_only = ft.resolve_model(args.model)
    tok = ft.load_tokenizer(source, local_only)
    lm = transformers.AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only).to(device).eval()
    say(f"model: {source}")
    train = [(t, lab) for t, lab, sp in rows if sp == "train"]
    results = run_prompting(lm, tok, train, [("test split", test)] + eval_sets, device, args)
    if args.json:  # for 05_finetune.py's results table
        Path(args.json).write_text(json.dumps([{k: r[k] for k in ("name", "acc", "f1", "seconds")}
                                               for r in results if r["set"] == "test split"]))
    return results


if __name__ == "__main__":
    try:
        main()
    except ft.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
