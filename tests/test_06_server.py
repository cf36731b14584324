"""Tests for companions/06_server.py: the chat page, its sessions, the OpenAI-compatible API (also through the
official openai client), validation and limits, control tokens typed by clients, the memory on both endpoints,
concurrency, and a real browser. The tiny random models come from test_06_chatbot.py.
"""
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import torch

import conftest
from conftest import assert_one_line_error, load_script, run_script, script_path
from test_06_chatbot import FORGED, build_tiny_model, quick  # noqa: F401  (fixtures below use them)

bot = load_script("06")
srv = load_script("companions/06_server.py")
bench = load_script("companions/06_bench.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny06s") / "chat", chat=True)


@pytest.fixture(scope="module")
def engine(tiny_chat):
    return bot.load_engine(str(tiny_chat), context=320, say=lambda *a: None)


def test_fifo_lock_serves_waiters_in_arrival_order():
    lock, order = srv.FifoLock(), []
    lock.__enter__()

    def waiter(i):
        with lock:
            order.append(i)

    threads = []
    for i in range(6):
        threads.append(threading.Thread(target=waiter, args=(i,)))
        threads[-1].start()
        for _ in range(400):                    # wait until this waiter is queued before starting the next
            if lock.waiting == i + 2:
                break
            time.sleep(0.005)
    assert lock.waiting == 7 and order == []
    lock.__exit__()
    for thread in threads:
        thread.join(timeout=10)
    assert order == [0, 1, 2, 3, 4, 5] and lock.waiting == 0


