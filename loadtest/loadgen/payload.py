"""The request the load generator sends: an OpenAI chat completion, pre-serialised once."""

from __future__ import annotations

from functools import lru_cache

import orjson

SIM_TOKENIZER = "tiktoken:cl100k_base"


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


@lru_cache(maxsize=16)
def full_length_prompt(max_tokens: int) -> str:
    """A prompt to which the vLLM simulator answers with exactly ``max_tokens`` tokens.

    The simulator picks a natural answer length of 16..64 tokens from a hash of the prompt
    and stops there or at max_tokens; this searches for a prompt whose natural length is at
    least max_tokens, so that every response (and every stream) has the same length: one
    chunk per token (the last is vLLM's end-of-sequence token when the answer ends
    naturally exactly at max_tokens), after the role chunk.
    """
    from loadtest.vllm_sim.textgen import SimModel, render_chat

    model = SimModel.for_tokenizer(SIM_TOKENIZER)
    for i in range(100_000):
        prompt = f"Benchmark request {i}: tell me a short story."
        rendered = render_chat(messages(prompt)).encode()
        if model.generate(rendered, 0, 0, max_tokens).ntokens == max_tokens:
            return prompt
    raise ValueError(f"the simulator never answers with {max_tokens} tokens")


def chat_body(model: str, prompt: str, max_tokens: int, stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "messages": messages(prompt),
        "max_tokens": max_tokens,
        "stream": stream,
    }
    return orjson.dumps(body)
