"""AdaptFormer Serve: an HTTP server for one frozen ViT and many hot-swapped AdaptFormer adapters.

>>> from adaptformer_server import Settings, create_app
>>> app = create_app(Settings(store="/tmp/adapters"))  # the backbone loads when the app starts
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adaptformer import __version__  # one distribution, one version (importing adaptformer loads no torch)

__all__ = ["Settings", "__version__", "create_app"]

if TYPE_CHECKING:
    from adaptformer_server.app import create_app
    from adaptformer_server.settings import Settings


def __getattr__(name: str) -> Any:
    # Lazy: `python -m adaptformer_server --help` and the settings need neither torch nor FastAPI.
    if name == "create_app":
        from adaptformer_server.app import create_app

        return create_app
    if name == "Settings":
        from adaptformer_server.settings import Settings

        return Settings
    raise AttributeError(name)
