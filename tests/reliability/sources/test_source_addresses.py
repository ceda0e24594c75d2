"""Adapter sources: loopback, link-local, private, unspecified and multicast addresses are refused on every hop, after resolution,
unless the operator allows them.
(Fixtures: conftest.py in this folder.)
"""

from __future__ import annotations

import ipaddress

import pytest

from adaptformer_server.settings import Settings
from tests.reliability.sources.calls import message, register, sha
from tests.support import serving

# -- 9. loopback, link-local, private, unspecified and multicast addresses are refused, on every hop ------------------

REFUSED = [
    ("127.0.0.1:{port}", "loopback"),
    ("localhost:{port}", "loopback"),
    ("[::1]:{port}", "loopback"),
    ("[::ffff:127.0.0.1]:{port}", "loopback"),
    ("2130706433:{port}", "loopback"),
    ("0x7f.1:{port}", "loopback"),
    ("0.0.0.0:{port}", "unspecified"),
    ("169.254.169.254", "link-local"),
    ("[fe80::1]", "link-local"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.0.1", "private"),
    ("[fd00::1]", "private"),
    ("224.0.0.1", "multicast"),
    ("[ff02::1]", "multicast"),
]


@pytest.mark.parametrize(("host", "kind"), REFUSED)
async def test_a_private_address_is_refused_before_connecting(app, remotes, data, host: str, kind: str):
    remote = remotes()
    remote.serve("/flowers.safetensors", data)
    source = f"http://{host.format(port=remote.url.rsplit(':', 1)[1])}/flowers.safetensors"
    async with serving(app(adapter_sources="http", source_timeout=2)) as client:
        r = await register(client, source)
    assert r.status_code == 403, r.text
    assert kind in message(r) and "ADAPTFORMER_ALLOW_PRIVATE_SOURCES=true" in message(r), r.text
    assert remote.requests == []


@pytest.mark.usefixtures("public")
async def test_a_redirect_to_a_private_address_is_refused(app, remotes, data):
    first, inner = remotes(), remotes("127.0.0.2")
    inner.serve("/flowers.safetensors", data)
    first.serve("/flowers.safetensors", data)
    async with serving(app(adapter_sources="http", source_timeout=2)) as client:
        r = await register(client, f"{first.url}/flowers.safetensors")
        assert r.status_code == 201, r.text  # the stand-in public host is fetched from
        for location, kind in [
            (f"{inner.url}/flowers.safetensors", "loopback"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://10.0.0.1/flowers.safetensors", "private"),
            (f"http://[::1]:{inner.url.rsplit(':', 1)[1]}/flowers.safetensors", "loopback"),
        ]:
            r = await register(client, first.redirect("/r", location))
            assert r.status_code == 403, (location, r.text)
            assert kind in message(r), r.text
    assert inner.requests == []


@pytest.mark.usefixtures("public")
async def test_a_name_is_resolved_once_and_its_checked_address_connected(app, remotes, data, monkeypatch):
    from adaptformer_server.sources import addresses

    remote = remotes()
    remote.serve("/flowers.safetensors", data)
    port = int(remote.url.rsplit(":", 1)[1])
    answers = {  # a rebinding name: public first, private on every later lookup
        "adapters.example": [["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]],
        "mixed.example": [["127.0.0.1", "10.0.0.7"]],
    }
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list:
        lookups.append(host)
        return [ipaddress.ip_address(a) for a in answers[host].pop(0)]

    monkeypatch.setattr(addresses, "resolve", resolve)
    async with serving(app(adapter_sources="http", source_timeout=5)) as client:
        r = await register(client, f"http://adapters.example:{port}/flowers.safetensors", sha256=sha(data))
        assert r.status_code == 201, r.text
        assert lookups == ["adapters.example"]
        assert remote.requests[-1][1]["host"] == f"adapters.example:{port}"
        r = await register(client, f"http://mixed.example:{port}/flowers.safetensors")
        assert r.status_code == 403 and "10.0.0.7" in message(r), r.text
    assert len(remote.requests) == 1


async def test_the_operator_can_allow_private_addresses(app, remotes, data, monkeypatch):
    remote = remotes()
    url = remote.serve("/flowers.safetensors", data)
    monkeypatch.setenv("ADAPTFORMER_ALLOW_PRIVATE_SOURCES", "true")
    assert Settings().allow_private_sources is True
    monkeypatch.delenv("ADAPTFORMER_ALLOW_PRIVATE_SOURCES")
    assert Settings().allow_private_sources is False
    async with serving(app(adapter_sources="http", allow_private_sources=True)) as client:
        assert (await register(client, url, sha256=sha(data))).status_code == 201


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.53", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("100.64.0.1", "reserved"),  # carrier-grade NAT
        ("198.18.0.1", "private"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("fe80::1%2", "link-local"),
    ],
)
def test_address_classes(address: str, kind: str | None):
    from adaptformer_server.sources.addresses import refusal

    reason = refusal(ipaddress.ip_address(address))
    assert (reason is None) if kind is None else (reason is not None and kind in reason), reason
