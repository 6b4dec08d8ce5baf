"""How instances and templates are printed: env lines a shell can eval, the list tables, ages and expiries."""

from __future__ import annotations

import shlex
import unicodedata
from collections.abc import Iterable
from datetime import datetime

from .errors import PostgraasClientError
from .instance import Instance
from .templates import Template

# As git shows commits: enough to tell a name's hashes apart.
SHORT_HASH = 12


class UnsafeEnvValue(PostgraasClientError):
    """A value --output env cannot print: it holds a line break or another control character."""

    def __init__(self, key: str) -> None:
        # The variable's name only: the value is likely a password.
        super().__init__(
            f"{key} holds a line break or another control character, which --output env does not print: "
            "in $GITHUB_ENV (or any KEY=value file) it would start another variable. Use --output json."
        )
        self.key = key


def has_control_character(value: str) -> bool:
    # Cc: C0 and C1 controls (newline, CR, ESC, NEL ...); Zl/Zp: Unicode line and paragraph separators.
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)


def env_pairs(instance: Instance, with_password: bool = True) -> list[tuple[str, str]]:
    """The libpq variables and DATABASE_URL; what is not known yet (host before ready, a
    password the server no longer returns) is left out rather than printed empty."""
    pairs: list[tuple[str, str]] = []
    uri = instance.uri if with_password else instance.uri_without_password
    if uri:
        pairs.append(("DATABASE_URL", uri))
    if instance.host:
        pairs.append(("PGHOST", instance.host))
    if instance.port:
        pairs.append(("PGPORT", str(instance.port)))
    pairs.append(("PGUSER", instance.user))
    if with_password and instance.password is not None:
        pairs.append(("PGPASSWORD", instance.password))
    pairs.append(("PGDATABASE", instance.dbname))
    pairs.append(("POSTGRAAS_INSTANCE_ID", str(instance.id)))
    return pairs


def env_line(key: str, value: str) -> str:
    """KEY=value for eval. A value that needs quoting gets shell quotes, which $GITHUB_ENV would keep
    as part of the value; generated passwords and the other values never need any. A control
    character is refused: a newline would inject a variable into $GITHUB_ENV however it is quoted."""
    if has_control_character(value):
        raise UnsafeEnvValue(key)
    return f"{key}={shlex.quote(value)}"


def format_env(instance: Instance, with_password: bool = True) -> str:
    """The env lines; raises UnsafeEnvValue (before anything is printed) for a value with a control character."""
    return "\n".join(env_line(k, v) for k, v in env_pairs(instance, with_password))


def format_span(seconds: float) -> str:
    """45s, 5m, 2h3m, 3d4h: the two largest units, which is all a person reads."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    parts: list[tuple[int, str]] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size or parts:
            parts.append((seconds // size, unit))
            seconds %= size
    value, unit = parts[0]
    text = f"{value}{unit}"
    if len(parts) > 1 and parts[1][0]:
        text += f"{parts[1][0]}{parts[1][1]}"
    return text


def format_expires(expires_at: datetime | None, now: datetime) -> str:
    if expires_at is None:
        return "-"
    left = (expires_at - now).total_seconds()
    return f"in {format_span(left)}" if left > 0 else "expired"


def _aligned(rows: list[list[str]]) -> str:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _age(created_at: datetime | None, now: datetime) -> str:
    return format_span((now - created_at).total_seconds()) if created_at else "-"


def format_table(instances: Iterable[Instance], now: datetime) -> str:
    rows = [["ID", "NAME", "BACKEND", "STATUS", "HOST:PORT", "AGE", "EXPIRES"]]
    for i in instances:
        address = f"{i.host}:{i.port}" if i.host and i.port else "-"
        age = _age(i.created_at, now)
        rows.append([str(i.id), i.name, i.backend, i.status, address, age, format_expires(i.expires_at, now)])
    return _aligned(rows)


def format_template_table(templates: Iterable[Template], now: datetime) -> str:
    """The templates; HASH shows the first SHORT_HASH characters (--output json has them all)."""
    rows = [["ID", "NAME", "HASH", "BACKEND", "STATUS", "AGE", "EXPIRES"]]
    for t in templates:
        short = t.hash if len(t.hash) <= SHORT_HASH else t.hash[:SHORT_HASH]
        expires = format_expires(t.expires_at, now)
        rows.append([str(t.id), t.name, short, t.backend, t.status, _age(t.created_at, now), expires])
    return _aligned(rows)
