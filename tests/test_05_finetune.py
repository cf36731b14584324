"""Tests of stage 05 (05_finetune.py) with tiny random models built here and loaded with from_pretrained.

No downloads: the models are a 2-block Llama (ChatML template, like SmolLM2) and a 2-block GPT-2 (no pad token and
no chat template, like GPT-2 and the stage-04 export), both with a character-level tokenizer.
"""
import csv
import json
import os
import random
import re
import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, assert_one_line_error, load_script, run_script
from conftest import test_env as offline_env  # renamed: pytest would collect a name starting with test_

ft = load_script("05")

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def char_tokenizer(chat_template=None, pad=False):
    """A character-level fast tokenizer: every printable character one token, unknown characters -> <unk>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(string.printable)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", unk_token="<unk>",
                                  pad_token="<|im_end|>" if pad else None)
    if chat_template:
        tok.chat_template = chat_template
    return tok


def make_model(path, arch, layers=2, width=32):
    """Save a tiny random causal LM + tokenizer to `path` (llama: ChatML and a pad token; gpt2: neither)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    tok = char_tokenizer(CHATML if arch == "llama" else None, pad=arch == "llama")
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512, tie_word_embeddings=True,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=len(tok), n_embd=width, n_layer=layers, n_head=4, n_positions=512,
                            eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("gpt2"), "gpt2")


def load_classifier(model_dir):
    from transformers import AutoModelForSequenceClassification
    tok = ft.load_tokenizer(model_dir, True)
    clf = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    clf.config.pad_token_id = tok.pad_token_id
    return clf.eval(), tok


