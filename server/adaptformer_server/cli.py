"""``adaptformer serve``: flags mirror the Settings fields and override ADAPTFORMER_* environment variables."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import typing
from typing import Any

from pydantic import ValidationError

from adaptformer_server.settings import Settings, default_store

__all__ = ["build_parser", "main", "parse_settings"]

_EXAMPLES = """examples:
  adaptformer serve                                    # embedded backbone + demo adapters on 127.0.0.1:8000
  adaptformer serve --backbone vit_base_patch16_224.augreg2_in21k_ft_in1k --store /data/adapters --port 8000
  ADAPTFORMER_ADMIN_KEY=secret adaptformer serve --host 0.0.0.0

Every flag can also be set as an environment variable ADAPTFORMER_<FLAG> (e.g. ADAPTFORMER_MAX_BATCH_SIZE=64);
a flag wins over the variable. Prefer the variables for keys: flags show up in process listings.
"""


def _argument(name: str, field: Any) -> tuple[list[str], dict[str, Any]]:
    annotation = field.annotation
    args = typing.get_args(annotation)
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": name}
    env = f"ADAPTFORMER_{name.upper()}"
    if name == "store":
        default: Any = default_store()
    elif name in ("api_keys", "admin_key"):
        default = "none"
    else:
        default = field.default
    kwargs["help"] = f"{field.description} [env {env}; default: {default}]"
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif annotation is int or annotation == (int | None):
        kwargs["type"] = int
        kwargs["metavar"] = "N"
    elif annotation is float:
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
    return parser


def parse_settings(argv: list[str]) -> Settings:
    """Settings from flags (a leading ``serve`` is skipped) over ADAPTFORMER_* variables; exits 2 on bad values."""
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    parser = build_parser()
    overrides = vars(parser.parse_args(argv))
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        parser.error(problems)


def main(argv: list[str] | None = None) -> None:
    """Parses flags, builds the settings and runs uvicorn until interrupted (exit 1 if loading fails)."""
    settings = parse_settings(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    log = logging.getLogger("adaptformer_server")
    if not settings.loopback and settings.admin_key is None:
        log.warning("binding to %s without ADAPTFORMER_ADMIN_KEY: POST/DELETE /adapters answer 403", settings.host)

    import uvicorn

    from adaptformer_server.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=10
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


if __name__ == "__main__":
    main()
