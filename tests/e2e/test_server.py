"""End to end: the real squeezed process on 127.0.0.1 with Python grpcio clients and the
stories260K model. Covers issue 7's "Done when" items:

  1. register, watch until READY, generate; DENSE over a context == the same tokens without one;
     no-context output == sqz-generate; usage adds up                        (GenerateTest)
  2. 32 concurrent greedy requests == the same requests one at a time        (ConcurrencyTest)
  3. a cancelled stream frees its KV pages; expired deadline                  (CancelDeadlineTest)
  4. one test per bad input, then nothing stored changed                     (BadInputTest)
  6. SIGTERM during 8 open streams; restart on the same data              (ShutdownRestartTest)
  7. health and a generic reflection client                                 (HealthReflectionTest)
  8. examples/python_client.py against the real server                      (ExampleClientTest)
  9. a context that must wait for room in memory: waits without holding a gRPC thread, is served
     when the context in use is released; cancel and deadline while waiting (ContextLoadWaitTest)

Usage: test_server.py SQUEEZED STUB_DIR SQZ_GENERATE [unittest arguments, e.g. a class name]
Needs grpcio, grpcio-health-checking and grpcio-reflection (the project's .venv).
"""

import concurrent.futures
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import squeeze_testlib as lib  # noqa: E402

if len(sys.argv) < 4:
    sys.exit(__doc__)
SQUEEZED, STUBS, SQZ_GENERATE = sys.argv[1], sys.argv[2], sys.argv[3]
lib.import_stubs(STUBS)
import grpc  # noqa: E402
from squeeze.v1 import context_service_pb2 as ctx_pb  # noqa: E402
from squeeze.v1 import context_service_pb2_grpc as ctx_grpc  # noqa: E402
from squeeze.v1 import generation_service_pb2 as gen_pb  # noqa: E402
from squeeze.v1 import generation_service_pb2_grpc as gen_grpc  # noqa: E402
from squeeze.v1 import squeeze_options_pb2 as opt_pb  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

Attn = opt_pb.AttentionOptions
Code = grpc.StatusCode

# Three short stories in the style stories260K was trained on (TinyStories); each tokenizes to
# roughly 200-300 tokens, so context + prompt + completion stays inside the model's 512 positions.
STORIES = [
    "Once upon a time, there was a little girl named Lily. She lived in a small house near the "
    "park with her mom, her dad and a big brown dog named Max. Every morning Lily and Max went to "
    "the park to play. They liked to run on the grass. One day, Lily saw a red ball under the "
    "bench. She picked it up and showed it to Max. Max wagged his tail and barked. \"Do you want "
    "to play, Max?\" Lily asked. She threw the ball and Max ran very fast to get it. He brought it "
    "back and dropped it at her feet. Lily laughed and threw it again. Then a boy named Tim came "
    "to the park. He was sad because he lost his ball.",
    "One day, a little boy named Tom went to the beach with his dad. The sun was hot and the sand "
    "was soft. Tom wanted to build a big castle. He took his red bucket and his blue shovel and "
    "started to dig. His dad helped him carry water from the sea. Soon the castle was very tall. "
    "Tom put a small flag on the top. Then a big wave came and touched the castle. Tom was sad, "
    "but his dad said, \"We can build a new one, and it will be even better!\" Tom smiled and they "
    "built a new castle together. At the end of the day they ate ice cream and went home happy.",
    "Once there was a small cat named Mittens. Mittens lived on a farm with a cow, a pig and many "
    "chickens. She liked to sleep in the warm sun near the barn. One morning Mittens heard a "
    "strange noise. It came from the big tree. She climbed up the tree and saw a baby bird. The "
    "bird was scared because it could not fly. Mittens did not want to hurt the bird. She wanted "
    "to help. She called the farmer, and the farmer put the bird back in its nest. The mother bird "
    "came back and sang a happy song. Mittens felt proud and went back to sleep in the sun.",
]
PROMPTS = [" Lily and Max", " The next day", " She was very", " He said", " They", " Then",
           " One day, Tom", " The cat wanted to"]


# ---- client helpers --------------------------------------------------------------------------


class Client:
    """Stubs on one channel; `key` makes every call send "authorization: Bearer KEY"."""

    def __init__(self, address, key=None):
        self.channel = grpc.insecure_channel(address)
        self.ctx = ctx_grpc.ContextServiceStub(self.channel)
        self.gen = gen_grpc.GenerationServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {key}"),) if key else None

    def close(self):
        self.channel.close()


class Result:
    def __init__(self):
        self.ids, self.text, self.final, self.chunks = [], "", None, 0


def gen_request(context="", text=None, ids=None, max_tokens=24, mode=None, budget=0.0,
                ignore_eos=True, **sampling):
    req = gen_pb.GenerateRequest(context=context)
    if text is not None:
        req.text = text.encode() if isinstance(text, str) else text
    if ids is not None:
        req.token_ids.ids.extend(ids)
    if max_tokens is not None:
        req.sampling.max_tokens = max_tokens
    req.sampling.temperature = 0.0
    req.sampling.ignore_eos = ignore_eos
    for k, v in sampling.items():
        setattr(req.sampling, k, v)
    if mode is not None:
        req.attention.mode = mode
    req.attention.kv_budget = budget
    return req


def generate(client, req, timeout=60):
    """Runs one Generate stream to its end; raises grpc.RpcError on an error status."""
    r = Result()
    for resp in client.gen.Generate(req, timeout=timeout, metadata=client.md):
        if resp.HasField("chunk"):
            r.ids.extend(resp.chunk.token_ids)
            r.text += resp.chunk.text
            r.chunks += 1
        else:
            r.final = resp.final
    return r


def register(client, context_id, text=None, ids=None, **kw):
    req = ctx_pb.CreateContextRequest(context_id=context_id, **kw)
    if text is not None:
        req.text = text.encode() if isinstance(text, str) else text
    if ids is not None:
        req.token_ids.ids.extend(ids)
    return client.ctx.CreateContext(req, timeout=30, metadata=client.md)


