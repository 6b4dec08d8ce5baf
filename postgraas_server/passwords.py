"""Salted password hashes: the meta db can check a db_pwd but never reveal one."""

from __future__ import annotations

import secrets

from werkzeug.security import check_password_hash, generate_password_hash


def hash_password(password: str) -> str:
    # scrypt with a random 16-byte salt per hash.
    return generate_password_hash(password, method="scrypt")


def password_matches(password_hash: str, password: str) -> bool:
    return check_password_hash(password_hash, password)


def generate_password() -> str:
    # 32 URL-safe characters: 192 bits, and nothing that needs quoting in a URI or a shell.
    return secrets.token_urlsafe(24)
