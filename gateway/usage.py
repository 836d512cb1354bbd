"""The usage event: what settlement appends and billing records (part of ``gateway.contract``).

Settlement appends one event per request id to the shard's Redis Stream
(``keyspace.usage_stream_key``) in the same Lua script that charges the balance, so an
event exists if and only if the charge happened. The billing worker reads the stream,
rebuilds the event with :meth:`UsageEvent.from_fields` and inserts it idempotently
(unique ``request_id``) into the ledger.

The stream entry's field names are this dataclass's field names, and the values are
strings: integers in decimal, ``stream`` as ``"1"``/``"0"``, times as Redis ``TIME`` in
milliseconds, ``grants`` as the charge by grant (``"g1:30,g2:5"``, drawing order; empty for
a charge of 0). ``charge`` is what was collected (the sum of ``grants``); ``uncollected``
is what the request cost beyond it, which the balance could not pay at settlement (normally
0; absent from events written before it existed). ``gateway/quota/lua/settle_v4.lua``
writes the same fields (plus ``epoch``, the balance life it was charged to, which only the
gateway's journal reads); change both together. Times leave the system as ISO 8601 UTC
(:func:`ms_to_iso`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, get_args

from gateway.keyspace import reply_text

# How a request ended and who counted its tokens. The aliases are for the type checker
# only (no cost per request); the constants are the values code writes.
Status = Literal["ok", "partial", "client_gone", "upstream_error", "expired"]
CountedBy = Literal["upstream", "gateway"]

STATUS_OK: Final = "ok"
STATUS_PARTIAL: Final = "partial"
STATUS_CLIENT_GONE: Final = "client_gone"
STATUS_UPSTREAM_ERROR: Final = "upstream_error"
STATUS_EXPIRED: Final = "expired"
STATUSES: frozenset[str] = frozenset(get_args(Status))

COUNTED_BY_UPSTREAM: Final = "upstream"
COUNTED_BY_GATEWAY: Final = "gateway"
COUNTED_BY: frozenset[str] = frozenset(get_args(CountedBy))

FieldsIn = Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_INT_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "charge",
    "uncollected",
    "started_at_ms",
    "finished_at_ms",
)
# Absent from events written before these fields existed (their defaults apply).
_OPTIONAL = frozenset({"grants", "uncollected"})
_NOT_IN_RECORD = frozenset({"started_at_ms", "finished_at_ms", "grants"})


def ms_to_iso(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with milliseconds, e.g. ``...T12:00:00.123Z``.

    Integer arithmetic only, so a time read back with :func:`iso_to_ms` is the same integer.
    """
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def iso_to_ms(text: str) -> int:
    """Parse an ISO 8601 time (``Z`` or an offset; naive means UTC) to epoch milliseconds."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def parse_allocation(text: str) -> list[tuple[str, int]]:
    """``'g1:30,g2:5'`` -> ``[('g1', 30), ('g2', 5)]``: credits by grant, in drawing order."""
    parts: list[tuple[str, int]] = []
    for item in filter(None, text.split(",")):
        grant, sep, amount = item.rpartition(":")
        if not sep or not grant or not amount.isdigit():
            raise ValueError(f"not a grant allocation: {text!r}")
        parts.append((grant, int(amount)))
    return parts


def format_allocation(parts: Sequence[tuple[str, int]]) -> str:
    """The inverse of :func:`parse_allocation`; parts of 0 are left out."""
    return ",".join(f"{grant}:{amount}" for grant, amount in parts if amount > 0)


def _as_text(fields: FieldsIn) -> Mapping[str, str]:
    """The fields with str names and values; a dict of str already (the billing worker's) as is."""
    if type(fields) is dict and all(type(k) is str and type(v) is str for k, v in fields.items()):
        return fields
    return {reply_text(k): reply_text(v) for k, v in fields.items()}


_ABSENT = object()


def _flag(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError(f"usage event field stream must be 0 or 1, not {raw!r}")
    return raw == "1"


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """What one request used and was charged; exactly one per request id."""

    request_id: str
    account_id: str
    key_id: str
    model: str
    cluster: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    charge: int
    status: Status
    counted_by: CountedBy
    stream: bool
    started_at_ms: int
    finished_at_ms: int
    grants: str = ""  # which grants paid the charge: 'g1:30,g2:5'
    uncollected: int = 0  # credits due beyond the charge that the balance could not pay

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown usage status {self.status!r}")
        if self.counted_by not in COUNTED_BY:
            raise ValueError(f"unknown counted_by {self.counted_by!r}")
        for name in _INT_FIELDS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def allocation(self) -> list[tuple[str, int]]:
        """The charge by grant, in drawing order: ``[('g1', 30), ('g2', 5)]``."""
        return parse_allocation(self.grants)

    @property
    def started_at(self) -> str:
        return ms_to_iso(self.started_at_ms)

    @property
    def finished_at(self) -> str:
        return ms_to_iso(self.finished_at_ms)

    def to_fields(self) -> dict[str, str]:
        """The Redis Stream entry (all values strings), as ``settle_v4.lua`` writes it."""
        fields: dict[str, str] = {}
        for name in EVENT_FIELDS:
            value = getattr(self, name)
            fields[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return fields

    @classmethod
    def from_fields(cls, fields: FieldsIn) -> UsageEvent:
        """Rebuild an event from a stream entry; unknown fields are ignored (newer writers)."""
        text = _as_text(fields)
        values: dict[str, object] = {}
        for name, parse in _PARSERS:
            raw = text.get(name, _ABSENT)
            if raw is _ABSENT:
                if name in _OPTIONAL:
                    continue
                raise ValueError(f"usage event lacks field {name!r}")
            values[name] = raw if parse is None else parse(raw)  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def to_record(self) -> dict[str, str | int | bool]:
        """The usage record as the API and the CSV export show it (ISO 8601 times)."""
        record: dict[str, str | int | bool] = {}
        for name in EVENT_FIELDS:
            if name not in _NOT_IN_RECORD:
                record[name] = getattr(self, name)
        record["started_at"] = self.started_at
        record["finished_at"] = self.finished_at
        return record


# The event's field names in order, once (dataclasses.fields() rebuilds its tuple per call).
EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(UsageEvent))
# How from_fields turns each field's text into its value (None: the text itself), in order.
_PARSERS: tuple[tuple[str, Callable[[str], object] | None], ...] = tuple(
    (name, _flag if name == "stream" else int if name in _INT_FIELDS else None) for name in EVENT_FIELDS
)
