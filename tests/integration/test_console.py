"""The web console in a real browser (headless Chromium) against a real server: the local backend,
tokens on, gunicorn as `serve` runs it. What a person does (sign in, create, connect, extend, delete)
and what must never happen (server text run as markup, the token in a URL, storage or a log line)."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from postgraas_server.console import CONTENT_SECURITY_POLICY

from .browser import By, chromium, requested_urls, until, visible
from .conftest import backend_config, require_local_postgres
from .servers import Server, drain_pools, eventually, make_token, pooled, start, stop_server

MAX_INSTANCES = 20
# Where the README's screenshots go when asked for (POSTGRAAS_CONSOLE_SCREENSHOTS=docs).
SCREENSHOTS = os.environ.get("POSTGRAAS_CONSOLE_SCREENSHOTS")


@pytest.fixture(scope="module")
def server(request, tmp_path_factory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("console")
    require_local_postgres()
    local = backend_config("local", request, max_instances=MAX_INSTANCES, pool_size=1)
    # No reaper in the server: its lease would keep drain_pools' pass from acting at the end.
    lifecycle = {"default_ttl": "10m", "reaper_interval": 0}
    server = start(home, {"local": local}, lifecycle=lifecycle, auth={"mode": "token"})
    try:
        yield server
        # Stopped while its pool is full, not while it makes a replacement: then one reaper pass with
        # the pool configured away leaves nothing (local_data_root checks).
        eventually(lambda: pooled(server, "local") == 1, 60, "the pool refilled")
    finally:
        stop_server(server)
        drained = drain_pools(home)
    assert "removed surplus pooled instance" in drained


@pytest.fixture(scope="module")
def tokens(server) -> dict[str, str]:
    return {"alice": make_token(server, "alice"), "root": make_token(server, "root", "--admin")}


@pytest.fixture(autouse=True)
def nothing_left(server, tokens) -> Iterator[None]:
    """Each test deletes what it made; what a failed one left is deleted here (and the test fails)."""
    yield
    left = api(server, tokens["root"], "GET", "/postgraas_instances").json()
    for instance in left:
        api(server, tokens["root"], "DELETE", f"/postgraas_instances/{instance['id']}", json={"force": True})
    assert [i["postgraas_instance_name"] for i in left] == [], "instances left behind"


def api(server: Server, token: str, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return requests.request(method, f"{server.url}{path}", headers=headers, timeout=120, **kwargs)


def name(prefix: str = "ui") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def sign_in(driver, server: Server, token: str) -> None:
    driver.get(f"{server.url}/")
    field = visible(driver, "#sign-in-token")
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
    visible(driver, "#create-form")


def fill_create(driver, **fields: str) -> None:
    for field, value in fields.items():
        element = driver.find_element(By.CSS_SELECTOR, f"#create-form [name={field}]")
        if element.tag_name == "select":
            driver.execute_script("arguments[0].value = arguments[1]", element, value)
        else:
            element.clear()
            element.send_keys(value)
    driver.find_element(By.ID, "create-submit").click()


def row_of(driver, instance_name: str):
    rows = driver.find_elements(By.CSS_SELECTOR, "#instance-rows tr")
    return next((r for r in rows if r.find_element(By.CSS_SELECTOR, ".name").text == instance_name), None)


def cell(row, label: str) -> str:
    return row.find_element(By.CSS_SELECTOR, f'td[data-label="{label}"]').text


def field_error(driver, input_id: str) -> str:
    """The reason shown next to a field: inside the field's own box, and named by aria-describedby."""
    error = visible(driver, f"#{input_id}-error")
    field = driver.find_element(By.ID, input_id)
    assert error.find_element(By.XPATH, "..") == field.find_element(By.XPATH, "..")
    assert field.get_attribute("aria-invalid") == "true"
    assert f"{input_id}-error" in field.get_attribute("aria-describedby").split()
    return error.text


def grant_clipboard(driver, server: Server) -> None:
    driver.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )


def clipboard(driver) -> str:
    return driver.execute_async_script("navigator.clipboard.readText().then(arguments[0], e => arguments[0](''))")


