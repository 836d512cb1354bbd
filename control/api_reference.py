"""The control plane's API reference, read off its own OpenAPI document and rendered on the
server: no script and nothing fetched from elsewhere, so it reads the same on a network with
no way out (Swagger UI came from a CDN). The console shows it to platform admins at
``/console/admin/api``; ``/admin/docs`` serves the same page to the admin credential.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

METHODS = ("get", "post", "put", "patch", "delete")
_REF = "#/components/schemas/"
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_CONSTRAINTS = (
    ("minimum", ">= {}"), ("exclusiveMinimum", "> {}"), ("maximum", "<= {}"),
    ("exclusiveMaximum", "< {}"), ("minLength", "at least {} characters"),
    ("maxLength", "at most {} characters"), ("minItems", "at least {} items"),
    ("maxItems", "at most {} items"), ("pattern", "matches {}"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Field:
    """A parameter or a schema property: what a caller needs to send it right."""

    name: str
    where: str  # path, query, header or body
    type: str
    schema: str | None  # the component schema it refers to, if any (linked on the page)
    required: bool
    default: str | None
    rules: str  # its constraints, in words
    description: str


@dataclass(frozen=True, slots=True)
class Answer:
    status: str
    description: str
    schema: str | None


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    anchor: str
    summary: str
    description: str
    parameters: list[Field]
    body: str | None  # the body's component schema
    answers: list[Answer]


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    operations: list[Operation]


@dataclass(frozen=True, slots=True)
class Schema:
    name: str
    description: str
    fields: list[Field]


@dataclass(frozen=True, slots=True)
class Reference:
    title: str
    version: str
    sections: list[Section]
    schemas: list[Schema]

    def schema(self, name: str | None) -> Schema | None:
        """The component schema ``name`` (an operation's body, shown with it)."""
        return next((s for s in self.schemas if s.name == name), None)


def build_reference(doc: dict[str, Any]) -> Reference:
    """The document's operations grouped by resource, and the schemas they name."""
    sections: dict[str, list[Operation]] = {}
    for path, item in doc.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                sections.setdefault(_section_of(path), []).append(_operation(method, path, item[method]))
    components = doc.get("components", {}).get("schemas", {})
    schemas = [_schema(name, components[name]) for name in sorted(components)]
    info = doc.get("info", {})
    return Reference(
        title=str(info.get("title", "")),
        version=str(info.get("version", "")),
        sections=[Section(title, ops) for title, ops in sections.items()],
        schemas=schemas,
    )


def _section_of(path: str) -> str:
    """``/admin/accounts/{id}/keys`` -> ``/admin/accounts``; ``/v1/me/usage`` -> ``/v1/me``."""
    parts = [p for p in path.split("/") if p]
    return "/" + "/".join(parts[:2])


def _operation(method: str, path: str, op: dict[str, Any]) -> Operation:
    parameters = [
        _field(str(p.get("name", "")), str(p.get("in", "")), p.get("schema", {}), bool(p.get("required")),
               str(p.get("description") or p.get("schema", {}).get("description") or ""))
        for p in op.get("parameters", [])
    ]  # fmt: skip
    body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    answers = [
        Answer(status, str(answer.get("description", "")), _schema_name(_json_schema(answer)))
        for status, answer in sorted(op.get("responses", {}).items())
    ]
    anchor = f"{method}{path}".replace("/", "-").replace("{", "").replace("}", "").strip("-")
    return Operation(
        method=method.upper(),
        path=path,
        anchor=anchor,
        summary=str(op.get("summary", "")),
        description=str(op.get("description", "")),
        parameters=parameters,
        body=_schema_name(body_schema) if body_schema else None,
        answers=answers,
    )


def _json_schema(answer: dict[str, Any]) -> dict[str, Any] | None:
    schema: dict[str, Any] | None = answer.get("content", {}).get("application/json", {}).get("schema")
    return schema


def _schema(name: str, schema: dict[str, Any]) -> Schema:
    required = set(schema.get("required", []))
    fields = [
        _field(prop, "body", spec, prop in required, str(spec.get("description", "")))
        for prop, spec in schema.get("properties", {}).items()
    ]
    return Schema(name, str(schema.get("description", "")), fields)


def _field(name: str, where: str, spec: dict[str, Any], required: bool, description: str) -> Field:
    default = spec.get("default")
    return Field(
        name=name,
        where=where,
        type=type_text(spec),
        schema=_schema_name(spec),
        required=required,
        default=None if "default" not in spec else _literal(default),
        rules=_rules(spec),
        description=description,
    )


def type_text(spec: dict[str, Any]) -> str:
    """A schema's type in words: ``string``, ``integer or null``, ``list of Grant``, ``one of
    "paid", "expired"``."""
    if "$ref" in spec:
        return str(spec["$ref"]).removeprefix(_REF)
    if "enum" in spec:
        return "one of " + ", ".join(_literal(v) for v in spec["enum"])
    if "const" in spec:
        return _literal(spec["const"])
    for key in ("anyOf", "oneOf"):
        if key in spec:
            return " or ".join(dict.fromkeys(type_text(s) for s in spec[key]))
    kind = spec.get("type")
    if kind == "array":
        return "list of " + type_text(spec.get("items", {}))
    if kind == "object" and "additionalProperties" in spec and isinstance(spec["additionalProperties"], dict):
        return "map of " + type_text(spec["additionalProperties"])
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    text = str(kind or "any")
    return f"{text} ({spec['format']})" if "format" in spec else text


def _schema_name(spec: dict[str, Any] | None) -> str | None:
    """The component schema a schema refers to, directly, as a list's items or beside null."""
    if not spec:
        return None
    if "$ref" in spec:
        return str(spec["$ref"]).removeprefix(_REF)
    for key in ("anyOf", "oneOf"):
        for option in spec.get(key, []):
            if name := _schema_name(option):
                return name
    if spec.get("type") == "array":
        return _schema_name(spec.get("items"))
    return None


def _rules(spec: dict[str, Any]) -> str:
    """Its constraints in words (``>= 1; <= 100``), an optional value's included."""
    rules: list[str] = []
    for schema in (spec, *spec.get("anyOf", [])):
        for key, text in _CONSTRAINTS:
            if key in schema:
                empty = key in ("minLength", "minItems") and schema[key] == 1
                rules.append("not empty" if empty else text.format(_literal(schema[key])))
    return "; ".join(rules)


def _literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # the schema says 1.0 for a bound of 1
    return str(value)


def code_spans(text: str) -> Markup:
    """A description's backquoted names as ``<code>`` (the rest escaped): docstrings and field
    descriptions mark names that way."""
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", str(escape(text))))
