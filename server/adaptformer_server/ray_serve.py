"""Running the server as a Ray Serve application: several replicas of the same app on a Ray cluster.

Each replica is the whole server (backbone, bank, batcher, mixed-task batches) in its own process; Ray's proxy
spreads requests over them. They share one adapter store (a directory every node mounts) and each watches it, so
an upload, replace or delete through any replica is served by all of them within about a second.

Ray is optional: this module imports it only when an application is built (``pip install 'adaptformer-serve[ray]'``).

Three ways in:

- ``adaptformer serve --ray --replicas 3 --store /shared/adapters`` (:func:`serve_on_ray`);
- ``serve run adaptformer_server.ray_serve:app_builder store=/shared/adapters`` (:func:`app_builder`);
- a Ray Serve config file whose ``import_path`` is ``adaptformer_server.ray_serve:app_builder`` (docs/SCALING.md).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from adaptformer_server.settings import Settings

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = [
    "DEPLOYMENT_NAME",
    "TASK_ROUTER",
    "RayOptions",
    "RayUnavailable",
    "app_builder",
    "build_application",
    "deployment_options",
    "serve_on_ray",
]

log = logging.getLogger("adaptformer_server.ray")

DEPLOYMENT_NAME = "AdaptFormerServer"
TASK_ROUTER = "adaptformer_server.ray_deployment.TaskAffinityRouter"
_INSTALL_HINT = "pip install 'adaptformer-serve[ray]'"


class RayUnavailable(RuntimeError):
    """Ray Serve is not installed."""


class RayOptions(BaseSettings):
    """How the app runs on Ray; each field is an ``adaptformer serve --ray`` flag and an ADAPTFORMER_RAY_* variable.

    Ray's ``max_ongoing_requests`` defaults to 5 per replica, which would cap the server's batches at 5 requests:
    here it is 256, so a replica's own batcher sees enough requests to fill its batches.
    """

    model_config = SettingsConfigDict(env_prefix="ADAPTFORMER_RAY_", extra="ignore", validate_default=True)

    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'HOST:6379', 'ray://HOST:10001'); none: $RAY_ADDRESS, "
        "else a new single-machine cluster",
    )
    replicas: int = Field(1, ge=1, le=10_000, description="replicas (with autoscaling: how many to start with)")
    min_replicas: int | None = Field(None, ge=0, le=10_000, description="autoscaling: fewest replicas")
    max_replicas: int | None = Field(None, ge=1, le=10_000, description="autoscaling: most replicas (turns it on)")
    target_ongoing_requests: float = Field(
        32.0, gt=0, description="autoscaling: requests in progress per replica that it aims for (about a batch)"
    )
    max_ongoing_requests: int = Field(
        256, ge=1, description="requests in progress per replica; more wait in Ray's queue (Ray's default: 5)"
    )
    max_queued_requests: int = Field(
        -1, ge=-1, description="requests waiting in Ray's queue beyond which Ray answers 503 (-1: no limit)"
    )
    cpus_per_replica: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica (also its torch threads)")
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica (1 for a CUDA backbone)")
    routing: Literal["task", "load"] = Field(
        "task",
        description="task: a request goes to a replica that has its task resident (else the task's home replica) "
        "unless that one is busier by more than --routing-imbalance; load: Ray's default (fewest in progress "
        "of two random replicas)",
    )
    routing_imbalance: int = Field(
        4, ge=0, description="task routing: requests in progress beyond the least busy replica before it spills"
    )
    app_name: str = Field("adaptformer", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Ray Serve application name")

    @model_validator(mode="after")
    def _check_bounds(self) -> RayOptions:
        if self.min_replicas is not None and self.max_replicas is None:
            raise ValueError("min_replicas needs max_replicas (autoscaling); for a fixed count use replicas")
        if self.max_replicas is not None:
            low = 1 if self.min_replicas is None else self.min_replicas
            if low > self.max_replicas:
                raise ValueError(f"min_replicas ({low}) is more than max_replicas ({self.max_replicas})")
            if not low <= self.replicas <= self.max_replicas and "replicas" in self.model_fields_set:
                raise ValueError(
                    f"replicas ({self.replicas}) must lie between min_replicas ({low}) and max_replicas "
                    f"({self.max_replicas})"
                )
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None


def deployment_options(options: RayOptions) -> dict[str, Any]:
    """The Ray Serve deployment options (``serve.deployment(...)`` / a config file's ``deployments:`` entry)."""
    actor: dict[str, Any] = {"num_cpus": options.cpus_per_replica}
    if options.gpus_per_replica:
        actor["num_gpus"] = options.gpus_per_replica
    out: dict[str, Any] = {
        "max_ongoing_requests": options.max_ongoing_requests,
        "max_queued_requests": options.max_queued_requests,
        "ray_actor_options": actor,
        # A replica loads its backbone before it takes traffic; big timm backbones may download first.
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": 20,
        # A replica that cannot start (backbone missing, store unreadable) fails the same way every time: give up
        # after a few tries instead of loading the backbone again and again (Ray's default is 20).
        "max_constructor_retry_count": 3,
    }
    if options.routing == "task":
        out["request_router_config"] = {
            "request_router_class": TASK_ROUTER,
            "request_router_kwargs": {"imbalance": options.routing_imbalance},
            # replicas report their resident tasks this often (Ray's default: every 10 s)
            "request_routing_stats_period_s": 1.0,
            "request_routing_stats_timeout_s": 5.0,
        }
    if options.autoscaling:
        assert options.max_replicas is not None
        low = 1 if options.min_replicas is None else options.min_replicas
        out["autoscaling_config"] = {
            "min_replicas": low,
            "initial_replicas": min(max(options.replicas, low), options.max_replicas),
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
        }
    else:
        out["num_replicas"] = options.replicas
    return out


def replica_settings(settings: Settings, options: RayOptions) -> Settings:
    """The settings each replica gets: torch threads follow the CPUs Ray reserves, unless set."""
    if settings.threads is None and options.cpus_per_replica >= 1:
        return settings.model_copy(update={"threads": math.floor(options.cpus_per_replica)})
    return settings


def build_application(settings: Settings, options: RayOptions | None = None) -> Application:
    """The Ray Serve application: one deployment whose replicas each run the whole server.

    Raises:
        RayUnavailable: Ray Serve is not installed.
    """
    options = options or RayOptions()
    try:
        from adaptformer_server.ray_deployment import AdaptFormerServer
    except ImportError as e:
        raise RayUnavailable(f"Ray Serve is not installed ({e}); {_INSTALL_HINT}") from None
    # (serve.deployment made the class a Deployment, which type checkers cannot see)
    deployment = cast(Any, AdaptFormerServer).options(name=DEPLOYMENT_NAME, **deployment_options(options))
    return deployment.bind(replica_settings(settings, options))


def app_builder(args: dict[str, Any]) -> Application:
    """Ray Serve application builder: ``serve run adaptformer_server.ray_serve:app_builder store=/shared/a``.

    ``args`` (``key=value`` on the ``serve run`` line, or ``args:`` in a config file) take any server setting
    (``store``, ``backbone``, ``max_batch_size``...) and the deployment options of :class:`RayOptions`
    (``replicas``, ``max_replicas``...); ADAPTFORMER_* variables fill in the rest. A config file's own
    ``deployments:`` entries (``num_replicas``, ``autoscaling_config``...) override the options.
    """
    server_keys = set(Settings.model_fields)
    ray_keys = set(RayOptions.model_fields) - {"address", "app_name"}
    unknown = sorted(set(args) - server_keys - ray_keys)
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(unknown)}: pass server settings ({', '.join(sorted(server_keys))}) "
            f"or deployment options ({', '.join(sorted(ray_keys))})"
        )
    try:
        settings = Settings(**{k: v for k, v in args.items() if k in server_keys})
        options = RayOptions(**{k: v for k, v in args.items() if k in ray_keys})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"invalid argument: {problems}") from None
    return build_application(settings, options)


