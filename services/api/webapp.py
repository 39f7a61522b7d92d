"""The web page at ``/app``: static HTML, ES modules and the vendored chart library, served by
the api process itself (no other server, no Node toolchain at run time).

The page is a client of the public HTTP API and its event stream like any other front end: it
calls only routes listed in ``/openapi.json`` (a browser test checks this), with the user's
bearer token, so mounting it adds no access path of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

#: Where the page's files live (package data of ``tieline.services``).
STATIC_DIR = Path(__file__).parent / "web" / "static"

#: The page loads nothing from elsewhere: scripts, styles and API calls are same-origin. Chart.js
#: sizes its canvas through inline style attributes, hence ``style-src 'unsafe-inline'``.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _PageFiles(StaticFiles):
    """Static files with the page's security headers on every answer."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_web(app: FastAPI, path: str = "/app", directory: Path = STATIC_DIR) -> None:
    """Serve the web page under ``path`` (``/app`` redirects to ``/app/``)."""
    files: Any = _PageFiles(directory=directory, html=True)
    app.mount(path, files, name="web")
