"""The quota store: admission, checkpoints, settlement and expiry, one Lua script each.

Every change to an account's credits or a key's limits is one atomic script run in Redis
(``lua/*.lua``), never read-then-write from Python, so concurrent gateways cannot
overdraw a balance. The lifecycle of a request:

    admit       -> Admission (reserves credits from the account's grants that are live and
                   valid for the model, soonest expiry first, no more than a capped key's
                   room; counts rate limits; takes a lease)
    checkpoint  -> renews the lease and records the tokens delivered so far
    settle      -> charges the actual cost: up to the reserve to the grants reserved from
                   (releasing the reservation), the excess to the available credits valid for
                   the model, never below zero (what they cannot pay is ``uncollected`` on
                   the event); a capped key's hold becomes its spending in the period (and
                   its excess is limited by the cap); appends the UsageEvent to the shard's
                   stream; a second settle is a no-op
    reap        -> settles the requests whose lease passed (their gateway died) as
                   ``expired``: charged the last checkpoint (by the same rule), or nothing
                   without one; and confirms the settlement journal (see ``journal.py``)

All money is integer credits. ``spent`` accumulates every charge, the charges of expired
requests included, so the sum of the charges of an account's usage events equals its
``spent``; ``expired`` is what lapsed grants left unused. Redis unreachable means
:class:`QuotaUnavailable`: the gateway fails closed rather than serve unmetered.

The store remembers each admission it made until it settles it, so that a reservation lost
with Redis data (its balance came back with another epoch, or not at all) is still charged
when the request ends: the request was served, so it must be metered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, Unpack

from gateway import keyspace
from gateway.errors import BadRequest
from gateway.keyspace import reply_text
from gateway.quota.accounts import AccountStore
from gateway.quota.admission import Admission, admission_from_reply
from gateway.quota.journal import SettlementJournal
from gateway.quota.keys import admit_keys, checkpoint_keys, settle_keys
from gateway.quota.reservation import Reservation
from gateway.quota.scripts import RedisClient
from gateway.redisio import FastRedis
from gateway.usage import COUNTED_BY, STATUS_EXPIRED, STATUSES, UsageEvent

__all__ = ["Admission", "Charged", "QuotaStore"]


HELD_LIMIT = 100_000  # admissions remembered; the oldest are forgotten past this


@dataclass(frozen=True, slots=True)
class Charged:
    """What one settlement charged: ``charge`` collected from the balance, and
    ``uncollected``, the rest of the actual cost that the balance could not pay (normally 0)."""

    charge: int
    uncollected: int = 0


@dataclass(frozen=True, slots=True)
class _Held:
    """What settlement needs of an admission if Redis lost its reservation."""

    epoch: str
    reserve: int
    input_pm: int
    output_pm: int
    started_ms: int
    key_cap: bool
    allocation: str
    model: str

    def packed(self) -> str:
        """One argument for settle_v4.lua (the model last: it may contain '|')."""
        return (f"{self.epoch}|{self.reserve}|{self.input_pm}|{self.output_pm}|"
                f"{self.started_ms}|{int(self.key_cap)}|{self.allocation}|{self.model}")  # fmt: skip


class QuotaStore(AccountStore):
    """Credits, reservations and rate limits in Redis (standalone or Cluster)."""

    def __init__(
        self,
        client: RedisClient,
        *,
        lease_ms: int = 30_000,
        timeout_s: float | None = 2.0,
        fast: FastRedis | None = None,
    ) -> None:
        super().__init__(client, lease_ms=lease_ms, timeout_s=timeout_s, fast=fast)
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self.journal = SettlementJournal()

    async def admit(
        self,
        *,
        request_id: str,
        account_id: str,
        key_id: str,
        model: str,
        prompt_tokens: int,
        max_tokens: int | None,
        max_tokens_ceiling: int,
        input_pm: int,
        output_pm: int,
        lease_ms: int | None = None,
        choices: int = 1,
    ) -> Admission:
        """Check the key and reserve credits for prompt + granted max_tokens in one round trip.

        ``max_tokens_ceiling`` is the context window minus the prompt estimate; the grant
        is the least of the request, the ceiling and what the balance pays (and the TPM
        window, when the client set no max_tokens), rounded down to a multiple of
        ``choices`` (n x prompts: each choice gets the same share, at least one token).
        A key with a credit cap is limited the same way by the room its cap leaves
        (BalanceExhausted with code ``key_credit_limit`` when that cannot pay the minimum).
        Raises AuthenticationFailed, PermissionDenied, BalanceUnknown, RateLimited,
        BalanceExhausted, QuotaUnavailable.
        """
        if max_tokens_ceiling < 0:
            raise BadRequest(
                f"the prompt ({prompt_tokens} tokens) leaves no room in the context window",
                code="context_length_exceeded",
                param="messages",
            )
        if max_tokens is not None and max_tokens < 1:
            raise BadRequest("max_tokens must be at least 1", param="max_tokens")
        keys = admit_keys(account_id, key_id)
        args: list[str | int] = [
            request_id, account_id, key_id, model, prompt_tokens,
            -1 if max_tokens is None else max_tokens, max_tokens_ceiling,
            input_pm, output_pm, self.lease_ms if lease_ms is None else lease_ms, choices,
        ]  # fmt: skip
        reply = await self._hot(self.scripts.admit, keys, args)
        admission = admission_from_reply(
            reply, request_id=request_id, requested=max_tokens, prompt_tokens=prompt_tokens
        )
        self._held[request_id] = _Held(
            admission.epoch, admission.reserve, input_pm, output_pm, admission.started_ms,
            admission.key_cap, admission.allocation, model,
        )  # fmt: skip
        if len(self._held) > HELD_LIMIT:
            self._held.popitem(last=False)
        return admission

    async def checkpoint(
        self,
        *,
        request_id: str,
        account_id: str,
        key_id: str,
        completion_tokens: int,
        prompt_tokens: int | None = None,
        lease_ms: int | None = None,
    ) -> bool:
        """Record the tokens delivered so far and renew the lease; False: stop relaying.

        Pass ``prompt_tokens`` when the upstream reported it (continuous usage), so that an
        expiry charges the real prompt rather than the admission's estimate.
        """
        keys = checkpoint_keys(account_id, key_id)
        args: list[str | int] = [
            request_id, account_id, key_id, completion_tokens,
            -1 if prompt_tokens is None else prompt_tokens,
            self.lease_ms if lease_ms is None else lease_ms,
        ]  # fmt: skip
        deadline = await self._hot(self.scripts.checkpoint, keys, args)
        return int(deadline) > 0

    async def settle(self, **request: Unpack[Settlement]) -> Charged | None:
        """Charge the request and append its usage event; what it charged (and could not
        collect), or None if already settled.

        Safe to retry after any error: the reservation's absence makes it a no-op. (The
        request path's settlement: it reads the charge off the reply without building the
        usage event, which only :meth:`settle_event` callers need.)
        """
        return _charge_of(await self._settle_reply(request))

    async def settle_event(self, **request: Unpack[Settlement]) -> UsageEvent | None:
        """As :meth:`settle`, answering the usage event appended (None: already settled)."""
        return _event_of(await self._settle_reply(request))

    async def _settle_reply(self, request: Settlement) -> Sequence[Any]:
        """Validate the settlement and run the settle script (the :class:`Settlement` fields)."""
        status, counted_by = request["status"], request["counted_by"]
        prompt, completion = request["prompt_tokens"], request["completion_tokens"]
        cached = request.get("cached_tokens", 0)
        if status not in STATUSES or status == STATUS_EXPIRED:
            raise ValueError(f"cannot settle with status {status!r}")
        if counted_by not in COUNTED_BY:
            raise ValueError(f"unknown counted_by {counted_by!r}")
        if min(prompt, completion, cached) < 0:
            raise ValueError("token counts must not be negative")
        args: list[Any] = [
            "settle", prompt, completion, cached, status, counted_by,
            "1" if request["stream"] else "0", request["cluster"], request["endpoint"],
        ]  # fmt: skip
        request_id = request["request_id"]
        held = self._held.pop(request_id, None)  # one settle only may use it
        try:
            reply = await self._settle(
                request_id, request["account_id"], request["key_id"], [*args, held.packed() if held else ""]
            )
        except BaseException:
            if held is not None:
                self._held[request_id] = held
            raise
        return reply

    async def confirm_journal(self, shard: int) -> int:
        """Forget the shard's journaled events billing acknowledged; replay what Redis lost."""
        async with self._redis():
            return await self.journal.confirm(self.client, self.scripts, shard)

    async def reap(self, shard: int, limit: int = 100) -> list[UsageEvent]:
        """Settle as ``expired`` up to ``limit`` requests of ``shard`` whose lease passed.

        Each one is re-checked by Redis time inside the script, so a lease a live gateway
        renewed meanwhile is left alone. Any number of reapers may run at once.
        """
        leases = keyspace.leases_key(shard)
        async with self._redis():
            await self.journal.confirm(self.client, self.scripts, shard)
            members = await self.scripts.expired_leases(keys=[leases], args=[limit])
        events: list[UsageEvent] = []
        for member in members:
            text = reply_text(member)
            account_id, _, request_id = text.partition("|")
            async with self._redis():
                raw = await self.client.hget(keyspace.reservations_key(account_id), request_id)
                if raw is None:  # settled since the scan, or a stray lease: drop it
                    await self.client.zrem(leases, member)
                    continue
            key_id = Reservation.decode(raw).key_id
            event = _event_of(await self._settle(request_id, account_id, key_id, ["expire"]))
            self._held.pop(request_id, None)
            if event is not None:
                events.append(event)
        return events

    async def _settle(
        self, request_id: str, account_id: str, key_id: str, args: list[Any]
    ) -> Sequence[Any]:
        keys = settle_keys(account_id, key_id)
        args = [request_id, account_id, key_id, *args, *[""] * (10 - len(args))]
        reply: Sequence[Any] = await self._hot(self.scripts.settle, keys, args)
        if reply[0] in (b"ok", "ok"):
            self.journal.record(reply_text(reply[1]), account_id, reply[2:])
        return reply


