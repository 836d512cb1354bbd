"""Command line of the load generator.

    python -m loadtest.loadgen --url http://127.0.0.1:8000/v1 --model M --key tg-... \\
        (--concurrency 32 | --rate 500) [--stream] [--requests N] [--duration S] \\
        [--server-pid PID] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import orjson

from .runner import LoadSpec, run_load


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loadgen", description="Bounded loopback load generator "
                                "for an OpenAI chat completions endpoint.")
    p.add_argument("--url", required=True, help="OpenAI base URL on loopback, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True)
    p.add_argument("--key", default="bench", help="API key sent as Bearer")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--concurrency", type=int, help="closed loop: requests outstanding at once")
    mode.add_argument("--rate", type=float, help="open loop: requests started per second")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default=None, help="default: one the simulator answers in full")
    p.add_argument("--requests", type=int, default=1000, help="at most this many requests")
    p.add_argument("--duration", type=float, default=10.0, help="at most this many seconds")
    p.add_argument("--warmup", type=int, default=0, help="unrecorded requests sent first")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--max-in-flight", type=int, default=1024, help="rate mode: drop beyond this")
    p.add_argument("--server-pid", type=int, action="append", default=[],
                   help="report CPU per request and RSS of this process and its children")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    spec = LoadSpec(
        base_url=args.url, model=args.model, api_key=args.key, stream=args.stream,
        max_tokens=args.max_tokens, prompt=args.prompt, concurrency=args.concurrency,
        rate=args.rate, requests=args.requests, duration=args.duration, warmup=args.warmup,
        timeout=args.timeout, max_in_flight=args.max_in_flight,
        server_pids=tuple(args.server_pid),
    )
    try:
        spec.validate()
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(run_load(spec))
    if args.json:
        print(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(result.summary())
    return 0 if result.ok and not result.error_count else 1
