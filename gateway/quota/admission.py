"""What admission answers: an :class:`Admission`, or the domain error of a refusal.

``admit_v4.lua`` replies with a flat list whose first element names the outcome; this
module turns it into the object the gateway uses (the granted ``max_tokens`` to send
upstream, the reservation, the ``x-ratelimit-*`` headers) or raises the error from
``gateway.errors`` with the message and headers an OpenAI client expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import (
    AuthenticationFailed,
    BalanceExhausted,
    BalanceUnknown,
    PermissionDenied,
    RateLimited,
)
from gateway.keyspace import reply_text

Reply = Sequence[bytes | str | int]


def format_duration(ms: int) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*`` (Go style): ``20ms``, ``6m0s``."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    text = f"{seconds}.{millis:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def retry_after_seconds(ms: int) -> int:
    """``Retry-After`` is whole seconds, at least 1: rounding down would invite a retry too soon."""
    return max(1, -(-ms // 1000))


@dataclass(frozen=True, slots=True)
class RateInfo:
    """A key's request and token windows as of the admission (``None`` limit: unlimited)."""

    rpm_limit: int | None
    rpm_remaining: int
    rpm_reset_ms: int
    tpm_limit: int | None
    tpm_remaining: int
    tpm_reset_ms: int

    @classmethod
    def from_reply(cls, values: Reply) -> RateInfo:
        n = [int(v) for v in values[:6]]
        return cls(
            rpm_limit=n[0] if n[0] >= 0 else None,
            rpm_remaining=n[1],
            rpm_reset_ms=n[2],
            tpm_limit=n[3] if n[3] >= 0 else None,
            tpm_remaining=n[4],
            tpm_reset_ms=n[5],
        )

    def headers(self) -> dict[str, str]:
        """``x-ratelimit-*`` as OpenAI sends them; a limit the key does not have is omitted."""
        headers: dict[str, str] = {}
        for kind, limit, remaining, reset in (
            ("requests", self.rpm_limit, self.rpm_remaining, self.rpm_reset_ms),
            ("tokens", self.tpm_limit, self.tpm_remaining, self.tpm_reset_ms),
        ):
            if limit is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(reset)
        return headers


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request: it holds ``reserve`` credits until settled or expired."""

    request_id: str
    max_tokens: int  # granted: send this upstream as max_tokens
    requested_max_tokens: int | None
    prompt_tokens: int  # the upper-bound estimate the reservation was made for
    reserve: int
    started_ms: int  # Redis time
    lease_deadline_ms: int  # Redis time; renew with QuotaStore.checkpoint before it
    replayed: bool  # the id was already admitted: this is that reservation, not a new one
    rate: RateInfo
    epoch: str = ""  # the balance's epoch: a different one at settlement means Redis lost data
    allocation: str = ""  # the reserve by grant, 'g1:30,g2:5'
    key_cap: bool = False  # the reserve is held on the key's credit cap until settled

    @property
    def clamped(self) -> bool:
        """The client asked for more max_tokens than the balance or context window allow."""
        return self.requested_max_tokens is not None and self.max_tokens < self.requested_max_tokens

    def headers(self) -> dict[str, str]:
        return self.rate.headers()

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """The ``x-ratelimit-*`` headers as ASGI header pairs."""
        return [(k.encode(), v.encode()) for k, v in self.rate.headers().items()]


def admission_from_reply(
    reply: Reply, *, request_id: str, requested: int | None, prompt_tokens: int
) -> Admission:
    """The :class:`Admission` of an ``ok``/``dup`` reply; raises the refusal otherwise."""
    kind = reply_text(reply[0])
    if kind in ("ok", "dup"):
        granted, reserve, started, deadline = (int(v) for v in reply[1:5])
        return Admission(
            epoch=reply_text(reply[5]),
            allocation=reply_text(reply[6]),
            request_id=request_id,
            max_tokens=granted,
            requested_max_tokens=requested,
            prompt_tokens=prompt_tokens,
            reserve=reserve,
            started_ms=started,
            lease_deadline_ms=deadline,
            replayed=kind == "dup",
            rate=RateInfo.from_reply(reply[7:]),
            key_cap=len(reply) > 13 and int(reply[13]) == 1,
        )
    raise _refusal(kind, reply, prompt_tokens)


def _refusal(kind: str, reply: Reply, prompt_tokens: int) -> Exception:
    if kind == "auth":
        return AuthenticationFailed("invalid or disabled API key", code="invalid_api_key")
    if kind == "model":
        return PermissionDenied(
            "this API key is not allowed to use the requested model",
            code="model_not_allowed",
            param="model",
        )
    if kind == "unknown":
        return BalanceUnknown(
            "the account's balance is being restored; retry shortly",
            code="balance_unknown",
            headers={"Retry-After": "5"},
        )
    if kind == "balance":
        available, needed, reserved, elsewhere = (int(v) for v in reply[1:5])
        held = f" ({reserved} more held by requests in flight)" if reserved > 0 else ""
        other = (
            f"; {elsewhere} more credits are valid for other models only" if elsewhere > 0 else ""
        )
        return BalanceExhausted(
            f"balance exhausted: {max(available, 0)} credits available{held}, this request "
            f"needs at least {needed} (its {prompt_tokens} prompt tokens and one completion "
            f"token per choice){other}",
            code="insufficient_quota",
        )
    if kind == "key_limit":
        return _key_limit(reply)
    if kind == "rate":
        return _rate_limited(reply_text(reply[1]), reply)
    raise ValueError(f"admit_v4 answered {kind!r}")


def _key_limit(reply: Reply) -> BalanceExhausted:
    """The key's credit cap, not the account's balance, is what leaves too little: 402 with
    its own code, so an app (and its team) can tell "this key's budget" from "no credits"."""
    limit, period = int(reply[1]), reply_text(reply[2])
    spent, held, needed = (int(v) for v in reply[3:6])
    scope = "in total" if period == "total" else f"per {period}"
    spent_when = "in total" if period == "total" else f"this {period}"
    in_flight = f" and {held} more are held by its requests in flight" if held > 0 else ""
    return BalanceExhausted(
        f"this API key's credit limit is reached: {limit} credits {scope}, {spent} spent "
        f"{spent_when}{in_flight}; this request needs at least {needed}",
        code="key_credit_limit",
    )


def _rate_limited(which: str, reply: Reply) -> RateLimited:
    retry_ms, limit, counted = int(reply[2]), int(reply[3]), int(reply[4])
    retry = retry_after_seconds(retry_ms)
    if which == "concurrency":
        message = f"too many concurrent requests for this key: limit {limit}"
    elif which == "tokens" and counted > limit:
        message = (
            f"request too large: it counts {counted} tokens (prompt + max_tokens), over this "
            f"key's limit of {limit} tokens per minute; lower max_tokens or the prompt"
        )
    else:
        message = f"rate limit reached for {which} per minute: limit {limit}"
    headers = RateInfo.from_reply(reply[5:]).headers()
    if which != "tokens" or counted <= limit:
        message += f"; retry after {retry}s"
        headers["Retry-After"] = str(retry)  # none when waiting can never help
    return RateLimited(message, code="rate_limit_exceeded", headers=headers)
