"""The console's blueprint: / sends browsers (only) to /ui/, the files and their security headers,
and the static file set itself (what the page loads exists, nothing inline, nothing from elsewhere)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from postgraas_server.console import CONTENT_SECURITY_POLICY, STATIC
from postgraas_server.tokens import issue_token

from ..conftest import make_app

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
FILES = sorted(p.name for p in STATIC.iterdir())


@pytest.fixture(params=["none", "token"])
def auth_mode(request) -> str:
    return request.param


@pytest.fixture
def app(tmp_path, fake_backend, auth_mode):
    return make_app(tmp_path, fake_backend, auth={"mode": auth_mode})


def test_a_browser_opening_root_is_sent_to_the_console(client):
    # No token needed for the redirect, nor for the page: the page asks for one itself.
    for accept in (BROWSER_ACCEPT, "text/html"):
        answer = client.get("/", headers={"Accept": accept})
        assert answer.status_code == 302
        assert answer.headers["Location"] == "/ui/"


def test_json_and_curl_clients_at_root_get_what_they_got_before(client, auth_mode):
    # Before the console, / matched no route: 404 without tokens, 401 with (every request needs one).
    # What any other unrouted path answers is what / answered.
    before = 401 if auth_mode == "token" else 404
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}, {"Accept": "application/json, text/html"}):
        answer = client.get("/", headers=headers)
        unrouted = client.get("/no-such-path", headers=headers)
        assert answer.status_code == before == unrouted.status_code
        assert answer.get_json()["status"] == "failed"
        assert "Location" not in answer.headers
    # Only a GET (or HEAD) is redirected.
    assert client.post("/", headers={"Accept": "text/html"}).status_code == before


@pytest.mark.parametrize("path", ["/ui/", *(f"/ui/{name}" for name in FILES)])
def test_every_console_file_is_served_without_a_token_with_the_security_headers(client, path):
    answer = client.get(path)
    assert answer.status_code == 200, path
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    expected = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", "/": "text/html"}
    suffix = next(s for s in expected if path.endswith(s))
    # nosniff: a module served under another type would not run.
    assert answer.mimetype in (expected[suffix], "application/javascript")


def test_the_policy_allows_no_inline_script_or_style_and_nothing_from_elsewhere():
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "unsafe-eval" not in CONTENT_SECURITY_POLICY
    assert directives["script-src"] == directives["style-src"] == directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"


def test_no_file_outside_the_static_directory_is_served(client):
    for path in ("/ui/../__init__.py", "/ui/%2e%2e/__init__.py", "/ui/missing.js", "/ui/static"):
        assert client.get(path).status_code == 404, path


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        self._in_script = False

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        if self._in_script and data.strip():
            self.inline_script = True


def _page() -> _Page:
    page = _Page()
    page.feed((STATIC / "index.html").read_text())
    return page


def test_the_page_has_no_inline_script_no_handler_attribute_and_loads_only_its_own_files():
    page = _page()
    assert not page.inline_script
    for tag, attrs in page.tags:
        assert not [a for a in attrs if a.startswith("on")], f"<{tag}> has an inline handler"
        assert "style" not in attrs, f"<{tag}> has an inline style"
    loaded = [attrs.get("src") or attrs.get("href") for tag, attrs in page.tags if tag in ("script", "link")]
    for url in loaded:
        assert url == "data:," or (STATIC / str(url)).is_file(), url
    assert {"console.js", "console.css"} <= set(loaded)


def test_every_field_of_the_page_has_a_label():
    page = _page()
    labelled = {attrs["for"] for tag, attrs in page.tags if tag == "label"}
    fields = [attrs for tag, attrs in page.tags if tag in ("input", "select", "textarea")]
    assert fields
    assert [f["id"] for f in fields if f.get("id") not in labelled] == []


def _modules() -> dict[str, str]:
    return {p.name: p.read_text() for p in STATIC.glob("*.js")}


def test_modules_import_only_modules_that_exist_and_the_files_stay_small():
    for name, source in _modules().items():
        for imported in re.findall(r'from "\./([^"]+)"', source):
            assert (STATIC / imported).is_file(), f"{name} imports {imported}"
    for path in STATIC.iterdir():
        assert len(path.read_text().splitlines()) <= 400, path.name


def test_server_data_never_goes_in_as_markup_and_the_token_stays_in_the_tab():
    for name, source in _modules().items():
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{name} uses {sink}"
        assert not re.search(r"localStorage\s*[.\[]|document\.cookie", source), name
        # Nothing fetched from elsewhere.
        assert not re.search(r"https?://", source), name
    assert re.search(r"headers\.Authorization = `Bearer \$\{token\}`", _modules()["api.js"])


def test_the_overview_and_the_console_are_told_apart_by_auth(app, client, auth_mode):
    """The page is public; what it shows comes from the API, which still wants the token."""
    assert client.get("/ui/").status_code == 200
    overview = client.get("/postgraas_overview")
    assert overview.status_code == (401 if auth_mode == "token" else 200)
    if auth_mode == "token":
        with app.app_context():
            token = issue_token("carol", admin=False, max_instances=None, max_ttl=None)[1]
        assert client.get("/postgraas_overview", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_the_static_files_are_in_the_package_data():
    setup = (Path(__file__).parents[2] / "setup.py").read_text()
    assert '"console/static/*"' in setup