def watch_until_ready(client, name, timeout=120):
    """WatchContext until the stream ends; returns [(state, progress)] as streamed."""
    seen = []
    for c in client.ctx.WatchContext(ctx_pb.WatchContextRequest(name=name), timeout=timeout,
                                     metadata=client.md):
        seen.append((c.state, c.progress))
    return seen


def tokenize(client, text, add_bos=False):
    return list(client.gen.Tokenize(gen_pb.TokenizeRequest(text=text.encode(), add_bos=add_bos,
                                                           parse_special=True),
                                    timeout=10, metadata=client.md).token_ids)


def scrape(port):
    """Prometheus text of the metrics endpoint -> {metric name (with labels): value}."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def metrics_port(server, timeout=10.0):
    """The metrics port from squeezed's log: the line comes just after the server is ready, so
    a loaded machine may print it a moment after start() returns."""
    pattern = r"metrics on http://[^:]+:(\d+)/metrics"
    if not lib.wait_until(lambda: re.search(pattern, server.output()), timeout=timeout):
        raise AssertionError("no metrics address in the log:\n" + server.output())
    return int(re.search(pattern, server.output()).group(1))


def start_server(config_text=None, args=(), **kw):
    return lib.Squeezed(SQUEEZED, args=lib.model_args() + list(args), config_text=config_text,
                        **kw).start()


# ---- 1, 2, 3: one server, three registered contexts ----------------------------------------


_SHARED = None


def shared_server():
    """One squeezed (with metrics) for items 1-3 and 7-8, started on first use, with the three
    stories registered as doc-0..doc-2 and watched until READY."""
    global _SHARED
    if _SHARED is None:
        server = start_server(args=["--set", "server.metrics_address=127.0.0.1:0"])
        try:
            client = Client(server.address)
            # A 32-token observation window leaves ~220 clustered body keys per context.
            options = opt_pb.SqueezeOptions(observation_window=32)
            names = [register(client, f"doc-{i}", text=s, squeeze_options=options).name
                     for i, s in enumerate(STORIES)]
            watched = [watch_until_ready(client, n) for n in names]
            _SHARED = (server, client, names, watched, metrics_port(server))
        except BaseException:
            server.kill()
            raise
    return _SHARED


def setUpModule():
    # squeeze_testlib leaves each server's log pipe and temporary folder to the garbage collector.
    # (Here, not at import: unittest's runner resets the warning filters before running tests.)
    warnings.filterwarnings("ignore", category=ResourceWarning)


def tearDownModule():
    if _SHARED is not None:
        _SHARED[1].close()
        _SHARED[0].kill()


class ServerWithContexts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server, cls.client, cls.names, cls.watched, cls.metrics_port = shared_server()

    def get(self, name):
        return self.client.ctx.GetContext(ctx_pb.GetContextRequest(name=name), timeout=10)


class GenerateTest(ServerWithContexts):
    def test_watch_streams_states_in_order_until_ready(self):
        for seen in self.watched:
            states = [s for s, _ in seen]
            self.assertEqual(states[-1], ctx_pb.READY, seen)
            self.assertEqual(states, sorted(states), f"states went backwards: {seen}")
            self.assertTrue(all(0.0 <= p <= 1.0 for _, p in seen), seen)
        for name in self.names:
            c = self.get(name)
            self.assertEqual(c.state, ctx_pb.READY)
            self.assertTrue(c.resident)
            self.assertGreater(c.stored_bytes, 0)

    def test_context_tokens_are_the_tokenized_text(self):
        for name, story in zip(self.names, STORIES):
            self.assertEqual(self.get(name).token_count, len(tokenize(self.client, story, True)))

    def test_dense_over_context_equals_the_engine_without_context(self):
        for name, story, prompt in zip(self.names, STORIES, PROMPTS):
            with self.subTest(context=name):
                context_ids = tokenize(self.client, story, add_bos=True)
                prompt_ids = tokenize(self.client, prompt)
                with_ctx = generate(self.client, gen_request(name, text=prompt, max_tokens=40,
                                                             mode=Attn.DENSE))
                direct = generate(self.client, gen_request(ids=context_ids + prompt_ids,
                                                           max_tokens=40))
                self.assertEqual(len(with_ctx.ids), 40)
                self.assertEqual(with_ctx.ids, direct.ids)
                self.assertEqual(with_ctx.text, direct.text)
                u = with_ctx.final.usage
                self.assertEqual(u.context_tokens, self.get(name).token_count)
                self.assertEqual(u.prompt_tokens, len(prompt_ids))
                self.assertEqual(u.completion_tokens, len(with_ctx.ids))
                self.assertAlmostEqual(u.context_keys_read, 1.0, places=6)
                self.assertEqual(with_ctx.final.finish_reason, gen_pb.LENGTH)
                du = direct.final.usage
                self.assertEqual((du.context_tokens, du.prompt_tokens, du.completion_tokens),
                                 (0, len(context_ids) + len(prompt_ids), 40))

    def test_squeezed_reads_a_share_of_the_keys_and_usage_adds_up(self):
        r = generate(self.client, gen_request(self.names[0], text=PROMPTS[0], max_tokens=16,
                                              mode=Attn.SQUEEZED, budget=0.25))
        u = r.final.usage
        self.assertEqual(len(r.ids), 16)
        self.assertEqual((u.context_tokens, u.completion_tokens),
                         (self.get(self.names[0]).token_count, 16))
        self.assertGreater(u.context_keys_read, 0.0)
        self.assertLess(u.context_keys_read, 1.0)
        t = r.final.timings
        self.assertTrue(0 <= t.queued_s <= t.time_to_first_token_s <= t.total_s, t)

    def test_no_context_output_equals_sqz_generate(self):
        for prompt, n in [("Once upon a time", 48), ("Lily", 1), ("The dog", 127)]:
            with self.subTest(prompt=prompt):
                served = generate(self.client, gen_request(text=prompt, max_tokens=n,
                                                           ignore_eos=False))
                tool = subprocess.run(
                    [SQZ_GENERATE, "--model", lib.STORIES, "--prompt", prompt, "--temperature",
                     "0", "--max-tokens", str(n)], capture_output=True, text=True, timeout=60)
                self.assertEqual(tool.returncode, 0, tool.stderr)
                self.assertEqual(prompt + served.text + "\n", tool.stdout)
                m = re.search(r"generation: (\d+) tokens", tool.stderr)
                self.assertEqual(int(m.group(1)), len(served.ids), tool.stderr)
                self.assertEqual(served.final.usage.completion_tokens, len(served.ids))
                self.assertEqual(served.final.usage.prompt_tokens,
                                 len(tokenize(self.client, prompt, add_bos=True)))


class ConcurrencyTest(ServerWithContexts):
    def requests(self):
        """32 greedy requests: over 3 contexts (DENSE, SQUEEZED at three budgets, the server's
        default, some with the threshold policy or the hierarchical lookup) and without a context;
        prompts of 2 to 147 tokens (several 64-token selection blocks), completions of 1 to 40."""
        long_prompt = " " + " ".join(STORIES[1].split()[:70])  # 147 tokens
        modes = [(Attn.DENSE, 0.0), (Attn.SQUEEZED, 0.125), (Attn.SQUEEZED, 0.25),
                 (Attn.SQUEEZED, 0.5), (Attn.MODE_UNSPECIFIED, 0.0)]
        out = []
        for i in range(32):
            prompt = long_prompt if i % 4 == 3 else PROMPTS[i % len(PROMPTS)]
            n = [1, 8, 24, 40][i % 4] if i % 7 else 3
            if i % 8 == 5:
                out.append(gen_request(text=prompt, max_tokens=n))
            else:
                mode, budget = modes[i % len(modes)]
                out.append(gen_request(self.names[i % 3], text=prompt, max_tokens=n, mode=mode,
                                       budget=budget))
                if i % 10 == 1:
                    out[-1].attention.policy = Attn.THRESHOLD
                    out[-1].attention.target_sparsity = 0.7
                elif i % 10 == 6:
                    out[-1].attention.hierarchical = True
        return out

    def test_32_concurrent_equal_one_at_a_time(self):
        reqs = self.requests()
        alone = [generate(self.client, r) for r in reqs]
        barrier = threading.Barrier(len(reqs))

        def run(r):
            barrier.wait(timeout=30)
            return generate(self.client, r, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(len(reqs)) as pool:
            together = list(pool.map(run, reqs))
        for i, (a, b) in enumerate(zip(alone, together)):
            self.assertEqual(len(a.ids), reqs[i].sampling.max_tokens)
            self.assertEqual(a.ids, b.ids, f"request {i}: {reqs[i]}")
            self.assertEqual(a.text, b.text)
            self.assertEqual(a.final.usage, b.final.usage)


class CancelDeadlineTest(ServerWithContexts):
    def kv_used(self):
        return scrape(self.metrics_port)["sqz_kv_pool_used_blocks"]

    def test_cancelled_stream_frees_its_kv_pages(self):
        self.assertEqual(self.kv_used(), 0)
        # 220 tokens over a context at stories260K's ~2,000 tokens/s: still running when cancelled.
        call = self.client.gen.Generate(gen_request(self.names[0], text=PROMPTS[0],
                                                    max_tokens=220), timeout=60)
        got = 0
        for resp in call:
            got += len(resp.chunk.token_ids)
            if got >= 3:
                break
        used_while_running = self.kv_used()
        call.cancel()
        steps_at_cancel = scrape(self.metrics_port)["sqz_engine_steps"]
        self.assertTrue(lib.wait_until(lambda: self.kv_used() == 0, timeout=5),
                        "KV pages still in use after the cancel")
        m = scrape(self.metrics_port)
        # Freed at a step boundary, not by running to the end: far fewer steps than tokens asked.
        self.assertLess(m["sqz_engine_steps"] - steps_at_cancel, 200)
        self.assertGreater(used_while_running, 0)
        self.assertEqual(m["sqz_running_requests"], 0)
        self.assertEqual(m["sqz_queue_depth"], 0)
        self.assertTrue(lib.wait_until(
            lambda: scrape(self.metrics_port)["sqz_streams_in_flight"] == 0, timeout=5))

    def test_expired_deadline_is_deadline_exceeded_and_frees_kv(self):
        with self.assertRaises(grpc.RpcError) as e:
            generate(self.client, gen_request(self.names[1], text=PROMPTS[1], max_tokens=220),
                     timeout=0.05)
        self.assertEqual(e.exception.code(), Code.DEADLINE_EXCEEDED)
        self.assertTrue(lib.wait_until(lambda: self.kv_used() == 0, timeout=5))
        # The server goes on serving.
        self.assertEqual(len(generate(self.client, gen_request(text="Lily", max_tokens=5)).ids),
                         5)


# ---- 4: bad inputs, each with its code and a message naming the problem ----------------------

LIMITS_CONFIG = """
server:
  auth: {api_keys: ["alice:alice-key", "bob:bob-key"]}
  limits: {max_message_bytes: 16384, max_new_tokens: 300}
