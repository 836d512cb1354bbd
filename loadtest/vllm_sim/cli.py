"""Starting simulators: in-process handles, serve() and the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from dataclasses import dataclass

from aiohttp import web

from .app import STATE_KEY, build_app
from .config import FaultSpec, SimConfig
from .engine import SimState


@dataclass
class RunningSim:
    """A simulator listening on a socket; ``url`` has the real port (for port 0)."""

    config: SimConfig
    runner: web.AppRunner
    url: str

    @property
    def state(self) -> SimState:
        return self.runner.app[STATE_KEY]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_sim(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> RunningSim:
    """Listen on host:port. Handler cancellation makes disconnects abort generation."""
    runner = web.AppRunner(
        build_app(config), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    addr = runner.addresses[0]
    bound_host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
    return RunningSim(config, runner, f"http://{bound_host}:{addr[1]}")


async def serve(configs_with_ports: list[tuple[SimConfig, str, int]]) -> None:
    """Run one simulator per (config, host, port) until cancelled."""
    sims: list[RunningSim] = []
    try:
        for config, host, port in configs_with_ports:
            sim = await start_sim(config, host, port)
            sims.append(sim)
            print(f"vllm-sim {config.model} listening on {sim.url}", flush=True)
        await asyncio.Event().wait()
    finally:
        for sim in sims:
            with contextlib.suppress(Exception):
                await sim.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-sim", description="Fast vLLM 0.32 OpenAI-server simulator for load tests."
    )
    d = SimConfig()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port",
        type=int,
        action="append",
        help="port to listen on; repeat to start several simulators (default 8000)",
    )
    p.add_argument(
        "--model",
        action="append",
        help="served model name(s), comma-separated (responses use the first); give one "
        f"for all ports or one per --port (default {d.model})",
    )
    p.add_argument("--tokenizer", default=d.tokenizer, help="tiktoken:<enc> or hf:<dir>")
    p.add_argument("--max-model-len", type=int, default=d.max_model_len)
    p.add_argument("--ttft-ms", type=float, default=d.ttft_ms)
    p.add_argument("--itl-ms", type=float, default=d.itl_ms)
    p.add_argument(
        "--capacity",
        type=int,
        default=d.capacity,
        help="sequences running at once; more wait in a queue",
    )
    p.add_argument("--embedding-dim", type=int, default=d.embedding_dim)
    p.add_argument("--kv-capacity-tokens", type=int, default=None)
    p.add_argument("--no-usage", action="store_true",
                   help="report no usage at all, as some OpenAI-compatible servers do")
    p.add_argument("--ignore-max-tokens", action="store_true",
                   help="answer at natural length whatever max_tokens asks (a misbehaving server)")
    p.add_argument("--ignore-stream", action="store_true",
                   help="always answer with one JSON body, even when a stream is asked for")
    p.add_argument("--record-requests", type=int, default=0, metavar="N",
                   help="test aid: keep the last N request bodies for GET /sim/requests and "
                        "the tokens generated per request id for GET /sim/generated")
    p.add_argument(
        "--fault",
        default=None,
        help='initial fault: JSON or "mode[,key=value...]", e.g. "drip,drip_ms=5"',
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ports = args.port or [8000]
    models = args.model or [SimConfig().model]
    if len(models) == 1:
        models = models * len(ports)
    if len(models) != len(ports):
        print("vllm-sim: give --model once, or once per --port", file=sys.stderr)
        return 2
    try:
        fault = FaultSpec.parse_cli(args.fault) if args.fault else FaultSpec()
        configs = [
            (
                SimConfig(
                    model=model,
                    tokenizer=args.tokenizer,
                    max_model_len=args.max_model_len,
                    ttft_ms=args.ttft_ms,
                    itl_ms=args.itl_ms,
                    capacity=args.capacity,
                    embedding_dim=args.embedding_dim,
                    kv_capacity_tokens=args.kv_capacity_tokens,
                    fault=FaultSpec(**fault.to_dict()),
                    report_usage=not args.no_usage,
                    ignore_max_tokens=args.ignore_max_tokens,
                    ignore_stream=args.ignore_stream,
                    record_requests=args.record_requests,
                ),
                args.host,
                port,
            )
            for port, model in zip(ports, models, strict=True)
        ]
    except ValueError as exc:
        print(f"vllm-sim: {exc}", file=sys.stderr)
        return 2
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as r:
        r.run(serve(configs))
    return 0
