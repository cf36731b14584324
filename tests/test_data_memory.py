"""Checks on the chat-memory data (data/make_memory_data.py): the training conversations for stage 05
(data/memory_chats.jsonl) and the benchmark users for stage 06 (data/memory_eval.json).

- the memory format is what the generator's constants say (06 builds the same message);
- memory_chats.jsonl never contains a dev or held-out name, value, fact phrasing, question phrasing or small-talk
  line;
- the TRAIN, DEV and HELDOUT pools are disjoint, and so are the users of the three sets (no user of one set says a
  name, a value or a phrasing of another set's pool);
- every benchmark user has recall, update and abstain questions, worded unlike the statements; the first edition's
  users (sets dev and train) are unchanged;
- the training replies use the note (or decline, or answer a general question) and never name a value that is not in
  their conversation;
- both files are what the generator writes, byte for byte (reproducible).
Fast: about a second.
"""
import hashlib
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
    """slot name -> every value any pool can put there, for matching sentences against templates."""
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
        "birthday": [b for p in pools for b, _, _ in p.get("birthdays", [])],   # named days ("Halloween")
    }


def template_regex(template, values):
    """'I live in {city}.' -> a regex matching the template filled with any value of its slots (case-insensitive)."""
    pieces = re.split(r"\{(\w+)\}", template)   # literal, slot, literal, slot, ..., literal
    out = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            out.append(re.escape(piece))
        elif piece == "birthday":
            out.append("(?:" + "|".join([r"\d{1,2} [A-Z][a-z]+"] + [re.escape(b) for b in values[piece]]) + ")")
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
    assert 0.97 * sum(gen.N_CHATS.values()) <= len(chats) <= sum(gen.N_CHATS.values()), len(chats)   # ~1% cut
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


SETS = ("train", "dev", "heldout")
PAIRS = [("train", "dev"), ("train", "heldout"), ("dev", "heldout")]


def user_sentences(chats, gen):
    """Every user sentence of the training chats: the note items and the new messages."""
    sentences = []
    for content in texts_of(chats, "user"):
        items, new = split_note(gen, content)
        sentences += items + [new]
    return sentences


def templates_of(gen, pool):
    return [t for kinds in gen.PHRASINGS[pool].values() for ts in kinds.values() for t in ts]


def fixed_words(template):
    """A phrasing's own words: its longest fixed part, when 3+ words long ('My badge says {employer} on it.' ->
    'My badge says'); None for shorter ones."""
    longest = max((p.strip(" ,.!?;:'") for p in re.split(r"\{\w+\}", template)), key=len)
    return longest if len(longest.split()) >= 3 else None


def small_talk_lines(gen, pool):
    return [u for u, _ in gen.SMALL_TALK[pool]] if pool == "train" else list(gen.SMALL_TALK[pool])


def test_pools_and_phrasings_are_disjoint(gen):
    assert set(gen.POOLS) == set(gen.PHRASINGS) == set(gen.SMALL_TALK) == set(SETS)
    for a, b in PAIRS:
        pa, pb = gen.POOLS[a], gen.POOLS[b]
        for key in set(pa) | set(pb):
            if key == "species" and "heldout" not in (a, b):   # cats and dogs are in train and dev
                continue
            shared = {str(v) for v in pa.get(key, [])} & {str(v) for v in pb.get(key, [])}
            assert not shared, f"{key} in both the {a} and the {b} pool: {shared}"
        assert not set(pa["names"]) & set(pb["pets"]) and not set(pb["names"]) & set(pa["pets"]), (a, b)
        for attr, kinds in gen.PHRASINGS[b].items():
            for kind, templates in kinds.items():
                shared = set(templates) & set(gen.PHRASINGS[a].get(attr, {}).get(kind, []))
                assert not shared, f"{attr}/{kind} phrasings in the {a} and the {b} pool: {shared}"
        assert not {s.lower() for s in small_talk_lines(gen, a)} & {s.lower() for s in small_talk_lines(gen, b)}
    # the fresh pool's own words (a phrasing's longest fixed part) are in no other pool's phrasings
    others = " ".join(templates_of(gen, "train") + templates_of(gen, "dev")).lower()
    for template in templates_of(gen, "heldout"):
        words = fixed_words(template)
        assert not words or words.lower() not in others, (template, words)
    # the chats' extra TRAIN phrasings are of the same kinds of fact and shared with no other pool
    assert set(gen.MORE_TRAIN_PHRASINGS) == set(gen.PHRASINGS["train"])
    for attr, kinds in gen.MORE_TRAIN_PHRASINGS.items():
        for kind, templates in kinds.items():
            assert kind in gen.PHRASINGS["train"][attr], (attr, kind)
            for pool in ("dev", "heldout"):
                assert not set(templates) & set(gen.PHRASINGS[pool][attr].get(kind, [])), (attr, kind, pool)
    # its never-said questions are no pool's question
    asks = {t.lower() for pool in SETS for kinds in gen.PHRASINGS[pool].values() for t in kinds["ask"]}
    assert gen.NEVER_SAID["heldout"] and not {q.lower() for q in gen.NEVER_SAID["heldout"]} & asks


