"""The runtime: the life cycle of one server. It loads the backbone in the app's lifespan and opens the two
services on it (:mod:`adaptformer_server.services`); routes use the services, never the runtime's internals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from torch import nn

from adaptformer.engine import MultiTaskViT
from adaptformer.task import TaskAdapter
from adaptformer_server.backbone import BackboneError, BackboneInfo, build_engine
from adaptformer_server.errors import NotReady
from adaptformer_server.metrics import Metrics
from adaptformer_server.services import AdapterManager, InferenceService
from adaptformer_server.settings import Settings

__all__ = ["Runtime"]

log = logging.getLogger("adaptformer_server")


class Runtime:
    """Loads the backbone and opens the services on it: ``loading`` -> ``ready`` (or ``failed``).

    Args:
        settings: Server settings.
        metrics: The app's metrics.
        backbone: A prebuilt backbone to serve instead of loading the one the settings name.
        on_fatal: Called when loading fails (the CLI stops the server).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        backbone: nn.Module | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on_fatal = on_fatal
        self._backbone = backbone
        self.state = "loading"
        self.error: str | None = None
        self.engine: MultiTaskViT | None = None
        self.backbone: BackboneInfo | None = None
        self.adapters = AdapterManager(settings, metrics)
        self.inference: InferenceService[TaskAdapter] = InferenceService(settings, metrics, self.adapters)
        self._load_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts loading in the background: /healthz answers at once, /readyz once the backbone is in place.

        Once: a second call (the app's lifespan after a host started the runtime itself) does nothing.
        """
        if self._load_task is None:
            self._load_task = asyncio.create_task(self._load(), name="adaptformer-load")

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Waits for loading to finish; raises RuntimeError if it failed."""
        if self._load_task is None:
            raise RuntimeError("the runtime was not started (run the app's lifespan)")
        await asyncio.wait_for(asyncio.shield(self._load_task), timeout)
        if self.state != "ready":
            raise RuntimeError(f"the server failed to load: {self.error}")

    async def _load(self) -> None:
        try:
            engine, info = await asyncio.to_thread(build_engine, self.settings, self._backbone)
            self.engine, self.backbone = engine, info
            await self.adapters.open(engine, info)
            await self.inference.open(engine, info)
            self.adapters.watch()
            self.state = "ready"
            log.info(
                "ready: %d adapters in %s, %d slots",
                len(self.adapters.registry),
                self.adapters.store.root if self.adapters.store else self.settings.store,
                self.settings.slots,
            )
        except Exception as e:
            self.state = "failed"
            self.error = str(e)
            log.error("the server cannot start: %s", e, exc_info=not isinstance(e, (BackboneError, OSError)))
            if self.on_fatal is not None:
                self.on_fatal(e)

    async def stop(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._load_task
        await self.adapters.close()
        await self.inference.close()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def require_ready(self) -> None:
        if self.state == "failed":
            raise NotReady(f"the server failed to load its backbone: {self.error}", retry_after=60)
        if self.state != "ready":
            raise NotReady("the server is loading its backbone; retry shortly (GET /readyz says when it is ready)")
