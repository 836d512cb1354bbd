"""What a relay reports back: the usage to settle, how it ended, and whose fault it was."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.catalog import Endpoint
from gateway.errors import GatewayError
from gateway.relay.assemble import answer_tokens
from gateway.relay.meter import Usage, usage_of_response
from gateway.tokenizers import Tokenizer
from gateway.usage import COUNTED_BY_GATEWAY, COUNTED_BY_UPSTREAM, STATUS_OK, CountedBy, Status


@dataclass(slots=True)
class Outcome:
    """What settlement needs to know about how the relay ended.

    ``upstream_fault``: the endpoint broke the request (connection lost, body cut short); it
    counts against the endpoint's health. A slow generation, a client that left, a cut at
    the reservation or an error the upstream answered say nothing of its health.

    ``unanswered``: the endpoint broke a whole answer off before anything reached the
    client, so another endpoint may answer it from the start; this is the error the client
    gets if none does. ``usage`` is still what this attempt generated: it is billed.
    """

    usage: Usage
    status: Status = STATUS_OK
    counted_by: CountedBy = COUNTED_BY_UPSTREAM
    endpoint: Endpoint | None = None
    upstream_fault: bool = False
    unanswered: GatewayError | None = None


def counted(usage: Usage | None, fallback: Usage, status: Status = STATUS_OK, *,
            fault: bool = False) -> Outcome:
    """The upstream's own usage when it sent one, else ``fallback`` counted by the gateway."""
    if usage is not None:
        return Outcome(usage, status=status, upstream_fault=fault)
    return Outcome(fallback, status=status, counted_by=COUNTED_BY_GATEWAY, upstream_fault=fault)


def of_answer(body: bytes, tokenizer: Tokenizer, prompt: Callable[[], int]) -> Outcome:
    """A whole answer's outcome: its usage, else the gateway's count of its content (and
    ``prompt()`` for the prompt)."""
    usage = usage_of_response(body)
    if usage is not None:
        return Outcome(usage)
    return Outcome(Usage(prompt(), answer_tokens(body, tokenizer), 0), counted_by=COUNTED_BY_GATEWAY)
