"""What admission would surely refuse of a big prompt, decided before it is tokenized.

Counting a prompt runs on the event loop (seconds for megabytes with a Hugging Face BPE), so
a body over 16 KiB is first judged on floors of its size (``gateway.prompt_size.prompt_floor``
with ``gateway.token_floor``): at most what admission will count, with no tokenizer run.
Each check here is admission's own with the floor in place of the count, so it refuses
nothing admission would accept, with the same status and code (the message says "at least"):

* the window: an embedding input, or a prompt with its ``max_tokens``, that cannot fit;
* the balance: admission reserves the prompt's estimate and at least one completion token
  per choice (none for embeddings) from the credits available for the model, which are at
  most the account's available credits (its live grants, whatever their models).
"""

from __future__ import annotations

from gateway.catalog import Model
from gateway.errors import BadRequest, BalanceExhausted
from gateway.openai_request import OpenAIRequest
from gateway.prompt_size import PromptSize
from gateway.quota.pricing import cost


def refuse_beyond_window(request: OpenAIRequest, model: Model, size: PromptSize,
                         counted: str = "at least") -> None:
    """The window checks, admission's (``Pipeline.admit``, on the tokenizer's count: ``counted``
    "about") and the early ones (on the floor: its ``bound`` and ``longest`` are at most
    admission's, so what they refuse, admission refuses)."""
    window = model.context_window
    if request.kind == "embeddings":
        if size.bound > window and size.longest > window:
            raise BadRequest(
                f"This model's maximum context length is {window} tokens. However, an input "
                f"has {counted} {size.longest} tokens. Please shorten it.",
                param="input",
                code="context_length_exceeded",
            )
        return
    asked = request.max_tokens
    if asked is not None and asked > window - size.bound and asked > window - size.longest:
        raise BadRequest(
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{asked} completion tokens with {counted} {size.longest} in the prompt. Please "
            "reduce the prompt or max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )


def refuse_unaffordable(request: OpenAIRequest, model: Model, prompt_tokens: int, available: int) -> None:
    """Refuse as admission would (402 ``insufficient_quota``) when ``available`` credits
    cannot pay ``prompt_tokens`` (a floor of the estimate admission reserves) and one
    completion token per choice."""
    completion = 0 if request.kind == "embeddings" else request.choices
    needed = cost(prompt_tokens, completion, model.input_pm, model.output_pm)
    if available >= needed:
        return
    if available <= 0:
        raise BalanceExhausted("balance exhausted: no credits available", code="insufficient_quota")
    per_choice = " and one completion token per choice" if completion else ""
    raise BalanceExhausted(
        f"balance exhausted: {available} credits available, this request needs at least "
        f"{needed} (at least {prompt_tokens} prompt tokens{per_choice})",
        code="insufficient_quota",
    )