def save(driver, name: str, tmp_path: Path, for_docs: bool = True) -> Path:
    """A screenshot in tmp_path, or for the README in $POSTGRAAS_CONSOLE_SCREENSHOTS."""
    path = Path(SCREENSHOTS if SCREENSHOTS and for_docs else tmp_path) / name
    driver.save_screenshot(str(path))
    return path


def test_sign_in_create_connect_extend_and_delete_with_open_sessions(server, tokens, tmp_path):
    instance, password = name("shop"), f"pw-{uuid.uuid4().hex}"
    with chromium() as driver:
        sign_in(driver, server, tokens["alice"])
        assert driver.current_url == f"{server.url}/ui/"
        assert "Signed in as alice" in driver.find_element(By.ID, "who").text
        grant_clipboard(driver, server)

        fill_create(
            driver, postgraas_instance_name=instance, db_name="app", db_username="app_user", db_pwd=password, ttl="30m"
        )
        visible(driver, "#created")
        assert "The password is not shown again" in driver.find_element(By.ID, "created").text
        uri = driver.find_element(By.ID, "created-uri").text
        driver.find_element(By.CSS_SELECTOR, 'button[data-copy="created-uri"]').click()
        until(driver, lambda d: clipboard(d) == uri, "the copy button puts the URI on the clipboard")
        env = driver.find_element(By.ID, "created-env").text
        assert f"DATABASE_URL={uri}" in env and f"PGPASSWORD={password}" in env and "PGDATABASE=app" in env
        assert driver.find_element(By.ID, "created-psql").text == f"psql {uri}"

        # What was copied logs in.
        with psycopg.connect(clipboard(driver)) as conn:
            assert conn.execute("select current_user, current_database()").fetchone() == ("app_user", "app")

        row = until(driver, lambda d: row_of(d, instance), "the new row")
        assert (
            cell(row, "Status") == "ready" and cell(row, "Backend") == "local" and cell(row, "Durability") == "durable"
        )
        created = api(server, tokens["alice"], "GET", "/postgraas_instances?limit=10").json()[0]
        assert cell(row, "Host:port") == f"{created['host']}:{created['port']}"
        first = cell(row, "Time left")
        assert first.startswith("29m") or first.startswith("30m")
        until(driver, lambda d: cell(row_of(d, instance), "Time left") != first, "the time left counts down")

        # Extend: the dialog's PATCH, and the new time left.
        row.find_element(By.XPATH, ".//button[text()='Extend']").click()
        ttl = visible(driver, "#extend-ttl")
        ttl.clear()
        ttl.send_keys("2h")
        driver.find_element(By.CSS_SELECTOR, "#extend-form button[type=submit]").click()
        until(driver, lambda d: cell(row_of(d, instance), "Time left").startswith(("1h 59m", "2h 00m")), "2h left")
        expires = api(server, tokens["alice"], "GET", f"/postgraas_instances/{created['id']}").json()["expires_at"]
        assert expires > created["expires_at"]

        # Delete while a session is open: the server says so, the console offers to end them.
        held = psycopg.connect(uri, autocommit=True)
        try:
            held.execute("select 1")
            row_of(driver, instance).find_element(By.XPATH, ".//button[text()='Delete']").click()
            visible(driver, "#delete-form button[type=submit]").click()
            force = visible(driver, "#delete-force")
            assert "1 open session" in driver.find_element(By.ID, "delete-message").text
            assert row_of(driver, instance) is not None
            force.click()
            until(driver, lambda d: row_of(d, instance) is None, "the row is gone")
        finally:
            # Ended by the delete; closing it is all that is left.
            held.close()
        assert "Deleted instance" in driver.find_element(By.ID, "list-message").text
        assert api(server, tokens["alice"], "GET", f"/postgraas_instances/{created['id']}").status_code == 404

        # The token: in this tab's sessionStorage only; never in a URL, localStorage or cookie.
        assert driver.execute_script("return sessionStorage.getItem('postgraas.token')") == tokens["alice"]
        assert driver.execute_script("return localStorage.length + document.cookie.length") == 0
        urls = requested_urls(driver)
        assert any("/postgraas_instances" in url for url in urls)
        # pgr_<id>_<secret>: the secret may itself hold "_".
        secret = tokens["alice"].split("_", 2)[2]
        assert [url for url in urls if secret in url] == []
    log = server.log()
    assert "/postgraas_instances" in log and "/ui/" in log
    assert secret not in log and password not in log


