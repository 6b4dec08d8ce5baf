"""API tokens: ``pgr_<id>_<secret>``. The meta db keeps a salted SHA-256 of the secret.

A fast hash is enough here: the secret is 256 random bits, not a password a person chose,
so there is nothing to guess; the salt keeps equal secrets from showing as equal hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from .models import Token, db, utcnow

TOKEN_RE = re.compile(r"pgr_([0-9]{1,18})_([A-Za-z0-9_-]{20,100})")


@dataclass(frozen=True)
class Principal:
    """Who a request acts for."""

    owner: str
    admin: bool
    max_instances: int | None
    max_ttl: int | None
    token_id: int
    max_templates: int | None = None


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def issue_token(
    owner: str, *, admin: bool, max_instances: int | None, max_ttl: int | None, max_templates: int | None = None
) -> tuple[Token, str]:
    """Store a new token and return it with its plain text, which is shown once and never again."""
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    token = Token(
        owner=owner,
        admin=admin,
        max_instances=max_instances,
        max_ttl=max_ttl,
        max_templates=max_templates,
        salt=salt,
        secret_hash=_digest(salt, secret),
        created_at=utcnow(),
    )
    db.session.add(token)
    db.session.commit()
    return token, f"pgr_{token.id}_{secret}"


def authenticate(presented: str) -> Principal | None:
    """The principal of a valid, unrevoked token; None otherwise."""
    match = TOKEN_RE.fullmatch(presented)
    if not match:
        return None
    token = db.session.get(Token, int(match.group(1)))
    if token is None or token.revoked_at is not None:
        return None
    if not hmac.compare_digest(token.secret_hash, _digest(token.salt, match.group(2))):
        return None
    return Principal(token.owner, token.admin, token.max_instances, token.max_ttl, token.id, token.max_templates)


def list_tokens() -> list[Token]:
    return list(db.session.execute(select(Token).order_by(Token.id)).scalars())


def revoke_token(token_id: int) -> Token | None:
    token = db.session.get(Token, token_id)
    if token is not None and token.revoked_at is None:
        token.revoked_at = utcnow()
        db.session.commit()
    return token
