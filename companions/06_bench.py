"""
companions/06_bench.py: how fast the 06 chatbot is, alone and under load.

    python companions/06_bench.py                 # start-up, our loop == model.generate, TTFT with a ~200-token
                                                  # history (cold and with the KV cache reused), tokens/s
    python companions/06_bench.py --loadtest      # 10 concurrent API clients x 5 requests: latency percentiles
    python companions/06_bench.py --loadtest --clients 3 --requests 2 --model out/05_finetune/chat

It takes the lesson's flags (--model, --threads, --int8, ...). A failed load test exits with code 1.
"""
import time

START_TIME = time.perf_counter()  # start-up is measured from here, before the heavy imports below

import copy
import importlib.util
import json
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import torch


def load_companion(name, module_name):
    """A file next to this one (or the lesson one folder up) as a module, loaded once and shared."""
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(__file__).resolve().parent / name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


server_companion = load_companion("06_server.py", "companion_06_server")
chat = server_companion.chat
Conversation, Sampling = chat.Conversation, chat.Sampling


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
    check_ids = chat.render_ids(tokenizer, [{"role": "system", "content": chat.SYSTEM},
                                       {"role": "user", "content": "Name three colours of the rainbow."}])
    engine.cache = None
    stats = {}
    for _ in chat.generate(engine, check_ids, greedy, stats):
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
    base = Conversation(system_prompt=chat.SYSTEM)
    for user, assistant in BENCH_HISTORY:
        base.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    history_tokens = len(chat.render_ids(tokenizer, [{"role": "system", "content": chat.SYSTEM}] + base.messages))
    reply = Sampling(temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=24)
    cold, warm = [], []
    # Three runs each, report the median: the first run of anything is slower (caches, allocator), and one slow
    # run on a shared machine should not decide the figure.
    for _ in range(3):
        conversation, stats, engine.cache, engine.twins = copy.deepcopy(base), {}, None, []   # the twins: see generate
        if engine.encoder:  # nothing cached: the memory encodes the history too (the kinds of fact: at the start)
            chat.embed.cache_clear()
            chat.warm_up(engine)
        for _ in chat.chat_turn(engine, conversation, BENCH_QUESTION, reply, stats):
            pass
        cold.append(stats["ttft"])
        prompt_tokens, next_stats = stats["prompt_tokens"], {}
        for _ in chat.chat_turn(engine, conversation, "And a quick breakfast?", reply, next_stats):
            pass
        warm.append(next_stats["ttft"])
    print(f"TTFT, history {history_tokens} tokens (+ memory note, question: prompt {prompt_tokens} tokens), nothing "
          f"cached: median {median(cold):.3f} s (runs: {', '.join(f'{t:.3f}' for t in cold)})")
    print(f"TTFT, the next turn with the KV cache reused ({next_stats['reused']} of {next_stats['prompt_tokens']} "
          f"prompt tokens cached): median {median(warm):.3f} s (runs: {', '.join(f'{t:.3f}' for t in warm)})")
    # The memory's own cost per reply: recall() searches every earlier user message, so it grows with the
    # conversation; timed on 200 turns (each user message a mix of BENCH_HISTORY's words), the median of 20 calls.
    # With the sentence encoder the earlier messages were encoded in earlier turns (done once here, untimed) and
    # each reply encodes its new message: every timed call asks a question not seen before.
    long_chat = [m for i in range(200) for m in ({"role": "user", "content": f"{BENCH_HISTORY[i % 4][0]} ({i})"},
                                                  {"role": "assistant", "content": BENCH_HISTORY[i % 4][1]})]
    chat.recall(long_chat, BENCH_QUESTION, encoder=engine.encoder)
    costs = []
    for i in range(20):
        started = time.perf_counter()
        recalled = chat.recall(long_chat, f"{BENCH_QUESTION} ({i})", encoder=engine.encoder)
        costs.append(time.perf_counter() - started)
    note_tokens = len(chat.encode_text(tokenizer, chat.memory_note(recalled) or ""))
    print(f"memory: recall over a 200-turn conversation {1000 * median(costs):.1f} ms per reply (median of 20, "
          f"{'sentence vectors' if engine.encoder else 'words'}); "
          f"the note it made: {len(recalled)} messages, {note_tokens} tokens")
    first = copy.deepcopy(base)   # the cold prompt again (history + memory note + question), for the speed runs
    first.messages.append({"role": "user", "content": BENCH_QUESTION})
    prompt_ids = chat.prepare_prompt(engine, first, reply)
    # 3. Decode speed: 128 new tokens after that prompt (min_new_tokens keeps it from stopping early).
    #    With the app's own sampling settings (top-k, top-p, penalty all cost a little per token), seeded so runs
    #    differ only in timing, and a fresh cache each run so every run pays the same prefill.
    long_run = Sampling(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                        repetition_penalty=sampling.repetition_penalty, max_new_tokens=128, seed=0)
    speeds = []
    for _ in range(3):
        engine.cache, stats = None, {}
        for _ in chat.generate(engine, prompt_ids, long_run, stats, min_new_tokens=128):
            pass
        speeds.append(stats["tokens_per_s"])
    print(f"decode: {stats['tokens']} tokens, median {median(speeds):.1f} tokens/s "
          f"(runs: {', '.join(f'{s:.1f}' for s in speeds)}; sampling T={sampling.temperature}, top-k {sampling.top_k},"
          f" top-p {sampling.top_p})")
    # The same with the memory's contrast (see generate): each twin adds a forward pass per token. The bench's note
    # may have one line, so the second twin's cost is shown with one more (made-up) line in the note.
    if len(first.recalled) == 1:
        first.recalled = first.recalled + ["I packed a rain jacket and a map."]
    noted = chat.fit_prompt(tokenizer, first.system_prompt or None, first.messages, start=first.start,
                            budget=chat.budget_of(engine, long_run), recalled=first.recalled)[0]
    plains = chat.twin_prompts(engine, first, long_run)
    for n in range(1, len(plains) + 1):
        twin_speeds = []
        for _ in range(3):
            engine.cache, engine.twins, stats = None, [], {}
            for _ in chat.generate(engine, noted, long_run, stats, min_new_tokens=128, plains=plains[:n]):
                pass
            twin_speeds.append(stats["tokens_per_s"])
        print(f"decode with the contrast, {n} twin{'s' * (n > 1)} ({len(first.recalled)}-line note): median "
              f"{median(twin_speeds):.1f} tokens/s (runs: {', '.join(f'{s:.1f}' for s in twin_speeds)})")
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
    engine.cache, engine.cached_ids, engine.twins = None, [], []   # leave no benchmark prompt in a cache


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
    server = server_companion.make_server(engine, sampling, "127.0.0.1", 0)
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


