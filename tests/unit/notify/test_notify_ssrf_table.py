"""The SSRF guard's address table: what Pulse refuses to reach, and what the allow-list opens."""

from __future__ import annotations

import ipaddress

import pytest

from pulse.cloud.notify.errors import AddressError, ConfigError
from pulse.cloud.notify.ssrf import SsrfPolicy, check_url, refusal
from pulse.protocol.errors import Code

pytestmark = pytest.mark.unit

NONE = SsrfPolicy()
LOOPBACK = SsrfPolicy.allowing(["127.0.0.0/8", "::1/128"])

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("169.254.1.1", "link-local"),
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("100.100.100.200", "metadata"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("255.255.255.255", "non-public"),
    ("240.0.0.1", "non-public"),
    ("192.0.2.1", "non-public"),
    ("198.18.0.1", "non-public"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fec0::1", "site-local"),
    ("fd00:ec2::254", "metadata"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "non-public"),
    ("::ffff:127.0.0.1", "IPv6 form of 127.0.0.1, a loopback"),
    ("::ffff:10.1.2.3", "IPv6 form of 10.1.2.3, a private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("64:ff9b::a00:1", "IPv6 form of 10.0.0.1"),
    ("2002:a9fe:a9fe::", "IPv6 form of 169.254.169.254, a cloud metadata"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    reason = refusal(ipaddress.ip_address(address), NONE)
    assert reason is not None and why in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), NONE) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.8.8", "::1", "::ffff:127.0.0.1"])
def test_the_allow_list_opens_loopback(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), LOOPBACK) is None


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.1", "169.254.1.1", "fc00::1"])
def test_the_allow_list_opens_nothing_else(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), LOOPBACK) is not None


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"])
def test_metadata_stays_refused_even_inside_an_allowed_network(address: str) -> None:
    wide = SsrfPolicy.allowing(["169.254.0.0/16", "fd00::/8", "::ffff:0:0/96"])
    reason = refusal(ipaddress.ip_address(address), wide)
    assert reason is not None and "metadata" in reason


def test_a_bad_allow_list_entry_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as caught:
        SsrfPolicy.allowing(["127.0.0.0/8", "localhost"])
    assert caught.value.code is Code.NOTIFY_BAD_CONFIG and "'localhost'" in caught.value.message


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x", "/relative", "http://", "example.com/x"])
def test_only_absolute_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(AddressError) as caught:
        check_url(url)
    assert caught.value.code is Code.NOTIFY_BAD_URL
