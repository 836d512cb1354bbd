"""Run schemathesis's engine (every phase the config enables) and report what it found.

The engine is what ``schemathesis run`` drives; it is used here rather than the pytest
plugin's lazy fixtures, which do not run under pytest 9.2 (they set ``Node._nodeid``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemathesis.core.result import Ok
from schemathesis.engine import Status, events, from_schema
from schemathesis.schemas import BaseSchema


@dataclass
class Findings:
    """What a run found: failed checks (each with a curl line), errors, the operations tested."""

    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    operations: set[str] = field(default_factory=set)

    def report(self) -> str:
        return "\n\n".join([*self.failures, *self.errors])

    def check(self, schema: BaseSchema) -> None:
        """Every operation of ``schema`` was tested, and nothing failed."""
        untested = labels(schema) - self.operations
        assert not untested, f"untested: {sorted(untested)}"
        assert not self.failures and not self.errors, self.report()


def labels(schema: BaseSchema) -> set[str]:
    """The operations of ``schema`` (as its filters leave them): what a run must have tested
    (one the schema describes wrongly is reported by the run as an error)."""
    return {result.ok().label for result in schema.get_all_operations() if isinstance(result, Ok)}


def run(schema: BaseSchema) -> Findings:
    """Every operation of ``schema`` through the phases its config enables."""
    found = Findings()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            _scenario(event, found)
        elif isinstance(event, events.NonFatalError):
            found.errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            found.errors.append(f"fatal: {event.exception!r}")
    return found


def _scenario(event: events.ScenarioFinished, found: Findings) -> None:
    recorder = event.recorder
    found.operations.add(recorder.label)
    if event.status == Status.ERROR:
        found.errors.append(f"{recorder.label}: error in the {event.phase} phase")
    seen = {line.split("\n", 1)[0] for line in found.failures}
    for checks in recorder.checks.values():
        for check in checks:
            if check.status != Status.FAILURE or check.failure_info is None:
                continue
            failure = check.failure_info.failure
            title = f"[{event.phase}] {recorder.label}: {check.name}: {failure.title}"
            if title in seen:
                continue
            seen.add(title)
            found.failures.append(f"{title}\n{failure.message}\n{check.failure_info.code_sample}")
