"""Shared per-simulator state: capacity scheduler, counters, faults, metrics text."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, fields
from typing import Any

from .config import FaultSpec, SimConfig
from .textgen import SimModel


@dataclass
class SimStats:
    """Counters behind GET /sim/stats (zeroed by POST /sim/reset)."""

    started: int = 0
    completed: int = 0
    aborted: int = 0  # the client went away before the end
    errored: int = 0  # error_before fault answered with an error status
    reset: int = 0  # reset_after fault dropped the connection
    faults_injected: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0


class Scheduler:
    """FIFO admission of requests needing ``k`` sequence slots out of ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self.waiting = 0
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, k: int) -> None:
        k = min(k, self.capacity)
        if not self._queue and self.running + k <= self.capacity:
            self.running += k
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (k, fut)
        self._queue.append(entry)
        self.waiting += k
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # admitted just as we were cancelled
                self.release(k)
            else:
                self._queue.remove(entry)
                self.waiting -= k
                self._admit()
            raise

    def release(self, k: int) -> None:
        self.running -= min(k, self.capacity)
        self._admit()

    def _admit(self) -> None:
        while self._queue and self.running + self._queue[0][0] <= self.capacity:
            k, fut = self._queue.popleft()
            self.waiting -= k
            self.running += k
            fut.set_result(None)


class SimState:
    """Everything the handlers share for one simulated server."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.model = SimModel.for_tokenizer(config.tokenizer)
        self.scheduler = Scheduler(config.capacity)
        self.fault = FaultSpec(**config.fault.to_dict())
        self.stats = SimStats()
        self.kv_tokens = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.created = time.time()
        # --record-requests N: tokens generated per request id (X-Request-Id), the last N
        # requests', so a test can check that what was billed is at most what was generated.
        self.generated: OrderedDict[str, int] | None = OrderedDict() if config.record_requests else None

    def record_generated(self, request_id: str, tokens: int) -> None:
        generated = self.generated
        if generated is None:
            return
        generated[request_id] = generated.get(request_id, 0) + tokens  # a retry adds up
        generated.move_to_end(request_id)
        while len(generated) > self.config.record_requests:
            generated.popitem(last=False)

    def take_fault(self) -> FaultSpec:
        """The fault for this request (consuming one unit of ``count``)."""
        fault = self.fault
        if fault.mode == "none":
            return fault
        if fault.count is not None:
            if fault.count <= 0:
                self.fault = FaultSpec()
                return self.fault
            fault.count -= 1
            applied = FaultSpec(**fault.to_dict())
            if fault.count == 0:
                self.fault = FaultSpec()
            fault = applied
        self.stats.faults_injected += 1
        return fault

    def set_fault(self, data: dict[str, Any]) -> FaultSpec:
        self.fault = FaultSpec.from_dict(data)
        return self.fault

    def reset_stats(self) -> None:
        self.stats = SimStats()

    def stats_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self.stats, f.name) for f in fields(SimStats)}
        out["running"] = self.scheduler.running
        out["waiting"] = self.scheduler.waiting
        out["fault"] = self.fault.to_dict()
        return out

    def count_prompt(self, n: int) -> None:
        """Prefill: prompt tokens enter the KV cache and the counters."""
        self.prompt_tokens_total += n
        self.stats.prompt_tokens += n
        self.kv_tokens += n

    def count_generated(self, n: int) -> None:
        self.generation_tokens_total += n
        self.stats.generation_tokens += n
        self.kv_tokens += n

    def free_kv(self, n: int) -> None:
        self.kv_tokens -= n

    def metrics_text(self) -> bytes:
        """Prometheus text in prometheus_client's layout with vLLM's names and labels."""
        model = self.config.name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        labels = f'engine="0",model_name="{model}"'
        kv = min(1.0, self.kv_tokens / self.config.kv_tokens)
        lines: list[str] = []

        def metric(name: str, kind: str, doc: str, value: float, extra: str = "") -> None:
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{{{labels}{extra}}} {float(value)!r}")

        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            self.scheduler.running,
        )
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            self.scheduler.waiting,
        )
        metric(
            "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv
        )
        for base, doc, value in (
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens_total),
            (
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
                self.generation_tokens_total,
            ),
        ):
            metric(f"{base}_total", "counter", doc, value)
            metric(f"{base}_created", "gauge", doc, self.created)
        doc = "Count of successfully processed requests."
        lines += [
            f"# HELP vllm:request_success_total {doc}",
            "# TYPE vllm:request_success_total counter",
        ]
        for reason, value in self.finished.items():
            lines.append(
                f'vllm:request_success_total{{engine="0",finished_reason="{reason}",'
                f'model_name="{model}"}} {float(value)!r}'
            )
        return ("\n".join(lines) + "\n").encode()
