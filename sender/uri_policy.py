"""Which URIs a trigger message may name: ``daemon.allow_uris``, or a closed default.

A trigger message names what the daemon reads and sends to other teams: without a limit,
anyone who can post a message could have ``file:///etc/passwd`` delivered to a receiver.

- With ``daemon.allow_uris`` the URI must start with one of those prefixes; local paths are
  compared after resolving ``..`` and symlinks (``/data/../etc`` is ``/etc``).
- Without it, a message from a remote trigger (HTTP, a queue) may name the schemes of the
  configured ``[sources]`` and local paths under the config file's folder; a local one
  (``sender send``, the spool directory) anything the daemon can read.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .ports import ServesSchemes
from .registry import url_scheme

if TYPE_CHECKING:
    from .config import AppConfig

__all__ = ["normal_uri", "uri_refusal"]


def normal_uri(uri: str) -> str:
    """A URI as compared with ``allow_uris``: local paths absolute, ``..`` and symlinks
    resolved; other URIs as written, the scheme lowercased."""
    scheme = url_scheme(uri)
    if scheme in ("", "file"):
        path = uri.split("://", 1)[1] if scheme else uri
        resolved = os.path.realpath(path)
        return resolved + "/" if path.endswith("/") and resolved != "/" else resolved
    return scheme + uri[len(scheme) :]


def uri_refusal(config: AppConfig, uri: str, *, remote: bool) -> str | None:
    """Why a trigger may not name ``uri``, or None when it may (see the module)."""
    allowed = config.daemon.allow_uris
    if allowed is None and not remote:
        return None
    target = normal_uri(uri)
    if allowed is not None:
        if any(target.startswith(normal_uri(prefix)) for prefix in allowed):
            return None
        return f"uri {uri!r} is outside daemon.allow_uris"
    scheme = url_scheme(uri)
    if scheme in ("", "file"):
        if target.startswith(normal_uri(str(config.base_dir)).rstrip("/") + "/"):
            return None
        return (
            f"uri {uri!r} is a local path outside {config.base_dir}: remote triggers may name"
            " only paths under the config's folder (set daemon.allow_uris to allow more)"
        )
    sources = [section.cls for section in config.sources.values()]
    if any(isinstance(cls, ServesSchemes) and scheme in cls.schemes for cls in sources):
        return None
    return (
        f"uri {uri!r}: no [sources] section serves {scheme}:// (remote triggers may name the"
        " schemes of the configured sources, or set daemon.allow_uris)"
    )