def pool_words(gen, pool):
    """Every name and value of a pool (and its words for a partner that other pools lack)."""
    p = gen.POOLS[pool]
    words = set(p["names"]) | set(p["pets"]) | set(p["cities"]) | set(p["employers"])
    words |= set(p["foods"]) | set(p["allergies"]) | set(p["months"]) | {b for b, _, _ in p.get("birthdays", [])}
    words |= {phrase for phrase, _ in p["origins"]} | {hobby for hobby, _ in p["hobbies"]}
    words |= {noun for noun, _, _ in p["jobs"]} | {do for _, do, _ in p["jobs"]}
    if pool == "heldout":      # the fresh pool's species are its own too (train and dev share cats and dogs)
        words |= set(p["species"])
    own_rels = {r for rels in gen.PARTNER_RELS[pool].values() for r in rels}
    words |= own_rels - {r for other in SETS if other != pool for rels in gen.PARTNER_RELS[other].values()
                         for r in rels}
    return words


def word_hits(words, text):
    """The words found in text as whole words: names, months and other capitalised values case-sensitively ('May'
    is not 'may'), the rest case-insensitively."""
    return [w for w in words if re.search(r"(?<!\w)" + re.escape(w) + r"(?!\w)", text, 0 if w[:1].isupper() else
                                                                                          re.I)]


def test_chats_never_contain_a_dev_or_heldout_name_value_or_phrasing(gen, chats):
    everything = "\n".join(texts_of(chats))
    low = everything.lower()
    sentences = user_sentences(chats, gen)
    values = slot_values(gen)
    for pool in ("dev", "heldout"):
        found = [w for w in pool_words(gen, pool) if re.search(r"(?<!\w)" + re.escape(w) + r"(?!\w)", everything,
                                                               re.I)]
        assert not found, f"{pool} names/values in memory_chats.jsonl: {found[:5]}"
        # no user sentence in the chats (a note item or a new message) is an instance of a dev/held-out phrasing
        regexes = [template_regex(t, values) for t in templates_of(gen, pool)]
        hits = [(s, r.pattern) for s in sentences for r in regexes if r.match(s)]
        assert not hits, f"{pool} phrasings used in training: {hits[:3]}"
        # nor does any chat contain a dev/held-out phrasing's own words
        for template in templates_of(gen, pool):
            words = fixed_words(template)
            assert not words or words.lower() not in low, f"{pool} words {words!r} appear in memory_chats.jsonl"
        for line in small_talk_lines(gen, pool):
            assert line.lower() not in low, f"{pool} small talk {line!r} appears in memory_chats.jsonl"
    for question in gen.NEVER_SAID["heldout"]:
        assert question.lower() not in low, question


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
# The first edition's 48 users (36 then marked heldout, now set dev; 12 of set train), without the keys "set" and
# "heldout", and the training chats, as published: adding the fresh set must not move them.
FIRST_EDITION_USERS_SHA256 = "1f503b0ed90afb2a56cf08eb93d34e78f0524b9c56c48b204f312fc0ebf24296"
CHATS_SHA256 = "f0f4cf57294a622486e6b984aca332d89243c9f9e0ef3e560dfbbcc72e3ac617"


def test_benchmark_users(gen, bench):
    users = bench["users"]
    by_set = {s: [u for u in users if u.get("set") == s] for s in SETS}
    assert sum(map(len, by_set.values())) == len(users), "every user has a set: train, dev or heldout"
    assert len(by_set["heldout"]) >= 30 and len(by_set["dev"]) >= 30 and len(by_set["train"]) >= 10
    assert bench["small_talk"] == gen.SMALL_TALK["dev"] and len(bench["small_talk"]) >= 20
    assert bench["small_talk_heldout"] == gen.SMALL_TALK["heldout"] and len(bench["small_talk_heldout"]) >= 30
    for u in users:
        assert u["heldout"] == (u["set"] == "heldout"), u["name"]
        assert u["name"] in gen.POOLS[u["set"]]["names"], u["name"]
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
                if u["set"] == "heldout":   # and not before it (a dev user's hobby, beekeeping, says "beekeep")
                    assert not any(a in " ".join(t["content"] for t in u["turns"][:-1]).lower() for a in q["answer"]), q
            if q["kind"] == "abstain":
                assert q["answer"] == gen.ABSTAIN_ANSWERS