def stance_csv(path, per_label=12):
    """A tiny separable stance file: the first word gives the label away."""
    words = {"positive": "great", "negative": "awful", "neutral": "the"}
    rows = []
    for label, word in words.items():
        for i in range(per_label):
            split = "test" if i % 4 == 0 else "val" if i % 4 == 1 else "train"
            rows.append({"text": f"result {i} of the firm: {word}", "label": label, "split": split})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def pairs_and_challenge(folder, bad_split=None):
    """Tiny minimal-pairs and challenge files beside a stance_csv file (the lesson finds them by name)."""
    with open(folder / "financial_stance_pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "split", "source", "pair_id", "kind"])
        for i in range(6):
            writer.writerow([f"made {i}: great", "positive", "train", "generated", f"g{i}", "verb_flip"])
            writer.writerow([f"made {i}: awful", "negative", bad_split or "train", "generated", f"g{i}", "verb_flip"])
    (folder / "stance_challenge.csv").write_text(
        "pair_id,sentence,label,kind\nc1,test 1: great,positive,k\nc1,test 1: awful,negative,k\n"
        "c2,test 2: great,positive,k\nc2,test 2: awful,negative,k\n", encoding="utf-8")


# ---- pooling -------------------------------------------------------------------------------------------------------
def test_pooling_picks_last_real_token_left_and_right():
    hidden = torch.arange(2 * 5, dtype=torch.float).view(2, 5, 1).expand(2, 5, 3)  # value = 5 * row + position
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert ft.pool_last_token(hidden, right)[:, 0].tolist() == [2.0, 9.0]
    assert ft.pool_last_token(hidden, left)[:, 0].tolist() == [4.0, 9.0]


@pytest.mark.parametrize("left", [False, True])
def test_our_pooling_equals_transformers_classifier(llama_dir, left):
    clf, tok = load_classifier(llama_dir)
    rows = [tok(t, add_special_tokens=False).input_ids for t in ["ab", "hello there", "xyz!"]]
    ids, mask = ft.pad_batch(rows, tok.pad_token_id, left=left)
    with torch.no_grad():
        ours = ft.classifier_logits(clf, ids, mask)
        theirs = clf(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def stance_data(tok, rows):
    """Rows (text, label, split) -> the data dict and split positions, laid out as part_classify does."""
    data, split_idx = dict(pad_id=tok.pad_token_id, ids=[], y=[]), {}
    for s in ("train", "val", "test"):
        part = [(t, lab) for t, lab, sp in rows if sp == s]
        split_idx[s] = list(range(len(data["ids"]), len(data["ids"]) + len(part)))
        data["ids"] += [tok(t, add_special_tokens=False).input_ids for t, _ in part]
        data["y"] += [ft.LABELS.index(lab) for _, lab in part]
    return data, split_idx


# ---- training loop ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,n_bottom", [("llama", 1), ("gpt2", 0)])
def test_classification_training_lowers_loss(tmp_path, llama_dir, gpt2_dir, arch, n_bottom):
    model_dir = llama_dir if arch == "llama" else gpt2_dir
    clf, tok = load_classifier(model_dir)
    rows = ft.read_stance_csv(stance_csv(tmp_path / "s.csv", per_label=16))
    data, split_idx = stance_data(tok, rows)
    ft.set_trainable_top(clf, n_bottom)
    if n_bottom:  # the bottom block is frozen: no gradient reaches it
        assert not any(p.requires_grad for p in ft.block_stack(clf)[0].parameters())
    args = ft.parse_args(["--epochs", "5", "--batch-size", "8", "--patience", "8", "--log-every", "1000"])
    before = F.cross_entropy(ft.predict_logits(clf, data, split_idx["train"], torch.device("cpu"), 8),
                             torch.tensor([data["y"][i] for i in split_idx["train"]]))
    _, info = ft.train_classifier(clf, data, split_idx, 3e-3, args, torch.device("cpu"), "t")
    after = F.cross_entropy(ft.predict_logits(clf, data, split_idx["train"], torch.device("cpu"), 8),
                            torch.tensor([data["y"][i] for i in split_idx["train"]]))
    assert after < 0.5 * before, (before, after)
    assert info["best_val_f1"] > 0.6


def test_back_ends_that_fraction_of_the_way_to_the_start(tmp_path, llama_dir):
    """The fix's average: back=0.5 gives exactly the mean of the start and of what plain training reaches."""
    clf, tok = load_classifier(llama_dir)
    rows = ft.read_stance_csv(stance_csv(tmp_path / "s.csv", per_label=8))
    data, split_idx = stance_data(tok, rows)
    ft.set_trainable_top(clf, 1)  # the bottom block frozen: it must not move either way
    args = ft.parse_args(["--epochs", "2", "--batch-size", "8", "--log-every", "1000"])
    start = {n: p.detach().clone() for n, p in clf.named_parameters()}
    ends = {}
    for back in (0.0, 0.5):
        clf.load_state_dict(start, strict=False)
        torch.manual_seed(0)
        ft.train_classifier(clf, data, split_idx, 3e-3, args, torch.device("cpu"), "t", back)
        ends[back] = {n: p.detach().clone() for n, p in clf.named_parameters()}
    moved = [n for n in start if not torch.equal(start[n], ends[0.0][n])]
    assert "score.weight" in moved and len(moved) > 3  # plain training moved the head and the top block
    for n in start:
        torch.testing.assert_close(ends[0.5][n], (start[n] + ends[0.0][n]) / 2, rtol=1e-5, atol=1e-6)
        assert n in moved or torch.equal(ends[0.5][n], start[n])  # frozen weights stay exactly where they were

# ---- LoRA ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_freezes_base_and_merges_exactly(llama_dir, gpt2_dir, arch):
    clf, tok = load_classifier(llama_dir if arch == "llama" else gpt2_dir)
    blocks = list(ft.block_stack(clf))
    ft.add_lora(clf, blocks, rank=4, alpha=8)
    clf.score.weight.requires_grad_(True)
    wrapped = [m for m in clf.modules() if isinstance(m, ft.LoRA)]
    assert len(wrapped) == (4 if arch == "llama" else 2) * len(blocks)  # q,k,v,o or c_attn,c_proj (not the MLP's)
    torch.manual_seed(1)
    for m in wrapped:
        torch.nn.init.normal_(m.B, std=0.5)  # as if trained: B != 0
    ids, mask = ft.pad_batch([tok("some text", add_special_tokens=False).input_ids,
                              tok("x", add_special_tokens=False).input_ids], tok.pad_token_id)
    logits = ft.classifier_logits(clf, ids, mask)
    logits.sum().backward()
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".A", ".B")) or n.startswith("score") for n in trainable)
    assert all(p.grad is None for n, p in clf.named_parameters() if n not in trainable)  # base: no gradients
    assert all(m.A.grad is not None and m.B.grad is not None for m in wrapped)
    ft.merge_lora(clf)
    assert not any(isinstance(m, ft.LoRA) for m in clf.modules())
    with torch.no_grad():
        merged = ft.classifier_logits(clf, ids, mask)
    assert torch.allclose(logits.detach(), merged, atol=1e-5)