engine:
  scheduler: {max_queue: 1, max_running: 1, ingest_chunk_tokens: 8}
"""


class BadInputTest(unittest.TestCase):
    """A server with API keys, a 16 KiB message limit, max_new_tokens 300, a one-request queue and
    one running request. Alice owns doc-a, Bob owns doc-b. test_zz_* runs last (unittest sorts
    test names) and checks that nothing stored changed."""

    @classmethod
    def setUpClass(cls):
        cls.server = start_server(LIMITS_CONFIG)
        cls.alice = Client(cls.server.address, "alice-key")
        cls.bob = Client(cls.server.address, "bob-key")
        cls.anonymous = Client(cls.server.address)
        cls.wrong = Client(cls.server.address, "mallory-key")
        register(cls.alice, "doc-a", text=STORIES[0], labels={"owner": "alice"})
        register(cls.bob, "doc-b", text=STORIES[1])
        watch_until_ready(cls.alice, "contexts/doc-a")
        watch_until_ready(cls.bob, "contexts/doc-b")
        cls.before = cls.snapshot()

    @classmethod
    def tearDownClass(cls):
        for c in (cls.alice, cls.bob, cls.anonymous, cls.wrong):
            c.close()
        cls.server.kill()

    @classmethod
    def snapshot(cls):
        """What must not change: each key's contexts (Get and List) and a greedy answer."""
        out = {}
        for who, client in (("alice", cls.alice), ("bob", cls.bob)):
            listed = client.ctx.ListContexts(ctx_pb.ListContextsRequest(), timeout=10,
                                             metadata=client.md).contexts
            out[who + " list"] = {c.name: c for c in listed}
            doc = "contexts/doc-" + who[0]
            out[who + " get"] = client.ctx.GetContext(ctx_pb.GetContextRequest(name=doc),
                                                      timeout=10, metadata=client.md)
            out[who + " answer"] = generate(client, gen_request(doc, text=PROMPTS[2],
                                                                max_tokens=16)).ids
        return out

    def assertFails(self, code, pattern, fn, *args, **kw):
        with self.assertRaises(grpc.RpcError) as e:
            fn(*args, **kw)
        self.assertEqual(e.exception.code(), code, e.exception.details())
        self.assertRegex(e.exception.details(), pattern)

    def gen_fails(self, code, pattern, req, client=None):
        self.assertFails(code, pattern, generate, client or self.alice, req)

    def test_unknown_context_is_not_found(self):
        self.gen_fails(Code.NOT_FOUND, r"^context nope not found$",
                       gen_request("contexts/nope", text="Hi"))
        self.assertFails(Code.NOT_FOUND, r"context nope not found", self.alice.ctx.GetContext,
                         ctx_pb.GetContextRequest(name="contexts/nope"), timeout=10,
                         metadata=self.alice.md)

    def test_context_not_ready_is_failed_precondition(self):
        # Register a long context (ingested 8 tokens per step) and query it at once.
        ids = tokenize(self.alice, " ".join(STORIES), add_bos=True)[:500]
        for attempt in range(20):
            name = register(self.alice, f"slow-{attempt}", ids=ids).name
            try:
                generate(self.alice, gen_request(name, text="Hi", max_tokens=2))
            except grpc.RpcError as e:
                self.assertEqual(e.code(), Code.FAILED_PRECONDITION, e.details())
                self.assertRegex(e.details(), rf"^context slow-{attempt} is not ready yet \(state "
                                 r"(QUEUED|PREFILLING|CLUSTERING|CALIBRATING|PERSISTING), \d+%\)$")
                self.assertEqual(watch_until_ready(self.alice, name)[-1][0], ctx_pb.READY)
                return
        self.fail("20 contexts were all READY before the first query reached them")

    def test_empty_prompt(self):
        pattern = r"the prompt is empty: set text, token_ids or messages"
        self.gen_fails(Code.INVALID_ARGUMENT, pattern, gen_request())
        self.gen_fails(Code.INVALID_ARGUMENT, pattern, gen_request("contexts/doc-a", text=""))
        self.gen_fails(Code.INVALID_ARGUMENT, pattern, gen_request(ids=[]))

    def test_context_prompt_and_max_tokens_over_the_model_length(self):
        n_ctx = self.before["alice get"].token_count
        n_prompt = len(tokenize(self.alice, PROMPTS[0]))
        total = n_ctx + n_prompt + 300
        self.assertGreater(total, 512)
        self.gen_fails(Code.INVALID_ARGUMENT,
                       rf"^context \({n_ctx}\) \+ prompt \({n_prompt}\) \+ max_tokens \(300\) = "
                       rf"{total} tokens exceeds the model's length of 512$",
                       gen_request("contexts/doc-a", text=PROMPTS[0], max_tokens=300))
        self.gen_fails(Code.INVALID_ARGUMENT, r"^context \(0\) \+ prompt \(500\) \+ max_tokens "
                       r"\(13\) = 513 tokens exceeds the model's length of 512$",
                       gen_request(ids=[5] * 500, max_tokens=13))
        self.gen_fails(Code.INVALID_ARGUMENT, r"^the prompt has 513 tokens; at most 512 are "
                       r"allowed$", gen_request(ids=[5] * 513, max_tokens=1))

    def test_negative_temperature(self):
        self.gen_fails(Code.INVALID_ARGUMENT, r"sampling.temperature must be in \[0, 100\], got "
                       r"-0.5", gen_request(text="Hi", temperature=-0.5))

    def test_top_p_outside_0_1(self):
        for top_p in (0.0, -0.25, 1.5):
            with self.subTest(top_p=top_p):
                self.gen_fails(Code.INVALID_ARGUMENT, r"sampling.top_p must be in \(0, 1\], got "
                               + re.escape(f"{top_p:f}"), gen_request(text="Hi", top_p=top_p))

    def test_negative_top_k(self):
        self.gen_fails(Code.INVALID_ARGUMENT, r"sampling.top_k must be >= 0, got -3",
                       gen_request(text="Hi", top_k=-3))

    def test_max_tokens_zero_or_over_the_limit(self):
        for n in (0, 301, 2**32 - 1):
            with self.subTest(max_tokens=n):
                self.gen_fails(Code.INVALID_ARGUMENT,
                               rf"sampling.max_tokens must be in \[1, 300\], got {n}$",
                               gen_request(text="Hi", max_tokens=n))

    def test_attention_options_out_of_range(self):
        for field, value, pattern in (
                ("kv_budget", 1.5, r"^attention.kv_budget must be in \(0, 1\], got 1.5$"),
                ("target_sparsity", 0.25,
                 r"^attention.target_sparsity must be in \[0.5, 0.95\], got 0.25$"),
                ("prefill_block_size", 5000,
                 r"^attention.prefill_block_size must be in \[1, 4096\], got 5000$")):
            with self.subTest(field=field):
                req = gen_request("contexts/doc-a", text="Hi", mode=Attn.SQUEEZED)
                setattr(req.attention, field, value)
                self.gen_fails(Code.INVALID_ARGUMENT, pattern, req)

    def test_squeeze_options_out_of_range(self):
        for field, value, pattern in (
                ("centroid_fraction", 0.75,
                 r"^squeeze_options.centroid_fraction must be in \(0, 0.5\], got 0.75$"),
                ("observation_window", 5000,
                 r"^squeeze_options.observation_window must be in \[1, 4096\], got 5000$"),
                ("kmeans_iterations", 301,
                 r"^squeeze_options.kmeans_iterations must be in \[1, 300\], got 301$")):
            with self.subTest(field=field):
                options = opt_pb.SqueezeOptions(**{field: value})
                self.assertFails(Code.INVALID_ARGUMENT, pattern, register, self.alice, "opt-doc",
                                 text=STORIES[2], squeeze_options=options)

    def test_invalid_utf8(self):
        bad = b"Lily \xc3\x28 ran"
        self.gen_fails(Code.INVALID_ARGUMENT,
                       r"^text is not valid UTF-8 \(first bad byte at offset 5\)$",
                       gen_request(text=bad))
        self.assertFails(Code.INVALID_ARGUMENT, r"text is not valid UTF-8 \(first bad byte at "
                         r"offset 0\)", register, self.alice, "utf8-doc", text=b"\xff" + bad)
        self.assertFails(Code.INVALID_ARGUMENT, r"text is not valid UTF-8",
                         self.alice.gen.Tokenize, gen_pb.TokenizeRequest(text=bad), timeout=10,
                         metadata=self.alice.md)

    def test_unknown_token_ids(self):
        self.gen_fails(Code.INVALID_ARGUMENT,
                       r"^token_ids.ids\[2\] = 512 is outside the vocabulary \(size 512\)$",
                       gen_request(ids=[1, 403, 512, 7]))
        self.assertFails(Code.INVALID_ARGUMENT, r"token_ids.ids\[0\] = 99999 is outside",
                         register, self.alice, "ids-doc", ids=[99999])

    def test_bad_context_id_characters(self):
        for bad, offset in (("Doc-A", 0), ("doc/a", 3), ("-doc", 0), ("doc a", 3)):
            with self.subTest(id=bad):
                pattern = (r"context id may only contain a-z, 0-9, '-', '_' and '\.', and must "
                           rf"start with a letter or digit; bad character at offset {offset}")
                self.assertFails(Code.INVALID_ARGUMENT, pattern, register, self.alice, bad,
                                 text="Hi")
                self.gen_fails(Code.INVALID_ARGUMENT, "^context: " + pattern,
                               gen_request("contexts/" + bad, text="Hi"))
        self.assertFails(Code.INVALID_ARGUMENT, r"context id must have 1\.\.128 characters, got "
                         r"129", register, self.alice, "a" * 129, text="Hi")
        self.gen_fails(Code.INVALID_ARGUMENT, r"context name must look like \"contexts/\{id\}\", "
                       r"got \"doc-a\"", gen_request("doc-a", text="Hi"))

    def test_duplicate_id_with_other_content_already_exists(self):
        again = register(self.alice, "doc-a", text=STORIES[0], labels={"owner": "alice"})
        self.assertEqual(again.content_digest, self.before["alice get"].content_digest)
        self.assertFails(Code.ALREADY_EXISTS, r"^context doc-a already exists with other content "
                         r"or options; delete it first or choose another id$", register,
                         self.alice, "doc-a", text=STORIES[2])
        # Another key: the id is taken, and the message tells nothing of alice's context (not
        # even "delete it first", which bob cannot).
        for text in (STORIES[0], STORIES[2]):
            self.assertFails(Code.ALREADY_EXISTS, r"^context id doc-a is already in use \(ids are "
                             r"shared by all API keys\); choose another id$", register, self.bob,
                             "doc-a", text=text)

    def test_oversized_message_is_resource_exhausted(self):
        self.assertFails(Code.RESOURCE_EXHAUSTED, r"larger than max \(\d+ vs\. 16384\)", register,
                         self.alice, "big-doc", text="Lily ran. " * 2000)
        self.gen_fails(Code.RESOURCE_EXHAUSTED, r"larger than max \(\d+ vs\. 16384\)",
                       gen_request(text="Lily ran. " * 2000))

    def test_full_queue_is_resource_exhausted(self):
        # max_running 1 and max_queue 1: of 4 requests sent at once, one runs, one waits and the
        # others are refused (unless each finishes before the next arrives: then try again).
        def run(barrier):
            barrier.wait(timeout=30)
            try:
                return generate(self.alice, gen_request(text="Lily", max_tokens=300))
            except grpc.RpcError as e:
                return e

        for _ in range(5):
            barrier = threading.Barrier(4)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results = list(pool.map(run, [barrier] * 4))
            errors = [r for r in results if isinstance(r, grpc.RpcError)]
            for e in errors:
                self.assertEqual(e.code(), Code.RESOURCE_EXHAUSTED, e.details())
                self.assertEqual(e.details(), "request queue is full (1 waiting); retry later")
            # At least the first runs (the second may be refused too while the first still waits
            # for admission: the queue counts it until the engine loop picks it up).
            self.assertGreaterEqual(len(results) - len(errors), 1)
            if errors:
                return
        self.fail("the queue never filled")

    def test_missing_or_wrong_api_key_is_unauthenticated(self):
        for client, pattern in ((self.anonymous, r"this server needs an API key: send "
                                 r"\"authorization: Bearer KEY\""),
                                (self.wrong, r"^unknown API key$")):
            self.assertFails(Code.UNAUTHENTICATED, pattern, generate, client,
                             gen_request("contexts/doc-a", text="Hi"))
            self.assertFails(Code.UNAUTHENTICATED, pattern, client.ctx.ListContexts,
                             ctx_pb.ListContextsRequest(), timeout=10, metadata=client.md)
            self.assertFails(Code.UNAUTHENTICATED, pattern, register, client, "x", text="Hi")
        raw = grpc.insecure_channel(self.server.address)
        try:
            stub = ctx_grpc.ContextServiceStub(raw)
            self.assertFails(Code.UNAUTHENTICATED, r"must be \"Bearer KEY\"", stub.GetContext,
                             ctx_pb.GetContextRequest(name="contexts/doc-a"), timeout=10,
                             metadata=(("authorization", "alice-key"),))
        finally:
            raw.close()

    def test_another_keys_context_is_not_found(self):
        pattern = r"^context doc-a not found$"
        self.gen_fails(Code.NOT_FOUND, pattern, gen_request("contexts/doc-a", text="Hi"),
                       client=self.bob)
        self.assertFails(Code.NOT_FOUND, pattern, self.bob.ctx.GetContext,
                         ctx_pb.GetContextRequest(name="contexts/doc-a"), timeout=10,
                         metadata=self.bob.md)
        self.assertFails(Code.NOT_FOUND, pattern, self.bob.ctx.DeleteContext,
                         ctx_pb.DeleteContextRequest(name="contexts/doc-a"), timeout=10,
                         metadata=self.bob.md)
        self.assertFails(Code.NOT_FOUND, pattern, watch_until_ready, self.bob, "contexts/doc-a")
        listed = self.bob.ctx.ListContexts(ctx_pb.ListContextsRequest(), timeout=10,
                                           metadata=self.bob.md).contexts
        self.assertEqual([c.name for c in listed], ["contexts/doc-b"])

    def test_zz_server_still_answers_and_nothing_stored_changed(self):
        after = self.snapshot()
        for key in ("alice get", "bob get", "alice answer", "bob answer"):
            self.assertEqual(after[key], self.before[key], key)
        self.assertEqual(after["bob list"], self.before["bob list"])
        # Alice's list gained only the contexts these tests registered on purpose.
        for name, c in self.before["alice list"].items():
            self.assertEqual(after["alice list"][name], c)
        extra = set(after["alice list"]) - set(self.before["alice list"])
        self.assertTrue(all(re.fullmatch(r"contexts/slow-\d+", n) for n in extra), extra)
        self.assertEqual(len(self.before["alice answer"]), 16)


