"""integration-sender: deliver prediction batches to other teams' platforms."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("integration-sender")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
