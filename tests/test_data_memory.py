"""Checks on the chat-memory data (data/make_memory_data.py): the training conversations for stage 05
(data/memory_chats.jsonl) and the benchmark users for stage 06 (data/memory_eval.json).

- the memory format is what the generator's constants say (06 builds the same message);
- memory_chats.jsonl never contains a held-out name, value, fact phrasing, question phrasing or small-talk line;
- the TRAIN and HELDOUT pools are disjoint;
- every benchmark user has recall, update and abstain questions, worded unlike the statements;
- the training replies use the note (or decline, or answer a general question) and never name a value that is not in
  their conversation;
- both files are what the generator writes, byte for byte (reproducible).
Fast: about a second.
"""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_memory_data", DATA / "make_memory_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing does no work: main() is guarded
    return module


@pytest.fixture(scope="module")
def chats():
    lines = (DATA / "memory_chats.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def bench():
    return json.loads((DATA / "memory_eval.json").read_text(encoding="utf-8"))


def texts_of(chats, role=None):
    return [m["content"] for c in chats for m in c["messages"] if role is None or m["role"] == role]


def split_note(gen, content):
    """A user message -> (the earlier messages in its note, the new message)."""
    if not content.startswith(gen.MEMORY_HEADER):
        return [], content
    head, _, new = content.partition("\n\n")
    prefix = gen.MEMORY_NEW_MESSAGE.split("{}")[0]
    assert new.startswith(prefix), content
    items = [line[len(gen.MEMORY_ITEM.split("{}")[0]):] for line in head.splitlines()[1:]]
    return items, new[len(prefix):]


def slot_values(gen):
    """slot name -> every value either pool can put there, for matching sentences against templates."""
    pools = list(gen.POOLS.values())
    names = [n for p in pools for n in p["names"]]
    return {
        "name": names, "partner": names, "sibling": names, "pet": [x for p in pools for x in p["pets"]],
        "city": [x for p in pools for x in p["cities"]], "origin": [o for p in pools for o, _ in p["origins"]],
        "job": [j for p in pools for j, _, _ in p["jobs"]], "job_do": [d for p in pools for _, d, _ in p["jobs"]],
        "employer": [x for p in pools for x in p["employers"]], "hobby": [h for p in pools for h, _ in p["hobbies"]],
        "food": [x for p in pools for x in p["foods"]], "allergy": [x for p in pools for x in p["allergies"]],
        "species": [x for p in pools for x in p["species"]], "sib": list(gen.SIBLING_RELS.values()),
        "rel": [r for by_gender in gen.PARTNER_RELS.values() for rels in by_gender.values() for r in rels],
    }


def template_regex(template, values):
    """'I live in {city}.' -> a regex matching the template filled with any value of its slots (case-insensitive)."""
    pieces = re.split(r"\{(\w+)\}", template)   # literal, slot, literal, slot, ..., literal
    out = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            out.append(re.escape(piece))
        elif piece == "birthday":
            out.append(r"\d{1,2} [A-Z][a-z]+")
        else:
            out.append("(?:" + "|".join(re.escape(v) for v in sorted(values[piece], key=len, reverse=True)) + ")")
    return re.compile("^" + "".join(out) + "$", re.I)


# ----------------------------------------------------------------------------------------------------------------
def test_memory_message_format(gen):
    message = gen.memory_message(["Morning! Rafael here.", "I spend my days   fixing lifts."], "What do you call me?")
    assert message == ("Earlier in this conversation the user said:\n- Morning! Rafael here.\n"
                       "- I spend my days fixing lifts.\n\nNow the user says: What do you call me?")
    assert gen.memory_message([], "Hi") == "Hi"     # nothing retrieved: the message as it is
    many = gen.memory_message([f"m{i}" for i in range(10)], "q")
    assert many.count("\n- ") == gen.MEMORY_MAX_ITEMS and "- m9" in many   # the newest ones are kept


def test_chats_shape(gen, chats):
    assert 400 <= len(chats) <= 800, len(chats)
    for c in chats:
        assert list(c) == ["messages"]
        roles = [m["role"] for m in c["messages"]]
        assert roles[0] == "system" and roles[-1] == "assistant", roles
        assert roles[1:] == ["user", "assistant"] * ((len(roles) - 1) // 2), roles
        assert all(m["content"].strip() for m in c["messages"])
        # short: a rendered conversation should fit 05's chat_max_len (192 tokens, ~4 characters a token)
        assert sum(len(m["content"]) for m in c["messages"]) <= 650
    with_note = sum(any(m["content"].startswith(gen.MEMORY_HEADER) for m in c["messages"]) for c in chats)
    assert with_note >= 0.85 * len(chats), with_note


def test_pools_and_phrasings_are_disjoint(gen):
    train, held = gen.POOLS["train"], gen.POOLS["heldout"]
    for key in train:
        if key == "species":      # cats and dogs are in both: a species is not something to hold out
            continue
        shared = {str(v) for v in train[key]} & {str(v) for v in held[key]}
        assert not shared, f"{key} in both pools: {shared}"
    assert not set(train["names"]) & set(held["pets"]) and not set(held["names"]) & set(train["pets"])
    for attr, kinds in gen.PHRASINGS["heldout"].items():
        for kind, templates in kinds.items():
            shared = set(templates) & set(gen.PHRASINGS["train"][attr].get(kind, []))
            assert not shared, f"{attr}/{kind} phrasings in both pools: {shared}"
    assert not {u for u, _ in gen.SMALL_TALK["train"]} & set(gen.SMALL_TALK["heldout"])


def heldout_words(gen):
    """Every held-out name and value that must never appear in the training chats."""
    held, train = gen.POOLS["heldout"], gen.POOLS["train"]
    words = set(held["names"]) | set(held["pets"]) | set(held["cities"]) | set(held["employers"])
    words |= set(held["foods"]) | set(held["allergies"]) | set(held["months"])
    words |= {phrase for phrase, _ in held["origins"]} | {hobby for hobby, _ in held["hobbies"]}
    words |= {noun for noun, _, _ in held["jobs"]} | {do for _, do, _ in held["jobs"]}
    held_rels = {r for rels in gen.PARTNER_RELS["heldout"].values() for r in rels}
    words |= held_rels - {r for rels in gen.PARTNER_RELS["train"].values() for r in rels}
    return words


def test_chats_never_contain_a_heldout_name_value_or_phrasing(gen, chats):
    everything = "\n".join(texts_of(chats))
    found = [w for w in heldout_words(gen) if re.search(r"(?<!\w)" + re.escape(w) + r"(?!\w)", everything, re.I)]
    assert not found, f"held-out names/values in memory_chats.jsonl: {found[:5]}"
    # no user sentence in the chats (a note item or a new message) is an instance of a held-out phrasing
    held_templates = [t for kinds in gen.PHRASINGS["heldout"].values() for ts in kinds.values() for t in ts]
    values = slot_values(gen)
    regexes = [template_regex(t, values) for t in held_templates]
    sentences = []
    for content in texts_of(chats, "user"):
        items, new = split_note(gen, content)
        sentences += items + [new]
    hits = [(s, r.pattern) for s in sentences for r in regexes if r.match(s)]
    assert not hits, f"held-out phrasings used in training: {hits[:3]}"
    # nor does any chat contain a held-out phrasing's own words (its longest fixed part, when 3+ words long)
    low = everything.lower()
    for template in held_templates:
        longest = max((p.strip(" ,.!?;:'") for p in re.split(r"\{\w+\}", template)), key=len)
        if len(longest.split()) >= 3:
            assert longest.lower() not in low, f"held-out words {longest!r} appear in memory_chats.jsonl"
    for line in gen.SMALL_TALK["heldout"]:
        assert line.lower() not in low, f"held-out small talk {line!r} appears in memory_chats.jsonl"


def test_chats_cover_recall_update_abstain_and_general(gen, chats):
    replies = [c["messages"][-1]["content"] for c in chats]
    abstain = [r for r in replies if any(a in r.lower() for a in gen.ABSTAIN_ANSWERS)]
    general = [r for r in replies if r in {a for _, a in gen.GENERAL_QA}]
    updates = [c for c in chats if any(split_note(gen, m["content"])[0] and len(split_note(gen, m["content"])[0]) >= 2
                                       and " now" in m["content"] for m in c["messages"] if m["role"] == "user")]
    assert len(abstain) >= 100 and len(general) >= 40 and len(updates) >= 50, (len(abstain), len(general), len(updates))
    assert len(replies) - len(abstain) - len(general) >= 250   # the rest recall from the note


def test_replies_use_the_note_and_invent_nothing(gen, chats):
    # A reply names people, places and things only when its conversation does: a capitalised word of an answer
    # (after its first word) must appear in an earlier message. Declines and general answers are exempt.
    general = {a for _, a in gen.GENERAL_QA} | {a for _, a in gen.SMALL_TALK["train"]}
    names = set(gen.POOLS["train"]["names"]) | set(gen.POOLS["train"]["pets"])
    for c in chats:
        seen = ""
        for m in c["messages"]:
            if m["role"] == "assistant" and m["content"] not in general:
                # (not after a full stop: "... yet. Would you like to tell me?")
                for word in re.findall(r"(?<![.?!:]\s)(?<=\s)[A-Z][a-z]+", m["content"]):
                    assert word in seen, f"{word!r} in the reply {m['content']!r} comes from nowhere: {seen!r}"
                if not any(a in m["content"].lower() for a in gen.ABSTAIN_ANSWERS):
                    # a recall: at least one word of 3+ letters of the reply, other than the usual ones, is in the note
                    content_words = set(re.findall(r"[a-z]{3,}", m["content"].lower())) - {
                        "you", "your", "told", "said", "that", "are", "the", "now", "name", "called", "work",
                        "live", "love", "enjoy", "its", "it's", "there", "moved", "from", "before", "were", "after"}
                    assert content_words & set(re.findall(r"[a-z]{3,}", seen.lower())), m["content"]
                # an abstention must not name anyone: no user or pet name in it
                else:
                    assert not any(re.search(rf"\b{n}\b", m["content"]) for n in names), m["content"]
            seen += "\n" + m["content"]


# ----------------------------------------------------------------------------------------------------------------
def test_benchmark_users(gen, bench):
    users = bench["users"]
    assert len(users) >= 40 and sum(u["heldout"] for u in users) >= 30
    assert len(bench["small_talk"]) >= 20
    held_names = set(gen.POOLS["heldout"]["names"])
    for u in users:
        assert (u["name"] in held_names) == u["heldout"], u["name"]
        kinds = [q["kind"] for q in u["questions"]]
        assert {"recall", "update", "abstain"} <= set(kinds) and kinds.count("recall") >= 2, (u["name"], kinds)
        assert all(t["role"] == "user" and t["content"].strip() for t in u["turns"])
        said = " ".join(t["content"] for t in u["turns"]).lower()
        assert u["name"].lower() in said
        for q in u["questions"]:
            assert q["answer"] and all(a == a.lower() and a.strip() for a in q["answer"]), q
            ask = q["ask"].lower()
            # worded differently from the statements: the question never holds its answer, nor repeats a turn
            assert not any(a in ask for a in q["answer"]), q
            assert all(ask != t["content"].lower() for t in u["turns"])
            if q["kind"] in ("recall", "update"):
                assert any(a in said for a in q["answer"]), (u["name"], q)   # the answer was said
            if q["kind"] == "update":
                assert q["old"] and not set(q["old"]) & set(q["answer"]), q
                # the newest value is said after the old one (the last turn is the update)
                assert any(a in u["turns"][-1]["content"].lower() for a in q["answer"]), (u["name"], q)
                assert any(o in " ".join(t["content"] for t in u["turns"][:-1]).lower() for o in q["old"]), q
            if q["kind"] == "abstain":
                assert q["answer"] == gen.ABSTAIN_ANSWERS


def test_heldout_users_use_only_heldout_phrasings(gen, bench):
    values = slot_values(gen)
    train_regexes = [template_regex(t, values) for kinds in gen.PHRASINGS["train"].values() for ts in kinds.values()
                     for t in ts]
    for u in bench["users"]:
        if not u["heldout"]:
            continue
        for text in [t["content"] for t in u["turns"]] + [q["ask"] for q in u["questions"]]:
            assert not any(r.match(text) for r in train_regexes), (u["name"], text)
            assert not any(re.search(rf"\b{n}\b", text) for n in gen.POOLS["train"]["names"]), (u["name"], text)


def test_files_are_reproducible(gen):
    chats_text, eval_text = gen.build()
    assert (DATA / "memory_chats.jsonl").read_text(encoding="utf-8") == chats_text, (
        "memory_chats.jsonl differs from a fresh build; run: python data/make_memory_data.py")
    assert (DATA / "memory_eval.json").read_text(encoding="utf-8") == eval_text, (
        "memory_eval.json differs from a fresh build; run: python data/make_memory_data.py")
    assert gen.build() == (chats_text, eval_text)   # twice in one process: no hidden state
    # and as a learner runs it (a fresh interpreter, so no dependence on hash seeds or import order)
    done = subprocess.run([sys.executable, str(DATA / "make_memory_data.py"), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
