"""https:// and http:// sources. Redirects are followed here, and every hop is checked before it is connected to.

A hop's URL must be well formed (a host name or literal address, a port of 1 to 65535) and of a scheme the
operator enabled: http or https, as a redirect never leads to a file, the hub or S3. Its host is resolved and each
of its addresses checked (:mod:`.addresses`); the request goes to a checked address, with the name in ``Host`` and,
for https, as the TLS server name the certificate is verified against. At most :data:`MAX_REDIRECTS` redirects.
User info is sent as basic authentication, to the host it names only.

The body is streamed: more than ``max_upload_bytes``, sent or decoded from its Content-Encoding, is cut off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass

import httpx

from adaptformer_server.errors import ApiError, Forbidden, ValidationFailed
from adaptformer_server.settings import Settings
from adaptformer_server.sources import addresses
from adaptformer_server.sources.decoding import ACCEPT, PIECE, DecodingError, decoder_for
from adaptformer_server.sources.errors import SourceUnavailable, too_large
from adaptformer_server.sources.redaction import printable, redact, shown

__all__ = ["MAX_REDIRECTS", "download"]

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


class _BadUrl(Exception):
    """A URL no request can go to; the message says why (``... has no host``)."""


@dataclass(frozen=True)
class _Hop:
    url: httpx.URL  # as the source or the redirect names it, user info included
    host: str  # an ASCII (IDNA) host name or a literal address
    port: int


async def download(source: str, settings: Settings) -> bytes:
    """The bytes of an http(s) source.

    Raises:
        ValidationFailed: a malformed URL (422).
        Forbidden: a hop to a scheme not enabled, or to an address not allowed (403).
        PayloadTooLarge: more than ``max_upload_bytes`` (413).
        SourceUnavailable: an error status, too many redirects, an unreachable host, a body that does not decode
            (502).
        asyncio.TimeoutError: the client's own timeout (the caller answers 504).
    """
    named = shown(source)
    try:
        hop = _hop(httpx.URL(source))
    except _BadUrl as e:
        raise ValidationFailed(f"source {named!r} {printable(str(e))}"[:500]) from None
    except (httpx.InvalidURL, ValueError) as e:
        raise ValidationFailed(f"source {named!r} is not a valid URL ({printable(str(e))})"[:500]) from None
    try:
        return await _follow(hop, settings, named)
    except httpx.TimeoutException:
        raise asyncio.TimeoutError from None
    except (ApiError, asyncio.TimeoutError):
        raise
    except DecodingError as e:
        raise SourceUnavailable(f"{named} sent {e}; nothing was stored"[:500]) from None
    except Exception as e:  # httpx and the TLS layer raise many kinds: each is the remote's failure, not the user's
        raise SourceUnavailable(f"cannot fetch {named}: {type(e).__name__}: {redact(str(e))}"[:500]) from None


def _hop(url: httpx.URL) -> _Hop:
    host = url.raw_host.decode("ascii")
    if not host:
        raise _BadUrl("has no host")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise _BadUrl(f"has port {url.port}; a port is 1 to 65535")
    if not _is_literal(host):
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise _BadUrl(f"has an invalid host name, {host!r}")
    return _Hop(url, host, url.port or (443 if url.scheme == "https" else 80))


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _follow(hop: _Hop, settings: Settings, named: str) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        async with httpx.AsyncClient(timeout=settings.source_timeout) as client:  # one per hop: no reuse across names
            response = await _send(client, hop, settings, named)
            try:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    hop = _redirected(hop, response.headers["location"], settings, named)
                    continue
                if not 200 <= response.status_code < 300:
                    raise SourceUnavailable(
                        f"{named} answered HTTP {response.status_code}; check the URL (nothing was stored)"
                    )
                return await _body(response, settings)
            finally:
                await response.aclose()
    raise SourceUnavailable(f"{named} answered with more than {MAX_REDIRECTS} redirects; nothing was stored")


def _redirected(hop: _Hop, location: str, settings: Settings, named: str) -> _Hop:
    try:
        url = hop.url.join(location)
    except (httpx.InvalidURL, ValueError) as e:
        raise SourceUnavailable(f"{named} redirects to an invalid URL ({printable(str(e))})"[:500]) from None
    scheme = printable(url.scheme)
    if scheme not in ("http", "https"):
        raise Forbidden(f"{named} redirects to a {scheme}:// URL; redirects are followed to http(s) URLs only")
    if scheme not in settings.adapter_sources:
        raise Forbidden(f"{named} redirects to a {scheme}:// URL, a scheme not enabled here")
    try:
        return _hop(url)
    except _BadUrl as e:
        raise SourceUnavailable(f"{named} redirects to an invalid URL, one that {printable(str(e))}"[:500]) from None


async def _send(client: httpx.AsyncClient, hop: _Hop, settings: Settings, named: str) -> httpx.Response:
    """The response (streaming) of the first checked address of the hop's host that accepts the connection."""
    found = await addresses.checked(hop.host, hop.port, settings.allow_private_sources, named)
    headers = {"Host": hop.url.netloc.decode("ascii"), "Accept-Encoding": ACCEPT}
    by_name = hop.url.scheme == "https" and not _is_literal(hop.host)
    extensions = {"sni_hostname": hop.host} if by_name else {}
    url = hop.url.copy_with(username=None, password=None)
    auth = httpx.BasicAuth(hop.url.username, hop.url.password) if hop.url.userinfo else None
    refused: httpx.ConnectError | None = None
    for address in found:
        request = client.build_request("GET", url.copy_with(host=str(address)), headers=headers, extensions=extensions)
        try:
            return await client.send(request, auth=auth, stream=True)
        except httpx.ConnectError as e:
            refused = e  # try the next address
    assert refused is not None  # checked() returns at least one address
    raise refused


async def _body(response: httpx.Response, settings: Settings) -> bytes:
    limit = settings.max_upload_bytes
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), settings)
    decoder = decoder_for(response.headers.get("content-encoding", ""))
    chunks: list[bytes] = []
    sent = total = 0
    async for raw in response.aiter_raw(PIECE):
        sent += len(raw)
        if sent > limit:
            raise too_large(sent, settings)
        for piece in decoder.decode(raw):
            total += len(piece)
            if total > limit:
                raise too_large(total, settings)
            chunks.append(piece)
    decoder.finish()
    return b"".join(chunks)