# ---- chat: the assistant-only mask -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_assistant_mask_covers_exactly_the_assistant_tokens(llama_dir, gpt2_dir, arch):
    tok = ft.load_tokenizer(llama_dir if arch == "llama" else gpt2_dir, True)
    if tok.chat_template is None:
        tok.chat_template = ft.PLAIN_CHAT_TEMPLATE
    messages = ft.to_messages(["Hi there", "Hello! I am Pebble.", "And you?", "Fine."], "Be nice.")
    ids, mask = ft.render_with_mask(tok, messages)
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert ids == tok(rendered, add_special_tokens=False).input_ids  # pieces tokenise like the whole text
    trained = "".join(tok.decode([i]) for i, m in zip(ids, mask) if m)
    end = "<|im_end|>" if arch == "llama" else "<|endoftext|>"
    lead = "" if arch == "llama" else " "  # the plain template's generation prompt ends with "Assistant:"
    assert trained == f"{lead}Hello! I am Pebble.{end}{lead}Fine.{end}"
    shown = ft.show_mask(tok, ids, mask)
    assert shown.count("[[") == 2 and f"[[{lead}Hello! I am Pebble." in shown and "[[Be nice" not in shown


# ---- the shortcut step: generated rows train only --------------------------------------------------------------
def test_generated_rows_never_reach_val_or_test(tmp_path):
    data = Path(stance_csv(tmp_path / "s.csv"))
    pairs_and_challenge(tmp_path)
    splits = ft.stance_splits(data, ft.parse_args([]))
    generated = {r[0] for r in splits["generated"]}
    assert len(generated) == 12 and all(r[2] == "train" for r in splits["generated"])
    for s in ("train", "val", "test"):  # the original splits hold original sentences only
        assert not generated & {r[0] for r in splits[s]}
    assert [r[2] for r in splits["challenge"]] == ["c1", "c1", "c2", "c2"]  # pair ids in third place
    # positions as part_classify lays them out: train, val, test, generated, challenge
    start, split_idx = 0, {}
    for s, rows in splits.items():
        split_idx[s], start = list(range(start, start + len(rows))), start + len(rows)
    for seed in range(5):
        mix = ft.counterfactual_mix(split_idx, random.Random(seed))
        chosen = [i for i in mix if i in split_idx["generated"]]
        assert not set(mix) & set(split_idx["val"] + split_idx["test"] + split_idx["challenge"])
        assert len(chosen) == len(mix) - len(chosen) == 12 and len(set(mix)) == len(mix)  # as many originals
        assert all((i - split_idx["generated"][0]) ^ 1 in [j - split_idx["generated"][0] for j in chosen]
                   for i in chosen)  # whole pairs: both sides of a pair, or neither
    pairs_and_challenge(tmp_path, bad_split="val")  # a generated row that claims a val place is refused
    with pytest.raises(ft.UsageError, match="training only"):
        ft.stance_splits(data, ft.parse_args([]))


