"""Where the client points and with what: a server's URL and a token, checked before use and
shown in messages without the secrets they may hold."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit, urlunsplit

import requests

DEFAULT_URL = "http://127.0.0.1:8080"


def display_url(url: str) -> str:
    """The URL without user:password@, fit for messages; never raises, whatever the URL."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        # Unparseable (a bad port, an unclosed [): drop whatever precedes the last @ of the authority.
        return re.sub(r"^([^/?#]*//)[^/?#]*@", r"\1", url)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a server's address, or None; in words that never repeat it (it may hold a password)."""
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        return "contains whitespace or a control character"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not 0-65535
    except ValueError:
        return "cannot be parsed (a bad port or IPv6 address?)"
    if parts.scheme.lower() not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    return None


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot go into an Authorization header, or None; never repeats it."""
    # Tokens are printable ASCII; a stray newline (from a file, say) would otherwise surface in requests' error text.
    if any(not 33 <= ord(c) <= 126 for c in token):
        return "may hold only printable ASCII characters: no spaces, line breaks or control characters"
    return None


def next_after(response: requests.Response) -> str | None:
    """The ``after`` of the answer's rel="next" link: the client asks the same path again with it,
    never another URL a link could name."""
    link = response.links.get("next", {}).get("url")
    if not link:
        return None
    values = parse_qs(urlsplit(link).query).get("after", [])
    return values[0] if values and values[0].isascii() and values[0].isdigit() else None
