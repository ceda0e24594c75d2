"""The Ray Serve deployment: each replica runs the whole server app (imports Ray; see ray_serve.py).

Also the request router of ``--routing task`` (the default): :class:`TaskAffinityRouter`.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import random
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI
from ray import serve
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from adaptformer_server.app import create_app, default_replica_id
from adaptformer_server.settings import Settings

__all__ = ["AdaptFormerServer", "TaskAffinityRouter", "request_task"]

log = logging.getLogger("adaptformer_server.ray")

_NO_TASK = ""
_TASK_ATTR = "_adaptformer_task"  # the task of a pending request, parsed once however often it is routed


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

    def record_routing_stats(self) -> dict[str, Any]:
        """What Ray's routers see of this replica (every ``request_routing_stats_period_s``): its resident tasks."""
        return {"tasks": resident_tasks(self._adaptformer_app)}


def resident_tasks(app: FastAPI | None) -> list[str]:
    """The tasks with a version resident in the app (its keys are ``task@version``); none before it opens."""
    resident = None if app is None else app.state.runtime.adapters.resident_adapters
    return sorted(resident.resident_tasks()) if resident is not None else []


def request_task(request: PendingRequest | None) -> str:
    """The task a request is for, or ``""``: the ``serve_multiplexed_model_id`` header (or a handle's
    ``multiplexed_model_id``) when set, else the ``task`` query parameter of an HTTP request."""
    if request is None:
        return _NO_TASK
    cached = getattr(request, _TASK_ATTR, None)
    if cached is not None:
        return cached
    task = request.metadata.multiplexed_model_id or _query_task(request.args)
    setattr(request, _TASK_ATTR, task)
    return task


def _query_task(args: list[Any]) -> str:
    """``task`` from the query string of the ASGI scope Ray's HTTP proxy sends (a pickled StreamingHTTPRequest)."""
    if not args or not isinstance(args[0], bytes) or b"task=" not in args[0]:
        return _NO_TASK
    try:
        scope = pickle.loads(args[0]).asgi_scope  # bytes Ray's own proxy made
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("task")
    except Exception:  # another kind of request: route it by load alone
        return _NO_TASK
    return values[0] if values else _NO_TASK


def _weight(task: str, replica: RunningReplica) -> int:
    """Rendezvous hashing: the replica with the highest weight is the task's home."""
    digest = hashlib.blake2b(f"{task}\0{replica.replica_id.unique_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class TaskAffinityRouter(RequestRouter):
    """Sends a request to a replica that has its task resident, unless that replica is much busier than the rest.

    - Replicas report their resident tasks (``record_routing_stats``, every second). A request whose task is
      resident on some replicas goes to the least busy of them.
    - A task resident nowhere goes to its *home* replica, the first of the replicas ordered by rendezvous hashing
      of (task, replica): the same replica every time, and only ``1/n`` of the tasks move when replicas come or
      go. Each replica so pages in about ``1/n`` of the tasks, and its slots hold a larger share of its traffic.
    - Load first: when the preferred replicas have more than ``imbalance`` requests in progress beyond the least
      busy replica, the request goes to the least busy replica instead (a hot task spreads over replicas).
    - A request without a task (``/readyz``, ``/metrics``, uploads...) goes to the least busy replica.

    Batches still mix tasks: each replica serves its share of all tasks, and requests in progress on it are
    batched together as on a single server.
    """

    def initialize_state(self, imbalance: int = 4, **kwargs: Any) -> None:
        self._imbalance = imbalance

    def _in_progress(self, replica: RunningReplica) -> int:
        return self.replica_queue_len_cache.get(replica.replica_id) or 0

    def _by_load(self, replicas: list[RunningReplica]) -> list[list[RunningReplica]]:
        """Ranks by load: Ray takes the replica with the fewest requests in progress, the first of equals (so
        shuffled: in a fixed order, an idle deployment's requests would all go to the same replica).

        Replicas whose load this router does not know come first, each its own rank, so that Ray asks them: Ray
        would otherwise take a replica it knows (a busy one) and ask the others only in the background, within
        0.1 s, which a replica on a loaded machine can miss every time; it then gets no requests at all.
        """
        unknown = [r for r in replicas if self.replica_queue_len_cache.get(r.replica_id) is None]
        return [[r] for r in unknown] + [random.sample(replicas, len(replicas))]

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        task = request_task(pending_request)
        if not task or len(candidate_replicas) < 2:
            return self._by_load(candidate_replicas)
        ordered = sorted(candidate_replicas, key=lambda r: _weight(task, r), reverse=True)
        preferred = [r for r in ordered if task in (r.routing_stats or {}).get("tasks", ())] or ordered[:1]
        lightest = min(map(self._in_progress, candidate_replicas))
        if min(map(self._in_progress, preferred)) - lightest > self._imbalance:
            return self._by_load(candidate_replicas)
        rest = [r for r in ordered if r not in preferred]
        return [preferred, rest] if rest else [preferred]
