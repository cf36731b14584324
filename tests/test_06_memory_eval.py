"""Tests for companions/06_memory_eval.py: the regular-expression fact store kept as the benchmark's baseline, the
judging rules of data/memory_eval.json, and the command itself on a tiny random model and a two-user data file."""
import json

import pytest

from conftest import assert_one_line_error, load_script, run_script
from test_06_chatbot import build_tiny_model

evaluation = load_script("companions/06_memory_eval.py")


def test_regex_baseline_extracts_statements_not_questions():
    facts = {key: value for key, value, _ in evaluation.extract_facts(
        "Hi! My name is Alice and I live in Lisbon. I work as a nurse, and my favourite colour is green. "
        "I'm 34 years old. My dog's name is Biscuit. I love chess. Where do I live?")}
    assert facts == {"name": "Alice", "home": "Lisbon", "job": "a nurse", "favourite colour": "green",
                     "age": "34", "dog's name": "Biscuit", "likes": "chess"}
    assert evaluation.extract_facts("What is my name? Do I live in Paris?") == []
    assert evaluation.extract_facts("The weather is nice today.") == []
    assert [v for _, v, _ in evaluation.extract_facts("I'm from Norway but I hate rain")] == ["Norway", "rain"]
    assert evaluation.extract_facts("I like walking my dog")[0][2] == "The user likes walking their dog."
    # what the issue found: ordinary phrasing escapes the patterns
    assert evaluation.extract_facts("Morning! Rafael here. I spend my days fixing lifts in office towers.") == []


def test_regex_store_replaces_single_facts_and_caps_lists():
    memory = {}
    assert evaluation.remember(memory, "My name is Bob.") == ["The user's name is Bob."]
    assert evaluation.remember(memory, "My name is Bob.") == []
    evaluation.remember(memory, "Actually, call me Robert.")
    assert memory["name"] == ["The user's name is Robert."]
    for food in ["pizza", "sushi", "tacos", "curry", "pasta", "soup", "salad"]:
        evaluation.remember(memory, f"I like {food}.")
    assert len(memory["likes"]) == evaluation.MAX_FACTS_PER_KEY and memory["likes"][-1] == "The user likes salad."
    note = evaluation.regex_note(memory)
    assert note.startswith("Remember these facts about the user: The user's name is Robert. The user likes")
    assert "salad" in note and "pizza" not in note and evaluation.regex_note({}) is None


def test_judging_and_summary():
    question = {"kind": "update", "answer": ["halifax"], "old": ["bologna"]}
    assert evaluation.judge("You moved from Bologna to Halifax.", question)
    assert not evaluation.judge("You live in Bologna.", question)
    assert evaluation.judge("You haven\u2019t told me.", {"answer": ["haven't told"]})
    records = [{"kind": "recall", "right": True, "heldout": True, "memory_ms": 1.0, "outside": True},
               {"kind": "recall", "right": False, "heldout": False, "memory_ms": 3.0, "outside": False},
               {"kind": "abstain", "right": True, "heldout": False, "memory_ms": 2.0, "outside": True}]
    summary = evaluation.summarize(records)
    assert (summary["recall"], summary["recall_heldout"], summary["abstain"]) == (0.5, 1.0, 1.0)
    assert summary["update"] is None and summary["update_n"] == 0
    assert summary["memory_ms_per_turn"] == 2.0 and summary["stating_turns_outside_window"] == pytest.approx(2 / 3)
    assert summary["recall_note_holds"] is None   # rows without a note (none, regex) have no breakdown
    # with notes: a miss with the answer in the note is the reader's, one without it the retrieval's
    noted = [dict(r, note_holds=held) for r, held in zip(records, [True, False, None])]
    noted += [dict(records[0], right=False, note_holds=True), dict(records[0], kind="update", note_holds=False)]
    summary = evaluation.summarize(noted)
    assert (summary["recall_note_holds"], summary["recall_when_held"], summary["recall_held_n"]) == (2 / 3, 0.5, 2)
    assert (summary["update_note_holds"], summary["update_when_held"], summary["update_held_n"]) == (0.0, None, 0)


def tiny_benchmark(path):
    abstain = ["not told", "don't know"]
    users = [{"name": "Zora", "heldout": False, "turns": [{"role": "user", "content": "Morning! Zora here."},
                                                          {"role": "user", "content": "I live in Quito."},
                                                          {"role": "user", "content": "We moved to Lima."}],
              "questions": [{"ask": "What do you call me?", "kind": "recall", "answer": ["zora"]},
                            {"ask": "Where do I live now?", "kind": "update", "answer": ["lima"], "old": ["quito"]},
                            {"ask": "What is my dog called?", "kind": "abstain", "answer": abstain}]},
             {"name": "Ivo", "heldout": True, "turns": [{"role": "user", "content": "The name's Ivo."}],
              "questions": [{"ask": "Who am I?", "kind": "recall", "answer": ["ivo"]}]}]
    path.write_text(json.dumps({"format": "test", "small_talk": ["Why is the sky blue?", "Ugh, Mondays."],
                                "users": users}))
    return path


