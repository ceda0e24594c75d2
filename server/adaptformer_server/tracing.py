"""OpenTelemetry traces (the ``otel`` extra), off by default.

Off (``tracing`` false, the default) this module imports nothing of OpenTelemetry (FastAPI itself imports its
API, and its own request spans are turned off in ``app.py``): the service and the batcher hold ``None`` for a
tracer, and :func:`span` hands back one shared no-op context manager (a branch and a call per stage). On
(``--tracing``), every sampled request gets its spans:

- the HTTP request (OpenTelemetry's ASGI middleware; an incoming ``traceparent`` header continues its trace),
- ``admission`` (the names checked), ``decode`` (the body to tensors), ``queue wait`` (from the samples'
  submission to the start of the batch that takes the last of them) and ``encode`` (logits to the answer),
- ``forward``, one per batch: a child of the first (sampled) request it serves, linked to the span of every
  sampled request it serves, with the batch size, its tasks and their request ids.

Each span carries the request id (:data:`REQUEST_ID`). With a front and an engine process (``--workers``), the
front sends its span context in the wire message of each request and the engine's ``queue wait`` and ``forward``
spans continue that trace.

Spans go where the standard ``OTEL_*`` variables say (OTLP over HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``, by
default ``http://localhost:4318``; ``OTEL_TRACES_EXPORTER=console`` prints them, ``none`` drops them;
``OTEL_SERVICE_NAME`` names the service), unless the process already set a tracer provider (an embedding app, the
tests' in-memory exporter).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # never imported at run time unless tracing is on
    from opentelemetry.trace import Span, SpanContext, Tracer, TracerProvider
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "NOOP",
    "REQUEST_ID",
    "REQUEST_IDS",
    "batch_span",
    "carrier",
    "continue_trace",
    "error_status",
    "install",
    "instrument_app",
    "provider",
    "record_span",
    "request_context",
    "span",
    "tracer_for",
    "use_provider",
]

REQUEST_ID = "adaptformer.request_id"  # every span's request id
REQUEST_IDS = "adaptformer.request_ids"  # a batch's: the ids of the requests it serves
SERVICE_NAME = "adaptformer-serve"
NOOP = contextlib.nullcontext()  # what span() hands back when tracing is off: nothing to enter or leave


def _no_request() -> str | None:
    return None


_request_id = _no_request  # observability.current_request_id once a tracer is made
_provider: TracerProvider | None = None  # use_provider's


def tracer_for(enabled: bool) -> Tracer | None:
    """The server's tracer when tracing is on (the process's tracer provider set up first), else ``None``."""
    if not enabled:
        return None
    try:
        import opentelemetry.exporter.otlp.proto.http
        import opentelemetry.instrumentation.asgi
        import opentelemetry.sdk  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"tracing needs the otel extra ({e.name} is not installed): pip install 'adaptformer-serve[otel]'"
        ) from e
    from adaptformer_server import __version__, observability

    global _request_id
    _request_id = observability.current_request_id  # imported here: observability imports the routes
    return provider().get_tracer("adaptformer_server", __version__)


def use_provider(chosen: TracerProvider | None) -> None:
    """Sends the server's spans to ``chosen`` (the tests' in-memory exporter) instead of the process's tracer
    provider; ``None``: the process's again."""
    global _provider
    _provider = chosen


def provider() -> TracerProvider:
    """The tracer provider of the server's spans: the one :func:`use_provider` chose, else the process's (set by
    :func:`install` when nothing set one)."""
    if _provider is not None:
        return _provider
    from opentelemetry import trace

    install()
    return trace.get_tracer_provider()


def install() -> None:
    """Sets the process's tracer provider from the ``OTEL_*`` variables, unless one is set already."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import OTEL_SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):  # set by the embedding app
        return
    # process.pid tells a front's spans from the engine process's (--workers)
    resource = Resource.create(
        {"service.name": os.environ.get(OTEL_SERVICE_NAME) or SERVICE_NAME, "process.pid": os.getpid()}
    )
    provider = TracerProvider(resource=resource)
    exporter = (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        one_line = ConsoleSpanExporter(formatter=lambda s: s.to_json(indent=None) + "\n")  # a JSON object a line
        provider.add_span_processor(SimpleSpanProcessor(one_line))
    elif exporter != "none":
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: this server exports otlp, console or none")
    trace.set_tracer_provider(provider)


def instrument_app(app: Any) -> None:
    """Adds the HTTP request span around every middleware of ``app`` (a FastAPI or Starlette app), with the
    request id the app answers with."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app.add_middleware(_RequestIdOnSpan)  # inside the span, outside the app's own middleware
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider(), exclude_spans=["receive", "send"])


