"""Companion of 05_finetune.py: the saved stance classifier on your own sentences and files, baselines, pictures.

    python companions/05_evaluate.py --predict "Profit fell by a third."   # the saved classifier (OUT/stance)
    python companions/05_evaluate.py --eval-file FILE [--load DIR]         # CSV text,label | PhraseBank sentence@label
                                                       # | the challenge set pair_id,sentence,label (pair accuracy)
    python companions/05_evaluate.py --eval-file data/stance_challenge.csv  # the shortcut: pairs both sides right?
    python companions/05_evaluate.py --check          # reload it as a user would: same predictions?
    python companions/05_evaluate.py --baselines      # majority class and bag-of-words (NumPy)
    python companions/05_evaluate.py --plots          # confusion matrices, challenge set, PNGs from OUT/results.json
"""
import argparse, csv, importlib.util, re, sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
ft = sys.modules.get("stage_05_finetune")  # the lesson, loaded by path (its name starts with a digit), once
if ft is None:
    spec = importlib.util.spec_from_file_location("stage_05_finetune", ROOT / "05_finetune.py")
    ft = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ft)
LABELS, say, fail = ft.LABELS, ft.say, ft.fail


# ---- reading labelled files ----------------------------------------------------------------------------------------
def normalise_label(raw, where):
    label = raw.strip().lower()
    if label not in LABELS:
        fail(f"{where}: unknown label {raw.strip()!r} (expected one of {', '.join(LABELS)})")
    return label


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


def read_challenge(path):
    """The challenge set: CSV pair_id,sentence,label (both sides of a pair must be right) -> [(text, label, id)]."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]
        for record in reader:
            where = f"{path} line {reader.line_num}"
            if not (record.get("sentence") or "").strip() or record.get("label") is None:
                fail(f"{where}: malformed row (expected pair_id,sentence,label)")
            rows.append((record["sentence"].strip(), normalise_label(record["label"], where),
                         (record.get("pair_id") or "").strip()))
    return rows or fail(f"{path} has a header but no rows")


def read_eval_file(path):
    """A CSV with a text,label header, the challenge set (sentence,label[,pair_id]), else Financial PhraseBank lines
    -> [(text, label)] or, for the challenge set, [(text, label, pair_id)]."""
    path = Path(path)
    if not path.is_file():
        fail(f"evaluation file {path} not found")
    with open(path, encoding="latin-1") as f:  # reading one line as latin-1 never fails, whatever the encoding
        first = f.readline()
    if not first.strip():
        fail(f"{path} is empty: expected a CSV with a text,label header, or lines of sentence@label")
    header = [c.strip().lower() for c in first.split(",")]
    if "text" in header and "label" in header:
        return [(text, label) for text, label, _ in ft.read_stance_csv(path, ("text", "label"))]
    if "sentence" in header and "label" in header:
        return read_challenge(path)
    return read_phrasebank(path)


def format_confusion(confusion, indent="  "):
    """A confusion matrix (rows: true class, columns: predicted) as text."""
    lines = [indent + "true \\ predicted " + " ".join(f"{lab:>8}" for lab in LABELS)]
    return "\n".join(lines + [indent + f"{LABELS[c]:>17} " + " ".join(f"{v:>8d}" for v in row)
                              for c, row in enumerate(confusion)])


def pair_accuracy(rows, pred):
    """Share of pairs (rows with the same pair_id) whose sentences are ALL classified right."""
    pairs = {}
    for (_, label, pair_id), p in zip(rows, pred):
        pairs.setdefault(pair_id, []).append(LABELS.index(label) == p)
    return sum(all(v) for v in pairs.values()) / max(1, len(pairs)), len(pairs)


def report(name, rows, pred):
    r = ft.evaluate([LABELS.index(row[1]) for row in rows], pred)
    line = f"{name}: {len(rows)} sentences, accuracy {r['acc']:.3f}, macro-F1 {r['f1']:.3f}"
    if rows and len(rows[0]) == 3:  # the challenge set
        acc, n = pair_accuracy(rows, pred)
        line += f", pair accuracy {acc:.3f} ({n} pairs)"
    say(line + "\n" + format_confusion(r["confusion"]))
    return r


# ---- the saved classifier ------------------------------------------------------------------------------------------
def load_classifier(path, device):
    """A saved classifier folder -> (model in eval mode, tokenizer with a pad token)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    if not (Path(path) / "config.json").exists():
        fail(f"no saved classifier in {path}: run python 05_finetune.py first (or pass --load FOLDER)")
    clf = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token or tok.unk_token  # a folder made elsewhere may lack one
    return clf, tok