def test_first_edition_users_and_chats_are_unchanged(bench):
    first = [{k: v for k, v in u.items() if k not in ("set", "heldout")} for u in bench["users"]
             if u["set"] != "heldout"]
    digest = hashlib.sha256(json.dumps(first, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert digest == FIRST_EDITION_USERS_SHA256, "the dev and train users changed: their figures would not compare"
    assert hashlib.sha256((DATA / "memory_chats.jsonl").read_bytes()).hexdigest() == CHATS_SHA256, (
        "memory_chats.jsonl changed: if on purpose, retrain 05 and update CHATS_SHA256")


def test_fresh_users_cover_every_update_and_both_kinds_of_never_said(gen, bench):
    fresh = [u for u in bench["users"] if u["set"] == "heldout"]
    values = slot_values(gen)
    asks = {attr: [template_regex(t, values) for t in kinds["ask"]] for attr, kinds in gen.PHRASINGS["heldout"].items()}

    def attr_of(question):
        return [attr for attr, regexes in asks.items() if any(r.match(question) for r in regexes)]

    updated = [attr_of(q["ask"]) for u in fresh for q in u["questions"] if q["kind"] == "update"]
    assert {a for found in updated for a in found} == set(gen.UPDATABLE_HELDOUT), updated
    never = [q["ask"] for u in fresh for q in u["questions"] if q["kind"] == "abstain"]
    assert sum(q in gen.NEVER_SAID["heldout"] for q in never) >= 5 and sum(bool(attr_of(q)) for q in never) >= 5
    recalled = {a for u in fresh for q in u["questions"] if q["kind"] == "recall" for a in attr_of(q["ask"])}
    assert recalled == set(gen.PHRASINGS["heldout"]), recalled   # every kind of fact is asked back somewhere
    assert sum(len(u["turns"]) < 1 + len([q for q in u["questions"] if q["kind"] != "abstain"]) for u in fresh) >= 5
    # (some users say two facts in one message)


def test_sets_share_no_name_value_phrasing_or_small_talk(gen, bench):
    values = slot_values(gen)
    regexes = {pool: [template_regex(t, values) for t in templates_of(gen, pool)] for pool in SETS}
    words = {pool: pool_words(gen, pool) for pool in SETS}
    for u in bench["users"]:
        texts = [t["content"] for t in u["turns"]] + [q["ask"] for q in u["questions"]]
        for other in SETS:
            if other == u["set"]:
                continue
            for text in texts:
                assert not any(r.match(text) for r in regexes[other]), (u["name"], other, text)
                assert not word_hits(words[other], text), (u["name"], other, text, word_hits(words[other], text))
                if other == "heldout":   # the fresh phrasings' own words are in no dev or train user's messages
                    assert not any(w and w.lower() in text.lower() for w in map(fixed_words,
                                                                                 templates_of(gen, "heldout"))), text
    # the fresh small talk names nothing of any pool and holds no answer of a fresh user
    keys = {a for u in bench["users"] if u["set"] == "heldout" for q in u["questions"] if q["kind"] != "abstain"
            for a in q["answer"]}
    for line in bench["small_talk_heldout"]:
        assert not any(word_hits(words[pool], line) for pool in SETS), line
        assert not word_hits(keys, line), (line, word_hits(keys, line))
        assert line.lower() not in {t["content"].lower() for u in bench["users"] for t in u["turns"]}


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


def test_the_proxy_is_what_its_generator_writes_and_passes_its_own_copy_checks(chats, capsys):
    """data/memory_proxy.json (a dev set shaped like the held-out users): reproducible, its checks pass, and none of
    its users' names or statements is in the training chats (a proxy the model trained on would flatter it)."""
    spec = importlib.util.spec_from_file_location("make_memory_proxy", DATA / "make_memory_proxy.py")
    proxy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(proxy)
    data, metas = proxy.build()
    assert proxy.check(data, metas), capsys.readouterr().out
    written = json.loads((DATA / "memory_proxy.json").read_text(encoding="utf-8"))
    assert written == data
    low = "\n".join(texts_of(chats)).lower()
    for user in data["users"]:
        assert user["set"] == "dev" and not user["heldout"]
        assert not re.search(r"(?<!\w)" + re.escape(user["name"].lower()) + r"(?!\w)", low), user["name"]
        assert not any(turn["content"].lower() in low for turn in user["turns"]), user["name"]
