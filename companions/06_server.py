"""
companions/06_server.py: the chatbot of 06_chatbot.py as a web page and an OpenAI-compatible HTTP API.

    python companions/06_server.py                    # http://127.0.0.1:8000 : chat page + /v1/chat/completions
    python companions/06_server.py --port 8080 --model out/05_finetune/chat
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "any", "messages": [{"role": "user", "content": "Hi!"}], "stream": true}'

It takes the lesson's flags (--model, --temperature, --context, --memory-at, ...) plus --host and --port. What it
adds to the lesson: a standard-library HTTP server (one thread per connection), a self-contained chat page with
browser sessions, the OpenAI chat-completions protocol with server-sent events, request limits and validation, and
one model shared by many clients through a first-come-first-served queue. The memory is the lesson's: the page's
sessions keep their whole conversation, and an API client's history is searched the same way, so turns that no
longer fit the window are still recalled.
"""
import importlib.util
import json
import re
import secrets
import sys
import threading
import time
from collections import OrderedDict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import torch


def load_lesson():
    """06_chatbot.py as a module (its name starts with a digit, so a plain import cannot load it)."""
    path = Path(__file__).resolve().parent.parent / "06_chatbot.py"
    spec = importlib.util.spec_from_file_location("stage_06_chatbot", path)
    if "stage_06_chatbot" not in sys.modules:    # one copy shared with the other companions and the tests
        module = importlib.util.module_from_spec(spec)
        sys.modules["stage_06_chatbot"] = module
        spec.loader.exec_module(module)
    return sys.modules["stage_06_chatbot"]


chat = load_lesson()
UsageError, Conversation, Sampling = chat.UsageError, chat.Conversation, chat.Sampling
PORT = 8000
MAX_BODY_BYTES = 1_000_000   # larger request bodies get 413 before a byte of them is read
MAX_MESSAGE_CHARS = 20_000   # one chat message from the web page
MAX_SESSIONS = 500           # browser sessions kept in memory (least recently used dropped first)
MAX_WAITING = 64             # requests waiting for the model; more get 503 "busy" instead of piling up


class FifoLock:
    """One model, many clients: a lock that hands itself to waiters in ARRIVAL order (a queue).

    threading.Lock promises no order, so under load an unlucky client could wait for ever. Here each waiter parks on
    its own Event in a deque; the holder, on release, wakes exactly the oldest waiter and hands the lock over.
    `waiting` = holder + queue, so a server can refuse new work (503) instead of queueing without bound."""

    # Why a hand-over and not "release, then let the waiters race for it": a newcomer arriving at the moment of a
    # release could grab the lock before the woken waiter runs (barging), again and again. Because `busy` stays
    # True during the hand-over, a newcomer always sees a busy lock and joins the END of the queue.
    # `mutex` guards only the three fields below for a few instructions; nobody holds it while the model runs.
    def __init__(self):
        self.mutex, self.queue, self.busy = threading.Lock(), deque(), False

    @property
    def waiting(self):
        # read without the mutex: a snapshot that may be off by one a moment later, fine for "how busy are we"
        return len(self.queue) + self.busy

    def __enter__(self):
        with self.mutex:
            if not self.busy:            # fast path: free, take it (no Event, no queue)
                self.busy = True
                return
            turn = threading.Event()
            self.queue.append(turn)
        try:
            turn.wait()                      # __exit__ of the holder sets it: the lock is now ours
        except BaseException:                # Ctrl-C while waiting: leave the queue, or pass on a lock just handed over
            # Two cases, told apart under the mutex: still in the queue = the lock was never ours, just leave;
            # no longer in the queue = the holder popped our Event and handed us the lock in the same instant, so
            # we own it and must pass it on (__exit__), or every later waiter would wait for ever.
            with self.mutex:
                if turn in self.queue:
                    self.queue.remove(turn)
                    raise
            self.__exit__()
            raise

    def __exit__(self, *exc):
        # (returns None, so an exception raised inside the `with` block is never swallowed)
        with self.mutex:
            if self.queue:
                self.queue.popleft().set()   # hand over directly: `busy` stays True
            else:
                self.busy = False