def classify_texts(clf, tok, texts, device, max_len=256):
    """Texts -> (N, 3) probabilities with a whole saved classifier, tokenised as in training."""
    rows = [tok(t, add_special_tokens=False).input_ids[:max_len] or [tok.pad_token_id] for t in texts]
    logits = ft.predict_logits(clf, dict(ids=rows, pad_id=tok.pad_token_id), list(range(len(rows))), device, 16)
    return F.softmax(logits, -1)


def check(clf, tok, data_path, device):
    """Our last-token pooling against transformers' own classifier forward, and the saved folder's predictions."""
    texts = [t for t, _, sp in ft.read_stance_csv(data_path) if sp == "test"]
    rows = [tok(t, add_special_tokens=False).input_ids for t in texts[:4]]
    ids, mask = ft.pad_batch(rows, tok.pad_token_id)
    with torch.no_grad():
        ours = ft.classifier_logits(clf, ids.to(device), mask.to(device))
        theirs = clf(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    say(f"check: our last-token pooling vs transformers' {type(clf).__name__}: max abs diff "
        f"{(ours - theirs).abs().max().item():.2e}")
    ours = classify_texts(clf, tok, texts, device).argmax(1)
    theirs = torch.cat([F.softmax(clf(**tok([t], return_tensors="pt", add_special_tokens=False).to(device)).logits, -1)
                        for t in texts]).argmax(1).cpu()  # one sentence at a time, transformers' forward alone
    say(f"reloaded with AutoModelForSequenceClassification: {int((ours == theirs).sum())}/{len(texts)} test "
        "predictions identical (batched by this project vs one by one by transformers)")


# ---- baselines: no language model at all ---------------------------------------------------------------------------
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
        f1 = ft.evaluate(val_y, list((x_val @ w + b).argmax(1)))["f1"]
        if best is None or f1 > best[0]:
            best = (f1, w, b)
    _, w, b = best
    return (lambda texts: list((bow_matrix(texts, vocab) @ w + b).argmax(1))), w.size + b.size


def baselines(data_path):
    rows = ft.read_stance_csv(data_path)
    split = {s: [(t, LABELS.index(lab)) for t, lab, sp in rows if sp == s] for s in ("train", "val", "test")}
    test_y = [y for _, y in split["test"]]
    majority = int(np.argmax(np.bincount([y for _, y in split["train"]], minlength=len(LABELS))))
    r = ft.evaluate(test_y, [majority] * len(test_y))
    say(f"majority class (always {LABELS[majority]}): test accuracy {r['acc']:.3f}, macro-F1 {r['f1']:.3f}")
    predict, n = train_bow([t for t, _ in split["train"]], [y for _, y in split["train"]],
                           [t for t, _ in split["val"]], [y for _, y in split["val"]])
    r = ft.evaluate(test_y, predict([t for t, _ in split["test"]]))
    say(f"bag-of-words logistic regression (NumPy, words and word pairs, {n:,} parameters): test accuracy "
        f"{r['acc']:.3f}, macro-F1 {r['f1']:.3f}\n{format_confusion(r['confusion'])}")


# ---- pictures ------------------------------------------------------------------------------------------------------
def plots(out):
    """stance_results.png (results as bars, training losses) and chat_sft_loss.png, from OUT/results.json."""
    import json
    path = Path(out) / "results.json"
    if not path.is_file():
        fail(f"{path} not found: run python 05_finetune.py first")
    results = json.loads(path.read_text())
    for r in results.get("classify", {}).get("results", [])[1:]:  # the lesson prints accuracies; here, the errors
        say(f"confusion matrix, {r['name']} (test split):\n{format_confusion(r['confusion'])}")
    for when, r in results.get("classify", {}).get("shortcut", {}).items():
        say(f"challenge set, {when} the fix: accuracy {r['acc']:.3f}, pair accuracy {r['pairs']:.3f}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return say("matplotlib is not installed: no pictures (05_finetune.py printed the same numbers)")
    if "classify" in results:
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
        rows = results["classify"]["results"]
        left.barh([r["name"] for r in rows], [r["acc"] for r in rows], label="accuracy")
        left.barh([r["name"] for r in rows], [r["f1"] for r in rows], height=0.4, label="macro-F1")
        left.set(xlim=(0, 1), title="financial stance, test split")
        left.invert_yaxis()
        left.legend()
        for name, losses in results["classify"]["losses"].items():  # mean of 5 steps: single batches are noisy
            right.plot(np.convolve(losses, np.ones(5) / 5, mode="valid"), label=name)
        right.set(xlabel="step", ylabel="training loss (mean of 5 steps)")
        right.legend()
        fig.tight_layout()
        fig.savefig(Path(out) / "stance_results.png", dpi=110)
        plt.close(fig)
        say(f"saved {Path(out) / 'stance_results.png'}")
    if results.get("chat", {}).get("losses"):
        chat = results["chat"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(chat["losses"])
        ax.set(xlabel="step", ylabel="loss on the assistant's tokens",
               title=f"chat SFT: persona {chat['persona_before']} -> {chat['persona_after']}, memory "
                     f"{chat.get('memory_before', '-')} -> {chat.get('memory_after', '-')}")
        fig.tight_layout()
        fig.savefig(Path(out) / "chat_sft_loss.png", dpi=110)
        plt.close(fig)
        say(f"saved {Path(out) / 'chat_sft_loss.png'}")


def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate 05's saved stance classifier; baselines; pictures")
    p.add_argument("--predict", help="classify this sentence with the saved classifier")
    p.add_argument("--eval-file", help="a CSV (text,label), the challenge set (pair_id,sentence,label), sentence@label")
    p.add_argument("--check", action="store_true", help="reload the saved classifier and compare with transformers")
    p.add_argument("--baselines", action="store_true", help="majority class and bag-of-words on the test split")
    p.add_argument("--plots", action="store_true", help="draw PNGs from OUT/results.json")
    p.add_argument("--load", help="the saved classifier folder (default: OUT/stance)")
    p.add_argument("--out", default="out/05_finetune", help="05's output folder")
    p.add_argument("--data", default=str(ROOT / "data" / "financial_stance.csv"), help="stance CSV text,label,split")
    p.add_argument("--device", default="auto")
    args, _ = p.parse_known_args(argv)
    if not (args.predict is not None or args.eval_file or args.check or args.baselines or args.plots):
        p.error("say what to do: --predict TEXT, --eval-file FILE, --check, --baselines or --plots")
    if args.baselines:
        baselines(args.data)
    if args.plots:
        plots(args.out)
    if not (args.predict is not None or args.eval_file or args.check):
        return
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = ft.pick_device(args.device)
    rows = read_eval_file(args.eval_file) if args.eval_file else None  # read first: a bad file fails fast
    clf, tok = load_classifier(Path(args.load or Path(args.out) / "stance"), device)
    if args.predict is not None:
        if not args.predict.strip():
            fail("--predict needs a sentence")
        probs = classify_texts(clf, tok, [args.predict], device)[0]
        say(f"{LABELS[int(probs.argmax())]}  (" + ", ".join(f"{lab} {q:.3f}" for lab, q in zip(LABELS, probs.tolist()))
            + ")")
    if rows is not None:
        report(str(args.eval_file), rows, classify_texts(clf, tok, [r[0] for r in rows], device).argmax(1).tolist())
    if args.check:
        check(clf, tok, args.data, device)


if __name__ == "__main__":
    try:
        main()
    except ft.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