def test_a_wrong_or_revoked_token_shows_the_sign_in_again_with_a_message(server, tokens):
    with chromium() as driver:
        driver.get(f"{server.url}/ui/")
        visible(driver, "#sign-in-token").send_keys("pgr_1_" + "x" * 43)
        driver.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
        message = until(driver, lambda d: d.find_element(By.ID, "sign-in-message").text, "a message")
        assert "refused the token" in message and "not valid" in message
        assert not driver.find_element(By.ID, "app").is_displayed()
        assert driver.execute_script("return sessionStorage.length") == 0

        # Signed in, then the token stops working (as when it is revoked): the next poll signs out.
        sign_in(driver, server, tokens["alice"])
        driver.execute_script("sessionStorage.setItem('postgraas.token', 'pgr_2_' + 'y'.repeat(43))")
        visible(driver, "#sign-in-token")
        assert "refused the token" in driver.find_element(By.ID, "sign-in-message").text
        assert not driver.find_element(By.ID, "app").is_displayed()


def test_a_taken_name_and_a_bad_field_show_the_server_s_message_next_to_the_field(server, tokens):
    taken = name("taken")
    made = api(server, tokens["alice"], "POST", "/postgraas_instances", json={
        "postgraas_instance_name": taken, "db_name": "app", "db_username": "app_user"})  # fmt: skip
    assert made.status_code == 201
    with chromium() as driver:
        sign_in(driver, server, tokens["alice"])
        fill_create(driver, postgraas_instance_name=taken, db_name="app", db_username="app_user")
        assert field_error(driver, "create-name") == "already exists"
        assert f"An instance named '{taken}' already exists." in driver.find_element(By.ID, "create-message").text
        # Fixing the name and breaking the ttl: the old reason goes, the new one is next to the ttl.
        fill_create(driver, postgraas_instance_name=name("bad"), ttl="soon")
        assert field_error(driver, "create-ttl") == "must be a number of seconds or a string like '30m', '2h', '7d'"
        assert driver.find_elements(By.ID, "create-name-error") == []
        assert driver.switch_to.active_element == driver.find_element(By.ID, "create-ttl")
    api(server, tokens["alice"], "DELETE", f"/postgraas_instances/{made.json()['id']}")


# At most 32 characters: a backend name longer than that is refused before it is echoed.
XSS = "<img src=x onerror=__xss=1>"


def test_server_text_with_markup_is_shown_as_text_under_a_strict_policy(server, tokens):
    page = requests.get(f"{server.url}/ui/", timeout=10)
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    # A failed instance whose reason holds markup (what a backend's error text could say).
    failing = name("failing")
    made = api(server, tokens["alice"], "POST", "/postgraas_instances", json={
        "postgraas_instance_name": failing, "db_name": "app", "db_username": "app_user"}).json()  # fmt: skip
    with sqlite3.connect(server.meta_db) as meta:
        meta.execute("update db_instance set status = 'failed', status_detail = ? where id = ?", (XSS, made["id"]))
    with chromium() as driver:
        sign_in(driver, server, tokens["alice"])
        row = until(driver, lambda d: row_of(d, failing), "the failed row")
        assert cell(row, "Status") == f"failed\nReason: {XSS}"
        # An error message echoing the request: an unknown backend is named in the 400's message.
        select = driver.find_element(By.ID, "create-backend")
        driver.execute_script(
            "const o = document.createElement('option'); o.value = o.textContent = arguments[1];"
            "arguments[0].append(o); arguments[0].value = arguments[1];",
            select,
            XSS,
        )
        fill_create(driver, postgraas_instance_name=name("x"), db_name="app", db_username="app_user")
        message = until(driver, lambda d: d.find_element(By.ID, "create-message").text, "the 400's message")
        assert XSS in message
        assert field_error(driver, "create-backend") == "must be one of: local"
        assert driver.find_elements(By.CSS_SELECTOR, "main img, #status-strip img") == []
        assert driver.execute_script("return window.__xss") is None
    api(server, tokens["alice"], "DELETE", f"/postgraas_instances/{made['id']}")