# ---- 6: SIGTERM during open streams, then a restart on the same data --------------------------


class ShutdownRestartTest(unittest.TestCase):
    DRAIN_S = 0.5

    def test_sigterm_during_8_streams_then_restart_serves_the_same_contexts(self):
        data = tempfile.TemporaryDirectory(prefix="squeezed-restart-")
        self.addCleanup(data.cleanup)
        # Ingestion 4 tokens per step: the third context is likely still ingesting at SIGTERM.
        server = start_server(f"server: {{drain_timeout_s: {self.DRAIN_S}}}\n"
                              "engine: {scheduler: {ingest_chunk_tokens: 4}}\n",
                              args=["--data-dir", data.name])
        self.addCleanup(server.kill)
        client = Client(server.address)
        names = [register(client, f"doc-{i}", text=STORIES[i]).name for i in range(2)]
        for name in names:
            watch_until_ready(client, name)
        contexts = {n: client.ctx.GetContext(ctx_pb.GetContextRequest(name=n), timeout=10)
                    for n in names}
        answer_reqs = {(n, m): gen_request(n, text=PROMPTS[3], max_tokens=24, mode=m)
                       for n in names for m in (Attn.SQUEEZED, Attn.DENSE)}
        answers = {k: generate(client, r).ids for k, r in answer_reqs.items()}

        # 8 streams: 4 long (2 without a context up to 500 tokens, 2 over contexts), 4 short.
        reqs = [gen_request(text="Lily", max_tokens=500), gen_request(text="Tom", max_tokens=500),
                gen_request(names[0], text=PROMPTS[0], max_tokens=200),
                gen_request(names[1], text=PROMPTS[1], max_tokens=200)]
        reqs += [gen_request(names[i % 2], text=PROMPTS[i], max_tokens=12) for i in range(4)]
        results = [None] * len(reqs)
        started = [threading.Event() for _ in reqs]

        def run(i):
            r = Result()
            try:
                for resp in client.gen.Generate(reqs[i], timeout=60):
                    started[i].set()
                    if resp.HasField("chunk"):
                        r.ids.extend(resp.chunk.token_ids)
                    else:
                        r.final = resp.final
                results[i] = (Code.OK, r, time.monotonic())
            except grpc.RpcError as e:
                results[i] = (e.code(), e.details(), time.monotonic())
            finally:
                started[i].set()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for e in started:
            self.assertTrue(e.wait(30))
        late_ids = tokenize(client, " ".join(STORIES), add_bos=True)[:480]
        late = register(client, "late-doc", ids=late_ids)
        sigterm_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # While draining, health says NOT_SERVING and new requests are refused.
        health = health_pb2_grpc.HealthStub(client.channel)
        self.assertTrue(lib.wait_until(
            lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status ==
            health_pb2.HealthCheckResponse.NOT_SERVING, timeout=5, interval=0.01))
        with self.assertRaises(grpc.RpcError) as refused:
            generate(client, gen_request(text="Lily", max_tokens=2))
        self.assertEqual(refused.exception.code(), Code.UNAVAILABLE)
        self.assertEqual(refused.exception.details(), "the server is shutting down")
        for t in threads:
            t.join(60)
        self.assertEqual(server.proc.wait(60), 0, server.output())
        client.close()

        cut = 0
        for i, (code, detail, ended) in enumerate(results):
            if code == Code.OK:
                self.assertEqual(len(detail.ids), reqs[i].sampling.max_tokens, i)
                self.assertEqual(detail.final.usage.completion_tokens, len(detail.ids))
            else:
                cut += 1
                self.assertEqual(code, Code.UNAVAILABLE, f"stream {i}: {detail}")
                self.assertIn("shutting down", detail)
                self.assertGreaterEqual(ended - sigterm_at, self.DRAIN_S - 0.05, f"stream {i}")
        self.assertGreater(cut, 0, "every stream finished within the drain timeout: make the long "
                                   "ones longer")
        self.assertTrue(all(results[i][0] == Code.OK for i in range(4, 8)), results[4:])
        print(f"\n  SIGTERM: {len(reqs) - cut} streams finished, {cut} ended UNAVAILABLE after the "
              f"{self.DRAIN_S} s drain", file=sys.stderr)
        # The log counts streams still open, including ones whose final message is being sent.
        ended = re.search(r"drain timeout: ending (\d+) streams with UNAVAILABLE", server.output())
        self.assertGreaterEqual(int(ended.group(1)), cut, server.output())
        self.assertIn("stopped cleanly", server.output())

        again = start_server(args=["--data-dir", data.name])
        self.addCleanup(again.kill)
        client = Client(again.address)
        self.addCleanup(client.close)
        for n, c in contexts.items():
            now = client.ctx.GetContext(ctx_pb.GetContextRequest(name=n), timeout=10)
            self.assertEqual(now.state, ctx_pb.READY)
            for field in ("token_count", "content_digest", "create_time", "squeeze_options"):
                self.assertEqual(getattr(now, field), getattr(c, field), field)
        for k, r in answer_reqs.items():
            self.assertEqual(generate(client, r).ids, answers[k], k)
        # Registered just before SIGTERM (acknowledged, so durable): READY after the restart,
        # whether its ingestion finished before the exit or resumed from the stored tokens.
        self.assertEqual(watch_until_ready(client, late.name)[-1][0], ctx_pb.READY)
        now = client.ctx.GetContext(ctx_pb.GetContextRequest(name=late.name), timeout=10)
        self.assertEqual((now.token_count, now.content_digest),
                         (len(late_ids), late.content_digest))
        self.assertEqual(len(generate(client, gen_request(late.name, text=" The", max_tokens=8))
                             .ids), 8)
        print(f"  context registered at SIGTERM: {ctx_pb.ContextState.Name(late.state)} when "
              f"acknowledged; {'resumed' if 'resumed' in again.output() else 'finished'} "
              f"({again.output().split('registry: ')[-1].splitlines()[0]})", file=sys.stderr)
        self.assertEqual(again.terminate(), 0)


