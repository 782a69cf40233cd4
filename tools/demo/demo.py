"""The README's main job: Squeeze end to end on the embedded default model.

1. starts the real squeezed (CPU backend, SmolLM2-135M-Instruct from the model cache) on a free
   loopback port with a fresh data directory, and checks gRPC health and GetServerInfo;
2. registers tools/demo/sample_document.md as a context (shown with ChatML around it) and follows
   its ingestion (prefill, k-means, calibration, persistence) with WatchContext;
3. asks the questions of tools/demo/questions.json, streaming each answer token by token, once with
   Squeezed Attention at the server's default KV budget and once DENSE, and prints usage: context
   tokens, share of the context's keys read, time to first token;
4. stops the server with SIGTERM (clean drain).
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "lib"))
import squeeze_testlib as lib  # noqa: E402

SYSTEM = "You are a helpful assistant. Answer the question using only the document."


def context_text(document):
    # The fixed context is the start of a ChatML conversation: system turn + the document in the
    # user turn. Each question continues that user turn, so many questions share one context.
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\nDocument:\n{document.strip()}\n")


def question_text(question):
    return f"\nQuestion: {question}<|im_end|>\n<|im_start|>assistant\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--squeezed", required=True)
    p.add_argument("--stubs", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--document", default=os.path.join(HERE, "sample_document.md"))
    p.add_argument("--questions", default=os.path.join(HERE, "questions.json"))
    p.add_argument("--max-tokens", type=int, default=48)
    args = p.parse_args()
    lib.import_stubs(args.stubs)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from squeeze.v1 import context_service_pb2 as ctx_pb
    from squeeze.v1 import context_service_pb2_grpc as ctx_rpc
    from squeeze.v1 import generation_service_pb2 as gen_pb
    from squeeze.v1 import generation_service_pb2_grpc as gen_rpc
    from squeeze.v1 import squeeze_options_pb2 as opt_pb

    document = open(args.document, encoding="utf-8").read()
    questions = json.load(open(args.questions, encoding="utf-8"))
    data_dir = tempfile.mkdtemp(prefix="squeeze-demo-")
    server = lib.Squeezed(args.squeezed, args=["--data-dir", data_dir],
                          config_text=open(args.config).read())
    print("starting squeezed (loading the default model)...", flush=True)
    server.start(timeout=600)
    print(f"squeezed is serving on {server.address}")
    failures = 0
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=10)
            print("health:", health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))
            gen = gen_rpc.GenerationServiceStub(channel)
            ctxs = ctx_rpc.ContextServiceStub(channel)
            info = gen.GetServerInfo(gen_pb.GetServerInfoRequest(), timeout=10)
            m = info.model
            print(f"model: {m.name} ({m.architecture}, {m.layers} layers, {m.query_heads}/"
                  f"{m.kv_heads} heads, {m.max_positions} positions, chat template "
                  f"{m.chat_template or 'none'}) on {info.backend} ({', '.join(info.devices)})")

            # Register the document.
            t0 = time.time()
            created = ctxs.CreateContext(ctx_pb.CreateContextRequest(
                context_id="sample-manual", text=context_text(document).encode()), timeout=60)
            print(f"\nregistered {created.name}: {created.token_count} tokens")
            last = None
            for c in ctxs.WatchContext(ctx_pb.WatchContextRequest(name=created.name)):
                state = ctx_pb.ContextState.Name(c.state)
                bar = "#" * int(c.progress * 30)
                print(f"\r  {state:<12} [{bar:<30}] {c.progress * 100:5.1f}%", end="", flush=True)
                last = c
            print()
            if last is None or last.state != ctx_pb.READY:
                print("ingestion failed:", last.error if last else "no update")
                return 1
            print(f"  READY in {time.time() - t0:.1f} s; {last.stored_bytes / 2**20:.1f} MiB "
                  f"of KV and index persisted in RocksDB")

            for q in questions:
                print(f"\nQ: {q['question']}")
                for mode_name, mode in (("squeezed", opt_pb.AttentionOptions.SQUEEZED),
                                        ("dense", opt_pb.AttentionOptions.DENSE)):
                    req = gen_pb.GenerateRequest(
                        context=created.name, text=question_text(q["question"]).encode(),
                        sampling=gen_pb.SamplingParams(max_tokens=args.max_tokens, temperature=0),
                        attention=opt_pb.AttentionOptions(mode=mode))
                    text, final = "", None
                    print(f"  [{mode_name:>8}] ", end="", flush=True)
                    for msg in gen.Generate(req, timeout=600,
                                            metadata=(("x-squeeze-context", "sample-manual"),)):
                        if msg.HasField("chunk"):
                            text += msg.chunk.text
                            print(msg.chunk.text.replace("\n", " "), end="", flush=True)
                        else:
                            final = msg.final
                    ok = q["answer"].lower() in text.lower()
                    failures += 0 if ok else 1
                    u, t = final.usage, final.timings
                    print(f"\n             {'correct' if ok else 'WRONG (expected ' + q['answer'] + ')'}"
                          f" | context {u.context_tokens} + prompt {u.prompt_tokens} + completion "
                          f"{u.completion_tokens} tokens | context keys read "
                          f"{u.context_keys_read * 100:.1f}% | time to first token "
                          f"{t.time_to_first_token_s:.2f} s | total {t.total_s:.2f} s")
    finally:
        code = server.terminate()
        print(f"\nsqueezed stopped with exit code {code}")
    print(f"{len(questions) * 2 - failures} of {len(questions) * 2} answers correct")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
