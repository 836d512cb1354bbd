"""The client's address the control plane believes: X-Forwarded-For only from a trusted proxy,
only its last entry, and never anything that is not an IP address."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from control.client_address import UNKNOWN, client_address, parse_ip, rate_bucket, trusted_networks
from gateway.settings import Settings

LOOPBACK = trusted_networks("127.0.0.1/32,::1/128")


def test_a_trusted_proxy_is_believed_for_the_last_entry_only() -> None:
    assert client_address("127.0.0.1", ["203.0.113.7"], LOOPBACK) == "203.0.113.7"
    # the client wrote the first entries; the proxy appended the last
    assert client_address("127.0.0.1", ["1.1.1.1, 2.2.2.2", "203.0.113.7"], LOOPBACK) == "203.0.113.7"
    assert client_address("127.0.0.1", ["1.1.1.1,203.0.113.8"], LOOPBACK) == "203.0.113.8"
    assert client_address("::1", ["2001:db8::5"], LOOPBACK) == "2001:db8::5"
    assert client_address("127.0.0.1", [], LOOPBACK) == "127.0.0.1"


def test_an_untrusted_peer_is_its_own_address_whatever_it_claims() -> None:
    for forged in (["127.0.0.1"], ["198.51.100.1"], ["10.0.0.1, 127.0.0.1"], ["::1"]):
        assert client_address("203.0.113.9", forged, LOOPBACK) == "203.0.113.9"
    assert client_address("10.1.2.3", ["198.51.100.1"], trusted_networks("10.0.0.0/8")) == "198.51.100.1"
    assert client_address("127.0.0.1", ["198.51.100.1"], trusted_networks("10.0.0.0/8")) == "127.0.0.1"
    assert client_address("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"


@pytest.mark.parametrize(
    "header",
    [
        "not-an-ip",
        "203.0.113.7, ",  # a trailing comma: the last entry is empty
        "203.0.113.7,unknown",
        "203.0.113.7:8080",
        "[2001:db8::1]:443",
        "999.1.1.1",
        "1" * 5000,
        "203.0.113.7\x00",
        "",
        "203.0.113.7 ,\t",
    ],
)
def test_a_hostile_header_falls_back_to_the_peer(header: str) -> None:
    assert client_address("127.0.0.1", [header], LOOPBACK) == "127.0.0.1"


def test_addresses_are_normalised() -> None:
    assert client_address("::ffff:127.0.0.1", ["::ffff:203.0.113.7"], LOOPBACK) == "203.0.113.7"
    assert client_address("127.0.0.1", [" 2001:DB8:0::7 "], LOOPBACK) == "2001:db8::7"
    assert parse_ip("fe80::1%eth0") == parse_ip("fe80::1")
    assert client_address(None, ["203.0.113.7"], LOOPBACK) == UNKNOWN
    assert client_address("testclient", ["203.0.113.7"], LOOPBACK) == UNKNOWN  # not an address


def test_ipv6_clients_are_counted_per_64() -> None:
    assert rate_bucket("2001:db8:1:2:3:4:5:6") == rate_bucket("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert rate_bucket("2001:db8:1:3::1") != rate_bucket("2001:db8:1:2::1")
    assert rate_bucket("203.0.113.7") == "203.0.113.7"
    assert rate_bucket(UNKNOWN) == UNKNOWN


def test_the_setting_defaults_to_loopback_and_refuses_a_bad_cidr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENGATE_TRUSTED_PROXIES", raising=False)
    assert trusted_networks(Settings().trusted_proxies) == LOOPBACK
    monkeypatch.setenv("TOKENGATE_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
    assert [str(n) for n in trusted_networks(Settings().trusted_proxies)] == ["10.0.0.0/8", "192.0.2.1/32"]
    monkeypatch.setenv("TOKENGATE_TRUSTED_PROXIES", "10.0.0.0/33")
    with pytest.raises(ValidationError):
        Settings()
