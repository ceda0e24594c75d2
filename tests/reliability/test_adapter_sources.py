"""Adapter sources (POST /adapters with JSON {"source": URL}) under hostile URLs. Each case was found by probing a
running server: it answered 500, hung, wrote credentials to the log, or fetched through a scheme or from an address
it must not. Every test here failed before its fix.

The app runs in-process on the tiny backbone; remote sources are HTTP(S) servers on loopback (the TLS one with a
throw-away certificate for ``localhost`` and 127.0.0.1 that the fetch is told to trust through ``SSL_CERT_FILE``).
Loopback is refused by default, so tests that fetch from these servers turn ``allow_private_sources`` on, or make
127.0.0.1 stand for a public host (the ``public`` fixture) to show what a hop to a private address gets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import hashlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from timm.models.vision_transformer import VisionTransformer

from adaptformer_server import create_app
from adaptformer_server.settings import Settings
from tests.support import Answer, Remote, adapter_bytes, free_port, serving

# -- remote sources ----------------------------------------------------------------------------------------------


@pytest.fixture
def remotes() -> Iterator[Callable[..., Remote]]:
    started: list[Remote] = []

    def start(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None, name: str | None = None) -> Remote:
        started.append(Remote(host, tls, name))
        return started[-1]

    yield start
    for remote in started:
        remote.close()


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context with a self-signed certificate for localhost and 127.0.0.1, trusted by the fetch."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
def public(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 stands for a public host: the address check lets it through, and only it, of the loopback range."""
    from adaptformer_server.sources import addresses

    refusal = addresses.refusal
    stand_in = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(addresses, "refusal", lambda address: None if address == stand_in else refusal(address))


# -- the app -----------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ADAPTFORMER_") or key.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture
def data(vit: VisionTransformer) -> bytes:
    return adapter_bytes(vit, "flowers", seed=3)


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    path = tmp_path / "allowed"
    path.mkdir()
    return path


@pytest.fixture
def app(vit: VisionTransformer, tmp_path: Path, allowed: Path) -> Callable[..., object]:
    def make(**overrides: object) -> object:
        values: dict = {
            "store": tmp_path / "store",
            "jobs_dir": tmp_path / "jobs",
            "seed_demo": False,
            "max_wait_ms": 2,
            "adapter_source_dirs": str(allowed),
        }
        return create_app(Settings(**{**values, **overrides}), backbone=vit)

    return make


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def register(client: httpx.AsyncClient, source: str, **body: str) -> httpx.Response:
    content = json.dumps({"task": "flowers", "source": source, **body})  # escaped: a lone surrogate travels too
    return await client.post("/adapters", content=content, headers={"Content-Type": "application/json"})


def message(r: httpx.Response) -> str:
    return r.json()["error"]["message"]


# -- 1. a user's mistake is a 4xx, an unreachable source a 502/504: never the catch-all 500 ----------------------

MALFORMED_HTTP = [
    ("http://[::1/x", "not a valid URL"),
    ("https://[::1/x", "not a valid URL"),
    ("http://[not-an-address]/x", "not a valid URL"),
    ("http://example.com:99999/x.safetensors", "port"),
    ("http://example.com:abc/x.safetensors", "port"),
    ("http://example.com:0/x.safetensors", "port"),
    ("http://" + "a" * 64 + ".example.com/x.safetensors", "host name"),
    ("http://" + "a." * 130 + "com/x.safetensors", "host name"),
    ("https://b\u00fccher" + "a" * 70 + ".example/x.safetensors", "not a valid URL"),
    ("http://exa mple.com/x.safetensors", "host name"),
    ("http:///x.safetensors", "no host"),
    ("http://user@/x.safetensors", "no host"),
    ("http:example.com/x.safetensors", "scheme://"),
    ("http://example.com/" + "a" * 9000, "8,192"),
    ("http://example.com/\x00.safetensors", "control character"),
    ("http://example.com/\ud800.safetensors", "control character"),
]


@pytest.mark.parametrize(("source", "words"), MALFORMED_HTTP)
async def test_a_malformed_http_source_is_422(app, source: str, words: str):
    async with serving(app(adapter_sources="http,https")) as client:
        r = await register(client, source)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"
        assert words in message(r), r.text
        metrics = (await client.get("/metrics")).text
        assert 'adaptformer_source_fetches_total{scheme="http' in metrics


