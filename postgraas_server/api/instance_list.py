"""GET /postgraas_instances: the 2.x JSON array, paged with ``limit`` and ``after`` (the last id
seen; an RFC 8288 ``Link: <...>; rel="next"`` while more follow) and filtered by ``status``,
``backend``, ``name`` (a prefix) and, for admin tokens, ``owner``. Without ``limit`` the whole list
is answered as 2.x clients expect, read and written in batches (see docs/api.md#listing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import urlencode

from flask import Response, current_app, g, request, stream_with_context
from pydantic import TypeAdapter

from ..errors import Forbidden, InvalidRequest, ServiceBusy
from ..schemas import INSTANCE_NAME_RE, InstanceOut
from ..service.listing import LISTED_STATUSES, MAX_ID, MAX_LIMIT, ListFilter, batches, page

INSTANCE_LIST = TypeAdapter(list[InstanceOut])
# backend_state would cost a backend call per instance; the item GET has it.
_NOT_LISTED = {"__all__": {"backend_state"}}

# Rows read, validated and serialised at a time for a list without ``limit``.
BATCH = 1000
# Lists without ``limit`` built at once in a process: each holds its whole answer until it is sent.
WHOLE_LISTS_AT_ONCE = 1
# How long such a list waits for its turn before the client is told to come back (or to page): a
# request thread waits meanwhile, so not long.
WHOLE_LIST_WAIT_S = 5.0
_SINGLE = ("limit", "after", "backend", "name", "owner")
_TURNS = "postgraas.whole_lists"


def list_instances() -> Response:
    shown, after, limit = _parse()
    if limit is not None:
        found = page(g.principal, shown, after=after, limit=limit)
        response = Response(_json(found.rows), mimetype="application/json")
        if found.next_after is not None:
            response.headers["Link"] = f'<{_next_url(found.next_after)}>; rel="next"'
        return response
    # The app's own (setdefault is atomic): apps in one process, as in tests, do not share it.
    turns = current_app.extensions.setdefault(_TURNS, threading.BoundedSemaphore(WHOLE_LISTS_AT_ONCE))
    if not turns.acquire(timeout=WHOLE_LIST_WAIT_S):
        raise ServiceBusy("Another whole list is being answered; page with ?limit= or try again.")
    response = Response(stream_with_context(_whole_list(shown, after)), mimetype="application/json")
    # Once the answer is sent: until then this process holds it whole.
    response.call_on_close(turns.release)
    return response


def _whole_list(shown: ListFilter, after: int) -> Iterator[bytes]:
    yield b"["
    first = True
    for rows in batches(g.principal, shown, BATCH, after=after):
        # One array per batch, its brackets dropped: pydantic serialises a batch in one pass.
        yield (b"" if first else b",") + _json(rows)[1:-1]
        first = False
    yield b"]"


def _json(rows: list) -> bytes:
    # Validated as one list: one call into pydantic's core instead of one per instance.
    instances = INSTANCE_LIST.validate_python([InstanceOut.fields_of(row) for row in rows])
    return INSTANCE_LIST.dump_json(instances, exclude=_NOT_LISTED)


def _next_url(after: int) -> str:
    # Relative (RFC 8288 resolves it against the request's URL): right behind any proxy, and under
    # the path the client used (/api/v2 or not).
    args = [(key, value) for key, value in request.args.items(multi=True) if key != "after"]
    return f"{request.script_root}{request.path}?{urlencode([*args, ('after', str(after))])}"


def _parse() -> tuple[ListFilter, int, int | None]:
    """The filter, ``after`` and ``limit`` of the request; every bad parameter named at once."""
    args = request.args
    errors: dict[str, str] = {}
    for key in _SINGLE:
        if len(args.getlist(key)) > 1:
            errors[key] = "may be given once"
    limit = _integer(args.get("limit"), 1, MAX_LIMIT, "limit", errors)
    after = _integer(args.get("after"), 0, MAX_ID, "after", errors) or 0
    # Comma-separated (an empty value is no filter), or repeated.
    statuses = tuple(s for value in args.getlist("status") if value for s in value.split(","))
    if any(status not in LISTED_STATUSES for status in statuses):
        errors["status"] = f"comma-separated, each one of {', '.join(LISTED_STATUSES)}"
    backend = args.get("backend")
    configured = current_app.extensions["postgraas"].backends.backends
    if backend is not None and backend not in configured:
        errors["backend"] = f"not a backend of this server (it has {', '.join(sorted(configured))})"
    name = args.get("name")
    if name is not None and not INSTANCE_NAME_RE.fullmatch(name):
        errors["name"] = "a prefix of instance names: 1 to 63 of A-Z a-z 0-9 _ . -, starting with a letter or digit"
    owner = args.get("owner")
    if owner is not None and not owner:
        errors["owner"] = "must not be empty"
    if errors:
        raise InvalidRequest(f"Bad list parameters: {', '.join(sorted(errors))}.", errors)
    if owner is not None and g.principal is not None and not g.principal.admin:
        raise Forbidden("Only an admin token may list other owners' instances.", {"owner": "needs an admin token"})
    return ListFilter(statuses, backend, name, owner), after, limit


def _integer(raw: str | None, low: int, high: int, key: str, errors: dict[str, str]) -> int | None:
    if raw is None:
        return None
    # ASCII digits only (int() takes "+1", " 1", "1_0" and other scripts' digits), and not 4,300 of them.
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= len(str(high)) else -1
    if not low <= value <= high:
        errors[key] = f"an integer from {low} to {high}"
        return None
    return value
