"""``tokengate bridge``: an OpenAI-compatible server of ours in front of a provider litellm calls.

The data plane relays only OpenAI's (vLLM's) wire format and must stay lean, so litellm
(which imports jinja2, boto3, ...) runs here, in a process of its own, one per cluster of
``kind: litellm`` in models.yaml. To the data plane a bridge is an ordinary endpoint: it
answers ``/v1/chat/completions`` as vLLM does, with the running usage on every chunk, so the
gateway reserves, meters, cuts and settles a provider's answers exactly as a vLLM server's.

    app.py      the ASGI app: /v1/chat/completions, /v1/models, /health, /metrics
    target.py   what one bridge serves: its cluster's provider, key (from the environment), models
    params.py   an OpenAI request as litellm's arguments; what the provider cannot honour is a 400
    answer.py   one provider stream as OpenAI chunks with running usage (and as one answer)
    usage.py    the usage a provider reports as it streams, and our count where it does not
    errors.py   litellm's exceptions as OpenAI-shaped errors with nothing of the provider's text
"""
