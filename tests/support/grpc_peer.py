#!/usr/bin/env python3
"""A real gRPC peer for Outrigger's tests, on Python's grpcio: generic
handlers with raw-bytes messages, so no .proto file or protoc is needed.

    grpc_peer.py serve --name NAME [--status CODE] [--slow-ms MS]
        Serves `outrigger.test.Echo` on 127.0.0.1 at an ephemeral port and
        prints `PORT <n>` once it listens. `--status` fails every call with
        CODE (a trailers-only answer); `--slow-ms` sleeps before answering.

    grpc_peer.py call --target HOST:PORT --method METHOD [options]
        Calls METHOD once (or `--repeat` times) and prints one JSON object:
        the outcome of the call, or a summary of the repeated calls.

Methods: Unary echoes its request; ServerStream answers N messages
`msg-<i>` for a request of N; ClientStream answers
`messages=<n> bytes=<m>`; Bidi echoes each message; Fail aborts with the
code its request names (trailers-only); FailLate sends its initial metadata
first, so that code comes in the trailers; Slow sleeps the milliseconds its request names.
Every answer's initial metadata names the replica (`x-replica`) and echoes
the caller's `x-*` metadata as `echo-x-*`; its trailing metadata carries
`x-trailer: done` and `x-deadline-ms`, the caller's deadline as the
replica saw it on arrival (`none` without one). A failing call carries
`x-replica`, `x-deadline-ms` and the echoed `echo-x-*` metadata in its
trailers (it has no initial metadata).
"""

import argparse
import json
import queue
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "outrigger.test.Echo"

# grpcio honours http_proxy and friends by default: the tests talk to
# loopback ports and must never be sent through a proxy.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


def raw(message):
    return message


def code_named(name):
    try:
        return grpc.StatusCode[name.upper()]
    except KeyError:
        raise SystemExit(f"unknown gRPC code {name!r}")


def deadline_ms(context):
    """The caller's deadline as the replica sees it: milliseconds left, or `none`."""
    remaining = context.time_remaining()
    return "none" if remaining is None or remaining > 10**6 else str(int(remaining * 1000))


def echoed(context):
    """The caller's `x-*` metadata, as `echo-x-*`."""
    return [("echo-" + key, value) for key, value in context.invocation_metadata() if key.startswith("x-")]


class Echo:
    """The handlers of one replica."""

    def __init__(self, name, status, slow_ms):
        self.name = name
        self.status = code_named(status) if status else None
        self.slow_ms = slow_ms

    def arrive(self, context):
        """What every call does first: remember the deadline as it came,
        fail when the replica is set to, wait when it is slow."""
        deadline = deadline_ms(context)
        if self.status is not None:
            self.fail(context, self.status, f"{self.name} answers {self.status.name}")
        if self.slow_ms:
            time.sleep(self.slow_ms / 1000)
        context.send_initial_metadata([("x-replica", self.name)] + echoed(context))
        context.set_trailing_metadata([("x-trailer", "done"), ("x-deadline-ms", deadline)])

    def fail(self, context, code, details):
        trailing = [("x-replica", self.name), ("x-deadline-ms", deadline_ms(context))]
        context.set_trailing_metadata(trailing + echoed(context))
        context.abort(code, details)

    def unary(self, request, context):
        self.arrive(context)
        return request

    def server_stream(self, request, context):
        self.arrive(context)
        for i in range(int(request or b"0")):
            yield b"msg-%d" % i

    def client_stream(self, requests, context):
        self.arrive(context)
        count = size = 0
        for message in requests:
            count += 1
            size += len(message)
        return b"messages=%d bytes=%d" % (count, size)

    def bidi(self, requests, context):
        self.arrive(context)
        for message in requests:
            yield message

    def fail_as_asked(self, request, context):
        self.fail(context, code_named(request.decode()), "asked to fail")

    def fail_late(self, request, context):
        context.send_initial_metadata([("x-replica", self.name)])
        context.abort(code_named(request.decode()), "asked to fail after the head")

    def slow(self, request, context):
        self.arrive(context)
        time.sleep(int(request or b"0") / 1000)
        return b"slept"


def serve(args):
    echo = Echo(args.name, args.status, args.slow_ms)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary, raw, raw),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo.server_stream, raw, raw),
        "ClientStream": grpc.stream_unary_rpc_method_handler(echo.client_stream, raw, raw),
        "Bidi": grpc.stream_stream_rpc_method_handler(echo.bidi, raw, raw),
        "Fail": grpc.unary_unary_rpc_method_handler(echo.fail_as_asked, raw, raw),
        "FailLate": grpc.unary_unary_rpc_method_handler(echo.fail_late, raw, raw),
        "Slow": grpc.unary_unary_rpc_method_handler(echo.slow, raw, raw),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=128))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def requests_of(args, answered=None):
    """The messages a client-streaming or bidi call sends; with `answered`
    (a queue a bidi call's answers are put on), each after the answer to
    the one before it."""
    for i in range(args.messages):
        if i and answered is not None:
            answered.get(timeout=10)
        if i and args.interval_ms:
            time.sleep(args.interval_ms / 1000)
        if i == args.messages - 1 and args.last_message_bytes:
            yield b"x" * args.last_message_bytes
        elif args.message_bytes:
            yield b"x" * args.message_bytes
        else:
            yield b"m-%d" % i