def serve_on_ray(settings: Settings, options: RayOptions) -> None:
    """``adaptformer serve --ray``: joins (or starts) a Ray cluster, runs the app, waits for Ctrl+C or SIGTERM.

    The HTTP proxy listens on ``settings.host:settings.port``. On exit the application is deleted; a cluster
    this command started is stopped with it.

    Raises:
        RayUnavailable: Ray Serve is not installed.
        RuntimeError: the application could not be deployed (e.g. the backbone failed to load).
    """
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise RayUnavailable(f"Ray Serve is not installed ({e}); {_INSTALL_HINT}") from None

    app = build_application(settings, options)
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    init: dict[str, Any] = {"address": address, "logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        # A new single-machine cluster: keep its own traffic on loopback when the server is loopback-only.
        init["include_dashboard"] = False
        if settings.loopback:
            init["_node_ip_address"] = "127.0.0.1"
    ray.init(**init)
    started_here = address is None
    log.info("Ray cluster: %s", ray.get_runtime_context().gcs_address)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        opts = deployment_options(options)
        scale = opts.get("autoscaling_config") or {"num_replicas": opts["num_replicas"]}
        log.info("deploying %r on Ray Serve: %s, max_ongoing_requests %d", options.app_name, scale,
                 options.max_ongoing_requests)  # fmt: skip
        start = time.perf_counter()
        try:
            serve.run(app, name=options.app_name, route_prefix="/")
        except RuntimeError as e:
            raise RuntimeError(f"{e} {_deployment_message(serve, options.app_name)}".strip()) from None
        host, port = _proxy_address(settings)
        log.info(
            "ready in %.1f s: http://%s:%d (API docs at /docs), adapter store %s; Ctrl+C stops",
            time.perf_counter() - start,
            host,
            port,
            settings.store,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping: deleting the application %r", options.app_name)
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            serve.delete(options.app_name)
            if started_here:
                serve.shutdown()
        except Exception as e:  # the original error, if any, is the one to report
            log.warning("cleaning up on Ray failed: %s", e)
        finally:
            ray.shutdown()


def _proxy_address(settings: Settings) -> tuple[str, int]:
    """Where Ray's proxy listens: Serve keeps the HTTP options it was first started with on a cluster."""
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is None:
            return settings.host, settings.port
        host, port = str(client.http_config.host), int(client.http_config.port)
    except Exception:  # a private API: fall back to what was asked
        return settings.host, settings.port
    if (host, port) != (settings.host, settings.port):
        log.warning(
            "Ray Serve on this cluster was started with HTTP %s:%d, so --host/--port (%s:%d) do not apply; "
            "`serve shutdown` on the cluster first to change them",
            host,
            port,
            settings.host,
            settings.port,
        )
    return host, port


def _deployment_message(serve: Any, app_name: str) -> str:
    """Why the deployment failed, as Ray's status says (the replica's exception), or empty."""
    try:
        app = serve.status().applications[app_name]
        return " ".join(d.message for d in app.deployments.values() if d.message)[-4000:]
    except Exception:
        return ""