class Settlement(TypedDict):
    """What settles a request: its actual usage and how the relay ended (no cached_tokens: 0)."""

    request_id: str
    account_id: str
    key_id: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: NotRequired[int]
    status: str
    counted_by: str
    stream: bool
    cluster: str
    endpoint: str


def _charge_of(reply: Sequence[Any]) -> Charged | None:
    """The ``charge`` and ``uncollected`` fields of an ``ok`` settle reply's event; None
    otherwise. (The request path's: no UsageEvent is built.)"""
    if reply[0] not in (b"ok", "ok"):
        return None
    flat = reply[2:]
    found: dict[str, int] = {}
    for at in range(0, len(flat) - 1, 2):
        name = flat[at]
        if name in _CHARGED:
            found[_CHARGED[name]] = int(flat[at + 1])
            if len(found) == 2:
                return Charged(found["charge"], found["uncollected"])
    raise ValueError("settle reply without a charge and uncollected")


_CHARGED: dict[bytes | str, str] = {
    b"charge": "charge", "charge": "charge", b"uncollected": "uncollected", "uncollected": "uncollected"
}


def _event_of(reply: Sequence[Any]) -> UsageEvent | None:
    """The usage event of an ``ok`` settle reply; None for ``dup`` and ``live``."""
    if reply[0] not in (b"ok", "ok"):
        return None
    flat = reply[2:]
    return UsageEvent.from_fields(dict(zip(flat[0::2], flat[1::2], strict=True)))
