"""
companions/06_memory_eval.py: how well the 06 chatbot remembers what a user told it, measured honestly.

    python companions/06_memory_eval.py                          # every user of data/memory_eval.json, 512 and 2048
    python companions/06_memory_eval.py --users 3 --context 512  # a quick look
    python companions/06_memory_eval.py --model out/05_finetune/chat --heldout-only
    python companions/06_memory_eval.py --set dev --users 12 --context 512 --conditions retrieval+   # tuning
    python companions/06_memory_eval.py --set dev --data data/memory_proxy.json --context 512   # held-out-shaped dev
    python companions/06_memory_eval.py --set dev --kinds update --conditions retrieval+   # one kind of question
    python companions/06_memory_eval.py --notes --set dev       # the retrieved notes alone, no model (seconds)
    python companions/06_memory_eval.py --notes --retrieval words   # the same with the word fallback (BM25)

The users come from data/memory_eval.json (written by data/make_memory_data.py): each states facts in varied natural
phrasings ("Morning! Rafael here.", "I spend my days fixing lifts in office towers."), then updates one of them (a
move, a new job); questions are worded unlike the statements, and one asks about something never said (the right
answer: "you did not tell me"). Users flagged heldout use names, values and phrasings that stage 05's chat training
never saw. Between the statements and before the questions comes small talk, enough to push the statements out of
a 512-token window (with the default 2,048 tokens they stay inside, where a small model still overlooks them).

Four conditions, each asked the same questions on the same conversation:
  none        no memory: only the window
  regex       the earlier memory of this project: a dozen regular expressions ("my name is ...") fill a fact store,
              shown as a system note just before the question
  retrieval   the lesson's memory (hybrid search over the whole conversation: sentence vectors plus shared words; BM25
              alone with --retrieval words or without the encoder's package; the note inside the newest message),
              stock model
  retrieval+  the same with --model (stage 05's chat model, trained to read the note; default out/05_finetune/chat)
Reported: recall (facts asked back), update accuracy (the newest value, not the old one), abstention (a question
about something never said), on all users and on the held-out ones; the memory's cost per turn (ms); for the rows
with a note, how often it held the answer and how often the model was right when it did (a miss is the search's or
the reader's). A table on screen, everything (each question's note too) in out/06_chatbot/memory_eval.json.
Replies are greedy, so a run is repeatable. Tune on the users of set dev (--set dev), report on heldout: a memory
tuned on the users it is measured on would flatter itself.
"""
import argparse
import copy
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "memory_eval.json"
OUT = Path("out") / "06_chatbot" / "memory_eval.json"
CONTEXTS = (512, 2048)       # the two windows reported by default
BETWEEN = 2                  # small-talk exchanges after each statement
BEFORE_QUESTIONS = 10        # ...and after the last one, before the questions
REPLY_TOKENS = 32            # greedy replies of at most this many tokens
CONDITIONS = ("none", "regex", "retrieval", "retrieval+")   # the rows of the table, in this order
STATED_REPLY = "Thanks for telling me!"   # the bot's reply to a statement (fixed: no reply may repeat a fact)