# ---- 7: health and a reflection client that knows nothing of squeeze.v1 -----------------------


def reflect_and_call_server_info(channel):
    """A generic client: list the services through reflection, fetch their file descriptors into
    an empty pool, build the request and response classes from them and call GetServerInfo.
    Uses nothing generated from our protos. Returns (services, ServerInfo as a dict)."""
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase)

    database = ProtoReflectionDescriptorDatabase(channel)
    services = list(database.get_services())
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName("squeeze.v1.GenerationService")
    method = service.methods_by_name["GetServerInfo"]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(f"/{service.full_name}/{method.name}",
                               request_serializer=request_class.SerializeToString,
                               response_deserializer=response_class.FromString)
    reply = call(request_class(), timeout=10)
    return services, json_format.MessageToDict(reply), pool


class HealthReflectionTest(ServerWithContexts):
    def test_health_check_and_watch(self):
        stub = health_pb2_grpc.HealthStub(self.client.channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        self.assertEqual(reply.status, health_pb2.HealthCheckResponse.SERVING)
        first = next(iter(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)))
        self.assertEqual(first.status, health_pb2.HealthCheckResponse.SERVING)
        with self.assertRaises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        self.assertEqual(e.exception.code(), Code.NOT_FOUND)

    def test_generic_reflection_client(self):
        services, info, pool = reflect_and_call_server_info(self.client.channel)
        for s in ("squeeze.v1.GenerationService", "squeeze.v1.ContextService",
                  "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"):
            self.assertIn(s, services)
        self.assertEqual(info["version"], "0.1.0")
        self.assertEqual(info["model"]["name"], "stories260K")
        self.assertEqual(info["model"]["maxPositions"], 512)
        self.assertTrue(info["ready"])
        # The dependencies came along: the Context message and its Timestamp resolve.
        context = pool.FindMessageTypeByName("squeeze.v1.Context")
        self.assertEqual(context.fields_by_name["create_time"].message_type.full_name,
                         "google.protobuf.Timestamp")
        self.assertIn("WatchContext", pool.FindServiceByName("squeeze.v1.ContextService")
                      .methods_by_name)


