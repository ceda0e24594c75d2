"""The client's version, read from its distribution's metadata (client/pyproject.toml) in one place."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adaptformer-client")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