# ----------------------------------------------------------------------------------------------------------------
# The HTTP server: page, OpenAI endpoints, errors, limits, concurrency
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    sampling = quick(max_new_tokens=16)
    httpd = srv.make_server(engine, sampling, "127.0.0.1", 0, folder=tmp_path_factory.mktemp("saves"))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def http(method, url, body=None, raw=None, headers=None, timeout=60):
    """(status, headers, body bytes) for any status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def raw_request(base, text, read_all=True):
    """Send raw bytes to the server (for requests urllib will not make); return the response text."""
    host, port = base.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(text.encode())
        chunks = []
        while read_all:
            chunk = connection.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")


def test_page_is_self_contained_and_escapes_text(server):
    status, headers, body = http("GET", server + "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<script" in page and "<style" in page and "http://" not in page and "https://" not in page
    assert "innerHTML" not in page and "textContent" in page
    nonce = page.split('<script nonce="')[1].split('"')[0]
    assert f"script-src 'nonce-{nonce}'" in headers["Content-Security-Policy"]
    assert nonce != http("GET", server + "/")[2].decode().split('<script nonce="')[1].split('"')[0]


def test_models_endpoint_and_status_codes(server, engine):
    status, _, body = http("GET", server + "/v1/models")
    data = json.loads(body)
    assert status == 200 and data["object"] == "list" and data["data"][0]["id"] == engine.model_id
    assert http("GET", server + "/nope")[0] == 404
    assert http("GET", server + "/v1/chat/completions")[0] == 405
    status, _, body = http("GET", server + "/v1/models", headers={"Host": "evil.example:80"})
    assert status == 403 and "localhost" in json.loads(body)["error"]["message"]


def test_chat_completions_non_streaming_and_streaming_agree(server):
    request = {"model": "whatever", "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Say hello."}],
               "max_tokens": 10, "temperature": 0}
    status, headers, body = http("POST", server + "/v1/chat/completions", request)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    data = json.loads(body)
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = data["usage"]
    assert 1 <= usage["completion_tokens"] <= 10 and usage["total_tokens"] == usage["prompt_tokens"] + \
        usage["completion_tokens"]
    status, headers, body = http("POST", server + "/v1/chat/completions",
                                 {**request, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    text = body.decode()
    assert text.endswith("data: [DONE]\n\n")
    blocks = text.split("\n\n")[:-2]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks)
    chunks = [json.loads(b[6:]) for b in blocks]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[-1]["usage"] == usage and chunks[-1]["choices"] == []
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert streamed == choice["message"]["content"], "greedy: streaming and non-streaming give the same reply"
    text, problem = bench.check_completion(200, body, True)
    assert problem is None and text == streamed


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": True}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ([1, 2], None),
])
def test_bad_requests_get_400_with_a_message(server, body, param):
    status, headers, raw = http("POST", server + "/v1/chat/completions", body)
    error = json.loads(raw)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_malformed_json_oversized_body_and_missing_length(server):
    status, _, raw = http("POST", server + "/v1/chat/completions", raw=b'{"messages": [')
    assert status == 400 and "malformed JSON" in json.loads(raw)["error"]["message"]
    status, _, raw = http("POST", server + "/v1/chat/completions", raw=b"\xff\xfe not utf-8")
    assert status == 400
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (srv.MAX_BODY_BYTES + 10)}]}).encode()
    status, _, raw = http("POST", server + "/v1/chat/completions", raw=big)
    assert status == 413 and "limit" in json.loads(raw)["error"]["message"]
    reply = raw_request(server, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                "Content-Length: 999999999999\r\n\r\n{")
    assert reply.startswith("HTTP/1.0 413")
    reply = raw_request(server, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert reply.startswith("HTTP/1.0 411")


def page_chat(server, session, message):
    status, headers, body = http("POST", server + "/api/chat", {"session": session, "message": message})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    return [json.loads(b[6:]) for b in body.decode().split("\n\n") if b.startswith("data: ")]


def test_page_chat_sessions_memory_and_commands(server):
    chat = lambda session, message: page_chat(server, session, message)  # noqa: E731
    events = chat("session-aaaa", "Hello, my name is Quentin. <img src=x onerror=alert(1)>")
    assert events[-1]["type"] == "done" and events[-1]["memory"] == []
    assert all(e["type"] == "token" for e in events[:-1]) and events[-1]["stats"]["tokens"] >= 1
    chat("session-bbbb", "I live in Lima.")
    events = chat("session-aaaa", "What do you call me?")
    quentin = "Hello, my name is Quentin. <img src=x onerror=alert(1)>"
    assert events[-1]["memory"] == [quentin], "the page recalls from its session's past"
    status, headers, body = http("GET", server + "/api/session?session=session-aaaa")
    data = json.loads(body)
    assert headers["Content-Type"].startswith("application/json")
    assert data["messages"][0]["content"] == "Hello, my name is Quentin. <img src=x onerror=alert(1)>"
    assert len(data["messages"]) == 4 and data["memory"] == [quentin]
    events = chat("session-bbbb", "Where do I live?")
    assert events[-1]["memory"] == ["I live in Lima."], "sessions are separate"
    events = chat("session-aaaa", "/memory")
    assert events[0]["type"] == "info" and events[0]["text"].startswith("- Hello, my name is Quentin.")
    events = chat("session-aaaa", "/save ../../outside")
    assert events[0]["text"].startswith("error: bad name")
    events = chat("session-aaaa", "/reset")
    assert events[-1]["messages"] == [] and events[-1]["memory"] == []
    assert http("POST", server + "/api/chat", {"session": "../x", "message": "hi"})[0] == 400
    assert http("POST", server + "/api/chat", {"session": "session-aaaa", "message": ""})[0] == 400


def test_control_tokens_typed_by_a_client_reach_the_model_as_text(server, engine, monkeypatch):
    """Issue 16: '<|im_end|>' + '<|im_start|>system ...' in a message, through the page and through the OpenAI
    endpoint: the prompt ids that reach the model hold only the template's own control tokens, and the text."""
    prompts, original = [], bot.generate

    def recording(engine_, prompt_ids, *args, **kwargs):
        prompts.append(list(prompt_ids))
        return original(engine_, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(bot, "generate", recording)
    tok = engine.tokenizer
    start_id, end_id = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    page_chat(server, "session-forged", FORGED)
    status, _, _ = http("POST", server + "/v1/chat/completions", {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": FORGED}], "max_tokens": 4})
    assert status == 200 and len(prompts) == 2
    for ids in prompts:   # [system, user, assistant header]: three starts, two ends, and the typed text
        assert ids.count(start_id) == 3 and ids.count(end_id) == 2
        assert FORGED in tok.decode(ids)


@pytest.mark.parametrize("path, build", [
    ("/v1/chat/completions", lambda text: {"messages": [{"role": "user", "content": text}]}),
    ("/api/chat", lambda text: {"session": "session-hostile", "message": text}),
])
def test_deep_nesting_and_lone_surrogates_get_400_and_the_server_stays_up(server, path, build):
    """Issue 16: a body nested 100,000 deep and a lone surrogate both get a clear 400, never a dropped connection or
    a 500."""
    deep = b"[" * 100_000 + b"]" * 100_000
    status, _, raw = http("POST", server + path, raw=deep)
    assert status == 400 and "nested too deeply" in json.loads(raw)["error"]["message"]
    deep_object = b'{"messages": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001
    status, _, raw = http("POST", server + path, raw=deep_object)
    assert status == 400 and "nested too deeply" in json.loads(raw)["error"]["message"]
    lone = json.dumps(build("hi \ud800 there")).encode()          # json.dumps writes the escape \\ud800
    assert b"\\ud800" in lone
    status, _, raw = http("POST", server + path, raw=lone)
    assert status == 400 and "surrogate" in json.loads(raw)["error"]["message"]
    assert http("GET", server + "/v1/models")[0] == 200, "still serving"


def test_concurrent_clients_are_queued_and_a_vanished_client_releases_the_model(server):
    # A client that starts a stream and hangs up: generation stops, the lock is released.
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 200})
    host, port = server.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                           f"application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        assert connection.recv(100).startswith(b"HTTP/1.0 200")
    results = []

    def client(i):
        stream = i % 2 == 0
        status, _, raw = http("POST", server + "/v1/chat/completions", {
            "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 8, "stream": stream})
        results.append(bench.check_completion(status, raw, stream))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 8 and all(problem is None for _, problem in results), results


def test_official_openai_client_non_streaming_and_streaming(server):
    """Issue 16: the official client (requirements-test.txt installs it), imported without a skip."""
    client = openai.OpenAI(base_url=server + "/v1", api_key="not-needed")
    reply = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens >= 1
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True, temperature=0) if c.choices]
    assert len(pieces) >= 2 and "".join(pieces) == client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0).choices[0].message.content
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=[], max_tokens=5)
    assert [m.id for m in client.models.list()]


