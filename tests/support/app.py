"""An app's lifespan run in-process (backbone load, store scan, batcher) with an httpx client on it, and a way to
hold its forward passes (to fill a queue or a batch on purpose)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

__all__ = ["held_request", "hold_forward_pass", "serving"]


@asynccontextmanager
async def serving(app: FastAPI, *, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Runs the app's lifespan and gives an in-process client (``ready``: once the backbone is loaded)."""
    async with app.router.lifespan_context(app):
        if ready:
            await app.state.runtime.wait_ready(60)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            yield client


def hold_forward_pass(batcher) -> tuple[threading.Event, threading.Event]:
    """Makes the batcher's forward passes wait until ``gate`` is set (then they run as before); returns (started, gate)."""
    run, started, gate = batcher.run, threading.Event(), threading.Event()

    def held(*args):
        started.set()
        gate.wait(30)
        return run(*args)

    batcher.run = held
    return started, gate


async def held_request(app, client, path: str, **kw) -> tuple[asyncio.Task, threading.Event]:
    """POSTs one request to ``app`` and waits until it is in a forward pass held until ``gate`` is set; returns the
    request's task and ``gate``."""
    started, gate = hold_forward_pass(app.state.inference.batcher)
    sent = asyncio.create_task(client.post(path, **kw))
    assert await asyncio.to_thread(started.wait, 60), "the request never reached the forward pass"
    return sent, gate
