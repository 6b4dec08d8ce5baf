"""PostgraasClient: the REST API as Python calls. Only the standard library and requests, so that
the CLI and the pytest plugin stay light (no Flask, SQLAlchemy or Docker)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import requests

from .addresses import DEFAULT_URL, display_url, next_after, token_problem, url_problem
from .connection_errors import connection_reason, never_connected, retry_after
from .errors import (
    AmbiguousName,
    AuthenticationError,
    ConfigurationError,
    Leftover,
    NotFoundError,
    PostgraasClientError,
    ServerUnreachable,
    attach_leftover,
    error_for_status,
)
from .instance import Instance, default_db_name, default_username
from .templates import TemplateApi

# The server long-polls at most 300 s; shorter chunks let a caller report progress and a proxy
# with a 60 s idle timeout stay out of the way.
WAIT_CHUNK_SECONDS = 30.0
INSTANCES = "/postgraas_instances"
# What the server accepts as an instance's name.
INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Instances a list asks for at a time; the server answers at most MAX_PAGE_SIZE.
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000
# After an interrupted create: seconds to wait before each look for the instance, since the
# server may not have reserved its name yet when the first look arrives.
CLEANUP_LOOKS = (0.0, 0.5, 1.0)
# "id:7" and "name:7" say which a reference is; instance names cannot contain ":".
ID_PREFIX = "id:"
NAME_PREFIX = "name:"


class _Settling(Protocol):
    @property
    def settled(self) -> bool: ...


Settles = TypeVar("Settles", bound=_Settling)


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
        # Checked now, so that requests never gets to quote a bad URL or header (secrets included) in its errors.
        if problem := url_problem(url):
            raise ConfigurationError(f"The Postgraas server URL {problem}.")
        if token and (problem := token_problem(token)):
            raise ConfigurationError(f"The API token {problem}.")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.create_timeout = create_timeout
        self._token = token or None
        self._session = session or requests.Session()
        self.templates = TemplateApi(self)

    def __repr__(self) -> str:
        return f"PostgraasClient({display_url(self.url)!r}, token={'set' if self._token else None})"

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def close(self) -> None:
        self._session.close()

    def with_own_session(self) -> PostgraasClient:
        """The same server and token over connections of its own, for another thread: a requests
        Session is not safe to share between threads."""
        return PostgraasClient(self.url, token=self._token, timeout=self.timeout, create_timeout=self.create_timeout)

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
        template: str | None = None,
    ) -> Instance:
        """Create an instance. Without ``password`` one is generated here (URL-safe, never needs
        quoting); either way the returned Instance carries it. With ``wait=False`` the answer comes
        at once, with status ``creating``: see wait(). ``template`` (``NAME`` or ``NAME@HASH``)
        makes it a clone of a ready template of that name (client.templates).

        Interrupted before the answer came (KeyboardInterrupt, a timeout, a lost connection), the
        create is undone when the password was generated: nobody else could ever delete that
        instance without a token. What could not be undone is attached to the re-raised exception
        (errors.leftover_of)."""
        generated = password is None
        # Ours rather than the server's: an answer that never arrives must not take the password with it.
        password = secrets.token_urlsafe(24) if password is None else password
        body: dict[str, Any] = {
            "postgraas_instance_name": name,
            "db_name": db_name or default_db_name(name),
            "db_username": db_username or default_username(name),
            "wait": wait,
            "db_pwd": password,
        }
        if ttl is not None:
            body["ttl"] = ttl
        if backend:
            body["backend"] = backend
        if template:
            body["template"] = template
        timeout = self.create_timeout if wait else self.timeout
        try:
            data = self._request("POST", INSTANCES, json=body, timeout=timeout, secret=password)
        except ServerUnreachable as e:
            if e.maybe_received:
                self._undo_create(e, name, password, generated)
            raise
        except KeyboardInterrupt as e:
            self._undo_create(e, name, password, generated)
            raise
        return Instance.from_json(data, password=data.get("db_pwd") or password)

    def _undo_create(self, error: BaseException, name: str, password: str, generated: bool) -> None:
        """Delete what an interrupted create may have made; attach to ``error`` what could not be."""
        if not generated:
            # A password the caller chose may also be another instance's of that name: leave it to them.
            reason = "the password was given, so the client does not delete by name"
            attach_leftover(error, Leftover(name, None, reason, password_given=True))
            return
        instance_id: int | None = None
        try:
            for delay in CLEANUP_LOOKS:
                time.sleep(delay)
                matches = self._named(name)
                if matches:
                    break
            else:
                return  # the server never got the create, or refused it
            instance_id = matches[0].id if len(matches) == 1 else None
            for instance in matches:
                try:
                    # force: a creation still in progress is cancelled; open sessions are ended.
                    path = f"{INSTANCES}/{instance.id}"
                    self._request("DELETE", path, json={"force": True, "db_pwd": password}, secret=password)
                    return
                except AuthenticationError:
                    continue  # not ours: the generated password is the proof, and it did not match
                except NotFoundError:
                    continue  # gone meanwhile
            # Only others' instances of that name, or gone: nothing of ours is left.
        except PostgraasClientError as e:
            attach_leftover(error, Leftover(name, instance_id, str(e), password_given=False))
        except KeyboardInterrupt:
            attach_leftover(error, Leftover(name, instance_id, "interrupted again", password_given=False))

    def list(self, **filters: Any) -> list[Instance]:
        """Every instance the server shows (see ``instances`` for the filters)."""
        return list(self.instances(**filters))

    def instances(
        self,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        status: str | Sequence[str] | None = None,
        backend: str | None = None,
        name: str | None = None,
        owner: str | None = None,
    ) -> Iterator[Instance]:
        """The instances the server shows, in id order, read a page of ``page_size`` at a time as
        they are iterated; ``status`` (one or several), ``backend``, ``name`` (a prefix) and
        ``owner`` (admin tokens) filter them. A server without paging answers them all at once."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise PostgraasClientError(f"page_size must be from 1 to {MAX_PAGE_SIZE}, not {page_size}.")
        params = {"limit": str(page_size)}
        statuses = [status] if isinstance(status, str) else list(status or [])
        if statuses:
            params["status"] = ",".join(statuses)
        params.update({key: value for key, value in (("backend", backend), ("name", name), ("owner", owner)) if value})
        after: str | None = None
        while True:
            data, response = self._exchange("GET", INSTANCES, params={**params, **({"after": after} if after else {})})
            yield from (Instance.from_json(item) for item in data)
            after = next_after(response)
            if after is None:
                return

    def get(self, instance_id: int) -> Instance:
        return Instance.from_json(self._request("GET", f"{INSTANCES}/{int(instance_id)}"))

    def resolve(self, ref: str | int) -> int:
        """The id of an instance given by id or by name, which must be unique among the instances
        this client sees. An int or ``id:7`` is an id (no request); ``name:7`` is a name; a string
        of digits is an id unless another instance is named so (a name may be all digits), in
        which case AmbiguousName asks for one of the prefixes."""
        if isinstance(ref, int):
            return ref
        if ref.startswith(ID_PREFIX):
            digits = ref.removeprefix(ID_PREFIX)
            if not (digits.isascii() and digits.isdigit()):
                raise PostgraasClientError(f"{ref!r}: an id: reference needs the instance's id, digits only.")
            return int(digits)
        name = ref.removeprefix(NAME_PREFIX)
        if not name:
            raise PostgraasClientError(f"{ref!r}: a name: reference needs the instance's name.")
        matches = self._named(name)
        if name == ref and ref.isascii() and ref.isdigit():
            others = [i for i in matches if i.id != int(ref)]
            if others:
                ids = ", ".join(str(i.id) for i in others)
                raise AmbiguousName(
                    f"{ref!r} is an id, and also the name of instance(s) {ids}: "
                    f"say {ID_PREFIX}{ref} or {NAME_PREFIX}{ref}."
                )
            return int(ref)
        if not matches:
            raise NotFoundError(404, f"There is no instance named {name!r}.")
        if len(matches) > 1:
            ids = ", ".join(str(i.id) for i in matches)
            raise AmbiguousName(f"Several instances are named {name!r} (ids {ids}); use {ID_PREFIX}ID.")
        return matches[0].id

    def _named(self, name: str) -> Sequence[Instance]:
        # The server reads only what starts with the name; a 2.x server answers all, filtered here.
        if not INSTANCE_NAME.fullmatch(name):
            return []  # no instance can have it (and the server would refuse it as a prefix)
        return [i for i in self.instances(name=name, page_size=MAX_PAGE_SIZE) if i.name == name]

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
        return self._long_poll(f"{INSTANCES}/{int(instance_id)}", timeout, Instance.from_json, on_progress)

    def _long_poll(
        self, path: str, timeout: float, parse: Callable[[Any], Settles], on_progress: Callable[[Settles], None] | None
    ) -> Settles:
        """GET ``path`` with ?wait=ready in chunks until what it shows settled or ``timeout`` passed."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            chunk = max(0.0, min(WAIT_CHUNK_SECONDS, deadline - time.monotonic()))
            params = {"wait": "ready", "timeout": f"{chunk:.1f}"}
            item = parse(self._request("GET", path, params=params, timeout=chunk + self.timeout))
            if item.settled or time.monotonic() >= deadline:
                return item
            if on_progress is not None:
                on_progress(item)

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

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON (``kwargs`` as ``_exchange`` takes them); raises the error the server answered with."""
        return self._exchange(method, path, **kwargs)[0]

    def _exchange(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        secret: str | None = None,
        answers: tuple[int, ...] = (),
    ) -> tuple[Any, requests.Response]:
        """The answer's JSON and the answer itself (for its headers)."""
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        timeout = self.timeout if timeout is None else timeout
        try:
            response = self._session.request(
                method, self.url + path, json=json, params=params, headers=headers, timeout=timeout
            )
        # Never the exception's text in a message: it can quote the URL with its password, or a header.
        except requests.Timeout as e:
            raise ServerUnreachable(
                f"The Postgraas server at {display_url(self.url)} did not answer within {timeout:g} s.",
                maybe_received=not never_connected(e),
            ) from None
        except requests.ConnectionError as e:
            raise ServerUnreachable(
                f"Cannot reach the Postgraas server at {display_url(self.url)}: {connection_reason(e)}.",
                maybe_received=not never_connected(e),
            ) from None
        except requests.RequestException as e:
            # InvalidURL, InvalidHeader ...: the constructor's checks should have caught them.
            raise PostgraasClientError(
                f"Cannot send a request to {display_url(self.url)}: {type(e).__name__}."
            ) from None
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
            return data, response
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
        return error_for_status(status)(status, message, errors, retry_after(response.headers.get("Retry-After")))

    def _redact(self, text: str, secret: str | None) -> str:
        for value in (self._token, secret):
            if value:
                text = text.replace(value, "***")
        return text

    def _snippet(self, text: str, secret: str | None, limit: int = 200) -> str:
        text = " ".join(self._redact(text, secret).split())
        return text if len(text) <= limit else text[: limit - 3] + "..."
