"""The reservation record a request holds in Redis between admission and settlement.

``admit_v4.lua`` writes it into the account's reservations HASH (request id -> record),
``checkpoint_v3.lua`` updates it, ``settle_v4.lua`` consumes and deletes it; its absence
is what makes a second settlement a no-op. The layout (see ``lua/lib_v3.lua``) is eleven
integers (the last, ``key_cap``: the reserve is held on the key's credit cap), the key id,
the allocation of the reserve over grants (``g1:30,g2:5``) and then the model, joined by
``|``; the model comes last so that it may itself contain ``|``.
Python reads it for the reaper (which needs the key id to name the keys that settlement
touches), for reconcile (what is reserved on which grant) and for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.quota.grants import parse_allocation

_INTS = 11


@dataclass(frozen=True, slots=True)
class Reservation:
    reserve: int
    prompt_tokens: int  # the admission's upper-bound estimate
    max_tokens: int  # granted
    input_pm: int
    output_pm: int
    started_ms: int
    checkpoint_completion: int
    checkpoint_prompt: int | None  # the upstream's prompt count, when a checkpoint had it
    tpm_tokens: int  # tokens counted against the key's TPM window at admission
    tpm_minute: int  # the window minute they were counted in
    key_cap: bool  # the reserve is held on the key's credit cap counter (see keyspace)
    key_id: str
    allocation: tuple[tuple[str, int], ...]  # the reserve by grant, in drawing order
    model: str

    @classmethod
    def decode(cls, raw: bytes | str) -> Reservation:
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split("|", _INTS + 2)
        if len(parts) != _INTS + 3:
            raise ValueError(f"not a reservation record: {text!r}")
        n = [int(p) for p in parts[:_INTS]]
        return cls(
            reserve=n[0],
            prompt_tokens=n[1],
            max_tokens=n[2],
            input_pm=n[3],
            output_pm=n[4],
            started_ms=n[5],
            checkpoint_completion=n[6],
            checkpoint_prompt=n[7] if n[7] >= 0 else None,
            tpm_tokens=n[8],
            tpm_minute=n[9],
            key_cap=n[10] == 1,
            key_id=parts[_INTS],
            allocation=tuple(parse_allocation(parts[_INTS + 1])),
            model=parts[_INTS + 2],
        )
