"""The web console: static files under /ui/, served by the API server itself, and a redirect there
for a browser that opens /. The page talks to the JSON API only, with the same token; it holds no
logic the API lacks (docs/console.md)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, request, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

STATIC = Path(__file__).with_name("static")
# Endpoints open without a token: the page itself asks for one and sends it to the API.
PUBLIC_ENDPOINTS = ("console.page", "console.asset")

# No inline script or style, nothing from elsewhere: server data that slipped into the page as markup
# still could not run. frame-ancestors: no other site can frame the buttons (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load (the ETag makes that cheap): an upgraded server serves its new page at once.
    "Cache-Control": "no-cache",
}

console = Blueprint("console", __name__)


@console.get("/ui/")
def page() -> Response:
    return _served("index.html")


@console.get("/ui/<path:filename>")
def asset(filename: str) -> Response:
    # send_from_directory refuses paths leaving STATIC (404).
    return _served(filename)


def _served(filename: str) -> Response:
    response = send_from_directory(STATIC, filename)
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect_browsers_to_console() -> BaseResponse | None:
    """A before_request hook, run before a token is asked for: a GET of / that prefers HTML goes to
    the console, which signs in itself. Every other request to / gets what it got before."""
    if request.path != "/" or request.method not in ("GET", "HEAD"):
        return None
    # curl and JSON clients send */* or application/json: best_match picks the first offer for those.
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) != "text/html":
        return None
    return redirect("/ui/", code=302)