async def test_a_malformed_source_of_a_scheme_not_enabled_is_403(app):
    sources = [s for s, _ in MALFORMED_HTTP] + ["file://[::1/x", "s3://[bucket/key", "hf://[::1/x/y"]
    async with serving(app()) as client:  # every scheme off
        for source in sources:
            r = await register(client, source)
            assert r.status_code == 403, (source, r.text)
            assert "ADAPTFORMER_ADAPTER_SOURCES=" in message(r)
        r = await register(client, "ftp://[::1/x")
        assert r.status_code == 422 and "the scheme must be one of" in message(r), r.text


async def test_malformed_file_sources_are_422_and_odd_bytes_name_a_file(app, allowed: Path, data: bytes):
    (allowed / "flowers.safetensors").write_bytes(data)
    os.makedirs(os.fsencode(allowed) + b"/\xff", exist_ok=True)
    Path(os.fsdecode(os.fsencode(allowed) + b"/\xff/flowers.safetensors")).write_bytes(data)
    async with serving(app(adapter_sources="file")) as client:
        for source, words in [
            (f"file://{allowed}/flowers%00.safetensors", "NUL"),
            (f"file://{allowed}/%00", "NUL"),
            (f"file://{allowed}/{'a' * 300}.safetensors", "too long"),
            (f"file://{allowed}/{'%41' * 300}.safetensors", "too long"),
            (f"file://{allowed}/\ud800.safetensors", "control character"),
            (f"file://{allowed}/flowers.safetensors\n", "control character"),
            ("file://[::1/x.safetensors", "not a valid URL"),
            ("file://host:99999/x.safetensors", "not host"),
            ("file:relative.safetensors", "scheme://"),
        ]:
            r = await register(client, source)
            assert r.status_code == 422, (source, r.text)
            assert words in message(r), (source, r.text)
        # percent-encoded bytes name the file by its bytes, UTF-8 or not
        r = await register(client, f"file://{allowed}/%FF/flowers.safetensors", sha256=sha(data))
        assert r.status_code == 201, r.text
        r = await register(client, f"file://{allowed}/%66lowers.safetensors", sha256=sha(data))
        assert r.status_code == 201, r.text


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, bool], None]:
    """Points huggingface_hub at ``endpoint`` with an empty cache (online, or offline)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def point(endpoint: str, offline: bool = False) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)

    return point


@pytest.mark.parametrize(
    "source",
    [
        "hf://acme corp/adapters/flowers.safetensors",
        "hf://acme/x--y/flowers.safetensors",
        "hf://acme/x..y/flowers.safetensors",
        "hf://-acme/adapters/flowers.safetensors",
        "hf://acme/adapters./flowers.safetensors",
        f"hf://acme/{'r' * 100}/flowers.safetensors",
        "hf://acme/adapters/flowers.safetensors@",
        "hf://acme/adapters/../flowers.safetensors",
        "hf://acme/flowers.safetensors",
    ],
)
@pytest.mark.parametrize("offline", [True, False])
async def test_an_invalid_hub_reference_is_422(app, hub, source: str, offline: bool):
    hub(f"http://127.0.0.1:{free_port()}", offline)  # never reached: the reference is checked first
    async with serving(app(adapter_sources="hf")) as client:
        r = await register(client, source)
        assert r.status_code == 422, r.text
        assert "hf://OWNER/REPO/PATH/FILE.safetensors" in message(r)


async def test_an_unreachable_or_slow_hub_is_502_or_504(app, hub, remotes):
    slow = remotes()
    slow.answers["/acme/adapters/resolve/main/flowers.safetensors"] = Answer(200, delay=3)
    failing = remotes()
    failing.answers["/acme/adapters/resolve/main/flowers.safetensors"] = Answer(500)
    for endpoint, status, words in [
        (f"http://127.0.0.1:{free_port()}", 502, "cannot reach the hub"),
        (failing.url, 502, "hf://acme/adapters/flowers.safetensors"),
        (slow.url, 504, "within 0.5 s"),
    ]:
        hub(endpoint)
        async with serving(app(adapter_sources="hf", source_timeout=0.5)) as client:
            r = await register(client, "hf://acme/adapters/flowers.safetensors")
            assert r.status_code == status, (endpoint, r.text)
            assert words in message(r), r.text


# -- 7. every hop of a redirect is checked before it is connected to -----------------------------------------------


async def test_a_redirect_to_a_scheme_not_enabled_is_refused_before_connecting(app, remotes, tls, allowed, data):
    plain, secure = remotes(), remotes(tls=tls, name="localhost")
    (allowed / "flowers.safetensors").write_bytes(data)
    plain.serve("/flowers.safetensors", data)
    secure.serve("/flowers.safetensors", data)
    cases = [  # (enabled schemes, source, the server that must never be asked)
        ("http", plain.redirect("/to-https", f"{secure.url}/flowers.safetensors"), secure),
        ("http", plain.redirect("/chain", secure.redirect("/back", f"{plain.url}/flowers.safetensors")), secure),
        ("https", secure.redirect("/to-http", f"{plain.url}/flowers.safetensors"), plain),
        ("http,file", plain.redirect("/to-file", f"file://{allowed}/flowers.safetensors"), None),
        ("http,hf", plain.redirect("/to-hub", "hf://acme/adapters/flowers.safetensors"), None),
    ]
    for enabled, source, untouched in cases:
        plain.requests.clear()
        secure.requests.clear()
        async with serving(app(adapter_sources=enabled, allow_private_sources=True)) as client:
            r = await register(client, source)
        assert r.status_code == 403, (enabled, source, r.text)
        assert "redirects to a" in message(r), r.text
        if untouched is not None:
            assert untouched.requests == [], (enabled, source)


async def test_redirects_through_enabled_schemes_still_register(app, remotes, tls, data):
    plain, secure = remotes(), remotes(tls=tls, name="localhost")
    plain.serve("/flowers.safetensors", data)
    secure.serve("/flowers.safetensors", data)
    chain = plain.redirect("/a", secure.redirect("/b", f"{plain.url}/flowers.safetensors", 307))
    relative = secure.redirect("/c", "/flowers.safetensors", 301)
    async with serving(app(adapter_sources="http,https", allow_private_sources=True)) as client:
        for source in (chain, relative):
            r = await register(client, source, sha256=sha(data))
            assert r.status_code == 201, (source, r.text)
    # the TLS server was asked by its name (its certificate's), on the address the name was checked at
    assert {headers["host"] for _, headers in secure.requests} == {secure.url.removeprefix("https://")}


async def test_redirect_loops_and_bad_locations_are_502(app, remotes):
    remote = remotes()
    remote.redirect("/loop", "/loop")
    remote.redirect("/bad-port", "http://example.com:99999/x")
    remote.redirect("/bad-host", "http://[::1/x")
    remote.redirect("/no-location", "")
    del remote.answers["/no-location"].headers["Location"]
    async with serving(app(adapter_sources="http", allow_private_sources=True)) as client:
        r = await register(client, f"{remote.url}/loop")
        assert r.status_code == 502 and "more than 5 redirects" in message(r), r.text
        assert len(remote.requests) == 6
        for path in ("/bad-port", "/bad-host"):
            r = await register(client, remote.url + path)
            assert r.status_code == 502 and "invalid url" in message(r).lower(), r.text
        r = await register(client, f"{remote.url}/no-location")
        assert r.status_code == 502 and "HTTP 302" in message(r), r.text


# -- 8. credentials in a source reach neither the log nor the answer -------------------------------------------------

PASSWORD, TOKEN = "pa55-w0rd-XYZ", "t0ken-secret-ABC"


async def test_credentials_in_a_source_stay_out_of_every_log_line(app, remotes, data, caplog):
    remote = remotes()
    remote.serve("/flowers.safetensors", data)
    remote.redirect("/moved", f"{remote.url}/missing.safetensors?sig={TOKEN}")
    host = remote.url.removeprefix("http://")
    caplog.set_level(logging.DEBUG)
    async with serving(app(adapter_sources="http", allow_private_sources=True)) as client:
        good = f"http://agent:{PASSWORD}@{host}/flowers.safetensors?token={TOKEN}&x=1"
        r = await register(client, good, sha256=sha(data))
        assert r.status_code == 201, r.text
        path, headers = remote.requests[-1]
        assert path == f"/flowers.safetensors?token={TOKEN}&x=1"  # the URL is fetched as given...
        assert headers["authorization"] == "Basic " + base64.b64encode(f"agent:{PASSWORD}".encode()).decode()
        logged = [record.getMessage() for record in caplog.records]
        assert any("HTTP Request: GET" in line for line in logged)  # ...and the request is still logged, redacted
        assert not [line for line in logged if PASSWORD in line or TOKEN in line]
        answers = [r.text]
        for source in [
            f"http://agent:{PASSWORD}@{host}/missing.safetensors?token={TOKEN}",
            f"http://agent:{PASSWORD}@{host}/moved?token={TOKEN}",
            f"http://agent:{PASSWORD}@127.0.0.1:{free_port()}/flowers.safetensors?token={TOKEN}",
            f"http://agent:{PASSWORD}@{host}:99999/flowers.safetensors?token={TOKEN}",
        ]:
            r = await register(client, source)
            assert r.status_code in (422, 502), r.text
            answers.append(r.text)
    logged = [record.getMessage() for record in caplog.records]
    for text in answers + logged:
        assert PASSWORD not in text and TOKEN not in text, text


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


# -- 10. a file:// source that is no regular file is refused at once ---------------------------------------------


async def test_a_fifo_socket_or_directory_source_is_refused_at_once(app, allowed: Path, data: bytes):
    fifo = allowed / "pipe.safetensors"
    os.mkfifo(fifo)
    (allowed / "link.safetensors").symlink_to(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(allowed / "sock.safetensors"))
    (allowed / "dir.safetensors").mkdir()
    (allowed / "flowers.safetensors").write_bytes(data)
    try:
        async with serving(app(adapter_sources="file")) as client:
            for name in ("pipe", "link", "sock", "dir"):
                r = await asyncio.wait_for(register(client, f"file://{allowed}/{name}.safetensors"), 10)
                assert r.status_code == 404, (name, r.text)
                assert "not a regular file" in message(r), r.text
            r = await register(client, f"file://{allowed}/flowers.safetensors", sha256=sha(data))
            assert r.status_code == 201, r.text
    finally:
        sock.close()
        with contextlib.suppress(OSError):  # a reader left blocked on the FIFO (before the fix) gets its end of file
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


# -- 14. a compressed download is decoded, and the limit holds for the decoded bytes ---------------------------------


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def _brotli(data: bytes) -> bytes:
    brotli = pytest.importorskip("brotli")
    return brotli.compress(data, quality=1)


ENCODINGS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", _raw_deflate),
    ("br", _brotli),
    ("gzip, br", lambda d: _brotli(gzip.compress(d))),
    ("identity", lambda d: d),
]


@pytest.mark.parametrize(("encoding", "encode"), ENCODINGS)
async def test_a_compressed_download_is_decoded_before_its_checks(app, remotes, data, encoding, encode):
    remote = remotes()
    url = remote.serve("/flowers.safetensors", encode(data), **{"Content-Encoding": encoding})
    two_members = remote.serve("/two.safetensors", gzip.compress(data[:100]) + gzip.compress(data[100:]),
                               **{"Content-Encoding": "gzip"})  # fmt: skip
    async with serving(app(adapter_sources="http", allow_private_sources=True)) as client:
        for source in (url, two_members):
            r = await register(client, source, sha256=sha(data))
            assert r.status_code == 201, r.text
    offered = {c.strip() for c in remote.requests[0][1]["accept-encoding"].split(",")}
    assert offered <= {"gzip", "deflate", "br"}  # only codings the fetch decodes


def _bomb(encoding: str, size: int) -> bytes:
    zeros = b"\0" * (1 << 20)
    if encoding == "br":
        brotli = pytest.importorskip("brotli")
        compressor = brotli.Compressor(quality=1)
        return b"".join(compressor.process(zeros) for _ in range(size >> 20)) + compressor.finish()
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    return b"".join(c.compress(zeros) for _ in range(size >> 20)) + c.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_compression_bomb_stops_at_the_limit(app, remotes, encoding: str):
    remote = remotes()
    url = remote.serve("/bomb.safetensors", _bomb(encoding, 64 << 20), **{"Content-Encoding": encoding})
    async with serving(app(adapter_sources="http", allow_private_sources=True, max_upload_bytes=1 << 20)) as client:
        r = await asyncio.wait_for(register(client, url), 20)
    assert r.status_code == 413, r.text
    assert "limit is 1,048,576" in message(r)


async def test_a_body_that_does_not_decode_is_502(app, remotes, data):
    remote = remotes()
    remote.serve("/zstd.safetensors", data, **{"Content-Encoding": "zstd-or-other"})
    remote.serve("/corrupt.safetensors", b"\x1f\x8b\x08\x00garbage-not-gzip", **{"Content-Encoding": "gzip"})
    remote.serve("/cut.safetensors", gzip.compress(data)[:-500], **{"Content-Encoding": "gzip"})
    async with serving(app(adapter_sources="http", allow_private_sources=True)) as client:
        for path, words in [
            ("/zstd.safetensors", "Content-Encoding"),
            ("/corrupt.safetensors", "gzip"),
            ("/cut.safetensors", "ends before"),
        ]:
            r = await register(client, remote.url + path)
            assert r.status_code == 502, (path, r.text)
            assert words in message(r), r.text