def one_call(channel, args):
    """One call of args.method: its outcome as a dict."""
    path = f"/{SERVICE}/{args.method}"
    metadata = [tuple(pair.split("=", 1)) for pair in args.metadata]
    timeout = args.timeout
    payload = args.payload.encode()
    started = time.monotonic()
    messages = []
    answered = queue.Queue() if args.lockstep else None
    call = None
    try:
        if args.method in ("ServerStream", "Bidi"):
            if args.method == "ServerStream":
                stub = channel.unary_stream(path, raw, raw)
                call = stub(payload, metadata=metadata, timeout=timeout)
            else:
                stub = channel.stream_stream(path, raw, raw)
                call = stub(requests_of(args, answered), metadata=metadata, timeout=timeout)
            for message in call:
                messages.append(message)
                if answered is not None:
                    answered.put(message)
        elif args.method == "ClientStream":
            stub = channel.stream_unary(path, raw, raw)
            answer, call = stub.with_call(requests_of(args), metadata=metadata, timeout=timeout)
            messages.append(answer)
        else:
            stub = channel.unary_unary(path, raw, raw)
            answer, call = stub.with_call(payload, metadata=metadata, timeout=timeout)
            messages.append(answer)
    except grpc.RpcError as err:
        call = err
    elapsed_ms = (time.monotonic() - started) * 1000
    return {
        "code": call.code().name,
        "details": call.details() or "",
        # Large messages are summed up, not printed.
        "messages": [m.decode("latin-1") for m in messages if len(m) <= 1024],
        "message_count": len(messages),
        "bytes": sum(len(m) for m in messages),
        "initial": dict(call.initial_metadata() or ()),
        "trailing": dict(call.trailing_metadata() or ()),
        "elapsed_ms": elapsed_ms,
    }


def call(args):
    options = list(CHANNEL_OPTIONS)
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    channel = grpc.insecure_channel(args.target, options=options)
    if not args.repeat:
        print(json.dumps(one_call(channel, args)))
        return
    codes, replicas, by_replica, failures, lock = {}, {}, {}, [], threading.Lock()
    slowest = [0.0]

    def tally(_):
        outcome = one_call(channel, args)
        replica = outcome["initial"].get("x-replica") or outcome["trailing"].get("x-replica", "")
        with lock:
            codes[outcome["code"]] = codes.get(outcome["code"], 0) + 1
            replicas[replica] = replicas.get(replica, 0) + 1
            ended = by_replica.setdefault(replica, {})
            ended[outcome["code"]] = ended.get(outcome["code"], 0) + 1
            if outcome["code"] != "OK" and len(failures) < 10:
                reason = outcome["trailing"].get("x-outrigger", "")
                failures.append(f"{outcome['code']} {reason}: {outcome['details']}")
            slowest[0] = max(slowest[0], outcome["elapsed_ms"])

    started = time.monotonic()
    with futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        list(pool.map(tally, range(args.repeat)))
    print(json.dumps({
        "codes": codes,
        "replicas": replicas,
        "by_replica": by_replica,
        "failures": failures,
        "elapsed_ms": (time.monotonic() - started) * 1000,
        "slowest_ms": slowest[0],
    }))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--status", help="fail every call with this code")
    s.add_argument("--slow-ms", type=int, default=0)
    c = sub.add_parser("call")
    c.add_argument("--target", required=True, help="host:port")
    c.add_argument("--method", required=True)
    c.add_argument("--authority", help=":authority to send (the service to route to)")
    c.add_argument("--payload", default="")
    c.add_argument("--metadata", action="append", default=[], help="key=value")
    c.add_argument("--timeout", type=float, help="the call's deadline, in seconds")
    c.add_argument("--messages", type=int, default=0, help="messages a client or bidi stream sends")
    c.add_argument("--message-bytes", type=int, default=0, help="size of each (else m-<i>)")
    c.add_argument("--last-message-bytes", type=int, default=0, help="size of the last one")
    c.add_argument("--lockstep", action="store_true",
                   help="a bidi call sends each message once the last was answered")
    c.add_argument("--interval-ms", type=int, default=0, help="wait between them")
    c.add_argument("--repeat", type=int, default=0, help="calls to make; prints a summary")
    c.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args)
    else:
        call(args)


if __name__ == "__main__":
    sys.exit(main())
