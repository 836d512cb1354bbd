"""The rules behind what the gateway forwards: the field allowlist, media URLs (with a
resolver standing in for DNS), the per-account cache salt and the per-account affinity key."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from gateway.cache_salt import CacheSalter
from gateway.errors import BadRequest
from gateway.media_urls import MediaHosts, check_remote_media, public_address, remote_media_urls
from gateway.openai_request import parse_request
from gateway.request_fields import DROPPED_FIELDS, FORWARDED_FIELDS, STEERING_FIELDS, check_fields
from gateway.routing.affinity import prefix_key
from gateway.settings import Settings

SYSTEM = "You are the archive's careful assistant. " * 20


def test_the_lists_do_not_overlap() -> None:
    for fields in FORWARDED_FIELDS.values():
        assert not fields & STEERING_FIELDS.keys()
        assert not fields & DROPPED_FIELDS
    assert not DROPPED_FIELDS & STEERING_FIELDS.keys()


@pytest.mark.parametrize("field", sorted(STEERING_FIELDS))
@pytest.mark.parametrize("kind", ["chat", "completions", "embeddings"])
def test_steering_fields_are_refused_on_every_route(kind: Any, field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_fields(kind, {"model": "m", field: None})  # whatever the value, null too
    error = caught.value
    assert (error.param, error.code, error.status) == (field, "unsupported_parameter", 400)


def test_dropped_fields_leave_the_body_and_the_rest_stays() -> None:
    body = {"model": "m", "messages": [], "store": True, "metadata": {}, "top_k": 3}
    check_fields("chat", body)
    assert body == {"model": "m", "messages": [], "top_k": 3}


def test_fields_of_another_route_are_unknown() -> None:
    with pytest.raises(BadRequest, match="Unrecognized request argument supplied: suffix"):
        check_fields("chat", {"model": "m", "suffix": "x"})
    with pytest.raises(BadRequest) as caught:
        parse_request("embeddings", orjson.dumps({"model": "m", "input": "x", "temperature": 0.5}))
    assert caught.value.param == "temperature"


def image(url: Any, part_type: str = "image_url") -> list[dict[str, Any]]:
    value = url if part_type == "input_image" else {"url": url}
    field = "image_url" if part_type == "input_image" else part_type
    return [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": part_type, field: value}]}]


@pytest.mark.parametrize("part_type", ["image_url", "input_image", "video_url", "audio_url"])
def test_media_urls_are_collected_but_data_urls_are_not(part_type: str) -> None:
    assert remote_media_urls(image("data:image/png;base64,AAAA", part_type)) == ()
    assert remote_media_urls(image("DATA:image/png;base64,AAAA", part_type)) == ()
    assert remote_media_urls(image("http://x.example/a.png", part_type)) == ("http://x.example/a.png",)
    assert remote_media_urls([{"role": "user", "content": "http://x.example/a.png"}]) == ()
    assert remote_media_urls(image(None, part_type)) == ()


def resolver(table: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        host = host.rstrip(".")  # a fully qualified name, as DNS reads it
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


HOSTS = MediaHosts.of(["images.example", "*.cdn.example"])
DNS = {
    "images.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "a.cdn.example": ["203.0.113.9"],  # TEST-NET: not public
    "b.cdn.example": ["93.184.215.14", "127.0.0.1"],  # one inside is enough to refuse
    "c.cdn.example": ["::ffff:169.254.169.254"],
}


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://images.example/a.png", True),
        ("http://images.example:8080/a.png?x=1", True),
        ("http://IMAGES.example./a.png", True),
        ("http://a.cdn.example/a.png", False),
        ("http://b.cdn.example/a.png", False),
        ("http://c.cdn.example/a.png", False),
        ("http://cdn.example/a.png", False),  # the wildcard is for subdomains
        ("http://d.cdn.example/a.png", False),  # does not resolve
        ("http://images.example.evil/a.png", False),
        ("http://images.example@127.0.0.1/", False),
        ("http://127.0.0.1\\@images.example/", False),
        ("http://images.example:99999/", False),
        ("file:///etc/passwd", False),
        (" file:///etc/passwd", False),
        ("gopher://images.example/", False),
        ("images.example/a.png", False),
        ("http://%69mages.example/", False),
    ],
)
def test_remote_media_checks(url: str, ok: bool) -> None:
    check = check_remote_media([url], HOSTS, resolver(DNS))
    if ok:
        asyncio.run(check)
        return
    with pytest.raises(BadRequest) as caught:
        asyncio.run(check)
    assert (caught.value.param, caught.value.code) == ("messages", "unsupported_media_url")


def test_without_an_allowlist_only_data_urls_pass() -> None:
    with pytest.raises(BadRequest, match="data: URL"):
        asyncio.run(check_remote_media(["https://images.example/a.png"], MediaHosts(), resolver(DNS)))


def test_a_slow_resolver_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.media_urls.RESOLVE_TIMEOUT_S", 0.05)

    async def stuck(host: str, port: int) -> list[str]:
        await asyncio.sleep(5)
        return ["93.184.215.14"]

    with pytest.raises(BadRequest, match="could not be resolved"):
        asyncio.run(check_remote_media(["https://images.example/a.png"], HOSTS, stuck))


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),
        ("not an address", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert public_address(address) is public


def settings(**env: str) -> Settings:
    return Settings.model_validate(env)


def test_salt_is_stable_per_account_and_differs_between_accounts() -> None:
    secret = "s" * 32
    one, two = (CacheSalter.from_settings(settings(TOKENGATE_CACHE_SALT_SECRET=secret)) for _ in range(2))
    assert one.salt("acct_a") == two.salt("acct_a")  # every worker computes the same
    assert one.salt("acct_a") != one.salt("acct_b")
    assert len(one.salt("acct_a")) == 43
    other = CacheSalter.from_settings(settings(TOKENGATE_CACHE_SALT_SECRET="t" * 32))
    assert other.salt("acct_a") != one.salt("acct_a")
    assert one.source == "TOKENGATE_CACHE_SALT_SECRET"


def test_salt_secret_falls_back_to_the_admin_key_then_to_random(caplog: pytest.LogCaptureFixture) -> None:
    admin = settings(TOKENGATE_ADMIN_KEY="tg-admin-x")
    a, b = CacheSalter.from_settings(admin), CacheSalter.from_settings(admin)
    assert a.source == "TOKENGATE_ADMIN_KEY" and a.salt("acct") == b.salt("acct")
    assert "tg-admin-x" not in a.salt("acct")
    with caplog.at_level(logging.WARNING, logger="tokengate.cache_salt"):
        c, d = CacheSalter.from_settings(settings()), CacheSalter.from_settings(settings())
    assert c.source == "random" and c.salt("acct") != d.salt("acct")
    assert "TOKENGATE_CACHE_SALT_SECRET is not set" in caplog.text


def test_a_short_salt_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="TOKENGATE_CACHE_SALT_SECRET"):
        Settings.model_validate({"TOKENGATE_CACHE_SALT_SECRET": "short"})
    assert isinstance(settings(TOKENGATE_CACHE_SALT_SECRET="x" * 40).cache_salt_secret, SecretStr)


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "q"}]},
        {"prompt": SYSTEM},
        {"prompt": list(range(400))},
    ],
)
def test_affinity_key_is_per_salt(body: dict[str, Any]) -> None:
    plain = prefix_key(body, 512, 256)
    a = prefix_key({**body, "cache_salt": "salt-of-a"}, 512, 256)
    assert a == prefix_key({**body, "cache_salt": "salt-of-a"}, 512, 256)  # stable within an account
    assert len({plain, a, prefix_key({**body, "cache_salt": "salt-of-b"}, 512, 256)}) == 3
    assert 0 not in (plain, a)
