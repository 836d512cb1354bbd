"""A fast, deterministic simulator of vLLM 0.32's OpenAI-compatible server.

It exists so that the gateway can be load-tested and fault-tested without GPUs:
the wire format (JSON field order, compact serialization, SSE framing, error
bodies, /metrics names) follows vLLM 0.32.0's source, while generation is
cheap and reproducible.

Prompt tokens (what the gateway must be able to bound):

* chat: ``len(encode(render))`` where render is, per message,
  ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` followed by
  ``<|im_start|>assistant\\n`` (unless ``add_generation_prompt`` is false).
  Content is a string, null (= ""), or a list of ``{"type": "text", "text": ...}``
  parts joined with ``"\\n"`` (other part types are ignored). The markers are
  plain text to the tokenizer; with cl100k_base (one-token roles) they cost 14
  tokens per message plus 8 for the generation prompt, and boundary merges can
  add about one more per message: ``sum(len(encode(content))) + 15 * messages
  + 8`` never under-estimated in 60k randomized checks. Exact: ``/tokenize``
  with ``messages`` returns the same count as ``usage.prompt_tokens``.
* completions: ``len(encode(prompt))`` per prompt (a string, a list of strings =
  a batch, or token ids used as is); usage sums the prompts (not times ``n``).

Completion tokens: each choice has a natural length of 16..64 tokens chosen from
a hash of (prompt, choice index). As in vLLM, a naturally ending choice's last
token is EOS: it is counted in ``completion_tokens`` but decodes to "" (its
stream chunk has empty content and ``finish_reason: "stop"``). A choice cut by
``max_tokens`` (or by ``max_model_len - prompt_tokens``) ends with ``length``
on the chunk carrying its last word; then completion tokens == len(encode(text)).
Chat ``max_tokens`` defaults to the remaining context, completions' to 16
(vLLM's defaults); a budget above max_model_len is a 400, a prompt + budget
beyond the context is clamped like vLLM 0.32 does (not rejected).

Streams follow vLLM: chat sends a role chunk per choice, then one chunk per
token (finish_reason rides on the last token's chunk); ``include_usage`` adds a
``"choices":[]`` chunk whose last field is usage; ``continuous_usage_stats``
adds per-choice cumulative usage to every chunk (in the chat role chunk usage
is followed by ``"prompt_token_ids":null,"prompt_text":null``, exactly as vLLM
0.32 does; in every other chunk usage is the last field).

Control routes: ``GET/POST /sim/faults`` (see ``FaultSpec``; applies to chat and
completions), ``GET /sim/stats``, ``POST /sim/reset`` (zeroes /sim/stats only;
/metrics counters stay monotonic). Serve ``build_app()`` with aiohttp's
``handler_cancellation=True`` (``serve``/``start_sim`` do) so that a client going
away cancels its generation at once, including in ``hang`` mode.
"""

from __future__ import annotations

from .app import build_app
from .cli import RunningSim, main, serve, start_sim
from .config import FaultSpec, SimConfig

__all__ = ["FaultSpec", "RunningSim", "SimConfig", "build_app", "main", "serve", "start_sim"]
