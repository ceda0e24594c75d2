"""``adaptformer serve``: flags mirror the Settings fields and override ADAPTFORMER_* environment variables."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import typing
from typing import Any

from pydantic import ValidationError

from adaptformer_server.ray_serve import RayOptions, RayUnavailable
from adaptformer_server.settings import InsecureKeyError, Settings, default_store

__all__ = ["build_parser", "main", "parse_args", "parse_settings"]

_EXAMPLES = """examples:
  adaptformer serve                                    # embedded backbone + demo adapters on 127.0.0.1:8000
  adaptformer serve --backbone vit_base_patch16_224.augreg2_in21k_ft_in1k --store /data/adapters --port 8000
  ADAPTFORMER_ADMIN_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')" adaptformer serve --host 0.0.0.0
  adaptformer serve --workers 8 --device cuda            # 8 front processes feed one engine process on the GPU
  adaptformer serve --ray --replicas 3 --store /shared/adapters   # Ray Serve: 3 replicas, one shared store
  adaptformer serve --ray --min-replicas 1 --max-replicas 8 --ray-address auto --host 0.0.0.0

Every flag can also be set as an environment variable ADAPTFORMER_<FLAG> (e.g. ADAPTFORMER_MAX_BATCH_SIZE=64);
a flag wins over the variable. Prefer the variables for keys: flags show up in process listings.
Off loopback the server refuses keys shorter than 16 characters or copied from an example (docs/API.md).
The Ray flags are ADAPTFORMER_RAY_<FIELD> variables (ADAPTFORMER_RAY_REPLICAS, ADAPTFORMER_RAY_ADDRESS...).
"""

_RAY_FLAGS = {"address": "--ray-address", "app_name": "--ray-app-name"}
_RAY_DEST = "ray__"


def _argument(name: str, field: Any, env_prefix: str = "ADAPTFORMER_") -> tuple[list[str], dict[str, Any]]:
    annotation = field.annotation
    args = typing.get_args(annotation)
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": name}
    env = f"{env_prefix}{name.upper()}"
    if name == "store":
        default: Any = default_store()
    elif name in ("api_keys", "admin_key", "cors_origins"):
        default = "none"
    elif name == "allowed_hosts":
        default = "localhost, 127.0.0.1, ::1 and --host"
    else:
        default = field.default
    kwargs["help"] = f"{field.description} [env {env}; default: {default}]"
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif annotation is int or annotation == (int | None):
        kwargs["type"] = int
        kwargs["metavar"] = "N"
    elif annotation is float or annotation == (float | None):
        kwargs["type"] = float
        kwargs["metavar"] = "X"
    elif typing.get_origin(annotation) is typing.Literal:
        kwargs["choices"] = list(args)
    else:
        kwargs["metavar"] = "KEYS" if name == "api_keys" else name.upper()
    return [f"--{name.replace('_', '-')}"], kwargs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptformer serve",
        description="Serve one frozen Vision Transformer and many AdaptFormer task adapters over HTTP.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in Settings.model_fields.items():
        flags, kwargs = _argument(name, field)
        parser.add_argument(*flags, **kwargs)
    ray = parser.add_argument_group(
        "Ray Serve", "several replicas on a Ray cluster, one shared store (pip install 'adaptformer-serve[ray]')"
    )
    ray.add_argument(
        "--ray",
        action="store_true",
        help="run as a Ray Serve application; --host/--port are then those of Ray's HTTP proxy",
    )
    for name, field in RayOptions.model_fields.items():
        flags, kwargs = _argument(name, field, env_prefix="ADAPTFORMER_RAY_")
        kwargs["dest"] = _RAY_DEST + name
        ray.add_argument(_RAY_FLAGS.get(name, flags[0]), **kwargs)
    return parser


def _problems(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())


def parse_args(argv: list[str]) -> tuple[Settings, RayOptions | None]:
    """Settings (and Ray options with ``--ray``) from flags over the environment; exits 2 on bad values.

    A leading ``serve`` is skipped.
    """
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    parser = build_parser()
    values = vars(parser.parse_args(argv))
    use_ray = values.pop("ray")
    ray_values = {k[len(_RAY_DEST) :]: values.pop(k) for k in list(values) if k.startswith(_RAY_DEST)}
    if ray_values and not use_ray:
        flags = ", ".join(_RAY_FLAGS.get(k, f"--{k.replace('_', '-')}") for k in ray_values)
        parser.error(f"{flags}: only with --ray")
    try:
        settings = Settings(**values)
    except ValidationError as e:
        parser.error(_problems(e))
    try:
        return settings, RayOptions(**ray_values) if use_ray else None
    except ValidationError as e:
        parser.error(f"Ray options: {_problems(e)}")


def parse_settings(argv: list[str]) -> Settings:
    """Settings from flags (a leading ``serve`` is skipped) over ADAPTFORMER_* variables; exits 2 on bad values."""
    return parse_args(argv)[0]


def main(argv: list[str] | None = None) -> None:
    """Parses flags, builds the settings and runs uvicorn until interrupted (exit 1 if loading fails)."""
    settings, ray_options = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        settings.check_keys()
    except InsecureKeyError as e:
        sys.exit(f"adaptformer serve: error: {e}")
    from adaptformer_server.observability import configure_logging

    configure_logging(settings)
    log = logging.getLogger("adaptformer_server")
    if settings.admin_key is None and (settings.api_keys or not settings.loopback):
        why = "predict keys are set" if settings.api_keys else f"the server binds to {settings.host}"
        log.warning("no ADAPTFORMER_ADMIN_KEY and %s: POST/DELETE /adapters answer 403", why)
    if ray_options is not None:
        _serve_on_ray(settings, ray_options, log)
        return
    from adaptformer_server.tier.plan import plan

    try:
        processes = plan(settings)
    except ValueError as e:
        sys.exit(f"adaptformer serve: error: {e}")
    if processes.split:
        from adaptformer_server.tier.supervisor import serve_tier

        sys.exit(serve_tier(settings, processes))

    import uvicorn

    from adaptformer_server.app import create_app
    from adaptformer_server.connections import http_protocol

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's lines go through configure_logging's handler (format, request ids)
        timeout_graceful_shutdown=10,
        http=http_protocol(settings.header_timeout),
    )
    server = uvicorn.Server(config)

    def stop(exc: BaseException) -> None:
        server.should_exit = True

    app.state.runtime.on_fatal = stop
    log.info(
        "serving on http://%s:%d (API docs at /docs), adapter store %s", settings.host, settings.port, settings.store
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl+C after its graceful shutdown
        server.run()
    if app.state.runtime.state == "failed":
        sys.exit(1)


def _serve_on_ray(settings: Settings, options: RayOptions, log: logging.Logger) -> None:
    from adaptformer_server.ray_serve import serve_on_ray

    try:
        serve_on_ray(settings, options)
    except RayUnavailable as e:
        sys.exit(f"adaptformer serve: error: {e}")
    except RuntimeError as e:  # the deployment failed: Ray's message says which replica and why
        log.error("the Ray Serve application failed: %s", e)
        code = 1
    else:
        code = 0
    # Ray's native threads can crash the interpreter's teardown after ray.shutdown() (seen: SIGSEGV in a metrics
    # thread), which would turn this exit status into a signal: leave without the teardown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