def load_lesson():
    """06_chatbot.py as a module (shared with the other companions and the tests)."""
    if "stage_06_chatbot" not in sys.modules:
        spec = importlib.util.spec_from_file_location("stage_06_chatbot", ROOT / "06_chatbot.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["stage_06_chatbot"] = module
        spec.loader.exec_module(module)
    return sys.modules["stage_06_chatbot"]


chat = load_lesson()


# ----------------------------------------------------------------------------------------------------------------
# The baseline: the regular-expression fact store the project used before retrieval
# ----------------------------------------------------------------------------------------------------------------
# Each rule: (key, pattern, sentence). Group "v" is the fact's value, group "k" (when present) part of the key. The
# sentence turns the fact into plain English for the note. Many-valued keys (likes) keep a list, the others replace.
_VALUE = r"(?P<v>[^.,;!?\n<>\"()]+?)"                         # the value: up to the end of the clause...
_END = r"(?=\s+(?:and|but|so|because|though)\b|\s*[.,;!?\n<>\"()]|\s*$)"  # ...or a joining word
_NAME = r"(?P<v>[^\W\d_][\w'-]*(?: (?!(?:i|and|but|so)\b)[^\W\d_][\w'-]*){0,2})"  # a name: 1-3 words of letters
_NAME_END = r"(?=\s+(?:and|but|so|because|though)\b|\s*[^\w\s'-]|\s*$)"
MEMORY_RULES = [
    ("name", r"\bmy name is " + _NAME + _NAME_END, "The user's name is {v}."),
    ("name", r"\b(?:call me|i am called|i'm called) " + _NAME + _NAME_END, "The user's name is {v}."),
    ("age", r"\bi(?: am|'m) (?P<v>\d{1,3}) years? old\b", "The user is {v} years old."),
    ("home", r"\bi(?: now)? live in " + _VALUE + _END, "The user lives in {v}."),
    ("home", r"\bi(?: am|'m) living in " + _VALUE + _END, "The user lives in {v}."),
    ("origin", r"\bi(?: am|'m) (?:originally )?from " + _VALUE + _END, "The user is from {v}."),
    ("job", r"\bi work as " + _VALUE + _END, "The user works as {v}."),
    ("job", r"\bmy job is " + _VALUE + _END, "The user's job is {v}."),
    ("job", r"\bi(?: am|'m) (?P<v>an? [\w -]+?) by (?:profession|trade)\b", "The user is {v} by profession."),
    ("workplace", r"\bi work (?:at|for) " + _VALUE + _END, "The user works at {v}."),
    ("birthday", r"\bmy birthday is (?:on )?" + _VALUE + _END, "The user's birthday is {v}."),
    ("favourite {k}", r"\bmy favou?rite (?P<k>\w+(?: \w+)?) is " + _VALUE + _END, "The user's favourite {k} is {v}."),
    ("{k}'s name", r"\bmy (?P<k>\w+)(?:'s name is| is called| is named) " + _VALUE + _END,
     "The user's {k} is called {v}."),
    ("likes", r"\bi (?:really |also |do )?(?:like|love|enjoy|adore) " + _VALUE + _END, "The user likes {v}."),
    ("dislikes", r"\bi (?:really )?(?:don't|do not|dont) (?:like|enjoy) " + _VALUE + _END,
     "The user does not like {v}."),
    ("dislikes", r"\bi (?:really )?(?:hate|dislike|can't stand) " + _VALUE + _END, "The user does not like {v}."),
]
MANY_VALUED = {"likes", "dislikes"}
MAX_FACTS_PER_KEY = 5
_PRONOUNS = {"my": "their", "me": "them", "myself": "themselves", "mine": "theirs", "i": "they", "i'm": "they're"}


def extract_facts(text):
    """A user's message -> [(key, value, sentence)] for every fact it states. Questions state nothing."""
    facts = []
    for sentence in re.findall(r"[^.!?\n]+[.!?]*", text):
        if sentence.strip().endswith("?"):
            continue                     # "Do I like tea?" must not store "The user likes tea."
        for key, pattern, template in MEMORY_RULES:
            for match in re.finditer(pattern, sentence, flags=re.IGNORECASE):
                value = " ".join(match.group("v").split()).strip(" '\"")
                # phrases the patterns catch that are no facts: "I'm from not far away", "I'm sure", "I'm sorry"
                if not value or value.lower().startswith(("not ", "a bit", "sure", "sorry")) or len(value) > 60:
                    continue
                if key != "name":   # third person for the note: "I like my dog" -> "The user likes their dog"
                    value = " ".join(_PRONOUNS.get(word.lower(), word) for word in value.split())
                k = match.groupdict().get("k")
                k = k.lower() if k else None
                facts.append((key.format(k=k), value, template.format(k=k, v=value)))
    return facts


def remember(memory, text):
    """Add the facts in `text` to memory ({key: [sentence, ...]}); return the new sentences."""
    new = []
    for key, _value, sentence in extract_facts(text):
        sentences = memory.setdefault(key, [])
        if sentence in sentences:
            continue
        if key in MANY_VALUED:
            sentences.append(sentence)
            del sentences[:-MAX_FACTS_PER_KEY]   # keep the most recent few
        else:
            sentences[:] = [sentence]            # a new name or home replaces the old one
        new.append(sentence)
    return new


def regex_note(memory):
    facts = [sentence for key in memory for sentence in memory[key]]
    return "Remember these facts about the user: " + " ".join(facts) if facts else None


def regex_prompt(engine, conversation, sampling, memory):
    """The prompt with the regex note as a system message just before the newest message (the old default)."""
    note = regex_note(memory)
    budget = chat.budget_of(engine, sampling)
    room = len(chat.encode_text(engine.tokenizer, note)) + 8 if note else 0   # the note's tokens, with its tags
    system = conversation.system_prompt or None
    ids, conversation.start = chat.fit_prompt(engine.tokenizer, system, conversation.messages, budget - room,
                                              start=conversation.start, target=int((budget - room) * chat.TRIM_TO))
    if note:
        window = conversation.messages[conversation.start:]
        head = [{"role": "system", "content": system}] if system else []
        ids = chat.render_ids(engine.tokenizer, head + window[:-1] + [{"role": "system", "content": note}] +
                              window[-1:])
    return ids


# ----------------------------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------------------------
def read_users(path=DATA):
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        users, small_talk = data["users"], [str(s) for s in data["small_talk"]]
        # the fresh held-out users (set "heldout") get their own small talk, written apart from everything else
        small_talk = {"other": small_talk, "heldout": [str(s) for s in data.get("small_talk_heldout") or small_talk]}
        for user in users:
            assert user["name"] and user["turns"] and user["questions"] and small_talk
            assert all(q["kind"] in ("recall", "update", "abstain") and q["answer"] for q in user["questions"])
    except FileNotFoundError:
        raise chat.UsageError(f"{path} is missing: run python data/make_memory_data.py") from None
    except (ValueError, KeyError, TypeError, AssertionError):
        raise chat.UsageError(f"{path} is not a memory benchmark file: run python data/make_memory_data.py") from None
    return users, small_talk


def holds(text, answers):
    """Does the text hold any of the accepted answers? Lowercased and with ’ turned into ', as the format says."""
    text = text.lower().replace("\u2019", "'")
    return any(answer in text for answer in answers)


def judge(reply, question):
    """Right or wrong, as data/memory_eval.json's format says: the reply holds an answer; for an update, a reply with
    the old value and without the new one is wrong (stale)."""
    return holds(reply, question["answer"])


def greedy(max_new_tokens=REPLY_TOKENS):
    return chat.Sampling(temperature=0, top_k=0, top_p=1.0, repetition_penalty=chat.REPETITION_PENALTY,
                         max_new_tokens=max_new_tokens)


def small_talk_replies(engine, lines, sampling, say=print):
    """The model's own greedy reply to each small-talk line, asked alone: realistic filler, computed once."""
    replies = {}
    started = time.perf_counter()
    for i, line in enumerate(lines):
        stats = {}
        with engine.lock:
            for _ in chat.generate(engine, chat.render_ids(engine.tokenizer, [
                    {"role": "system", "content": chat.SYSTEM}, {"role": "user", "content": line}]), sampling, stats):
                pass
        replies[line] = stats["text"].strip() or "I see."
        say(f"\r  small-talk replies {i + 1}/{len(lines)} ({time.perf_counter() - started:.0f} s)", end="")
    say("")
    return replies


def conversation_of(user, small_talk, replies, offset):
    """The user's statements with small talk between them and before the questions (the bot's replies fixed)."""
    conversation = chat.Conversation(system_prompt=chat.SYSTEM, memory_at="off")
    lines = small_talk["heldout" if user.get("set") == "heldout" else "other"]
    talk = (lines[(offset + i) % len(lines)] for i in range(10_000))
    for n, turn in enumerate(user["turns"]):
        conversation.messages += [{"role": "user", "content": turn["content"]},
                                  {"role": "assistant", "content": STATED_REPLY}]
        for _ in range(BEFORE_QUESTIONS if n == len(user["turns"]) - 1 else BETWEEN):
            line = next(talk)
            conversation.messages += [{"role": "user", "content": line},
                                      {"role": "assistant", "content": replies[line]}]
    return conversation


def ask(engine, conversation, question, condition, sampling):
    """One question on a copy of the conversation under one condition -> (reply, memory ms, stating turn outside,
    the note's lines: what the retrieval put before the question; None for the rows none and regex)."""
    branch = copy.deepcopy(conversation)        # nothing leaks from one question into another
    branch.messages.append({"role": "user", "content": question})
    started = time.perf_counter()
    if condition == "regex":
        memory = {}
        for message in branch.messages[:-1]:
            if message["role"] == "user":
                remember(memory, message["content"])
        memory_ms = (time.perf_counter() - started) * 1000
        prompt = regex_prompt(engine, branch, sampling, memory)
    else:
        branch.memory_at = "off" if condition == "none" else "end"
        if condition != "none" and engine.encoder:
            # In a chat each message was encoded when it was said, and the kinds of fact at the start (warm_up): so
            # encode those now, and the question not yet (a cache left warm by another row would hold it).
            chat.embed.cache_clear()
            for text in [t for t, _ in chat.statements(branch.messages[:-1])] + chat.SYNONYMS:
                chat.embed(text)
        started = time.perf_counter()
        if condition != "none":
            chat.recall(branch.messages[:-1], question, encoder=engine.encoder)   # timed alone: the memory's cost
        memory_ms = (time.perf_counter() - started) * 1000 if condition != "none" else 0.0
        prompt = chat.prepare_prompt(engine, branch, sampling)
    note = list(branch.recalled) if condition in ("retrieval", "retrieval+") else None   # as prepare_prompt left it
    stats = {}
    with engine.lock:
        plains = chat.twin_prompts(engine, branch, sampling) if note else []   # the regex row: no contrast
        for _ in chat.generate(engine, prompt, sampling, stats, copy=chat.copy_ids(engine.tokenizer, note or ()),
                               plains=plains):
            pass
    return stats["text"].strip(), memory_ms, branch.start > 0, note


def run_condition(engine, users, small_talk, replies, condition, context, say=print):
    """Every question of every user under one condition and window -> per-question records."""
    engine.limit = getattr(engine, "limit", engine.context)   # the window it was loaded with (the largest asked)
    engine.context = min(context, engine.limit)
    sampling = greedy()
    records = []
    for u, user in enumerate(users):
        conversation = conversation_of(user, small_talk, replies, offset=u * 7)
        for question in user["questions"]:
            reply, memory_ms, outside, note = ask(engine, conversation, question["ask"], condition, sampling)
            right = judge(reply, question)
            # does the note hold the answer? A miss with it is the reader's, a miss without it the retrieval's
            noted = note is not None and question["kind"] != "abstain"   # a never-said fact has no answer to hold
            held = holds("\n".join(note), question["answer"]) if noted else None
            if question["kind"] == "update" and not right:
                stale = any(old in reply.lower() for old in question.get("old", []))
            else:
                stale = False
            records.append({"user": user["name"], "heldout": bool(user.get("heldout")), "kind": question["kind"],
                            "ask": question["ask"], "reply": reply, "right": right, "stale": stale,
                            "memory_ms": memory_ms, "outside": outside, "note": note, "note_holds": held})
            say(f"  {condition:10s} {context:5d}  {user['name']:10s} {question['kind']:7s} "
                f"{'OK   ' if right else 'wrong'} {question['ask'][:40]!r} -> {reply[:60]!r}")
    return records


def summarize(records):
    """Accuracy per kind, on all users and on the held-out ones, and the memory's cost."""
    def share(kind, heldout=None):
        chosen = [r["right"] for r in records if r["kind"] == kind and (heldout is None or r["heldout"] == heldout)]
        return (sum(chosen) / len(chosen) if chosen else None), len(chosen)
    summary = {}
    for kind in ("recall", "update", "abstain"):
        summary[kind], summary[kind + "_n"] = share(kind)
        summary[kind + "_heldout"], summary[kind + "_heldout_n"] = share(kind, True)
    for kind in ("recall", "update"):   # where the misses are: how often the note held the answer (the retrieval's
        # part), and how often the model was right when it did (the reader's part)
        noted = [r for r in records if r["kind"] == kind and r.get("note_holds") is not None]
        right_when_held = [r["right"] for r in noted if r["note_holds"]]
        summary[kind + "_note_holds"] = len(right_when_held) / len(noted) if noted else None
        summary[kind + "_when_held"] = sum(right_when_held) / len(right_when_held) if right_when_held else None
        summary[kind + "_held_n"] = len(right_when_held)
    costs = [r["memory_ms"] for r in records]
    summary["memory_ms_per_turn"] = sum(costs) / len(costs) if costs else 0.0
    summary["stating_turns_outside_window"] = sum(r["outside"] for r in records) / max(len(records), 1)
    return summary


def note_check(users, small_talk, encoder=None):
    """The retrieval alone, no model: how often the note holds the answer (recall; update: the newest value, with no
    old value in a line after it), is empty for a never-said fact, and how many lines it has. Seconds, so memory
    changes can be tried."""
    replies = {line: "I see." for lines in small_talk.values() for line in lines}   # only user messages are searched
    counts = {"recall": [], "update": [], "abstain": [], "lines": []}
    for u, user in enumerate(users):
        messages = conversation_of(user, small_talk, replies, offset=u * 7).messages
        for question in user["questions"]:
            recalled = [line.lower().replace("\u2019", "'")
                        for line in chat.recall(messages, question["ask"], encoder=encoder)]
            with_answer = [holds(line, question["answer"]) for line in recalled]
            newest = max((i for i, held in enumerate(with_answer) if held), default=-1)   # the last line with it
            stale = any(old in line for line in recalled[newest + 1:] for old in question.get("old", []))
            good = {"recall": any(with_answer), "update": newest >= 0 and not stale, "abstain": not recalled}
            for key, value in ((question["kind"], good[question["kind"]]), ("lines", len(recalled))):
                counts[key].append(value)
    print(f"the note alone ({len(users)} users): " + ", ".join(
        f"{key} {sum(v) / len(v):.2f}" for key, v in counts.items() if v) + "  (recall/update: the note holds the answer, "
        "the newest value after the old; abstain: no note; lines: the note's mean length)")


def percent(value):
    return "   -" if value is None else f"{100 * value:3.0f}%"


def print_table(results):
    print(f"\n{'condition':12s} {'context':>7s} {'recall':>7s} {'held-out':>9s} {'update':>7s} {'held-out':>9s} "
          f"{'abstain':>8s} {'memory ms/turn':>15s} {'outside window':>15s}")
    for row in results:
        s = row["summary"]
        print(f"{row['condition']:12s} {row['context']:7d} {percent(s['recall']):>7s} "
              f"{percent(s['recall_heldout']):>9s} "
              f"{percent(s['update']):>7s} {percent(s['update_heldout']):>9s} {percent(s['abstain']):>8s} "
              f"{s['memory_ms_per_turn']:15.2f} {percent(s['stating_turns_outside_window']):>15s}")
    for row in results:   # a miss is the retrieval's (the note lacks the answer) or the reader's (it has it)
        s = row["summary"]
        if s["recall_note_holds"] is not None:
            print(f"{row['condition']} {row['context']}: the note held the answer to "
                  f"{percent(s['recall_note_holds']).strip()} of the recall questions and "
                  f"{percent(s['update_note_holds']).strip()} of the updates; the model was right on "
                  f"{percent(s['recall_when_held']).strip()} and {percent(s['update_when_held']).strip()} of those "
                  f"({s['recall_held_n']} and {s['update_held_n']} questions)")


def main():
    parser = chat.build_parser("The 06 chatbot's memory, measured on data/memory_eval.json.")
    parser.set_defaults(context=None)
    parser.add_argument("--base", default="smollm2", help="the model of the none/regex/retrieval rows (stock SmolLM2)")
    parser.add_argument("--users", type=int, default=0, help="only the first N users (0 = all)")
    parser.add_argument("--heldout-only", action="store_true", help="only the users flagged heldout (= --set heldout)")
    parser.add_argument("--set", choices=("train", "dev", "heldout"), dest="user_set",
                        help="only the users of this set (tune on dev, report on heldout)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help="which rows, comma-separated (default: all of " + ",".join(CONDITIONS) + ")")
    parser.add_argument("--kinds", default="recall,update,abstain",
                        help="which questions, comma-separated (tuning for one kind asks only those: faster)")
    parser.add_argument("--notes", action="store_true", help="check the retrieved notes alone (no model, seconds)")
    parser.add_argument("--retrieval", choices=("vectors", "words"), default="vectors",
                        help="the memory's search: vectors + words (when the encoder is installed) or words alone")
    parser.add_argument("--data", default=str(DATA), help="the benchmark file")
    parser.add_argument("--json", default=str(OUT), help="where the results go")
    parser.add_argument("--memory-copy", type=float, default=chat.MEMORY_COPY,
                        help="the nudge towards the note's words (06's MEMORY_COPY; 0 = off, to measure what it adds)")
    parser.add_argument("--memory-contrast", type=float, default=chat.MEMORY_CONTRAST,
                        help="how much the note's effect on the logits is amplified (06's MEMORY_CONTRAST; 0 = off)")
    args, _unknown = parser.parse_known_args()
    chat.MEMORY_COPY, chat.MEMORY_CONTRAST = args.memory_copy, args.memory_contrast
    if args.memory_eval:
        args.memory_eval = False    # the old flag of the lesson: here it is simply this command
    contexts = [args.context] if args.context else list(CONTEXTS)
    args.context = max(contexts)
    chat.check_args(parser, args)
    if args.users < 0:
        parser.error("--users must be 0 (all) or positive")
    conditions = [c for c in args.conditions.split(",") if c]
    if not conditions or set(conditions) - set(CONDITIONS):
        parser.error(f"--conditions: choose among {','.join(CONDITIONS)}")
    kinds = {k for k in args.kinds.split(",") if k}
    if not kinds or kinds - {"recall", "update", "abstain"}:
        parser.error("--kinds: choose among recall,update,abstain")
    if args.heldout_only:
        args.user_set = "heldout"
    try:
        users, small_talk = read_users(args.data)
        users = [u for u in users if args.user_set in (None, u.get("set", "heldout" if u.get("heldout") else None))]
        users = [dict(u, questions=[q for q in u["questions"] if q["kind"] in kinds]) for u in users]
        users = [u for u in users if u["questions"]][:args.users or None]
        chat.transformers.utils.logging.disable_progress_bar()
        encoder = chat.sentence_encoder() if args.retrieval == "vectors" else None
        print("memory: " + ("sentence vectors + words (BM25)" if encoder else "word overlap (BM25)"))
        if args.notes:
            return note_check(users, small_talk, encoder)
        model = args.model or (str(chat.CHAT05) if (chat.CHAT05 / "config.json").exists() else None)
        base_args = copy.copy(args)
        base_args.model = args.base
        engine, _sampling, _conversation = chat.setup(base_args)
        engine.encoder = encoder
        print(f"memory evaluation: {len(users)} users ({sum(bool(u.get('heldout')) for u in users)} held out), "
              f"{sum(len(u['questions']) for u in users)} questions, windows {contexts}, base model {engine.model_id}",
              flush=True)
        chat.warm_up(engine)
        wanted = {"heldout" if u.get("set") == "heldout" else "other" for u in users}
        replies = small_talk_replies(engine, sorted({line for key in wanted for line in small_talk[key]}), greedy())
        results = []
        for context in contexts:
            for condition in [c for c in CONDITIONS[:3] if c in conditions]:
                records = run_condition(engine, users, small_talk, replies, condition, context)
                results.append({"condition": condition, "context": context, "model": engine.model_id,
                                "summary": summarize(records), "records": records})
        trained_model = model and model not in ("smollm2", "SmolLM2-135M-Instruct")
        if "retrieval+" in conditions and trained_model:
            model_args = copy.copy(args)
            model_args.model = model
            trained, _s, _c = chat.setup(model_args)
            trained.encoder = encoder
            for context in contexts:
                records = run_condition(trained, users, small_talk, replies, "retrieval+", context)
                results.append({"condition": "retrieval+", "context": context, "model": trained.model_id,
                                "summary": summarize(records), "records": records})
        elif "retrieval+" in conditions:
            print("note: no stage-05 chat model (run python 05_finetune.py, or pass --model DIR): "
                  "row retrieval+ skipped")
    except chat.UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print_table(results)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"users": len(users), "contexts": contexts, "results": results}, indent=1,
                                    ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
