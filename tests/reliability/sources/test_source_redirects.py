"""Adapter sources: every hop of a redirect is checked before it is connected to; credentials in a source reach neither the log nor the
answer.
(Fixtures: conftest.py in this folder.)
"""

from __future__ import annotations

import base64
import logging

from tests.reliability.sources.calls import message, register, sha
from tests.support import free_port, serving

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
