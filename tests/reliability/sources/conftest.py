"""Fixtures of the adapter-source tests (POST /adapters with JSON {"source": URL}) under hostile URLs. Each case in
this folder was found by probing a running server: it answered 500, hung, wrote credentials to the log, or fetched
through a scheme or from an address it must not. Every test here failed before its fix.

The app runs in-process on the tiny backbone; remote sources are HTTP(S) servers on loopback (the TLS one with a
throw-away certificate for ``localhost`` and 127.0.0.1 that the fetch is told to trust through ``SSL_CERT_FILE``).
Loopback is refused by default, so tests that fetch from these servers turn ``allow_private_sources`` on, or make
127.0.0.1 stand for a public host (the ``public`` fixture) to show what a hop to a private address gets.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from timm.models.vision_transformer import VisionTransformer

from adaptformer_server import create_app
from adaptformer_server.settings import Settings
from tests.support import Remote, adapter_bytes

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
