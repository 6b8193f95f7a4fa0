"""(filled in by the DICOMweb issue)"""

from __future__ import annotations

from aiohttp import web


def add_routes(router: web.UrlDispatcher, root: str) -> None:
    """Register this module's routes under root (no trailing slash)."""
