"""The tiktoken adapter: text in, the same text out, and no second copy of the ranks."""

from __future__ import annotations

import pytest
import tiktoken

from gateway.tokenizers import TokenizerError, load_tokenizer


def test_round_trip_and_special_tokens_are_plain_text() -> None:
    tokenizer = load_tokenizer("tiktoken:cl100k_base")
    text = "hello world, 长江 <|endoftext|> \\n done"
    tokens = tokenizer.encode(text)
    assert tokenizer.decode(tokens) == text
    assert 100257 not in tokens  # '<|endoftext|>' typed by a user is text, not the special token
    assert len(tokenizer.encode("hello world")) == 2


def test_the_python_copy_of_the_ranks_is_released() -> None:
    """tiktoken keeps its ranks in Rust and in a Python dict it only pickles: the dict goes
    (about 15 MB per worker). This fails if a tiktoken release renames the attribute."""
    load_tokenizer("tiktoken:cl100k_base")
    encoding = tiktoken.get_encoding("cl100k_base")
    assert encoding._mergeable_ranks == {}
    assert encoding.encode_single_token("hello") == 15339  # the Rust core still has them all
    assert encoding.decode_single_token_bytes(15339) == b"hello"


def test_unknown_specs_are_refused_by_name() -> None:
    with pytest.raises(TokenizerError, match="tiktoken:<encoding>"):
        load_tokenizer("sentencepiece:x")
    with pytest.raises(TokenizerError, match="no_such_encoding"):
        load_tokenizer("tiktoken:no_such_encoding")


def test_bytes_tokenizer_is_one_token_per_utf8_byte() -> None:
    tokenizer = load_tokenizer("bytes")
    assert tokenizer.encode("a长") == [97, 0xE9, 0x95, 0xBF]
    assert tokenizer.decode(tokenizer.encode("长江 🙂")) == "长江 🙂"
    assert tokenizer.decode([104, 105, 100257, -1]) == "hi"  # ids that are no byte are skipped
    assert tokenizer.decode([0xE9]) == "\ufffd"  # half a character is not an error