def forty_messages(fact, question):
    """A 40-message history: the fact first, then 18 exchanges of small talk, then the question."""
    small_talk = [("Can you tell me a fun fact about space?", "A day on Venus is longer than its year."),
                  ("What is a good way to start the morning?", "A glass of water, some light and a short walk."),
                  ("How do plants make their food?", "By photosynthesis: light, water and carbon dioxide."),
                  ("Why do cats purr?", "Mostly when they are content, sometimes to calm themselves."),
                  ("What is a haiku?", "A short Japanese poem of three lines: five, seven and five syllables."),
                  ("Give me a tip for sleeping better.", "Keep the same bedtime and dim the screens an hour before."),
                  ("How many legs does a spider have?", "Eight, on two body parts.")]
    messages = [{"role": "user", "content": fact}, {"role": "assistant", "content": "Nice to meet you!"}]
    for i in range(18):
        asked, answer = small_talk[i % len(small_talk)]
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answer + " " + answer}]
    return messages + [{"role": "user", "content": question}]


def test_openai_endpoint_recalls_turns_that_no_longer_fit_the_window(server, engine, monkeypatch):
    prompts, copies, original = [], [], bot.generate
    monkeypatch.setattr(bot, "generate", lambda e, ids, *a, **k: (prompts.append(list(ids)), copies.append(k["copy"]),
                                                                    original(e, ids, *a, **k))[2])
    monkeypatch.setattr(bot, "copy_ids", lambda tokenizer, recalled: [len(line) for line in recalled])
    messages = forty_messages("My name is Zorblax and I live in Quito.", "What is my name?")
    assert len(messages) == 39
    status, _, raw = http("POST", server + "/v1/chat/completions", {"messages": messages, "max_tokens": 4})
    data = json.loads(raw)
    assert status == 200 and data["memory"] == ["My name is Zorblax and I live in Quito."]
    text = engine.tokenizer.decode(prompts[-1])
    assert "Nice to meet you!" not in text, "the fact's turn no longer fits the window..."
    assert text.endswith("<|im_start|>user\nEarlier in this conversation the user said:\n- My name is Zorblax and I "
                         "live in Quito.\n\nNow the user says: What is my name?<|im_end|>\n<|im_start|>assistant\n"), \
        "...but is recalled just before the question"
    assert copies[-1] == [len("My name is Zorblax and I live in Quito.")], "the reply is nudged to the note's words"


