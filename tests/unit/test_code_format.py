"""Redemption codes as printed and as typed back: the format, its entropy, its normalisation."""

from __future__ import annotations

import hashlib
import math
import re

from hypothesis import given
from hypothesis import strategies as st

from billing.code_format import ALPHABET, SYMBOLS, canonical, code_hash, new_code

FORMAT = re.compile(r"^TG(-[0-9A-HJKMNP-TV-Z]{5}){4}$")


def test_codes_are_printed_in_groups_of_an_unambiguous_alphabet() -> None:
    codes = {new_code() for _ in range(2000)}
    assert len(codes) == 2000 and all(FORMAT.match(c) for c in codes)
    assert len(set(ALPHABET)) == 32 and not set("ILOU") & set(ALPHABET)
    assert SYMBOLS * math.log2(len(ALPHABET)) >= 80  # 100 bits
    used = {ch for c in codes for ch in c[3:].replace("-", "")}
    assert used == set(ALPHABET)  # every symbol drawn: no bias toward a subset


def test_a_code_is_read_back_however_it_was_typed() -> None:
    code = new_code()
    symbols = code[3:].replace("-", "")
    assert canonical(code) == symbols
    for typed in (
        code.lower(),
        symbols,
        " ".join(code.split("-")),
        f"  {code}\n",
        code.replace("-", "\u2013"),  # an en dash from a word processor
        symbols.lower().replace("0", "o").replace("1", "l"),
        "tg " + " ".join(symbols[i : i + 4] for i in range(0, 20, 4)),
    ):
        assert canonical(typed) == symbols, typed


@given(st.text(max_size=120))
def test_anything_else_is_no_code(text: str) -> None:
    found = canonical(text)
    assert found is None or (len(found) == SYMBOLS and set(found) <= set(ALPHABET))


def test_wrong_lengths_and_symbols_are_refused() -> None:
    code = new_code()
    assert canonical(code[:-1]) is None
    assert canonical(code + "X") is None
    assert canonical(code[:-1] + "U") is None  # U is not in the alphabet
    assert canonical(code[:-1] + "!") is None
    assert canonical("XX" + code[2:]) is None  # a 22-symbol text without our prefix
    assert canonical(code + " " * 200) is None  # too long to be typed


def test_only_the_sha256_of_the_symbols_is_kept() -> None:
    code = new_code()
    symbols = canonical(code)
    assert symbols is not None
    digest = code_hash(symbols)
    assert digest == hashlib.sha256(symbols.encode()).hexdigest() and len(digest) == 64
    assert code_hash(canonical(code.lower()) or "") == digest