# Every piece of text from the user or the model is put on the page with textContent, never innerHTML, so
# "<img src=x onerror=...>" shows up as those characters and never runs. The Content-Security-Policy header (sent
# with the page) adds a second fence: only the page's own script (it carries a per-response nonce) may run.
# How the page works, in four steps (the JavaScript below):
#   1. A random session id is made once per tab and kept in sessionStorage; the server keys the conversation by it,
#      so a reload redraws the chat (GET /api/session) and two tabs are two separate conversations.
#   2. Sending = POST /api/chat {"session", "message"}. The answer is an SSE stream read with fetch() and a stream
#      reader (EventSource, the browser's built-in SSE client, can only make GET requests, and we must POST).
#   3. Bytes arrive in arbitrary pieces: a piece may hold half an event, or half of a multi-byte character
#      (TextDecoder with stream: true keeps that half for the next piece). Complete events end with a blank line.
#   4. Each event updates the page: queued -> "waiting for N", token -> append text, info -> a command's output,
#      error, done -> the stats line and the memory panel (and the whole conversation after /reset or /load).
# "\\n" inside this Python string becomes "\n" in the JavaScript; "__NONCE__" is replaced per response (do_GET).
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>llm-from-scratch chatbot</title>
<style nonce="__NONCE__">
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; height: 100vh; display: grid;
         grid-template-columns: 1fr 280px; color: #1e293b; }
  main { display: flex; flex-direction: column; min-height: 0; }
  #log { flex: 1; overflow-y: auto; padding: 16px; }
  .msg { max-width: 75%; margin: 8px 0; padding: 8px 12px; border-radius: 12px; white-space: pre-wrap;
         overflow-wrap: anywhere; }
  .user { background: #dbeafe; margin-left: auto; }
  .bot { background: #f1f5f9; }
  .info { background: #fef9c3; font-family: ui-monospace, monospace; font-size: 13px; }
  .stats { font-size: 12px; color: #64748b; margin: -4px 0 8px 4px; }
  form { display: flex; gap: 8px; padding: 12px; border-top: 1px solid #e2e8f0; }
  textarea { flex: 1; resize: none; font: inherit; padding: 8px; }
  aside { border-left: 1px solid #e2e8f0; padding: 0 16px; background: #f8fafc; overflow-y: auto; }
  aside li { margin: 4px 0; }
  .muted { color: #64748b; font-size: 13px; }
  @media (max-width: 720px) { body { grid-template-columns: 1fr; } aside { display: none; } }
</style></head>
<body>
<main>
  <div id="log" aria-live="polite"></div>
  <form id="form">
    <textarea id="input" rows="2" autofocus
      placeholder="Say something. Enter sends, Shift+Enter starts a new line, /help lists the commands."></textarea>
    <button id="send" type="submit">Send</button>
  </form>
</main>
<aside>
  <h3>What I recalled for the last reply</h3>
  <ul id="memory"></ul>
  <p class="muted" id="model"></p>
  <button id="reset" type="button">Start over</button>
</aside>
<script nonce="__NONCE__">
"use strict";
const log = document.getElementById("log"), input = document.getElementById("input");
const sendButton = document.getElementById("send"), memoryList = document.getElementById("memory");

// One conversation per browser session (per tab): a random id kept in sessionStorage, sent with every message.
function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, b => b.toString(16).padStart(2, "0")).join("");
}
let session = sessionStorage.getItem("chat-session");
if (!session) { session = randomId(); sessionStorage.setItem("chat-session", session); }

function bubble(kind, text) {          // textContent: user and model text are shown as text, never parsed as HTML
  const div = document.createElement("div");
  div.className = "msg " + kind;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}
function showMessages(messages) {
  log.replaceChildren();
  for (const m of messages) bubble(m.role === "user" ? "user" : "bot", m.content);
}
function showMemory(recalled) {      // what the memory recalled for the last reply
  memoryList.replaceChildren(...recalled.map(fact => {
    const li = document.createElement("li"); li.textContent = fact; return li; }));
  if (!recalled.length) { const li = document.createElement("li"); li.className = "muted";
    li.textContent = "nothing yet: everything you say is kept, and the relevant parts are recalled";
    memoryList.appendChild(li); }
}
async function restore() {             // after a reload: the server still has this session's conversation
  const response = await fetch("/api/session?session=" + encodeURIComponent(session));
  if (!response.ok) return;
  const data = await response.json();
  showMessages(data.messages);
  showMemory(data.memory);
  document.getElementById("model").textContent = "model: " + data.model;
}

function handle(event, reply) {
  if (event.type === "queued") {
    reply.textContent = "(waiting for " + event.ahead + " other request(s)...)"; reply.dataset.waiting = "1";
  } else if (event.type === "token") {
    if (reply.dataset.waiting) { reply.textContent = ""; delete reply.dataset.waiting; }
    reply.textContent += event.text;
    log.scrollTop = log.scrollHeight;
  } else if (event.type === "info") {
    reply.textContent = event.text;
  } else if (event.type === "error") {
    reply.textContent += (reply.textContent ? "\\n" : "") + "error: " + event.message; reply.dataset.state = "error";
  } else if (event.type === "done") {
    if (event.messages) {             // /reset or /load replaced the conversation: redraw it, then the note
      const note = reply.textContent; showMessages(event.messages); reply = bubble("info", note);
    }
    if (event.stats) {
      const line = document.createElement("div"); line.className = "stats";
      line.textContent = event.stats.tokens + " tokens, first token " + event.stats.ttft.toFixed(2) + " s, " +
        event.stats.tokens_per_s.toFixed(1) + " tokens/s";
      reply.after(line);
    }
    showMemory(event.memory || []);
    if (reply.dataset.state !== "error") reply.dataset.state = "done";
  }
  return reply;
}

async function send(text) {
  sendButton.disabled = true;
  bubble("user", text);
  let reply = bubble(text.startsWith("/") ? "info" : "bot", "");
  reply.dataset.state = "streaming";
  try {
    const response = await fetch("/api/chat", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify({session: session, message: text})});
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      reply.textContent = "error: " + (body && body.error ? body.error.message : "HTTP " + response.status);
      reply.dataset.state = "error";
      return;
    }
    // Server-sent events over fetch: "data: {json}\\n\\n" blocks; a block may arrive in pieces, so buffer.
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (block.startsWith("data: ")) reply = handle(JSON.parse(block.slice(6)), reply);
      }
    }
    if (reply.dataset.state === "streaming") reply.dataset.state = "done";
  } catch (error) {
    reply.textContent += " [connection lost]"; reply.dataset.state = "error";
  } finally {
    sendButton.disabled = false; input.focus();
  }
}

document.getElementById("form").addEventListener("submit", event => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || sendButton.disabled) return;
  input.value = "";
  send(text);
});
input.addEventListener("keydown", event => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault(); document.getElementById("form").requestSubmit(); }
});
document.getElementById("reset").addEventListener("click", () => send("/reset"));
restore();
</script>
</body></html>
"""


# ----------------------------------------------------------------------------------------------------------------
# Interface 3: the HTTP server (the page, its streaming chat endpoint, and the OpenAI chat-completions protocol)
# ----------------------------------------------------------------------------------------------------------------
# Endpoints:
#   GET  /                      the chat page
#   GET  /api/session?session=  the page's conversation and memory (to redraw it after a reload)
#   POST /api/chat              {"session", "message"} -> a stream of events: token ..., done (with stats, memory)
#   GET  /v1/models             OpenAI: the one model served
#   POST /v1/chat/completions   OpenAI: {"messages": [...], "stream": bool, "max_tokens", "temperature", "top_p", ...}
# Streams use server-sent events (SSE): the response is text/event-stream and every event is one line
# "data: <json>" followed by an empty line; OpenAI's stream ends with "data: [DONE]". A browser reads them with
# fetch() + a stream reader, the openai client with its SSE parser, curl just prints them.
# Threads: ThreadingHTTPServer answers each connection in its own thread, so a client waiting for the model never
# blocks the page or /v1/models; the model itself is used by one request at a time (engine.lock, a FIFO queue).
#
# The OpenAI shapes, abbreviated. Request:
#   {"model": "any", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
#    "max_tokens": 50, "temperature": 0.2, "stream": false}
# Response (stream false), one JSON object:
#   {"id": "chatcmpl-...", "object": "chat.completion", "created": 1700000000, "model": "...",
#    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
#    "usage": {"prompt_tokens": 25, "completion_tokens": 3, "total_tokens": 28}}
# Response (stream true), text/event-stream, one "data:" line per event, each followed by an empty line:
#   data: {"object": "chat.completion.chunk", "choices": [{"delta": {"role": "assistant", "content": ""}, ...}]}
#   data: {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "Hel"}, ...}]}
#   data: {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "lo!"}, ...}]}
#   data: {"object": "chat.completion.chunk", "choices": [{"delta": {}, "finish_reason": "stop"}]}
#   data: [DONE]
# The client concatenates the "content" deltas. Why SSE and not WebSockets: it is plain HTTP, one response that
# keeps coming, so curl, proxies and the standard library handle it with no extra protocol. Errors are JSON too:
#   {"error": {"message": "'temperature' must be ...", "type": "invalid_request_error", "param": "temperature"}}
class BadRequest(Exception):
    """A client error: answered with `status` and an OpenAI-shaped JSON error naming the field (`param`)."""

    def __init__(self, message, param=None, status=400):
        super().__init__(message)
        self.param, self.status = param, status


def number(body, name, low, high, default, integer=False):
    """A numeric request field, checked: bool is refused although Python counts it as an int."""
    # (isinstance(True, int) is True in Python, so {"max_tokens": true} would otherwise pass as 1)
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"'{name}' must be {kind} between {low} and {high}, got {json.dumps(value)[:40]}", name)
    return value


# OpenAI's chat-completions request, validated field by field: a bad value gets 400 with a message naming the field
# (and the openai client raises BadRequestError with that message), never a 500 or a crash deep in the model.
def parse_chat_request(body, engine, defaults):
    """An OpenAI chat-completions request body -> (system text, history messages, Sampling, stream?, include usage?,
    stop strings). Raises BadRequest naming the bad field. Unknown fields are ignored, like OpenAI's server does for
    many optional ones (presence_penalty, user, ...)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects", "messages")
    # The API is stateless: every request carries the whole conversation, and the server keeps nothing between
    # requests. Each message is checked here because it goes straight into the chat template (whose render_ids
    # keeps every content ordinary text: "<|im_end|>" typed by a client never becomes the control token).
    system_parts, history = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object", f"messages[{i}]")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "developer", "user", "assistant"):
            raise BadRequest(f"messages[{i}].role must be system, developer, user or assistant, got "
                             f"{json.dumps(role)[:40]}", f"messages[{i}].role")
        if isinstance(content, list):   # the newer "content parts" form: [{"type": "text", "text": "..."}]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise BadRequest(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string", f"messages[{i}].content")
        if role in ("system", "developer"):               # "developer" is OpenAI's newer name for system
            system_parts.append(content)  # all system messages join into one, placed first
        else:
            history.append({"role": role, "content": content})
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("'stop' must be a string or a list of up to 4 non-empty strings", "stop")
    # max_completion_tokens is the newer name of max_tokens; when both are given the newer one wins (the older
    # one only provides the default). The reply's room comes out of the prompt budget, as in budget_of.
    longest = engine.context - 32  # leave the prompt at least a little room
    max_tokens = number(body, "max_completion_tokens", 1, longest,
                        number(body, "max_tokens", 1, longest, defaults.max_new_tokens, integer=True), integer=True)
    sampling = Sampling(
        temperature=number(body, "temperature", 0, 2, defaults.temperature),
        top_p=number(body, "top_p", 0.0, 1.0, defaults.top_p) or 1e-6,  # top_p 0 means "only the top token"
        top_k=number(body, "top_k", 0, 100_000, defaults.top_k, integer=True),
        repetition_penalty=number(body, "repetition_penalty", 0.5, 2.0, defaults.repetition_penalty),
        max_new_tokens=max_tokens,
        seed=number(body, "seed", -2**63, 2**63 - 1, None, integer=True))
    system = "\n\n".join(system_parts) if system_parts else None  # None: the template's own default, if any
    return system, history, sampling, stream, bool(options.get("include_usage")), stop


