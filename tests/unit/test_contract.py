"""Billing and the control plane import from the gateway only its contract, the gateway
imports neither of them nor the launcher, and the contract stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import gateway.contract as contract

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = "gateway.contract"
HEAVY = ("sqlalchemy", "fastapi", "starlette", "alembic", "billing")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each absolute import in a file; ``from a import b`` gives ``a.b``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _root(module: str) -> str:
    return module.partition(".")[0]


def _imports_of(package: str, wanted: Callable[[str], bool]) -> list[str]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert len(files) > 3, package  # the walk found the package
    return [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module in _imported_modules(path)
        if wanted(module)
    ]


def _gateway_internal(module: str) -> bool:
    return _root(module) == "gateway" and module != CONTRACT and not module.startswith(CONTRACT + ".")


def test_billing_imports_nothing_of_the_gateway_but_the_contract() -> None:
    offending = _imports_of("billing", _gateway_internal)
    assert offending == [], "billing imports gateway internals; add them to gateway.contract"


def test_the_control_plane_imports_nothing_of_the_gateway_but_the_contract() -> None:
    offending = _imports_of("control", _gateway_internal)
    assert offending == [], "control imports gateway internals; add them to gateway.contract"


def test_the_gateway_imports_neither_the_control_plane_nor_billing_nor_the_launcher() -> None:
    offending = _imports_of("gateway", lambda module: _root(module) in ("control", "billing", "launcher"))
    assert offending == []


def test_the_contract_imports_no_sql_framework_or_billing() -> None:
    direct = _imported_modules(ROOT / "gateway" / "contract.py")
    assert [m for _, m in direct if _root(m) in HEAVY] == []
    probe = (
        "import sys, gateway.contract; "
        f"print(sorted({{m.partition('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]", f"importing gateway.contract loads {loaded}"


def test_every_contract_name_is_defined() -> None:
    missing = [name for name in contract.__all__ if not hasattr(contract, name)]
    assert missing == []
    assert len(set(contract.__all__)) == len(contract.__all__)


def test_the_vocabularies_are_the_literals() -> None:
    statuses = {"ok", "partial", "client_gone", "upstream_error", "expired"}
    assert set(get_args(contract.Status)) == statuses == contract.STATUSES
    assert set(get_args(contract.CountedBy)) == {"upstream", "gateway"} == contract.COUNTED_BY


def test_key_authenticator_is_the_one_of_the_app() -> None:
    authenticator = object()
    state = SimpleNamespace(authenticator=authenticator)
    assert contract.key_authenticator(state) is authenticator