def test_the_command_reports_every_condition_and_writes_json(tmp_path):
    model = build_tiny_model(tmp_path / "chat", chat=True)
    data, out = tiny_benchmark(tmp_path / "bench.json"), tmp_path / "result.json"
    proc = run_script("companions/06_memory_eval.py", "--base", model, "--model", model, "--data", data,
                      "--json", out, "--context", 320, "--threads", 1, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 users (1 held out), 4 questions, windows [320]" in proc.stdout
    result = json.loads(out.read_text())
    assert [(r["condition"], r["context"]) for r in result["results"]] == [
        ("none", 320), ("regex", 320), ("retrieval", 320), ("retrieval+", 320)]
    for row in result["results"]:
        assert len(row["records"]) == 4 and {r["kind"] for r in row["records"]} == {"recall", "update", "abstain"}
        assert row["condition"] in proc.stdout.split("condition")[-1]
    retrieval = result["results"][2]["summary"]
    assert retrieval["memory_ms_per_turn"] > 0 and result["results"][0]["summary"]["memory_ms_per_turn"] == 0
    # each retrieval record keeps its note; note_holds says whether an accepted answer is in it
    for row in result["results"]:
        for r in row["records"]:
            if row["condition"] in ("none", "regex") or r["kind"] == "abstain":
                assert r["note_holds"] is None
            else:
                assert r["note_holds"] == any(a in line.lower() for line in r["note"] for a in
                                              {"recall": ["zora", "ivo"], "update": ["lima"]}[r["kind"]])
    update = next(r for r in result["results"][3]["records"] if r["kind"] == "update")
    assert update["note_holds"] and any("Lima" in line for line in update["note"])   # the move is recalled
    assert "retrieval+ 320: the note held the answer to" in proc.stdout
    proc = run_script("companions/06_memory_eval.py", "--data", tmp_path / "missing.json", timeout=120)
    assert_one_line_error(proc, code=2, contains="make_memory_data.py")


def test_fresh_heldout_users_get_their_own_small_talk(tmp_path):
    path = tmp_path / "eval.json"
    user = lambda name, kind: {"name": name, "set": kind, "heldout": kind == "heldout",
                               "turns": [{"role": "user", "content": f"I'm {name}."}],
                               "questions": [{"ask": "Who am I?", "kind": "recall", "answer": [name.lower()]}]}
    path.write_text(json.dumps({"small_talk": ["Old line one.", "Old line two."],
                                "small_talk_heldout": ["Fresh line one.", "Fresh line two."],
                                "users": [user("Ada", "dev"), user("Bea", "heldout")]}), encoding="utf-8")
    users, small_talk = evaluation.read_users(path)
    replies = {line: "ok" for lines in small_talk.values() for line in lines}
    said = lambda u: {m["content"] for m in evaluation.conversation_of(u, small_talk, replies, 0).messages}
    assert said(users[0]) & {"Old line one.", "Old line two."} and not said(users[0]) & set(small_talk["heldout"])
    assert said(users[1]) & {"Fresh line one.", "Fresh line two."} and not said(users[1]) & set(small_talk["other"])


def test_notes_alone_by_user_set_and_the_conditions_flag(tmp_path, monkeypatch, capsys):
    """--notes checks the retrieved notes without a model; --set picks the users; --conditions is validated."""
    data = str(tiny_benchmark(tmp_path / "bench.json"))
    def run(*flags):
        monkeypatch.setattr("sys.argv", ["06_memory_eval.py", "--data", data, *flags])
        evaluation.main()
        return capsys.readouterr().out
    words = run("--notes", "--retrieval", "words")
    assert "memory: word overlap" in words and "(2 users): recall 1.00, update 1.00, abstain 1.00, lines 1.00" in words
    assert "the note alone (1 users): recall 1.00, lines 1.00" in run("--notes", "--set", "heldout", "--retrieval", "words")
    assert "(1 users): update 1.00, lines 2.00" in run("--notes", "--kinds", "update", "--retrieval", "words")
    if evaluation.chat.sentence_encoder():   # the default search: sentence vectors, when the encoder is installed
        vectors = run("--notes")
        assert "memory: sentence vectors" in vectors and "(2 users): recall 1.00, update 1.00, abstain 1.00" in vectors
    with pytest.raises(SystemExit) as exit_info:
        run("--conditions", "retrieval,oracle")
    assert exit_info.value.code == 2 and capsys.readouterr().err.splitlines()[-1].startswith(
        "06_memory_eval.py: error: --conditions")
    with pytest.raises(SystemExit) as exit_info:
        run("--kinds", "update,trivia")
    assert exit_info.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --kinds: choose among recall,update,abstain")