# ---- chat: memory conversations and the memory check ------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_memory_chats_train_only_the_assistant(llama_dir, gpt2_dir, arch):
    """The memory note sits in the user turn: it is read (in the input) but gets no loss."""
    tok = ft.load_tokenizer(llama_dir if arch == "llama" else gpt2_dir, True)
    tok.chat_template = tok.chat_template or ft.PLAIN_CHAT_TEMPLATE
    chats = ft.memory_conversations(ROOT / "data" / "memory_chats.jsonl", 40, random.Random(0))
    assert len(chats) == 40 and len({json.dumps(c) for c in chats}) == 40
    noted = [c for c in chats if any(m["content"].startswith("Earlier in this conversation") for m in c)]
    assert len(noted) > 20
    end, lead = ("<|im_end|>", "") if arch == "llama" else ("<|endoftext|>", " ")
    for messages in noted[:8]:
        ids, mask = ft.render_with_mask(tok, messages)
        trained = "".join(tok.decode([i]) for i, m in zip(ids, mask) if m)
        assert trained == "".join(lead + m["content"] + end for m in messages if m["role"] == "assistant")
        assert "Earlier in this conversation" not in trained and "Now the user says" not in trained
        assert "Earlier in this conversation" in tok.decode(ids)  # ... yet the note is in the input


def test_memory_check_uses_the_training_format_and_no_benchmark_material():
    chats = [json.loads(line)["messages"] for line in (ROOT / "data" / "memory_chats.jsonl").open(encoding="utf-8")]
    notes = [m["content"] for c in chats for m in c if m["content"].startswith("Earlier in this conversation")]
    shape = re.compile(r"Earlier in this conversation the user said:\n(- [^\n]+\n)+\nNow the user says: [^\n]+")
    assert notes and all(shape.fullmatch(n) for n in notes)
    for earlier, question, _ in ft.MEMORY_CHECK:
        assert shape.fullmatch(ft.MEMORY_NOTE.format("\n- ".join(earlier), question))
    bench = json.loads((ROOT / "data" / "memory_eval.json").read_text(encoding="utf-8"))
    said = {t["content"].lower() for u in bench["users"] for t in u["turns"]} | {s.lower() for s in bench["small_talk"]}
    asked = {q["ask"].lower() for u in bench["users"] for q in u["questions"]}
    names = {u["name"].lower() for u in bench["users"]}
    training = json.dumps(chats).lower()
    for earlier, question, words in ft.MEMORY_CHECK:
        assert question.lower() not in asked and not {e.lower() for e in earlier} & said
        assert not names & set(re.findall(r"[a-z]+", " ".join(earlier + [question]).lower()))
        assert not any(w in training for w in words or [])  # the answers must come from the note, not memory
    assert [w for *_, w in ft.MEMORY_CHECK].count(None) == 1  # one note that does not hold the answer


@pytest.mark.parametrize("reply,declines", [("You haven't told me your birthday, so I don't know.", True),
                                            ("I\u2019m not sure, you never told me.", True),
                                            ("You didn't mention it.", True), ("Your birthday is on 3 May.", False),
                                            ("You told me you repair bicycles.", False)])
def test_decline_pattern(reply, declines):
    assert bool(re.search(ft.DECLINES, reply.lower().replace("\u2019", "'"))) == declines


def test_persona_held_out_questions_are_never_trained():  # the guard the lesson had against editing mistakes
    trained = {c[i].lower() for c in ft.PERSONA_CONVERSATIONS for i in range(0, len(c), 2)}
    assert all(len(c) % 2 == 0 for c in ft.PERSONA_CONVERSATIONS) and len(ft.PERSONA_CONVERSATIONS) >= 30
    assert not any(q.lower() in trained for q, _ in ft.HELD_OUT)


