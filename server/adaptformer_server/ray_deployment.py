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

    The app is built in the replica (``__serve_build_asgi_app__``), which returns only once the backbone is loaded
    and the store read: Ray sends traffic only to replicas that can serve it, and a replica whose backbone cannot
    load fails to start with the reason (Ray retries it, then reports the deployment failed).

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

    async def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self._adaptformer_settings)
        runtime = app.state.runtime
        runtime.start()  # here rather than in the app's lifespan (which then finds it started) to report failures
        try:
            await runtime.wait_ready()
        except RuntimeError as e:
            await runtime.stop()
            raise RuntimeError(f"replica {self._adaptformer_settings.replica_id}: {e}") from None
        self._adaptformer_app = app
        return app

    def check_health(self) -> None:
        """Ray's periodic health check: a replica whose runtime failed is replaced."""
        app = self._adaptformer_app
        if app is not None and app.state.runtime.state == "failed":
            raise RuntimeError(f"the server failed: {app.state.runtime.error}")
