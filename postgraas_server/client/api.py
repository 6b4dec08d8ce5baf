"""PostgraasClient: the REST API as Python calls. Only the standard library and requests, so that
the CLI and the pytest plugin stay light (no Flask, SQLAlchemy or Docker)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from .errors import AmbiguousName, NotFoundError, PostgraasClientError, ServerUnreachable, error_for_status
from .instance import Instance, default_db_name, default_username

DEFAULT_URL = "http://127.0.0.1:8080"
# The server long-polls at most 300 s; shorter chunks let a caller report progress and a proxy
# with a 60 s idle timeout stay out of the way.
WAIT_CHUNK_SECONDS = 30.0
INSTANCES = "/postgraas_instances"


def display_url(url: str) -> str:
    """The URL without user:password@, fit for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _connection_reason(e: requests.ConnectionError) -> str:
    # requests nests the cause (MaxRetryError -> NewConnectionError); its text names the errno.
    match = re.search(r"""\[Errno -?\d+\] ([^'")\]]+)""", str(e))
    if match:
        return match.group(1).strip().rstrip(".")
    return type(e).__name__


class PostgraasClient:
    """A Postgraas server at ``url``; ``token`` for servers in auth.mode token.

    ``timeout`` bounds each ordinary request; a create that waits for its database gets
    ``create_timeout``, since the server answers only once the database takes logins.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 30.0,
        create_timeout: float = 300.0,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.create_timeout = create_timeout
        self._token = token or None
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"PostgraasClient({display_url(self.url)!r}, token={'set' if self._token else None})"

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PostgraasClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- instances -----------------------------------------------------------------------------

    def create(
        self,
        name: str,
        db_name: str | None = None,
        db_username: str | None = None,
        password: str | None = None,
        ttl: int | str | None = None,
        backend: str | None = None,
        wait: bool = True,
    ) -> Instance:
        """Create an instance. Without ``password`` the server generates one; either way the
        returned Instance carries it (the only answer that does). With ``wait=False`` the answer
        comes at once, with status ``creating``: see wait()."""
        body: dict[str, Any] = {
            "postgraas_instance_name": name,
            "db_name": db_name or default_db_name(name),
            "db_username": db_username or default_username(name),
            "wait": wait,
        }
        if password is not None:
            body["db_pwd"] = password
        if ttl is not None:
            body["ttl"] = ttl
        if backend:
            body["backend"] = backend
        timeout = self.create_timeout if wait else self.timeout
        data = self._request("POST", INSTANCES, json=body, timeout=timeout, secret=password)
        return Instance.from_json(data, password=data.get("db_pwd") or password)

    def list(self) -> list[Instance]:
        return [Instance.from_json(item) for item in self._request("GET", INSTANCES)]

    def get(self, instance_id: int) -> Instance:
        return Instance.from_json(self._request("GET", f"{INSTANCES}/{int(instance_id)}"))

    def resolve(self, ref: str | int) -> int:
        """The id of an instance given by id (an int, or a string of digits: no request) or by
        name, which must be unique among the instances this client sees."""
        if isinstance(ref, int):
            return ref
        if ref.isascii() and ref.isdigit():
            return int(ref)
        matches = [i for i in self.list() if i.name == ref]
        if not matches:
            raise NotFoundError(404, f"There is no instance named {ref!r}.")
        if len(matches) > 1:
            ids = ", ".join(str(i.id) for i in matches)
            raise AmbiguousName(f"Several instances are named {ref!r} (ids {ids}); use an id.")
        return matches[0].id

    def find(self, ref: str | int) -> Instance:
        """An instance by id or unique name (see resolve), as the item GET shows it."""
        return self.get(self.resolve(ref))

    def wait(
        self,
        instance_id: int,
        timeout: float,
        on_progress: Callable[[Instance], None] | None = None,
    ) -> Instance:
        """Wait until the instance is no longer ``creating`` or ``timeout`` seconds passed, and
        return it as last seen. Whether ``failed`` or ``lost`` is an error is the caller's call.
        ``on_progress`` gets the instance after every chunk that ended still creating."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            chunk = max(0.0, min(WAIT_CHUNK_SECONDS, deadline - time.monotonic()))
            data = self._request(
                "GET",
                f"{INSTANCES}/{int(instance_id)}",
                params={"wait": "ready", "timeout": f"{chunk:.1f}"},
                timeout=chunk + self.timeout,
            )
            instance = Instance.from_json(data)
            if instance.settled or time.monotonic() >= deadline:
                return instance
            if on_progress is not None:
                on_progress(instance)

    def delete(self, instance_id: int, password: str | None = None, force: bool = False) -> str:
        """Delete an instance and its database; returns the server's message. ``password`` is
        required without a token; ``force`` terminates open sessions first."""
        body: dict[str, Any] = {"force": force}
        if password is not None:
            body["db_pwd"] = password
        data = self._request(
            "DELETE", f"{INSTANCES}/{int(instance_id)}", json=body, timeout=self.create_timeout, secret=password
        )
        return str(data.get("msg", "")) if isinstance(data, dict) else ""

    def extend(self, instance_id: int, ttl: int | str | None, password: str | None = None) -> Instance:
        """Set a new ttl from now (None: no expiry, where the server allows it)."""
        body: dict[str, Any] = {"ttl": ttl}
        if password is not None:
            body["db_pwd"] = password
        return Instance.from_json(self._request("PATCH", f"{INSTANCES}/{int(instance_id)}", json=body, secret=password))

    # -- the server ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def ready(self) -> dict[str, Any]:
        """{"status": "ok"|"failed", "checks": {...}}; a 503 that says which check failed is an
        answer, not an error."""
        return self._request("GET", "/ready", answers=(503,))

    # -- the wire ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        secret: str | None = None,
        answers: tuple[int, ...] = (),
    ) -> Any:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        timeout = self.timeout if timeout is None else timeout
        try:
            response = self._session.request(
                method, self.url + path, json=json, params=params, headers=headers, timeout=timeout
            )
        except requests.Timeout:
            raise ServerUnreachable(
                f"The Postgraas server at {display_url(self.url)} did not answer within {timeout:g} s."
            ) from None
        except requests.ConnectionError as e:
            raise ServerUnreachable(
                f"Cannot reach the Postgraas server at {display_url(self.url)}: {_connection_reason(e)}."
            ) from None
        except requests.RequestException as e:
            # InvalidURL, MissingSchema ...: their text is about the URL, which the user gave.
            raise PostgraasClientError(f"Cannot send a request to {display_url(self.url)}: {e}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.ok or (response.status_code in answers and isinstance(data, dict)):
            if data is None and response.content:
                raise PostgraasClientError(
                    f"{display_url(self.url)}{path} answered HTTP {response.status_code} with a body that is "
                    f"not JSON; is this a Postgraas server? It said: {self._snippet(response.text, secret)}"
                )
            return data
        raise self._error(response, data, secret)

    def _error(self, response: requests.Response, data: Any, secret: str | None) -> PostgraasClientError:
        status = response.status_code
        if isinstance(data, dict) and isinstance(data.get("msg"), str):
            message = self._redact(data["msg"], secret)
            raw_errors = data.get("errors")
            errors = (
                {str(k): self._redact(str(v), secret) for k, v in raw_errors.items()}
                if isinstance(raw_errors, dict)
                else {}
            )
        else:
            # A proxy's HTML page, a server that is not Postgraas: still say what came back.
            reason = response.reason or "error"
            body = f"body: {self._snippet(response.text, secret)}" if response.text.strip() else "an empty body"
            message = f"Not a Postgraas answer from {display_url(self.url)}: {reason}, {body}"
            errors = {}
        return error_for_status(status)(status, message, errors, _retry_after(response.headers.get("Retry-After")))

    def _redact(self, text: str, secret: str | None) -> str:
        for value in (self._token, secret):
            if value:
                text = text.replace(value, "***")
        return text

    def _snippet(self, text: str, secret: str | None, limit: int = 200) -> str:
        text = " ".join(self._redact(text, secret).split())
        return text if len(text) <= limit else text[: limit - 3] + "..."
