"""The dashboard page at ``/``: static files from ``gateway/static/dashboard``, no build step.

The files are package data: ``pip install .`` ships them with the ``gateway``
package, so an installed gateway serves the same page.

Nothing is loaded from another host; the page talks to this gateway only
(``/api/demo/token`` in demo mode, ``/ws`` for data).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

__all__ = ["STATIC_DIR", "blueprint"]

STATIC_DIR = Path(__file__).resolve().parent / "static" / "dashboard"

blueprint = Blueprint("dashboard", __name__)


@blueprint.get("/")
def index() -> Response:
    return send_from_directory(STATIC_DIR, "index.html")


@blueprint.get("/dashboard/<path:name>")
def asset(name: str) -> Response:
    response = send_from_directory(STATIC_DIR, name)
    response.headers["Cache-Control"] = "no-cache"
    return response
