"""Companion of 05_finetune.py: the shortcut fix, measured. Which way of adding counterfactual pairs teaches the
classifier to read WHICH WAY two figures moved ("EUR 7.1 mn, against EUR 9.3 mn a year earlier")?

    python companions/05_shortcut.py                       # before, the lesson's pass, joint training (seed 0)
    python companions/05_shortcut.py --seeds 0,1,2 --extra 400 --json out/05_shortcut.json
    python companions/05_shortcut.py --variants joint      # only the joint recipe (the slow one)

Per seed it trains 05's full fine-tune on the original sentences ("before"), then two fixes:
  pass    the lesson's default: from the "before" weights, one pass over the generated pairs mixed with as many
          original sentences, ending halfway back (cheap: about a quarter of a fine-tune)
  joint   a fresh fine-tune whose every epoch holds the originals, the generated pairs and --extra more
          number-swap pairs (costs about twice the "before" fine-tune)
and reports, for each model: val (what one may choose on), two dev sets of number-swap pairs written for this run
(dev_in: the training templates, fresh sentences; dev_new: templates no training or challenge pair uses), test, and
the challenge set by kind (reported, never chosen on). A pair counts only when both of its sides are right.
"""
import argparse, csv, dataclasses, importlib.util, json, random, sys, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def load(name, path):  # the lesson and the generator, by path (a lesson's name starts with a digit)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


ft = load("stage_05_finetune", ROOT / "05_finetune.py")
gen = load("make_stance_pairs", ROOT / "data" / "make_stance_pairs.py")
say, norm = ft.say, gen.norm  # norm: a sentence as compared for duplicates
VARIANTS = ("before", "pass", "joint")  # "pass" starts from "before", so it trains (and reports) that too


def dev_and_extra(splits, extra, dev_pairs):
    """Number-swap pairs -> {"dev_in", "dev_new", "extra"}: [(text, label)], two rows a pair; no sentence of the
    data, the generated pairs or the challenge set, and no sentence in two of them."""
    taken = {norm(t) for rows in splits.values() for t, *_ in rows}
    out = {}
    for name, n, seed, templates in (("dev_in", dev_pairs, 101, None),
                                     ("dev_new", dev_pairs, 102, gen.DEV_NUMBER_SWAP_TEMPLATES),
                                     ("extra", extra, 103, None)):
        pairs = gen.number_swap_pairs(n, seed, templates, avoid=taken)
        taken |= {norm(t) for pair in pairs for t, _ in pair}
        out[name] = [side for pair in pairs for side in pair]
    return out


def pair_scores(pred, y, kinds=None):
    right = (np.asarray(pred) == np.asarray(y)).tolist()
    both = [a and b for a, b in zip(right[::2], right[1::2])]
    r = dict(acc=float(np.mean(right)), pairs=float(np.mean(both)))
    for kind in sorted(set(kinds or [])):
        r[kind] = float(np.mean([b for b, k in zip(both, kinds[::2]) if k == kind]))
    return r


def run_seed(args, seed, source, local_only, tok, device):
    cfg = ft.Config(seed=seed, epochs=args.epochs, max_train=args.max_train, max_eval=args.max_eval)
    torch.manual_seed(seed)
    splits = ft.stance_splits(Path(args.data), cfg)
    if "generated" not in splits:
        ft.fail(f"no generated pairs beside {args.data}: run python data/make_stance_pairs.py")
    extra = dev_and_extra(splits, args.extra, args.dev_pairs)
    with open(Path(args.data).with_name("stance_challenge.csv"), newline="", encoding="utf-8") as f:
        challenge_kinds = [r.get("kind", "") for r in csv.DictReader(f)]  # 05 reads the rows but not their kind
    data, idx = dict(pad_id=tok.pad_token_id, ids=[], y=[]), {}  # the lesson's layout: every split in one list
    for name, rows in list(splits.items()) + list(extra.items()):
        idx[name] = list(range(len(data["ids"]), len(data["ids"]) + len(rows)))
        # at most 64 tokens a sentence, as 05 does for a subword tokenizer
        data["ids"] += [tok(r[0], add_special_tokens=False).input_ids[:64] or [tok.pad_token_id] for r in rows]
        data["y"] += [ft.LABELS.index(r[1]) for r in rows]

    def fresh():
        from transformers import AutoModelForSequenceClassification
        clf = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=local_only, num_labels=3)
        clf.config.pad_token_id = tok.pad_token_id
        ft.set_trainable_top(clf, 0)
        return clf.to(device)

    rows = []

    def report(clf, name, sentences, seconds):
        def predict(split):
            return ft.predict_logits(clf, data, idx[split], device, cfg.batch_size).argmax(1).tolist()
        y = {s: [data["y"][i] for i in idx[s]] for s in ("val", "test", "challenge", "dev_in", "dev_new")}
        val, test = ft.evaluate(y["val"], predict("val")), ft.evaluate(y["test"], predict("test"))
        neg = test["confusion"][0]  # true negatives: how many were called negative, neutral, positive
        r = dict(seed=seed, model=name, sentences=sentences, seconds=round(seconds, 1), val_acc=val["acc"],
                 val_f1=val["f1"], test_acc=test["acc"], test_f1=test["f1"],
                 neg_called_pos=float(neg[2] / max(1, neg.sum())),
                 dev_in=pair_scores(predict("dev_in"), y["dev_in"]),
                 dev_new=pair_scores(predict("dev_new"), y["dev_new"]),
                 challenge=pair_scores(predict("challenge"), y["challenge"], challenge_kinds))
        rows.append(r)
        say(f"-> seed {seed} {name}: val acc {r['val_acc']:.3f}, dev_in pairs {r['dev_in']['pairs']:.2f}, dev_new "
            f"pairs {r['dev_new']['pairs']:.2f}, test acc {r['test_acc']:.3f}, challenge pairs "
            f"{r['challenge']['pairs']:.2f} (number swaps {r['challenge'].get('number_swap', 0):.2f})")

    def train(clf, name, train_idx, back=0.0, **changes):  # changes: Config fields, e.g. epochs=1
        started, c = time.time(), dataclasses.replace(cfg, **changes)
        ft.train_classifier(clf, data, dict(idx, train=train_idx), cfg.lr, c, device, name, back)
        report(clf, name, len(train_idx) * c.epochs, time.time() - started)

    if {"before", "pass"} & set(args.variants):
        clf = fresh()
        train(clf, "before (originals only)", idx["train"])
        if "pass" in args.variants:  # exactly the lesson's step
            train(clf, "pass (the lesson)", ft.counterfactual_mix(idx, random.Random(seed)), back=0.5, epochs=1,
                  head_lr=cfg.lr)
        del clf
    if "joint" in args.variants:
        train(fresh(), f"joint (+{args.extra} number swaps)", idx["train"] + idx["generated"] + idx["extra"])
    return rows