def main():
    parser = chat.build_parser("Speed of the 06 chatbot (default) or a load test of its HTTP API (--loadtest).")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 Linear layers (CPU)")
    parser.add_argument("--clients", type=int, default=10, help="--loadtest: concurrent clients")
    parser.add_argument("--requests", type=int, default=5, help="--loadtest: requests per client")
    args, _unknown = parser.parse_known_args()
    if args.loadtest:
        args.loadtest = False      # here --loadtest is this companion's own flag, not the lesson's moved one
        loadtest = True
    else:
        loadtest = False
    chat.check_args(parser, args)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be at least 1")
    imports_done = time.perf_counter()
    try:
        engine, sampling, _conversation = chat.setup(args)
        if args.int8:
            server_companion.quantize_int8(engine)
    except chat.UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    ready = time.perf_counter()
    chat.warm_up(engine)     # measurements must not include the one-off first-pass cost
    warm = time.perf_counter()
    if loadtest:
        results = run_loadtest(engine, sampling, args.clients, args.requests)
        if any(r["problem"] for r in results) or len(results) != args.clients * args.requests:
            sys.exit(1)       # a failed load test fails the command too, so a script or CI notices
    else:
        # start-up in parts, each with its own fix: imports (torch, transformers), load (tokenizer + weights, a
        # memory-mapped read), warm-up (the first forward pass)
        run_bench(engine, sampling, {"imports": imports_done - START_TIME, "load": ready - imports_done,
                                     "ready": ready - START_TIME, "warm": warm - ready, "total": warm - START_TIME})


if __name__ == "__main__":
    main()