def test_an_admin_sees_every_owner_and_the_status_strip_and_both_widths(server, tokens, tmp_path):
    names = [name("orders"), name("analytics")]
    for instance, ttl in zip(names, ("45m", "4h"), strict=True):
        made = api(server, tokens["alice"], "POST", "/postgraas_instances", json={
            "postgraas_instance_name": instance, "db_name": "app", "db_username": "app_user", "ttl": ttl})  # fmt: skip
        assert made.status_code == 201
    with chromium() as driver:
        sign_in(driver, server, tokens["root"])
        assert "(admin" in driver.find_element(By.ID, "who").text
        headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#instance-head th")]
        assert headers[:3] == ["Name", "Owner", "Backend"]
        for instance in names:
            assert cell(until(driver, lambda d, n=instance: row_of(d, n), instance), "Owner") == "alice"

        strip = until(driver, lambda d: d.find_element(By.ID, "status-strip").text, "the status strip")
        assert "Ready" in strip and "metadb ok" in strip and "local ok" in strip
        pooled = until(driver, lambda d: "pool 1/1" in d.find_element(By.ID, "status-strip").text, "the pool's fill")
        assert pooled and f"of {MAX_INSTANCES} instances" in driver.find_element(By.ID, "status-strip").text

        # Paged by the server's cursor: one per page, the Link's next page, and back.
        driver.execute_script("const s = document.getElementById('filter-limit'); s.append(new Option('1'));"
                              "s.value = '1'; s.dispatchEvent(new Event('change'));")  # fmt: skip
        until(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#instance-rows tr")) == 1, "a page of one")
        driver.find_element(By.ID, "page-next").click()
        until(driver, lambda d: row_of(d, names[1]) is not None, "the second page")
        driver.find_element(By.ID, "page-first").click()
        until(driver, lambda d: row_of(d, names[0]) is not None, "the first page again")
        # Filtered by the server: a name prefix.
        driver.execute_script("const s = document.getElementById('filter-limit'); s.value = '25';"
                              "s.dispatchEvent(new Event('change'));")  # fmt: skip
        driver.find_element(By.ID, "filter-name").send_keys(names[1][:9])
        until(driver, lambda d: row_of(d, names[0]) is None and row_of(d, names[1]) is not None, "the name filter")
        driver.find_element(By.ID, "filter-name").clear()
        until(driver, lambda d: row_of(d, names[0]) is not None, "the filter cleared")
        time.sleep(1)
        save(driver, "console-list.png", tmp_path)

        # 400 px wide: rows become cards, nothing scrolls sideways.
        driver.set_window_size(400, 1000)
        until(driver, lambda d: d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"),
              "no horizontal scrolling at 400 px")  # fmt: skip
        first_row = row_of(driver, names[0])
        assert first_row.is_displayed()
        driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.ID, "instances"))
        save(driver, "console-list-400.png", tmp_path, for_docs=False)
    for instance in api(server, tokens["alice"], "GET", "/postgraas_instances").json():
        api(server, tokens["alice"], "DELETE", f"/postgraas_instances/{instance['id']}")


def test_the_create_result_screenshot(server, tokens, tmp_path):
    with chromium(height=1100) as driver:
        sign_in(driver, server, tokens["alice"])
        fill_create(driver, postgraas_instance_name="checkout-tests", db_name="checkout", db_username="ci", ttl="2h")
        visible(driver, "#created")
        time.sleep(1)
        save(driver, "console-created.png", tmp_path)
        driver.set_window_size(400, 1100)
        until(driver, lambda d: d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"),
              "no horizontal scrolling at 400 px")  # fmt: skip
        driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.ID, "created"))
        save(driver, "console-created-400.png", tmp_path, for_docs=False)
    for instance in api(server, tokens["alice"], "GET", "/postgraas_instances").json():
        api(server, tokens["alice"], "DELETE", f"/postgraas_instances/{instance['id']}")