# ---- 8: the Python client example, as a user runs it --------------------------------------------


class ExampleClientTest(ServerWithContexts):
    def test_python_client_example(self):
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(STORIES[2])
            f.flush()
            r = subprocess.run(
                [sys.executable, os.path.join(REPO, "examples", "python_client.py"),
                 "--server", self.server.address, "--stubs", STUBS, "--file", f.name,
                 "--context-id", "example-doc", "--question", PROMPTS[7], "--max-tokens", "20"],
                capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        ctx = self.get("contexts/example-doc")
        self.assertEqual(ctx.state, ctx_pb.READY)
        self.assertIn("registered contexts/example-doc", r.stdout)
        self.assertIn("READY", r.stdout)
        # The streamed answer is the server's greedy answer to the same request.
        expected = generate(self.client, gen_request("contexts/example-doc", text=PROMPTS[7],
                                                     max_tokens=20, ignore_eos=False))
        self.assertIn(PROMPTS[7] + expected.text + "\n", r.stdout)
        self.assertRegex(r.stdout, rf"usage: context {ctx.token_count} tokens, prompt "
                         rf"{expected.final.usage.prompt_tokens} tokens, completion "
                         rf"{len(expected.ids)} tokens; keys read \d+(\.\d)?%; first token "
                         r"after \d+\.\d+ s")


# ---- 9: a Generate whose context must wait for room in memory ---------------------------------

# engine.memory.resident_contexts_mb = 1 and two 400-token contexts: a stories260K snapshot takes
# ~1.4 KB per token, so one context (~0.55 MiB) fits and two do not. One engine slot
# (max_running 1) and long requests without a context queued ahead keep the first context's
# request -- and so its lease -- in the engine for a second or more.
WAIT_CONFIG = """
engine:
  memory: {resident_contexts_mb: 1}
  scheduler: {max_running: 1}
"""
WAIT_CONTEXT_TOKENS = 400
BLOCKERS = 8


class ContextLoadWaitTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = start_server(WAIT_CONFIG,
                                  args=["--set", "server.metrics_address=127.0.0.1:0"])
        cls.client = Client(cls.server.address)
        cls.port = metrics_port(cls.server)
        rng = random.Random(9)
        for cid in ("wait-a", "wait-b"):
            register(cls.client, cid, ids=[rng.randrange(3, 500)
                                           for _ in range(WAIT_CONTEXT_TOKENS)])
            watch_until_ready(cls.client, f"contexts/{cid}")
        size = scrape(cls.port)["sqz_context_resident_bytes"]
        assert (1 << 20) < 2 * size and size <= (1 << 20), f"one context is {size} bytes"
        # Alone, each context is loaded (evicting the other) and answers.
        cls.expected = {cid: generate(cls.client, cls.request(cid)).ids
                        for cid in ("wait-a", "wait-b")}

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.kill()

    @staticmethod
    def request(cid):
        return gen_request(f"contexts/{cid}", text=PROMPTS[4], max_tokens=40, mode=Attn.DENSE)

    def metric(self, name):
        return scrape(self.port).get(name, 0.0)

    def hold_context_a(self):
        """Queues BLOCKERS long requests without a context, then one over wait-a behind them:
        wait-a is leased (resident) until that request leaves the engine. Returns the threads'
        results (dict) and the threads."""
        results, threads = {}, []

        def run(key, req):
            try:
                r = generate(self.client, req, timeout=120)
                results[key] = (r, time.time())
            except grpc.RpcError as e:
                results[key] = (e, time.time())

        for i in range(BLOCKERS):
            threads.append(threading.Thread(target=run, args=(
                f"blocker-{i}", gen_request(text=PROMPTS[i % len(PROMPTS)], max_tokens=480))))
            threads[-1].start()
        self.assertTrue(lib.wait_until(
            lambda: self.metric("sqz_queue_depth") + self.metric("sqz_running_requests") >=
            BLOCKERS, timeout=10), "the blocking requests did not reach the engine")
        threads.append(threading.Thread(target=run, args=("a", self.request("wait-a"))))
        threads[-1].start()
        self.assertTrue(lib.wait_until(
            lambda: self.client.ctx.GetContext(ctx_pb.GetContextRequest(name="contexts/wait-a"),
                                               timeout=5).resident, timeout=10))
        return results, threads

    def test_second_context_waits_for_the_first_to_finish_and_rpcs_are_answered_meanwhile(self):
        waits_before = self.metric("sqz_context_load_wait_seconds_count")
        results, threads = self.hold_context_a()
        for i in range(3):  # three requests over wait-b share one load
            def run_b(key=f"b-{i}"):
                try:
                    results[key] = (generate(self.client, self.request("wait-b"), timeout=60),
                                    time.time())
                except grpc.RpcError as e:
                    results[key] = (e, time.time())
            threads.append(threading.Thread(target=run_b))
            threads[-1].start()
        self.assertTrue(lib.wait_until(lambda: self.metric("sqz_context_load_waiting") == 3,
                                       timeout=10),
                        f"the wait-b requests are not waiting: {results}")
        # Meanwhile other RPCs are answered at once: no gRPC thread is held by the waiting calls.
        health = health_pb2_grpc.HealthStub(self.client.channel)
        for _ in range(5):
            t0 = time.time()
            self.assertEqual(health.Check(health_pb2.HealthCheckRequest(service=""),
                                          timeout=2).status,
                             health_pb2.HealthCheckResponse.SERVING)
            listed = self.client.ctx.ListContexts(ctx_pb.ListContextsRequest(), timeout=2)
            self.assertLess(time.time() - t0, 1.0)
            self.assertEqual(sorted(c.name for c in listed.contexts),
                             ["contexts/wait-a", "contexts/wait-b"])
        self.assertNotIn("a", results, "wait-a's request ended before the checks: raise BLOCKERS")
        self.assertEqual(self.metric("sqz_context_load_waiting"), 3)
        for t in threads:
            t.join(120)
        for key, (r, _) in results.items():
            self.assertIsInstance(r, Result, f"{key}: {r}")
        a_done = results["a"][1]
        self.assertEqual(results["a"][0].ids, self.expected["wait-a"])
        for i in range(3):
            r, done = results[f"b-{i}"]
            self.assertEqual(r.ids, self.expected["wait-b"])
            self.assertGreaterEqual(done, a_done)  # served only once wait-a's request ended
        m = scrape(self.port)
        self.assertEqual(m["sqz_context_load_waiting"], 0)
        self.assertEqual(m["sqz_context_load_wait_seconds_count"] - waits_before, 4)  # a, 3x b
        self.assertLessEqual(m["sqz_context_resident_bytes"], 1 << 20)

    def test_cancel_and_deadline_while_waiting(self):
        results, threads = self.hold_context_a()
        cancelled = self.client.gen.Generate(self.request("wait-b"), timeout=60)
        self.assertTrue(lib.wait_until(lambda: self.metric("sqz_context_load_waiting") == 1,
                                       timeout=10))
        t0 = time.time()
        with self.assertRaises(grpc.RpcError) as late:
            generate(self.client, self.request("wait-b"), timeout=0.5)
        self.assertEqual(late.exception.code(), Code.DEADLINE_EXCEEDED)
        self.assertLess(time.time() - t0, 5)
        self.assertTrue(lib.wait_until(lambda: self.metric("sqz_context_load_waiting") == 1,
                                       timeout=5))  # the one to cancel still waits
        cancelled.cancel()
        self.assertTrue(lib.wait_until(lambda: self.metric("sqz_context_load_waiting") == 0,
                                       timeout=5), "the cancelled request still waits")
        with self.assertRaises(grpc.RpcError) as e:
            next(cancelled)
        self.assertEqual(e.exception.code(), Code.CANCELLED)
        self.assertNotIn("a", results, "wait-a's request ended before the checks: raise BLOCKERS")
        for t in threads:
            t.join(120)
        # Nothing was lost: wait-b still answers as before.
        self.assertEqual(generate(self.client, self.request("wait-b")).ids,
                         self.expected["wait-b"])
        self.assertEqual(self.metric("sqz_context_load_waiting"), 0)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"] + sys.argv[4:])