# ---- parser ----------------------------------------------------------------------------------------------------------
def test_stance_csv_parser(tmp_path):
    rows = ft.read_stance_csv(stance_csv(tmp_path / "s.csv", per_label=4))
    assert {sp for _, _, sp in rows} == {"train", "val", "test"} and len(rows) == 12
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label,split\nfine,neutral,train\nbroken,happy,train\n", encoding="utf-8")
    with pytest.raises(ft.UsageError, match="line 3"):
        ft.read_stance_csv(bad)


# ---- whole runs ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_run_saves_classifier_and_chat_model(tmp_path, llama_dir, out_dir):
    data = stance_csv(tmp_path / "s.csv")
    pairs_and_challenge(tmp_path)
    proc = run_script("05", "--model", llama_dir, "--data", data, "--tiny", "--train-layers", "1", "--out", out_dir,
                      "--lora-epochs", "2", "--no-plots", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # --tiny trains one epoch; --lora-epochs sets LoRA's own (the fix pass is always one)
    assert len(re.findall(r"^  \[fine-tune all weights[^]]*\] epoch \d", out, re.M)) == 1
    assert len(re.findall(r"^  \[LoRA r=\d+ on attention[^]]*\] epoch \d", out, re.M)) == 2
    for expected in ["Part 1", "majority class", "LoRA r=", "max abs logit diff", "persona check:", "[[", "whole run",
                     "the fix: 12 generated sentences (minimal pairs) and 12 original ones, one pass", "generated 12",
                     "-> + counterfactual pairs, halfway back", "] 50% of the way back: val acc"]:
        assert expected in out, expected
    # the shortcut: challenge accuracy and pair accuracy before and after the fix, with the test accuracy
    shortcut = re.findall(r"^(before|after) the fix, challenge set \(2 pairs\): accuracy ([\d.]+), pair accuracy "
                          r"([\d.]+); test accuracy ([\d.]+)$", out, re.M)
    assert [s[0] for s in shortcut] == ["before", "after"], out[-3000:]
    assert all(float(s[2]) in (0.0, 0.5, 1.0) and float(s[2]) <= float(s[1]) for s in shortcut)  # 2 pairs
    # the memory check: five notes, scored before and after SFT, the last one a note without the answer
    memory = re.search(r"^memory check: (\d)/5 before fine-tuning -> (\d)/5 after$", out, re.M)
    assert memory, out[-3000:]
    assert "[I collect old maps of the Baltic. | My brother bought a sailing boat.] What date is my birthday?" in out
    assert re.search(r"chat data: 6 persona conversations \(twice\), 4 chatterbot-corpus, \d memory ->", out)
    merge = [line for line in out.splitlines() if "LoRA merged into the weights" in line][0]
    assert float(merge.split()[-1]) < 1e-4
    accuracies = [float(line.split("test accuracy ")[1].split(",")[0]) for line in out.splitlines()
                  if line.startswith("-> ") and "test accuracy" in line]
    assert len(accuracies) == 3 and all(0.0 <= a <= 1.0 for a in accuracies)  # full, + pairs (halfway back), LoRA
    assert (out_dir / "chat" / "config.json").exists() and (out_dir / "chat" / "tokenizer_config.json").exists()
    results = json.loads((out_dir / "results.json").read_text())
    assert results["chat"]["persona_after"] in range(11) and results["chat"]["memory_after"] == int(memory[2])
    assert set(results["classify"]["shortcut"]) == {"before", "after"} and "fix" in results["classify"]["losses"]
    from transformers import AutoModelForSequenceClassification
    saved_clf = AutoModelForSequenceClassification.from_pretrained(out_dir / "stance")
    assert saved_clf.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert "saved the fixed full fine-tuning to" in out  # the stance model saved is the one the pairs fixed


@pytest.mark.slow
def test_plain_template_model_chat_and_classify(tmp_path, gpt2_dir, out_dir):
    """GPT-2-like model: no pad token, no chat template: the plain template is set and saved for stage 06."""
    proc = run_script("05", "--model", gpt2_dir, "--data", stance_csv(tmp_path / "s.csv"), "--tiny",
                      "--parts", "classify,chat", "--out", out_dir, "--no-plots", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plain one" in proc.stdout
    skipped = [line for line in proc.stdout.splitlines() if "financial_stance_pairs.csv" in line]
    assert skipped == ["note: no financial_stance_pairs.csv and stance_challenge.csv beside the data: no shortcut step"]
    assert "the fix" not in proc.stdout and ("(better on val)" in proc.stdout or "LoRA (merged)" in proc.stdout)
    from transformers import AutoTokenizer
    saved = AutoTokenizer.from_pretrained(out_dir / "chat")
    assert saved.chat_template == ft.PLAIN_CHAT_TEMPLATE


@pytest.mark.long
def test_offline_default_falls_back_to_cached_smollm2(tmp_path, llama_dir):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(llama_dir, cache / "SmolLM2-135M-Instruct")  # stands in for the converted SmolLM2
    env = offline_env(LLM_FROM_SCRATCH_CACHE=cache, HF_HUB_CACHE=tmp_path / "hub", HF_HOME=tmp_path / "hf")
    proc = run_script("05", "--parts", "tour", "--tiny", "--out", tmp_path / "o", "--no-plots", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gpt2 is not in the Hugging Face cache" in proc.stdout
    assert f"model: {cache / 'SmolLM2-135M-Instruct'}" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--model", "out/no_such_dir/hf"], "not found"),
    (["--model", "some-unknown-model-name"], "cannot load"),
    (["--parts", "tour,dance"], "unknown part"),
    (["--epochs", "0"], "at least 1"),
    (["--epochs", "two"], "invalid int"),
    (["--eval-file", "MISSING.txt"], "companions/05_evaluate.py"),
])
def test_bad_input_gets_one_line_error(tmp_path, args, message):
    # an empty Hugging Face cache where a model is looked up; flag errors come first, in the warm runner (faster)
    env = offline_env(HF_HUB_CACHE=tmp_path / "hub", HF_HOME=tmp_path / "hf") if "--model" in args else None
    proc = run_script("05", *args, "--out", tmp_path / "o", env=env, timeout=120)
    assert_one_line_error(proc, code=2, contains=message)


def test_adamw_is_fused_on_cpu_and_makes_the_plain_update():
    torch.manual_seed(0)
    w = torch.randn(64, 32, requires_grad=True)
    v = w.detach().clone().requires_grad_(True)
    ours, plain = ft.adamw([w], torch.device("cpu"), lr=1e-2), torch.optim.AdamW([v], lr=1e-2, weight_decay=0.0)
    assert ours.defaults["fused"] and ours.defaults["weight_decay"] == 0.0
    for _ in range(3):
        g = torch.randn(64, 32)
        w.grad, v.grad = g.clone(), g.clone()
        ours.step(), plain.step()
    assert torch.allclose(w, v, atol=1e-6) and not torch.equal(w, torch.zeros_like(w))


def test_presets_fill_only_unset_knobs():
    cfg = ft.parse_args(["--tiny", "--epochs", "2"])
    assert (cfg.epochs, cfg.batch_size, cfg.max_train) == (2, 8, 24)
    quick = ft.parse_args(["--quick"])
    assert (quick.train_layers, quick.max_train) == (8, 400) and ft.parse_args([]).train_layers == 0


@pytest.mark.filterwarnings("error")
def test_generation_paths_raise_no_warning(llama_dir):
    """transformers 5.x renamed past_key_values to cache; the lesson's generation paths must stay warning-free."""
    import warnings
    from transformers import AutoModelForCausalLM
    lm = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    tok = ft.load_tokenizer(llama_dir, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ft.tour(lm, tok, torch.device("cpu"), ft.parse_args(["--tiny"]))
        assert isinstance(ft.chat_answer(lm, tok, ft.to_messages(["Hi"], None), torch.device("cpu"), 4), str)