def make_server(engine, sampling, host="127.0.0.1", port=PORT, folder="out/06_chatbot",
                system_prompt=chat.SYSTEM, memory_at="end", verbose=False):
    """A ThreadingHTTPServer (one thread per connection) sharing one engine. port=0 picks a free port."""
    # The handler class is instantiated once per request and reaches shared state through self.server, so
    # everything the requests share hangs off the server object: the engine (model, lock, KV cache), the default
    # sampling, and the page's sessions {session id: Conversation} in an OrderedDict used as an LRU list.
    if engine is not None and not isinstance(engine.lock, FifoLock):
        engine.lock = FifoLock()          # many clients: a queue served in arrival order
    server = ThreadingHTTPServer((host, port), ChatHandler)
    server.daemon_threads = True          # Ctrl-C does not wait for open connections
    server.engine, server.sampling, server.folder = engine, sampling, folder
    server.system_prompt, server.memory_at, server.verbose = system_prompt, memory_at, verbose
    # Two locks, two jobs: sessions_lock guards the dict for microseconds; engine.lock guards the model for whole
    # replies. A request never holds sessions_lock while it waits for the model, so a page reload (GET
    # /api/session) is answered at once even while the model is busy.
    server.sessions, server.sessions_lock = OrderedDict(), threading.Lock()
    server.loopback = host in ("127.0.0.1", "localhost", "::1")
    return server


