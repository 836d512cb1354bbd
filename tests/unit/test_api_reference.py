"""The API reference the control plane renders from its own OpenAPI document."""

from __future__ import annotations

from typing import Any

import pytest

from control.api_reference import build_reference, code_spans, type_text
from control.app import create_app
from gateway.contract import Settings


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    app = create_app(Settings(TOKENGATE_ADMIN_KEY="tg-admin-" + "x7Qp2" * 6))
    schema: dict[str, Any] = app.api.openapi()
    return schema


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ({"type": "string"}, "string"),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "integer or null"),
        ({"type": "array", "items": {"$ref": "#/components/schemas/Grant"}}, "list of Grant"),
        ({"enum": ["paid", "expired"]}, 'one of "paid", "expired"'),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, "map of integer"),
        ({"type": "string", "format": "date-time"}, "string (date-time)"),
        ({}, "any"),
    ],
)
def test_types_read_as_words(spec: dict[str, Any], text: str) -> None:
    assert type_text(spec) == text


def test_every_operation_is_in_one_section(doc: dict[str, Any]) -> None:
    ref = build_reference(doc)
    listed = {(op.method, op.path) for section in ref.sections for op in section.operations}
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    assert listed == documented
    anchors = [op.anchor for section in ref.sections for op in section.operations]
    assert len(anchors) == len(set(anchors))  # each operation's link goes to it alone
    assert {s.title for s in ref.sections} >= {"/admin/accounts", "/admin/packages", "/v1/me"}


def test_an_operation_carries_its_parameters_body_and_answers(doc: dict[str, Any]) -> None:
    ref = build_reference(doc)
    ops = {(op.method, op.path): op for section in ref.sections for op in section.operations}
    usage = ops[("GET", "/admin/accounts/{account_id}/usage")]
    where = {p.name: p.where for p in usage.parameters}
    assert where["account_id"] == "path" and where["group_by"] == where["cursor"] == "query"
    assert usage.anchor == "get-admin-accounts-account_id-usage"
    create = ops[("POST", "/admin/packages")]
    assert create.body == "PackageBody" and ref.schema(create.body) is not None
    assert {a.status for a in create.answers} >= {"201", "401", "422"}
    assert next(a for a in create.answers if a.status == "201").schema == "Package"
    schemas = {s.name: s for s in ref.schemas}
    weight = next(f for f in schemas["PackageBody"].fields if f.name == "weight")
    assert weight.type == "integer" and weight.default == "1" and weight.rules == ">= 1; <= 100"
    assert "fair shares" in weight.description
    name = next(f for f in schemas["PackageBody"].fields if f.name == "name")
    assert name.required and name.rules.startswith("not empty; at most 200 characters")


def test_code_spans_are_code_and_the_rest_is_escaped() -> None:
    assert str(code_spans("`param` names <b>it</b>")) == "<code>param</code> names &lt;b&gt;it&lt;/b&gt;"
    assert str(code_spans("`<script>`")) == "<code>&lt;script&gt;</code>"