def summary(rows):
    say(f"\n{'model':<32} {'seeds':>5} {'val acc':>7} {'dev_in':>6} {'dev_new':>7} {'test acc':>8} {'neg->pos':>8} "
        f"{'chal. pairs':>11} {'num. swaps':>10} {'sentences':>9}")
    for name in dict.fromkeys(r["model"] for r in rows):  # one line a model, the mean over its seeds
        rs = [r for r in rows if r["model"] == name]

        def mean(key, inner=None):  # mean("val_acc"), mean("dev_in", "pairs")
            return np.mean([r[key] if inner is None else r[key].get(inner, 0.0) for r in rs])
        say(f"{name:<32} {len(rs):>5} {mean('val_acc'):>7.3f} {mean('dev_in', 'pairs'):>6.2f} "
            f"{mean('dev_new', 'pairs'):>7.2f} {mean('test_acc'):>8.3f} {mean('neg_called_pos'):>8.1%} "
            f"{mean('challenge', 'pairs'):>11.2f} {mean('challenge', 'number_swap'):>10.2f} {rs[0]['sentences']:>9}")
    say("(dev_in, dev_new, challenge: pair accuracy; sentences: sentence-passes of training, a proxy for its cost)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="what 05 loads: smollm2, a hub name or a folder")
    p.add_argument("--data", default=str(ROOT / "data" / "financial_stance.csv"))
    p.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"among {', '.join(VARIANTS)}")
    p.add_argument("--extra", type=int, default=400, help="more number-swap pairs in joint training")
    p.add_argument("--dev-pairs", type=int, default=60, help="pairs in each dev set")
    p.add_argument("--epochs", type=int, default=ft.Config.epochs)
    p.add_argument("--max-train", type=int, default=0, help="at most N training sentences (0 = all; for tests)")
    p.add_argument("--max-eval", type=int, default=0, help="at most N val and N test sentences (0 = all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help="write every row here")
    args, _ = p.parse_known_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"error: --seeds takes integers separated by commas, got {args.seeds!r}")
    try:
        args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        if not args.variants or (bad := [v for v in args.variants if v not in VARIANTS]):
            ft.fail(f"--variants: {'unknown ' + ', '.join(bad) if args.variants else 'none given'} (choose among "
                    f"{', '.join(VARIANTS)})")
        if min(args.extra, args.dev_pairs - 1, args.epochs - 1) < 0:
            ft.fail("--extra must be >= 0, --dev-pairs and --epochs >= 1")
        if args.threads:
            torch.set_num_threads(args.threads)
        device = ft.pick_device(args.device)
        source, local_only = ft.resolve_model(args.model)
        tok = ft.load_tokenizer(source, local_only)
        rows = [r for seed in seeds for r in run_seed(args, seed, source, local_only, tok, device)]
    except ft.UsageError as e:
        sys.exit(f"error: {e}")
    summary(rows)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(path)  # a rename: never half a file
        say(f"wrote {args.json}")


if __name__ == "__main__":
    main()