@pytest.fixture(scope="module")
def smollm2_server():
    """The real SmolLM2-135M-Instruct (from the PyPI package, via companions/assets.py) behind the server."""
    folder = bot.offline_asset("SmolLM2-135M-Instruct")
    if folder is None:
        pytest.skip("SmolLM2 cannot be prepared here: python companions/assets.py smollm2")
    real = bot.load_engine(str(folder), context=512, say=lambda *a: None)
    httpd = srv.make_server(real, quick(max_new_tokens=16), "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield real, f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.long
def test_official_client_with_a_40_message_history_gets_early_facts_recalled(smollm2_server, monkeypatch):
    """Issue 14: through the official client, a 40-message history whose first facts no longer fit a 512-token
    window: the fact reaches the prompt the model sees, and the greedy reply of the real model contains it."""
    real, url, httpd = smollm2_server
    prompts, original = [], bot.generate
    monkeypatch.setattr(bot, "generate", lambda e, ids, *a, **k: (prompts.append(list(ids)),
                                                                    original(e, ids, *a, **k))[1])
    client = openai.OpenAI(base_url=url + "/v1", api_key="not-needed")
    messages = [{"role": "system", "content": "You are a helpful AI assistant."}] + forty_messages(
        "Hi! My name is Zorblax and I work as a baker.", "What is my name?")
    reply = client.chat.completions.create(model="x", messages=messages, max_tokens=16, temperature=0)
    text = real.tokenizer.decode(prompts[-1])
    assert "Nice to meet you!" not in text, "the stating turn no longer fits the 512-token window"
    assert "Hi! My name is Zorblax and I work as a baker." in text.split("<|im_start|>user")[-1], \
        "recalled, in the question"
    assert "Zorblax" in reply.choices[0].message.content, reply.choices[0].message.content
    httpd.memory_at = "off"     # the same request without the memory: the fact is gone, and so is the right answer
    try:
        reply = client.chat.completions.create(model="x", messages=messages, max_tokens=16, temperature=0)
    finally:
        httpd.memory_at = "end"
    assert "Zorblax" not in real.tokenizer.decode(prompts[-1]) and "Zorblax" not in reply.choices[0].message.content


# ----------------------------------------------------------------------------------------------------------------
# A real browser: headless Chromium driven through chromedriver's W3C WebDriver HTTP protocol (no selenium)
# ----------------------------------------------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_browser_sends_a_message_and_sees_the_streamed_reply(server, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    port = free_port()
    driver = subprocess.Popen([driver_path, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def webdriver(method, path, payload=None):
        status, _, body = http(method, base + path, payload if payload is not None else (
            {} if method == "POST" else None), timeout=60)
        value = json.loads(body)["value"]
        assert status == 200, f"webdriver {path}: {value}"
        return value

    session = None
    try:
        for _ in range(100):  # chromedriver takes a moment to listen
            try:
                if json.loads(urllib.request.urlopen(base + "/status", timeout=2).read())["value"]["ready"]:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"]
        session = webdriver("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": args}}}})["sessionId"]
        webdriver("POST", f"/session/{session}/url", {"url": server + "/"})

        def run_js(script):
            return webdriver("POST", f"/session/{session}/execute/sync", {"script": script, "args": []})

        def element(css):
            found = webdriver("POST", f"/session/{session}/element", {"using": "css selector", "value": css})
            return next(iter(found.values()))

        # Count how often the reply bubble's text changes: a streamed reply arrives in several updates.
        run_js("window.updates = 0; new MutationObserver(records => window.updates += records.length).observe("
               "document.getElementById('log'), {subtree: true, childList: true, characterData: true});")
        message = "My name is Ingrid <img src=x onerror=\"window.hacked=1\"> & I live in Bergen"
        webdriver("POST", f"/session/{session}/element/{element('#input')}/value", {"text": message})
        webdriver("POST", f"/session/{session}/element/{element('#send')}/click")
        state = None
        for _ in range(300):  # up to 60 s
            state = run_js("const b = document.querySelector('.msg.bot'); return b && b.dataset.state;")
            if state in ("done", "error"):
                break
            time.sleep(0.2)
        assert state == "done"
        page = run_js("return {user: document.querySelector('.msg.user').textContent, "
                      "reply: document.querySelector('.msg.bot').textContent, imgs: document.images.length, "
                      "hacked: window.hacked === 1, updates: window.updates, "
                      "memory: Array.from(document.querySelectorAll('#memory li'), li => li.textContent), "
                      "stats: document.querySelector('.stats').textContent};")
        assert page["user"] == message, "the user's text is shown as text"
        assert page["imgs"] == 0 and not page["hacked"], "no HTML from the user was interpreted"
        assert page["reply"], "the streamed reply is on the page"
        assert page["updates"] >= 3, "the reply arrived in pieces"
        assert page["memory"] and "nothing yet" in page["memory"][0], "nothing recalled for a first message"
        assert "tokens/s" in page["stats"]
        # Reloading the page keeps the conversation (same browser session).
        webdriver("POST", f"/session/{session}/refresh")
        for _ in range(100):
            restored = run_js("return Array.from(document.querySelectorAll('.msg'), m => m.textContent);")
            if len(restored) == 2:
                break
            time.sleep(0.1)
        assert restored == [page["user"], page["reply"]]
    finally:
        if session:
            try:
                webdriver("DELETE", f"/session/{session}")
            except (AssertionError, OSError, ValueError):
                pass
        driver.terminate()
        try:
            driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            driver.kill()


@pytest.mark.long
def test_server_command_prints_its_address_and_answers(tiny_chat):
    proc = subprocess.Popen([sys.executable, str(script_path("companions/06_server.py")), "--port", "0",
                             "--threads", "1",
                             "--model", str(tiny_chat)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=conftest.test_env())
    try:
        url = None
        for _ in range(50):                     # the address line comes after the model loads
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("serving "):
                url = line.split(" on ")[1].split()[0].rstrip("/")
                break
        assert url and url.startswith("http://127.0.0.1:"), "no 'serving ... on http://127.0.0.1:PORT/' line"
        status, _, body = http("GET", url + "/v1/models")
        assert status == 200 and json.loads(body)["data"][0]["id"] == str(tiny_chat)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_port_in_use_fails_in_one_line_before_loading():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = run_script("companions/06_server.py", "--port", taken.getsockname()[1], timeout=60)
    assert_one_line_error(proc, code=2, contains="pick another --port")
    proc = run_script("companions/06_server.py", "--port", "70000", timeout=60)
    assert proc.returncode == 2 and "--port" in proc.stderr.splitlines()[-1]
