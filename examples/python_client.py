#!/usr/bin/env python3
"""Squeeze from Python: register a document once, follow its ingestion, then stream an answer.

    python3 examples/python_client.py --server 127.0.0.1:50051 --stubs build/python \\
        --file manual.txt --question "How do I reset the device?"

Needs grpcio (Debian: python3-grpcio; PyPI: grpcio) and the squeeze.v1 stubs generated from
proto/squeeze/v1 (the build writes them to build/python; pass --stubs or put it on PYTHONPATH).
Registering the same id with the same content again is cheap: the server returns the existing
context, so a client may simply register at start-up.
"""

import argparse
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="squeezed address")
    parser.add_argument("--file", required=True, help="the document to register (UTF-8 text)")
    parser.add_argument("--question", required=True, help="text appended after the document")
    parser.add_argument("--context-id", default="", help="id for the document (default: made "
                        "by the server); 1..128 characters of a-z 0-9 - _ .")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--api-key", default="", help="when the server has server.auth.api_keys")
    parser.add_argument("--stubs", help="folder holding squeeze/v1/*_pb2.py")
    args = parser.parse_args()
    if args.stubs:
        sys.path.insert(0, args.stubs)

    import grpc
    from squeeze.v1 import context_service_pb2 as ctx_pb
    from squeeze.v1 import context_service_pb2_grpc as ctx_grpc
    from squeeze.v1 import generation_service_pb2 as gen_pb
    from squeeze.v1 import generation_service_pb2_grpc as gen_grpc

    channel = grpc.insecure_channel(args.server)  # grpc.secure_channel(...) when TLS is on
    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else None
    contexts = ctx_grpc.ContextServiceStub(channel)
    generation = gen_grpc.GenerationServiceStub(channel)

    try:
        # 1. Register: the reply comes at once (state QUEUED); ingestion runs in the background.
        with open(args.file, "rb") as f:
            text = f.read()
        context = contexts.CreateContext(
            ctx_pb.CreateContextRequest(context_id=args.context_id, text=text),
            metadata=metadata, timeout=30)
        print(f"registered {context.name}: {context.token_count} tokens")

        # 2. Follow the ingestion; the stream ends once the context is READY (or FAILED).
        # On a terminal the progress line is redrawn in place; otherwise one line per state.
        last_state = None
        for update in contexts.WatchContext(ctx_pb.WatchContextRequest(name=context.name),
                                            metadata=metadata, timeout=600):
            line = f"  {ctx_pb.ContextState.Name(update.state):<12} {update.progress:5.0%}"
            if sys.stdout.isatty():
                print("\r" + line, end="\n" if update.state == ctx_pb.READY else "", flush=True)
            elif update.state != last_state:
                print(line, flush=True)
            last_state = update.state
            if update.state == ctx_pb.FAILED:
                sys.exit(f"\ningestion failed: {update.error}")

        # 3. Stream an answer over the context (greedy; SQUEEZED attention by default).
        request = gen_pb.GenerateRequest(
            context=context.name, text=args.question.encode(),
            sampling=gen_pb.SamplingParams(max_tokens=args.max_tokens, temperature=0.0))
        sys.stdout.write(args.question)
        final = None
        for response in generation.Generate(request, metadata=metadata, timeout=600):
            if response.HasField("chunk"):
                sys.stdout.write(response.chunk.text)
                sys.stdout.flush()
            else:
                final = response.final
        print()
    except grpc.RpcError as e:
        sys.exit(f"error: {e.code().name}: {e.details()}")
    finally:
        channel.close()

    u, t = final.usage, final.timings
    print(f"usage: context {u.context_tokens} tokens, prompt {u.prompt_tokens} tokens, "
          f"completion {u.completion_tokens} tokens; keys read {100 * u.context_keys_read:.1f}%; "
          f"first token after {t.time_to_first_token_s:.3f} s")


if __name__ == "__main__":
    main()
