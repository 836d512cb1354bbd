"""Schemathesis against the data plane: the OpenAI routes as docs/openapi-v1.yaml describes
them, and self-service as the control plane's schema does (the data plane forwards it)."""

from __future__ import annotations

from schemathesis.schemas import BaseSchema

from tests.schema.runner import run


def test_openai_routes(v1_schema: BaseSchema) -> None:
    run(v1_schema).check(v1_schema)


def test_self_service_through_the_data_plane(forwarded_schema: BaseSchema) -> None:
    run(forwarded_schema).check(forwarded_schema)
