"""The request every adapter-source test sends, and what it reads of the answer."""

from __future__ import annotations

import hashlib
import json

import httpx


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def register(client: httpx.AsyncClient, source: str, **body: str) -> httpx.Response:
    content = json.dumps({"task": "flowers", "source": source, **body})  # escaped: a lone surrogate travels too
    return await client.post("/adapters", content=content, headers={"Content-Type": "application/json"})


def message(r: httpx.Response) -> str:
    return r.json()["error"]["message"]