class ChatHandler(BaseHTTPRequestHandler):
    """One HTTP request. HTTP/1.0: one request per connection; a streamed reply simply ends when the socket closes."""
    # HTTP/1.0 (the class default) keeps the framing trivial: no keep-alive and no chunked encoding to get right;
    # the price, a new TCP connection per request, is nothing next to the model's seconds per reply.
    server_version = "llm-from-scratch-06"
    timeout = 60      # seconds a silent client may hold its connection (a slow-loris client cannot hold it forever)

    # --- small helpers --------------------------------------------------------------------------------------
    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    def send_json(self, status, payload, extra_headers=()):
        # Content-Length lets the client know where the body ends without waiting for the connection to close.
        # nosniff: the browser must treat the body as JSON, never guess it is HTML and render (and run) it.
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_failure(self, status, message, param=None, kind="invalid_request_error"):
        """Errors in OpenAI's shape, so API clients raise their usual exceptions with our message."""
        self.send_json(status, {"error": {"message": message, "type": kind, "param": param, "code": None}},
                       [("Retry-After", "5")] if status == 503 else ())

    events_started = False   # once the 200 header of a stream is out, an error can only be sent as an event

    def start_events(self):
        """Begin a server-sent-events reply: each event is one 'data: ...' line followed by a blank line."""
        self.events_started = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")          # no proxy may hold the stream back to cache it
        self.send_header("X-Content-Type-Options", "nosniff")
        # No Content-Length: the length is unknown until the reply is done; the body ends when we close the socket.
        self.send_header("Connection", "close")
        self.end_headers()

    def send_event(self, payload):
        # json.dumps escapes newlines inside strings, so an event is always ONE line: the blank line after it is
        # unambiguous as the end of the event. flush() pushes it to the socket now, not when a buffer fills up.
        # A client that has gone away makes this write raise BrokenPipeError/ConnectionResetError, which ends
        # the loop over the generator; do_POST catches it.
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        self.wfile.write(f"data: {data}\n\n".encode("utf-8"))
        self.wfile.flush()

    # Why a local server needs this: any web page you visit can make your browser send requests to
    # http://127.0.0.1:8000, and the same-origin policy only stops it READING the answers from a different host
    # name. DNS rebinding defeats that: evil.example first resolves to the attacker's server, then to 127.0.0.1,
    # so the page is "same-origin" with our API. The Host header still says evil.example, and that we can check.
    def host_allowed(self):
        """DNS-rebinding guard: a server on 127.0.0.1 answers only requests addressed to a local host name, so a web
        page on evil.example whose DNS now points at 127.0.0.1 cannot talk to it."""
        if not self.server.loopback:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        if name in ("127.0.0.1", "localhost", "::1"):
            return True
        self.send_failure(403, f"host {host!r} not allowed: this server only answers requests to localhost")
        return False

    def read_json(self):
        """The request body as JSON, or None after answering 411/413/400 itself."""
        # Limits BEFORE reading: trusting a client to send a sane amount would let one request fill our memory.
        # Requiring Content-Length (no chunked uploads) makes the size known up front.
        length = self.headers.get("Content-Length")
        if length is None:
            self.send_failure(411, "a Content-Length header is required")
            return None
        if not length.isdigit():
            self.send_failure(400, "bad Content-Length header")
            return None
        if int(length) > MAX_BODY_BYTES:
            self.send_failure(413, f"request body of {int(length)} bytes is over the limit of {MAX_BODY_BYTES}")
            self.close_connection = True
            self.discard_body(int(length))
            return None
        try:
            body = json.loads(self.rfile.read(int(length)).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            self.send_failure(400, f"malformed JSON body: {error}")
            return None
        except RecursionError:   # '[[[[...' 100,000 deep: the parser recurses once per level and hits Python's limit
            self.send_failure(400, "malformed JSON body: nested too deeply")
            return None
        try:
            # JSON may spell half of a UTF-16 pair ("\ud800"): json.loads makes it a lone surrogate, a str that no
            # encoder (the tokenizer's included) accepts. Encoding the whole body once finds any such string.
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            self.send_failure(400, "the JSON body holds a lone surrogate (e.g. \\ud800): text must be valid Unicode")
            return None
        except RecursionError:   # (nested just below the parser's limit, but too deep to encode back)
            self.send_failure(400, "malformed JSON body: nested too deeply")
            return None
        return body

    # (Why answer then read: TCP resets a connection whose receive buffer still holds unread data when we close
    # it, and the reset can destroy our 413 before the client reads it.)
    def discard_body(self, length):
        """After a 413, read (a bounded amount of) the unwanted body, so a client still sending it sees our answer
        instead of a connection reset."""
        self.connection.settimeout(2)
        try:
            left = min(length, 8 * MAX_BODY_BYTES)
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    # --- routes ---------------------------------------------------------------------------------------------
    def do_GET(self):
        # BaseHTTPRequestHandler calls do_<METHOD>; the routes are a plain if/elif on the path, small enough to
        # read at a glance (a web framework would add a router and a dependency for five URLs).
        if not self.host_allowed():
            return
        url = urlparse(self.path)      # self.path is "/api/session?session=..."; urlparse splits path and query
        if url.path in ("/", "/index.html"):
            # A fresh random nonce per response: the CSP lets only <script>/<style> elements carrying it run, so
            # even if some text slipped into the page as HTML, an injected <script> or onerror= would not execute.
            nonce = secrets.token_urlsafe(16)
            data = PAGE.replace("__NONCE__", nonce).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Security-Policy", f"default-src 'none'; script-src 'nonce-{nonce}'; "
                             f"style-src 'nonce-{nonce}'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                             "frame-ancestors 'none'")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            self.wfile.write(data)
        elif url.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": self.server.engine.model_id, "object": "model",
                                                             "created": 0, "owned_by": "llm-from-scratch"}]})
        elif url.path == "/api/session":
            # An unknown session gets an empty conversation but is NOT stored: only POST /api/chat creates one, so
            # a client cannot fill the session table by merely asking for random ids.
            session_id = (parse_qs(url.query).get("session") or [""])[0]
            with self.server.sessions_lock:
                conversation = self.server.sessions.get(session_id) or Conversation()
                payload = {"messages": list(conversation.messages), "memory": list(conversation.recalled),
                           "model": self.server.engine.model_id}
            self.send_json(200, payload)
        elif url.path in ("/api/chat", "/v1/chat/completions"):
            # 405 "method not allowed" rather than 404: the URL exists, only the method is wrong (a common slip)
            self.send_failure(405, f"use POST for {url.path}")
        else:
            self.send_failure(404, f"no such page: {url.path}")

    def do_POST(self):
        # Error handling by layer: BadRequest -> a 4xx/503 JSON error; a vanished client -> nothing to answer;
        # anything else is our bug or a model failure -> 500 (or an error event inside a started stream), logged,
        # and the server keeps serving the other clients.
        if not self.host_allowed():
            return
        path = urlparse(self.path).path
        if path not in ("/api/chat", "/v1/chat/completions"):
            self.send_failure(404 if path != "/v1/models" else 405, f"no POST endpoint {path}")
            return
        body = self.read_json()
        if body is None:
            return
        try:
            if path == "/v1/chat/completions":
                self.openai_chat(body)
            else:
                self.page_chat(body)
        except BadRequest as error:
            self.send_failure(error.status, str(error), error.param)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True   # the client went away mid-reply; the generator was closed, lock released
        except Exception as error:         # a bug or a model failure: answer 500 (or an error event), keep serving
            print(f"error while answering {path}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            try:
                if self.events_started:
                    self.send_event({"type": "error", "error": {"message": f"internal error: {error}"},
                                     "message": f"internal error: {error}"})
                else:
                    self.send_failure(500, f"internal error: {type(error).__name__}: {error}", kind="server_error")
            except OSError:
                pass                       # the socket is already broken: nobody is left to tell
            self.close_connection = True

    def wait_turn_or_refuse(self):
        """Refuse with 503 when too many requests already wait for the model (the queue has a bound)."""
        # Why a bound: with one model answering in S seconds, the k-th request in the queue waits about k * S.
        # Past some length every client would time out anyway, and each waiting request holds a thread and a
        # socket; a quick 503 with Retry-After is more useful than an answer minutes late.
        if self.server.engine.lock.waiting >= MAX_WAITING:
            raise BadRequest("the server is busy: too many requests are waiting; retry in a few seconds",
                             status=503)

    def page_chat(self, body):
        """POST /api/chat {"session": id, "message": text}: the page's endpoint, with memory and commands.

        Unlike the OpenAI endpoint, the server keeps the conversation (per session id, which the page keeps in the
        browser's sessionStorage): the page sends only the new message, and trimming, memory and the KV cache work
        exactly as in the terminal chat. Events: queued (how many are ahead), token ..., info (a command's output),
        error, done (memory, stats, and the whole conversation after /reset or /load)."""
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        session_id, message = body.get("session"), body.get("message")
        # The session id is only a key into our dict, but validating it keeps junk (huge strings, odd bytes)
        # out of memory and logs. It is not a password: anyone who knows an id can read that conversation, which
        # is fine on 127.0.0.1 and one reason /save and /load are disabled on a public address.
        if not isinstance(session_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", session_id):
            raise BadRequest("'session' must be 8-64 letters, digits, '_' or '-'", "session")
        if not isinstance(message, str) or not message.strip() or len(message) > MAX_MESSAGE_CHARS:
            raise BadRequest(f"'message' must be a non-empty string of at most {MAX_MESSAGE_CHARS} characters",
                             "message")
        server, engine = self.server, self.server.engine
        # pop + re-insert moves the session to the END of the OrderedDict (most recently used), so the FRONT is
        # always the least recently used: popitem(last=False) evicts it when there are more than MAX_SESSIONS.
        with server.sessions_lock:   # find or create this browser's conversation; forget the least recently used
            conversation = server.sessions.pop(session_id, None) or Conversation(
                system_prompt=server.system_prompt, memory_at=server.memory_at)
            server.sessions[session_id] = conversation
            while len(server.sessions) > MAX_SESSIONS:
                server.sessions.popitem(last=False)
        self.wait_turn_or_refuse()
        self.start_events()
        if message.lstrip().startswith("/"):
            replaced = None
            # Commands take the model lock too: /system and /load change a conversation that a generation for the
            # same session (another tab, a double click) might be reading at that moment.
            with engine.lock:
                try:
                    if not server.loopback and message.split()[0].lower() in ("/save", "/load"):
                        raise UsageError("/save and /load are off when the server is reachable from other computers"
                                         " (the saved files would be shared by everyone)")
                    text, replaced, leave = chat.run_command(message, conversation, engine, server.sampling,
                                                             server.folder)
                    text = "(close the tab to leave)" if leave else text
                except UsageError as error:
                    text = f"error: {error}"
            if replaced is not None:
                with server.sessions_lock:
                    server.sessions[session_id] = conversation = replaced
            self.send_event({"type": "info", "text": text})
            done = {"type": "done", "memory": list(conversation.recalled)}
            if replaced is not None:
                done["messages"] = conversation.messages
            self.send_event(done)
            return
        ahead = engine.lock.waiting     # the page shows "waiting for N other request(s)" until the first token
        if ahead:
            self.send_event({"type": "queued", "ahead": ahead})
        stats = {}
        # Held for the whole reply: the lock is released only after the last token has been sent (or the client
        # has gone). Note the KV cache is per ENGINE, not per session: when two browser sessions alternate, each
        # reply finds the other's prompt in the cache, shares only a few tokens with it and pays a full prefill.
        # (A server for many users keeps one cache per conversation, memory permitting.)
        with engine.lock:
            pieces = chat.chat_turn(engine, conversation, message, server.sampling, stats)
            try:
                for piece in pieces:
                    self.send_event({"type": "token", "text": piece})
            finally:
                pieces.close()   # client gone: stop generating now, keep the partial reply, release the lock
        self.send_event({"type": "done", "memory": list(conversation.recalled),
                         "stats": {k: stats.get(k, 0) for k in ("tokens", "ttft", "tokens_per_s")}})

    def openai_chat(self, body):
        """POST /v1/chat/completions, stateless like OpenAI's: the client sends the whole conversation each time."""
        # Stateless does not mean cache-less: a client that resends the same conversation one turn longer produces
        # a prompt that starts with the previous prompt + reply, so generate() reuses the KV cache here as well,
        # provided no other request ran in between.
        engine = self.server.engine
        system, history, sampling, stream, include_usage, stop = parse_chat_request(body, engine,
                                                                                     self.server.sampling)
        self.wait_turn_or_refuse()
        # Every chunk of one streamed reply repeats the same id, created time and model: a client that merges
        # several streams tells them apart by the id.
        reply_id, created, stats = "chatcmpl-" + secrets.token_hex(12), int(time.time()), {}
        chunk = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": engine.model_id}
        with engine.lock:
            started = time.perf_counter()   # TTFT from here; the wait in the queue shows in the client's latency
            # The lesson's memory, on the client's history: the messages relevant to the newest one are
            # recalled from the WHOLE history, also from the turns that no longer fit the window.
            # trim_to=1.0, unlike the chat page: the API keeps no window between requests, so each request is
            # fitted afresh and drops just enough (clients that care about the KV cache trim their own history).
            conversation = Conversation(system_prompt=system, messages=history, memory_at=self.server.memory_at)
            try:  # fit the conversation into the budget (dropping its oldest turns) BEFORE any byte of the reply
                prompt_ids = chat.prepare_prompt(engine, conversation, sampling, trim_to=1.0)
            except UsageError as error:
                raise BadRequest(str(error), "messages") from None
            start = conversation.start
            if stream:
                self.start_events()   # from here on the status is 200, whatever happens: errors become events
            # Calling a generator function runs none of its body yet; the model starts on the first iteration below.
            pieces = chat.generate(engine, prompt_ids, sampling, stats, stop_strings=stop,
                                   said=chat.said_ids(engine.tokenizer, history[start:]), started=started,
                                   copy=chat.copy_ids(engine.tokenizer, conversation.recalled),
                                   plains=chat.twin_prompts(engine, conversation, sampling))
            try:
                if stream:
                    # The first chunk announces the role with empty content, as OpenAI's server does; clients that
                    # build the message from the deltas expect the role to arrive before the text.
                    self.send_event({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                           "logprobs": None, "finish_reason": None}]})
                    for piece in pieces:
                        self.send_event({**chunk, "choices": [{"index": 0, "delta": {"content": piece},
                                                               "logprobs": None, "finish_reason": None}]})
                else:
                    for _ in pieces:      # not streaming: run to the end; the text is collected in stats["text"]
                        pass
            finally:
                pieces.close()            # a write failed (client gone): stop the model now, before releasing the lock
        usage = {"prompt_tokens": stats["prompt_tokens"], "completion_tokens": stats["tokens"],
                 "total_tokens": stats["prompt_tokens"] + stats["tokens"]}
        # "timings" is our own extra field (not in OpenAI's schema; clients ignore unknown fields): it shows the KV
        # cache at work from outside, e.g. a repeated conversation reports most of its prompt as cached.
        timings = {"ttft_s": round(stats["ttft"], 4), "tokens_per_s": round(stats["tokens_per_s"], 2),
                   "cached_prompt_tokens": stats["reused"]}
        # OpenAI's stream: a first chunk with the role, content chunks, a last chunk with the finish reason and an
        # empty delta, optionally a usage chunk (no choices), then the literal [DONE]
        if stream:
            self.send_event({**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                                   "finish_reason": stats["finish_reason"]}]})
            if include_usage:
                self.send_event({**chunk, "choices": [], "usage": usage})
            self.send_event("[DONE]")
        else:
            self.send_json(200, {"id": reply_id, "object": "chat.completion", "created": created,
                                 "model": engine.model_id, "choices": [{
                                     "index": 0, "message": {"role": "assistant", "content": stats["text"]},
                                     "logprobs": None, "finish_reason": stats["finish_reason"]}],
                                 "usage": usage, "timings": timings, "memory": conversation.recalled})


