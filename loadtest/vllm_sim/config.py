"""Simulator knobs and the runtime-settable fault specification."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal, cast

FaultMode = Literal["none", "error_before", "reset_after", "hang", "drip"]
FAULT_MODES: tuple[str, ...] = ("none", "error_before", "reset_after", "hang", "drip")


@dataclass
class FaultSpec:
    """A fault applied to generation requests (chat and completions).

    ``count`` is how many further requests it applies to (None = until changed);
    when it reaches 0 the mode reverts to ``none``. ``message``: the error message of an
    ``error_before`` answer (default: the status's phrase), e.g. a traceback to leak.
    """

    mode: FaultMode = "none"
    status: int = 500
    after_tokens: int = 0
    drip_ms: float = 0.0
    count: int | None = None
    message: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSpec:
        """Validate a JSON object (POST /sim/faults, --fault) into a spec."""
        unknown = set(data) - {"mode", "status", "after_tokens", "drip_ms", "count", "message"}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        mode = data.get("mode", "none")
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {FAULT_MODES}, got {mode!r}")
        status = _int(data, "status", 500)
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400..599)")
        after_tokens = _int(data, "after_tokens", 0)
        drip_ms = data.get("drip_ms", 0.0)
        if isinstance(drip_ms, bool) or not isinstance(drip_ms, int | float) or drip_ms < 0:
            raise ValueError("drip_ms must be a number >= 0")
        count = data.get("count")
        if count is not None:
            count = _int(data, "count", 0)
        if after_tokens < 0 or (count is not None and count < 0):
            raise ValueError("after_tokens and count must be >= 0")
        message = data.get("message")
        if message is not None and not isinstance(message, str):
            raise ValueError("message must be a string")
        return cls(cast(FaultMode, mode), status, after_tokens, float(drip_ms), count, message)

    @classmethod
    def parse_cli(cls, text: str) -> FaultSpec:
        """Parse ``--fault``: a JSON object or ``mode[,key=value...]``."""
        import orjson

        text = text.strip()
        if text.startswith("{"):
            return cls.from_dict(orjson.loads(text))
        mode, *pairs = text.split(",")
        data: dict[str, Any] = {"mode": mode.strip()}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"expected key=value in --fault, got {pair!r}")
            data[key.strip()] = None if value.strip() == "null" else float(value)
        for key in ("status", "after_tokens", "count"):
            if isinstance(data.get(key), float):
                data[key] = int(data[key])
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(data: dict[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    return value


@dataclass
class SimConfig:
    """One simulated vLLM server.

    ``capacity`` is the number of sequences (choices) running at once; further
    requests queue FIFO and show up in ``vllm:num_requests_waiting``.
    ``kv_capacity_tokens`` (default capacity * max_model_len) is the denominator
    of ``vllm:kv_cache_usage_perc``.
    """

    model: str = "sim-model"  # served name(s), comma-separated; responses use the first
    tokenizer: str = "tiktoken:cl100k_base"
    max_model_len: int = 4096
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    capacity: int = 256
    embedding_dim: int = 64
    kv_capacity_tokens: int | None = None
    fault: FaultSpec = field(default_factory=FaultSpec)
    # Misbehaviours of other OpenAI-compatible servers, for the gateway's metering tests:
    report_usage: bool = True  # False: never any usage (streams and whole answers)
    ignore_max_tokens: bool = False  # True: answers run to their natural length regardless
    ignore_stream: bool = False  # True: always one JSON body, whatever "stream" asks
    # A test aid: keep the bodies of the last N /v1 POSTs for GET /sim/requests (0: none).
    record_requests: int = 0

    def __post_init__(self) -> None:
        if self.max_model_len < 1 or self.capacity < 1 or self.embedding_dim < 1:
            raise ValueError("max_model_len, capacity and embedding_dim must be >= 1")
        if not self.served_names:
            raise ValueError("model needs at least one served name")
        if self.record_requests < 0:
            raise ValueError("record_requests must be >= 0")
        if self.ttft_ms < 0 or self.itl_ms < 0:
            raise ValueError("ttft_ms and itl_ms must be >= 0")

    @cached_property
    def served_names(self) -> list[str]:
        """Like vLLM's --served-model-name list: all are accepted, the first is reported."""
        return [name.strip() for name in self.model.split(",") if name.strip()]

    @property
    def name(self) -> str:
        return self.served_names[0]

    @property
    def kv_tokens(self) -> int:
        return self.kv_capacity_tokens or self.capacity * self.max_model_len
