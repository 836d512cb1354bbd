# ruff: noqa: RUF001  (Chinese prose keeps its fullwidth punctuation)
"""What the byte bound costs: tokens of a stand-in tokenizer vs the UTF-8 bytes reserved.

A model whose catalog tokenizer is a stand-in (``tiktoken:...`` without ``tokenizer_exact``)
has its prompts reserved at their byte bound (``gateway.prompt_rules.byte_bound``). This
prints, per kind of text, the stand-in's tokens, the bound, and their ratio: how much more
prompt a reservation holds than the stand-in would have. docs/models-yaml.md has the table.

    python -m loadtest.byte_bound [--markdown]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from gateway.prompt_rules import byte_bound
from gateway.tokenizers import load_tokenizer

ENGLISH = (
    "The gateway sits between the customers and the clusters. Every request is admitted "
    "against a prepaid balance, routed to a healthy endpoint, relayed with its tokens "
    "counted, and settled once the last byte has reached the client. Operators declare "
    "their clusters and models in a single file; customers buy packages of credits and "
    "watch them being spent, one request at a time. When a stream is cut short, the "
    "gateway counts what was delivered and charges exactly that, never more. Reservations "
    "are released as soon as the upstream reports its usage, so a balance that looked "
    "tight a moment ago is available again for the next request. "
) * 4
CHINESE = (
    "长江是中国第一大河，全长六千三百多公里，自西向东流经青海、西藏、四川、云南、重庆、湖北、"
    "湖南、江西、安徽、江苏和上海，最后注入东海。宜昌以上为上游，水流湍急，三峡大坝就建在这里；"
    "宜昌至湖口为中游，河道蜿蜒曲折，武汉位于长江与汉江的交汇处，是华中地区最大的城市。"
    "湖口以下为下游，江面开阔，水流平缓。长江流域人口众多，物产丰富，自古以来就是中国经济"
    "和文化的重要地区。今天，沿江的城市通过高速铁路和公路紧密相连，计算资源也分布在各地的"
    "数据中心里，为企业和开发者提供服务。"
) * 4


def digits_sample() -> str:
    """A CSV of numbers, as a data-analysis prompt carries them."""
    rng = random.Random(20240601)
    rows = [",".join(str(rng.randint(0, 10**7)) for _ in range(8)) for _ in range(60)]
    return "\n".join(rows)


def code_sample() -> str:
    """Real Python: this repository's catalog module."""
    return (Path(__file__).parents[1] / "gateway" / "catalog.py").read_text(encoding="utf-8")


def samples() -> dict[str, str]:
    return {"English prose": ENGLISH, "Chinese prose": CHINESE, "Python code": code_sample(),
            "digits (CSV)": digits_sample(), "emoji": "🙂👍🏽🚀🇨🇳 " * 100}


def measure(encoding: str = "cl100k_base") -> list[tuple[str, int, int, int]]:
    """(sample, characters, stand-in tokens, byte bound) per sample."""
    tokenizer = load_tokenizer(f"tiktoken:{encoding}")
    return [(name, len(text), len(tokenizer.encode(text)), byte_bound(text))
            for name, text in samples().items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoding", default="cl100k_base")
    args = parser.parse_args(argv)
    print(f"| text | characters | {args.encoding} tokens | byte bound | bound / tokens |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, chars, tokens, bound in measure(args.encoding):
        print(f"| {name} | {chars} | {tokens} | {bound} | {bound / tokens:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
