"""Which relay answers the client: a stream, a whole answer assembled from one, or a body the
upstream sent whole (a refusal, an embedding)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.asgi import Receive, Send
from gateway.catalog import Model
from gateway.lease import Checkpointed
from gateway.openai_request import OpenAIRequest
from gateway.relay.answer import relay_json, relay_whole
from gateway.relay.http1 import UpstreamResponse
from gateway.relay.outcome import Outcome
from gateway.relay.stream import relay_stream


async def respond(
    held: Checkpointed,
    send: Send,
    receive: Receive,
    request_id: str,
    response: UpstreamResponse,
    request: OpenAIRequest,
    model: Model,
    reserved: int,
    headers: list[tuple[bytes, bytes]],
    prompt: Callable[[], int],
    deadline_s: float | None,
) -> Outcome:
    """Relay the upstream's answer as the client asked for it; what happened comes back.

    ``reserved``: the completion tokens the reservation pays for (the relay cuts past them);
    ``headers``: the admission's, for the client; ``prompt``: counts the prompt should the
    upstream report no usage; ``deadline_s``: the response timeout of a whole answer."""
    if response.status != 200 or request.kind == "embeddings":
        return await relay_json(send, request_id, response, model, headers, prompt)
    if request.stream:
        return await relay_stream(held, send, receive, request_id, response, request, model,
                                  reserved, headers, prompt)
    return await relay_whole(held, send, receive, request_id, response, request, model, reserved,
                             headers, prompt, deadline_s)