class _RequestIdOnSpan:
    """Sets the request id the response carries (``X-Request-ID``) on the HTTP request span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace

        current = trace.get_current_span()

        async def sent(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", ()):
                    if key.lower() == b"x-request-id":
                        current.set_attribute(REQUEST_ID, value.decode("latin-1"))
                        break
            await send(message)

        await self.app(scope, receive, sent)


def span(tracer: Tracer | None, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span named ``name`` around a stage of the current request (the current span while it runs), with the
    request id; :data:`NOOP` when ``tracer`` is ``None`` or the request is not sampled (``OTEL_TRACES_SAMPLER``)."""
    if tracer is None:
        return NOOP
    from opentelemetry import trace

    if not trace.get_current_span().is_recording():  # an unsampled request: its children would not be either
        return NOOP
    rid = _request_id()
    if rid is not None:
        attributes[REQUEST_ID] = rid
    return tracer.start_as_current_span(name, attributes=attributes)


def request_context() -> tuple[SpanContext, str | None]:
    """What a sample carries to its batch: the current span's context and the request id."""
    from opentelemetry import trace

    return trace.get_current_span().get_span_context(), _request_id()


def record_span(tracer: Tracer, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A span of the current request that already happened (``queue wait``: known once the batch started)."""
    from opentelemetry import trace

    if not trace.get_current_span().get_span_context().trace_flags.sampled:  # a front's unsampled request too
        return
    rid = _request_id()
    if rid is not None:
        attributes[REQUEST_ID] = rid
    tracer.start_span(name, start_time=start_ns, attributes=attributes).end(end_time=end_ns)


def batch_span(tracer: Tracer, requests: Sequence[tuple[SpanContext, str | None]], keys: Sequence[str]) -> Span | None:
    """The ``forward`` span of one batch (started, not current: the batch runs on the inference thread): a child
    of its first sampled request's span, linked to the span of each sampled request it serves (with a sampler
    (``OTEL_TRACES_SAMPLER``), a batch of unsampled requests has none)."""
    from opentelemetry import trace
    from opentelemetry.trace import Link

    links: dict[tuple[int, int], Link] = {}
    for ctx, rid in requests:
        if ctx.is_valid and ctx.trace_flags.sampled and (ctx.trace_id, ctx.span_id) not in links:
            links[ctx.trace_id, ctx.span_id] = Link(ctx, {REQUEST_ID: rid} if rid else None)
    if not links:  # no sampled request (or none traced): no span
        return None
    parent = trace.set_span_in_context(trace.NonRecordingSpan(next(iter(links.values())).context))
    ids = list(dict.fromkeys(rid for _, rid in requests if rid))
    attributes: dict[str, Any] = {
        "adaptformer.batch_size": len(keys),
        "adaptformer.tasks": list(dict.fromkeys(keys)),
        REQUEST_IDS: ids,
    }
    if len(ids) == 1:
        attributes[REQUEST_ID] = ids[0]
    return tracer.start_span("forward", context=parent, links=list(links.values()), attributes=attributes)


def error_status(e: BaseException) -> Any:
    """The ERROR status of a span that failed with ``e``."""
    from opentelemetry.trace import Status, StatusCode

    return Status(StatusCode.ERROR, f"{type(e).__name__}: {e}")


def carrier() -> dict[str, str]:
    """The current span context as W3C trace headers (``traceparent``), for a message to the engine process."""
    from opentelemetry import propagate

    out: dict[str, str] = {}
    propagate.inject(out)
    return out


@contextlib.contextmanager
def continue_trace(headers: Mapping[str, str] | None) -> Iterator[None]:
    """Makes the span context a front sent (:func:`carrier`) current while the engine serves its request."""
    if not headers:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract(dict(headers)))
    try:
        yield
    finally:
        context.detach(token)