def open_server(args):
    """Bind the port BEFORE loading the model, so a port in use fails in a second, not after the load."""
    try:
        return make_server(None, None, args.host, args.port, args.out, verbose=True)
    except OSError as error:  # port in use, no permission, an address this machine does not have (IPv4 only)
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error}): pick another "
                         "--port or --host") from None


def serve(server, engine, sampling, conversation):
    # The server was created (and its port bound) before the model loaded, with no engine; plug it in now. The
    # terminal's conversation settings become the template for every new browser session.
    server.engine, server.sampling = engine, sampling
    server.system_prompt, server.memory_at = conversation.system_prompt, conversation.memory_at
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host      # an IPv6 address goes in brackets inside a URL
    print(f"serving {engine.model_id} on http://{shown}:{port}/  (chat page; OpenAI API at /v1/chat/completions)",
          flush=True)
    if not server.loopback:
        print("warning: listening beyond this computer; anyone who can reach this port can use the model",
              flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
    finally:
        server.server_close()



def quantize_int8(engine):
    """--int8: dynamic int8 quantisation of the Linear layers (CPU kernels only)."""
    # Weights stored as int8 with one scale PER OUTPUT CHANNEL (one scale per matrix broke even "What is the
    # capital of France?"); activations are quantised on the fly. Less memory to stream per token, but the int8
    # kernels do extra work: whether it is faster depends on the machine (companions/06_bench.py --int8 measures).
    if engine.device.type != "cpu":
        raise UsageError("--int8 is for CPUs (dynamic quantisation runs on CPU kernels only)")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch suggests torchao for new code; this API still works
        engine.model = torch.ao.quantization.quantize_dynamic(
            engine.model, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)


def main():
    parser = chat.build_parser("The 06 chatbot as a web page and an OpenAI-compatible API.")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 Linear layers (CPU)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this computer only)")
    parser.add_argument("--port", type=int, default=PORT, help="port (0 = any free port)")
    args, _unknown = parser.parse_known_args()
    chat.check_args(parser, args)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    started = time.perf_counter()
    try:
        server = open_server(args)          # requests wait in the socket's backlog while the model loads
        engine, sampling, conversation = chat.setup(args)
        if args.int8:
            quantize_int8(engine)
        engine.lock = FifoLock()
        threading.Thread(target=chat.warm_up, args=(engine,), daemon=True).start()
        print(f"ready in {time.perf_counter() - started:.1f} s", flush=True)
        serve(server, engine, sampling, conversation)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
