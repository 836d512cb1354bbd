"""The bridge's running usage: the provider's figures as they come, our count between them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.main import listen_check
from bridge.usage import Report, RunningUsage, TextCount
from gateway.tokenizers import load_tokenizer

CL100K = load_tokenizer("tiktoken:cl100k_base")


class _SmallFolds(TextCount):
    FOLD_AT = 8  # set text aside at almost every line


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab 1!'\n\t中é", max_size=12), max_size=30))
def test_the_count_is_the_tokenizers_count_of_the_whole_text(pieces: list[str]) -> None:
    count = _SmallFolds(CL100K)
    for at, piece in enumerate(pieces):
        count.add(piece)
        assert count.total() == len(CL100K.encode("".join(pieces[: at + 1])))


def test_a_long_line_is_set_aside_at_a_space_within_a_token() -> None:
    count, text = TextCount(CL100K), "word " * 3000
    count.add(text)
    assert abs(count.total() - len(CL100K.encode(text))) <= 1


def _never() -> int:
    raise AssertionError("the prompt was counted though the provider reported it")


def test_anthropic_reports_input_at_the_start_and_output_at_the_end() -> None:
    usage = RunningUsage(CL100K, max_tokens=100, prompt=_never)
    usage.step(Report(prompt=12, completion=1, cached=None, with_output=False), " Hello")  # message_start
    assert (usage.prompt, usage.completion) == (12, 1)  # its "1" is not output: " Hello" is counted
    usage.step(None, " world")
    assert usage.completion == 2
    usage.step(Report(prompt=None, completion=7, cached=3, with_output=False), "")  # message_delta
    assert (usage.prompt, usage.completion, usage.cached) == (12, 7, 3)


def test_running_counts_that_come_with_the_output_cover_it() -> None:
    usage = RunningUsage(CL100K, max_tokens=None, prompt=_never)
    usage.step(Report(prompt=5, completion=4, cached=None, with_output=True), " four tokens here")
    assert usage.completion == 4
    usage.step(None, " and")
    assert usage.completion == 5
    usage.step(Report(prompt=None, completion=9, cached=None, with_output=True), " more")
    assert usage.completion == 9


def test_without_reports_the_prompt_is_counted_once_and_the_output_is_ours_under_max_tokens() -> None:
    counted = []
    usage = RunningUsage(CL100K, max_tokens=3, prompt=lambda: counted.append(1) or 40)
    usage.step(None, " one two")
    assert (usage.prompt, usage.prompt, usage.completion) == (40, 40, 2) and counted == [1]
    usage.step(None, " three four five")
    assert usage.completion == 3  # the provider stops at max_tokens: more is our tokenizer's error


def test_the_bridge_listens_on_loopback_or_private_addresses_only() -> None:
    assert listen_check("127.0.0.1") is None and listen_check("10.0.0.5") is None
    assert listen_check("0.0.0.0") is None  # allowed, with a warning to firewall it
    assert "public address" in (listen_check("8.8.8.8") or "")
