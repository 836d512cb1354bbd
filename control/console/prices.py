"""``/console/prices`` (public, no sign-in): the packages on sale, each model's rate in
credits, and ready-to-copy snippets (Python ``openai``, curl) with the data plane's public
base URL filled in (``TOKENGATE_DATA_URL``; a placeholder when the operator did not set it).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from billing.money import display
from control.console.pages import models_of, per_mille
from control.console.web import billing_of, render, session_of
from gateway.contract import Settings

router = APIRouter()
PLACEHOLDER = "https://YOUR-GATEWAY"


def base_url(request: Request) -> str:
    """The public ``/v1`` URL API clients use."""
    settings: Settings = request.app.state.settings
    return (settings.data_url or PLACEHOLDER).rstrip("/") + "/v1"


def snippets(base: str, model: str) -> dict[str, str]:
    python = (
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base}", api_key="tg-...")\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{model}",\n'
        '    messages=[{"role": "user", "content": "Hello!"}],\n'
        ")\n"
        "print(reply.choices[0].message.content)\n"
    )
    curl = (
        f"curl {base}/chat/completions \\\n"
        '  -H "Authorization: Bearer tg-..." \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f'  -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\'\n'
    )
    return {"python": python, "curl": curl}


@router.get("/prices")
async def prices(request: Request) -> Response:
    offers = await billing_of(request).packages.price_list()
    models = models_of(request)
    chat = next((m.name for m in models if m.kind == "chat"), models[0].name if models else "MODEL")
    base = base_url(request)
    return render(
        request,
        "prices.html",
        session=await session_of(request),
        offers=[{**o, "shown_price": display(o["price"]["amount"], o["price"]["currency"])} for o in offers],
        models=[{"m": m, "input": per_mille(m.input_pm), "output": per_mille(m.output_pm)} for m in models],
        base=base,
        snippets=snippets(base, chat),
    )
