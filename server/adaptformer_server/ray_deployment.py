"""The Ray Serve deployment: each replica runs the whole server app (imports Ray; see ray_serve.py)."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from ray import serve

from adaptformer_server.app import create_app, default_replica_id
from adaptformer_server.settings import Settings

__all__ = ["AdaptFormerServer"]


@serve.deployment
@serve.ingress()
class AdaptFormerServer:
    """One replica: the app of ``create_app`` with its own backbone, bank and batcher.

    The app is built in the replica (``__serve_build_asgi_app__``) and its startup waits for the backbone, so
    Ray sends traffic only to replicas that can serve it, and a replica whose backbone cannot load fails to
    start (Ray retries it) instead of answering 503.

    Args:
        settings: The server settings (the same for every replica; ``replica_id`` is made per replica).
    """

    def __init__(self, settings: Settings) -> None:
        context = serve.get_replica_context()
        replica_id = settings.replica_id or f"{context.replica_id.unique_id}@{default_replica_id()}"
        # (``app`` and ``settings`` would shadow names of Ray's ASGI wrapper, which this class becomes)
        self._adaptformer_settings = settings.model_copy(update={"replica_id": replica_id})
        logging.getLogger("adaptformer_server").setLevel(settings.log_level.upper())
        self._adaptformer_app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        self._adaptformer_app = create_app(self._adaptformer_settings, wait_ready=True)
        return self._adaptformer_app

    def check_health(self) -> None:
        """Ray's periodic health check: a replica whose runtime failed is replaced."""
        app = self._adaptformer_app
        if app is not None and app.state.runtime.state == "failed":
            raise RuntimeError(f"the server failed: {app.state.runtime.error}")
