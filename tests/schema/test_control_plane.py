"""Schemathesis over the control plane's own OpenAPI (read from the running control plane):
no 500, every answer's status, content type and body as the schema documents them. The
admin routes with the admin key, self-service with a customer's API key."""

from __future__ import annotations

from schemathesis.schemas import BaseSchema

from tests.schema.runner import run


def test_admin_api(admin_schema: BaseSchema) -> None:
    run(admin_schema).check(admin_schema)


def test_self_service(self_service_schema: BaseSchema) -> None:
    run(self_service_schema).check(self_service_schema)
